"""`starlora predict`: a trained model (sources.py) applied to any rows, streamed, resumable.

Each row's prompt comes from the task's template, its id as everywhere (its id field, else a hash of the prompt).
Rows are read twice: a first pass checks every row (a bad one stops with its file and line before anything is
computed) and counts them for the progress bar's ETA; the second reads them in chunks, scores each chunk with
scoring.score (batched, length-sorted, one deterministic pass) and appends the results to OUT.partial.jsonl. Only a
chunk's rows and the set of ids are in memory at any time. A killed predict resumes from that journal, skipping the
ids it holds; at the end the journal becomes OUT (JSON lines, CSV or Parquet by the suffix) in one rename.

Per row: id, prediction, confidence, the uncertainty (the project's measure, from the same deterministic pass) and
its name; closed-set tasks every candidate's probability (p_<candidate>); open tasks the generated text, its
sequence log-probability and whether the generation was cut at --max-new-tokens. The confidence is the predicted
candidate's probability, or for an open task the geometric mean of its tokens' probabilities (exp(logprob/length)).
A bare adapter or model folder (no configuration to say otherwise) scores with ScoringSettings' defaults and ME.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .data import Example, read_rows, row_id
from .errors import StarloraError
from .files import append_jsonl, iter_jsonl, read_json, write_atomic, write_json
from .progress import hidden_progress, progress
from .sources import Source, open_source

logger = logging.getLogger(__name__)
SUFFIXES = (".jsonl", ".csv", ".parquet")
CHUNK = 1024  # rows scored and appended together: memory holds one chunk, a kill loses at most one


def columns(task) -> list[str]:
    """The output's columns, the same in every format."""
    head = ["id", "prediction", "confidence", "uncertainty", "measure"]
    return head + ([f"p_{c}" for c in task.candidates] if task.closed else ["text", "logprob", "truncated"])


def check_out(out: Path) -> None:
    if out.suffix.lower() not in SUFFIXES:
        raise StarloraError(f"--out {out}: the suffix chooses the format: {', '.join(SUFFIXES)}")
    if out.is_dir():
        raise StarloraError(f"--out {out}: is a folder, not a file")
    if not out.parent.is_dir():
        raise StarloraError(f"--out {out}: no folder {out.parent}")


def journal_of(out: Path) -> tuple[Path, Path]:
    """Where an unfinished predict keeps its results (JSON lines, appended) and what it was started with."""
    return out.with_name(out.name + ".partial.jsonl"), out.with_name(out.name + ".partial.json")


def row_examples(path, task, id_field: str = "id") -> Callable[[], Iterator[tuple[str, Example]]]:
    """A re-readable stream of (where, example) from a data file: the prompt from the task's template."""

    def read():
        for where, row in read_rows(path, (id_field,)):
            try:
                prompt = task.prompt(row)
            except StarloraError as e:
                raise StarloraError(f"{where}: {e}") from None
            yield where, Example(row_id(row, id_field, prompt, ""), prompt, "", None)

    return read


def predict(
    source,
    input_file,
    out,
    *,
    task: str | None = None,
    candidates: list[str] | None = None,
    template: str | None = None,
    id_field: str | None = None,
    batch_size: int | None = None,
    chunk_size: int = CHUNK,
) -> Path:
    """Predict every row of `input_file` (any file read_rows reads, or hf:NAME[:CONFIG]@SPLIT) with the model `source`
    names (a project, run, adapter or model folder) into `out` (.jsonl, .csv or .parquet). Re-running the same
    command after an interruption resumes it. Returns `out`."""
    found = source if isinstance(source, Source) else open_source(source)
    the_task = found.task(task, candidates, template)
    field = id_field or (found.cfg.id_field if found.cfg else "id")
    identity = {
        "source": str(found.adapter or found.model),
        "input": str(input_file),
        "task": the_task.name,
        "template": the_task.template,
        "id_field": field,
    }
    return predict_examples(
        found,
        the_task,
        row_examples(input_file, the_task, field),
        Path(out),
        identity,
        batch_size=batch_size,
        chunk_size=chunk_size,
    )


def predict_examples(
    source: Source,
    task,
    examples: Callable[[], Iterator[tuple[str, Example]]],
    out: Path,
    identity: dict,
    *,
    batch_size: int | None = None,
    chunk_size: int = CHUNK,
    replace: bool = False,
) -> Path:
    """predict's work over a re-readable stream of (where, example). replace: an existing `out` (and a journal
    started otherwise) is predicted afresh instead of refused (the web page's predictions of the pool)."""
    if chunk_size < 1 or batch_size is not None and batch_size < 1:
        raise StarloraError("--batch-size and --chunk-size must be at least 1")
    check_out(out)
    journal, meta = journal_of(out)
    if out.exists() and not journal.exists():
        if meta.exists():  # killed between the final rename and removing the record: it is complete
            meta.unlink()
            logger.info(f"{out}: already complete")
            return out
        if not replace:
            raise StarloraError(f"--out {out}: exists already; choose another file, or remove it to predict again")
    started = read_json(meta) if meta.exists() and journal.exists() else None
    if started is not None and started != identity:
        if not replace:
            raise StarloraError(
                f"{journal}: an unfinished predict with other settings ({describe(started, identity)})"
                f"; remove {journal} and {meta} to start again"
            )
        started = None
    if started is None:
        journal.unlink(missing_ok=True)
    todo, skipped = check_rows(examples)
    done = {r["id"] for r in iter_jsonl(journal, {"id": str}, appended=True)}
    left = len(todo - done)
    if done:
        logger.info(f"{out}: resuming: {len(done & todo)} row(s) predicted before, {left} to go")
    if skipped:
        logger.warning(f"{skipped} exact duplicate row(s) skipped (same id and prompt as an earlier row)")
    write_json(meta, identity)
    append_jsonl(journal, [])  # exists from now until OUT does; ends a torn last line a kill left
    if left:
        predict_rows(source, task, examples, journal, done, left, batch_size, chunk_size)
    finish(journal, out, columns(task))
    meta.unlink(missing_ok=True)
    logger.info(f"{out}: {len(todo)} prediction(s)")
    return out


def describe(started: dict, now: dict) -> str:
    return ", ".join(f"{k} {started.get(k)!r} not {v!r}" for k, v in now.items() if started.get(k) != v)


def check_rows(examples) -> tuple[set[str], int]:
    """The first pass: every row must give a prompt; one id may not stand for two different prompts. Returns the
    ids and how many exact duplicates there are."""
    prompts, skipped = {}, 0  # id -> digest of its prompt: a few bytes a row, whatever the prompt's length
    for where, ex in examples():
        digest = hashlib.blake2b(ex.prompt.encode(), digest_size=8).digest()
        if ex.id in prompts:
            if prompts[ex.id] != digest:
                raise StarloraError(
                    f"{where}: id {ex.id!r} is used by an earlier row with a different prompt; nothing was predicted"
                )
            skipped += 1
            continue
        prompts[ex.id] = digest
    if not prompts:
        raise StarloraError("the input has no rows")
    return set(prompts), skipped


def predict_rows(
    source: Source, task, examples, journal: Path, done: set[str], left: int, batch_size, chunk_size
) -> None:
    """The second pass: chunks of rows not yet in the journal, scored and appended."""
    from .rounds import method_settings
    from .scoring import ScoringSettings
    from .strategies import get_strategy

    model, tokenizer = source.load()
    cfg = source.cfg
    if cfg is not None:
        settings = method_settings(cfg, get_strategy(cfg.strategy, task.closed))[0]
        measure = get_strategy(cfg.strategy, task.closed).one_pass_measure(cfg.length_norm)
        if cfg.quantization == "none" and source.adapter is not None:
            from .hardware import bf16_frozen_linears

            bf16_frozen_linears(model, settings.precision)
    else:  # a bare adapter or model: scoring's defaults (fp32 arithmetic, no autocast), ME as the uncertainty
        settings, measure = ScoringSettings(), "me"
    if batch_size:
        from dataclasses import replace

        settings = replace(settings, batch_size=batch_size)
    bar = progress(total=left, desc="predicting", unit="row")
    chunk, seen = [], set(done)
    for _, ex in examples():
        if ex.id in seen:
            continue
        seen.add(ex.id)
        chunk.append(ex)
        if len(chunk) == chunk_size:
            write_chunk(model, tokenizer, task, chunk, settings, measure, journal)
            bar.update(len(chunk))
            chunk = []
    if chunk:
        write_chunk(model, tokenizer, task, chunk, settings, measure, journal)
        bar.update(len(chunk))
    bar.close()


def write_chunk(model, tokenizer, task, chunk: list[Example], settings, measure: str, journal: Path) -> None:
    from .scoring import score

    with hidden_progress():
        found = score(model, tokenizer, task, chunk, settings=settings, desc="predicting")
    append_jsonl(journal, records(task, found, measure))


def records(task, found, measure: str) -> list[dict]:
    """The output rows of one scored chunk (scoring.Scores)."""
    out = []
    for i, id_ in enumerate(found.ids):
        row = {
            "id": id_,
            "prediction": found.predictions[i],
            "uncertainty": float(found.measures[measure][i]),
            "measure": measure,
        }
        if task.closed:
            probs = [float(p) for p in found.probs[i]]
            row["confidence"] = max(probs)
            row |= {f"p_{c}": p for c, p in zip(task.candidates, probs)}
        else:
            row["confidence"] = math.exp(-float(found.measures["pe_norm"][i]))
            row |= {
                "text": found.texts[i],
                "logprob": -float(found.measures["pe"][i]),
                "truncated": bool(found.truncated[i]),
            }
        out.append(row)
    return out


# ---------------------------------------------------------------- the output file


def finish(journal: Path, out: Path, names: list[str]) -> None:
    """The journal becomes `out`: renamed (JSON lines) or converted a few thousand rows at a time (CSV, Parquet)."""
    suffix = out.suffix.lower()
    if suffix == ".jsonl":
        os.replace(journal, out)
        return
    convert(journal, out, names)
    journal.unlink()


def convert(jsonl: Path, out: Path, names: list[str]) -> None:
    """A JSON-lines results file as CSV or Parquet (by out's suffix), written aside and renamed into place."""
    rows = (r for r in iter_jsonl(jsonl, {"id": str}))
    if out.suffix.lower() == ".csv":
        write_atomic(out, csv_lines(rows, names))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {
        "id": pa.string(),
        "prediction": pa.string(),
        "measure": pa.string(),
        "text": pa.string(),
        "truncated": pa.bool_(),
    }
    schema = pa.schema([(n, kinds.get(n, pa.float64())) for n in names])
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            batch = []
            for row in rows:
                batch.append(row)
                if len(batch) == 8192:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StarloraError(f"{out}: cannot write ({e.strerror or e}); the results stay in {jsonl}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def csv_lines(rows, names: list[str]):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
        writer.writerow(row)
    yield buf.getvalue()


# ---------------------------------------------------------------- the project's unlabeled pool


def predict_unlabeled(folder) -> Path:
    """The project's latest adapter over its pool without the labeled examples, into predictions/unlabeled.jsonl
    and .csv (the web page's Predict), with predictions/unlabeled.json saying which round made them, written last."""
    from .human_loop.project import open_project

    source = open_source(folder)
    project = open_project(folder)
    task = project.task
    out = project.folder / "predictions" / "unlabeled.jsonl"
    out.parent.mkdir(exist_ok=True)
    record = out.with_suffix(".json")
    record.unlink(missing_ok=True)  # the files below are being replaced: no record says they are whole meanwhile

    def pool():
        labeled = {r["id"] for r in project.labels()}
        for n, r in enumerate(iter_jsonl(project.folder / "pool.jsonl", {"id": str, "prompt": str}), 1):
            if r["id"] not in labeled:
                yield f"{project.folder / 'pool.jsonl'}:{n}", Example(r["id"], r["prompt"], "", None)

    identity = {"source": str(source.adapter), "input": "the project's unlabeled pool", "task": task.name}
    predict_examples(source, task, pool, out, identity, replace=True)
    convert(out, out.with_suffix(".csv"), columns(task))
    rows = sum(1 for _ in iter_jsonl(out))
    write_json(
        record,
        {"round": len(source.curve) - 1, "adapter": str(source.adapter.relative_to(project.folder)), "rows": rows},
    )
    logger.info(f"predictions of round {len(source.curve) - 1}'s adapter for {rows} unlabeled example(s): {out}")
    return out
