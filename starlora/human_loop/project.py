"""The human loop on a project folder: init -> query -> label -> train, round after round, on any day.

    project.json          the configuration (a MethodConfig: task, model, strategy, R for lambda(t), training values)
    pool.jsonl            the unlabeled examples: id, prompt, and the row's own fields (exported for labeling)
    test.jsonl            optional held-out labeled examples (accuracy per trained round)
    queries.jsonl         one record per query: round, ids, file; ids never come back in a later query
    queries/round_T.*     the files handed out for labeling (JSON lines, CSV, or Label Studio tasks)
    labels.jsonl          the confirmed labels: id, answer, round; `label` writes only this file, in one rename
    adapters/round_T/     each trained adapter (plain PEFT) with train.json; written aside, then renamed into place
    base_scores.jsonl     the frozen base model's uncertainties, computed once per example (appended)

Every file is replaced atomically, so a kill at any moment leaves the folder as before or after the command (the
base-score cache only grows: a kill keeps the lines appended so far, which are as valid as the rest). Training,
evaluation, the stop set and the query are the simulation's own round (rounds.Round); round T's query uses the
adapter of round T-1 with lambda(T-1), so lambda follows the project's round counter as in `starlora run`. The files
handed out and read back are labelstudio.py's.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from filelock import FileLock

from ..acquisition import Acquisition, BaseScoreCache, RoundSeeds, random_scores
from ..card import push, write_card
from ..config import MethodConfig, stored_config
from ..data import Example, make_examples, read_rows, row_id
from ..diversity import kmeans_representatives
from ..embeddings import EmbeddingCache
from ..errors import StarloraError
from ..files import append_jsonl, read_json, read_jsonl, write_atomic, write_json, write_jsonl
from ..hardware import bf16_frozen_linears
from ..memory import preflight
from ..models import load_model
from ..provenance import versions
from ..rounds import Round, fresh_adapter, method_settings
from ..scoring import score
from ..stopping import draw_stop_set, parse_stop_rule
from ..strategies import get_strategy, select
from ..tasks import get_task
from ..tracking import Tracking
from .labelstudio import FORMATS, cleaned, export, labelstudio_config, read_answers

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Project:
    folder: Path
    cfg: MethodConfig

    @property
    def task(self):
        return get_task(self.cfg.task, self.cfg.candidates, self.cfg.template, user_files=True)

    @property
    def strategy(self):
        return get_strategy(self.cfg.strategy, self.task.closed)

    # Every project file is read whole and strictly (files.read_jsonl): a damaged line stops the command naming the
    # file and line, before anything is written, so no label is ever dropped by a rewrite.
    def pool(self) -> list[dict]:
        return read_jsonl(self.folder / "pool.jsonl", {"id": str, "prompt": str})

    def test(self) -> list[Example]:
        schema = {"id": str, "prompt": str, "target": str, "gold": (str, type(None))}
        return [Example(*(r[k] for k in schema)) for r in read_jsonl(self.folder / "test.jsonl", schema)]

    def labels(self) -> list[dict]:
        path = self.folder / "labels.jsonl"
        records = read_jsonl(path, {"id": str, "answer": str, "round": int}, appended=True)
        seen, task, pool = set(), self.task, self.pool_ids()
        for n, r in enumerate(records, 1):
            if r["id"] not in pool:
                raise StarloraError(
                    f"{path}: label {n}: id {r['id']!r} is not in the project's pool; nothing was changed"
                )
            if r["id"] in seen:
                raise StarloraError(
                    f"{path}: id {r['id']!r} is labeled twice; nothing was changed: keep one of its lines"
                )
            seen.add(r["id"])
            try:
                task.gold(r["answer"])
            except ValueError as e:
                raise StarloraError(f"{path}: label {n} (id {r['id']!r}): {e}; nothing was changed") from None
        return records

    def queries(self) -> list[dict]:
        path = self.folder / "queries.jsonl"
        records = read_jsonl(path, {"round": int, "ids": list, "file": str})
        pool = self.pool_ids() if records else set()
        for t, r in enumerate(records):
            if r["round"] != t or not all(isinstance(i, str) and i in pool for i in r["ids"]):
                raise StarloraError(
                    f"{path}: query {t + 1} is damaged (round {r['round']!r}, expected {t}; every id "
                    "must be a pool id); nothing was changed"
                )
        return records

    def pool_ids(self) -> set[str]:
        return {r["id"] for r in self.pool()}

    def query_file(self, record: dict) -> Path:
        """Where a query's file is: stored relative to the project folder (older projects: as given then)."""
        inside = self.folder / record["file"]
        return inside if inside.exists() or not Path(record["file"]).exists() else Path(record["file"])

    def trained(self, adapter: Path) -> dict:
        return read_json(adapter / "train.json", {"round": int, "n_labels": int})

    def adapters(self) -> list[Path]:
        """Trained rounds in order; a folder only counts once renamed into place (train.json inside)."""
        found = []
        while (self.folder / "adapters" / f"round_{len(found)}" / "train.json").exists():
            found.append(self.folder / "adapters" / f"round_{len(found)}")
        return found


def pending(queries: list[dict], labels: list[dict], adapters: list) -> list[str]:
    """Ids of the last query that have no label yet. Once that round is trained (train --partial) its unlabeled
    examples are left out of the loop, so nothing is pending."""
    if not queries or len(adapters) >= len(queries):
        return []
    labeled = {r["id"] for r in labels}
    return [i for i in queries[-1]["ids"] if i not in labeled]


def open_project(folder) -> Project:
    folder = Path(folder)
    if not (folder / "project.json").exists():
        raise StarloraError(f"{folder} is not a starlora project (no project.json); create one with starlora init")
    stored = read_json(folder / "project.json", {"config": dict})["config"]
    return Project(folder, stored_config(stored))  # projects made before the split stored more keys


# ---------------------------------------------------------------- init


def refuse_target(target) -> None:
    """The human loop scores the model's own answers; --target reference (the official code's uncertainty, which
    reads the gold answer of every pool example) is a simulation-only oracle and has no labels to read here."""
    if target not in (None, "own"):
        raise StarloraError(
            f"--target {target}: a project cannot use it: it scores the gold labels of the unlabeled "
            "pool (the official STAR code's oracle, simulation only: starlora run/sweep), and a "
            "project's pool has none; the human loop always scores the model's own answers"
        )


def init(folder, cfg: MethodConfig, pool_file, test_file=None, labeled_file=None, adapter=None) -> Project:
    """Create a project from an unlabeled pool file (and optionally a labeled held-out file). labeled_file: pool
    rows labeled already, checked as `label` checks (ids in the pool, answers among the candidates, all or nothing):
    they are round 0's labels, so `train` trains round 0 on them and the first query uses that adapter, lambda(0),
    as `starlora run` does after its initial set. adapter: a PEFT LoRA adapter (checked by loading it onto the
    project's model) kept as round 0's, which then chooses the first query (trained on labeled_file's rows, if
    given)."""
    refuse_target(getattr(cfg, "target", None))  # a RunConfig through the API carries one
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise StarloraError(f"{folder} already exists and is not empty; choose a new project folder")
    task = get_task(cfg.task, cfg.candidates, cfg.template, user_files=True)
    get_strategy(cfg.strategy, task.closed)
    rows = list(read_rows(pool_file))
    examples = make_examples(rows, task, str(pool_file), cfg.id_field, cfg.answer_field, labeled=False)
    labels = initial_labels(task, cfg, labeled_file, {ex.id for ex in examples}) if labeled_file else []
    if cfg.stop_set_size >= len(examples) - len(labels):
        raise StarloraError(
            f"--stop-set-size {cfg.stop_set_size} leaves nothing to label: {pool_file} has "
            f"{len(examples)} example(s)"
            + (f", {len(labels)} labeled already" if labels else "")
            + ", and the stop set is never queried"
        )
    if adapter is not None:
        check_adapter(adapter, cfg, task)
    fields = {}
    for _, row in rows:  # the row behind each example, for the files handed out to label
        fields.setdefault(
            row_id(row, cfg.id_field, task.prompt(row), ""),
            {k: v for k, v in row.items() if k not in (cfg.id_field, cfg.answer_field)},
        )
    test = (
        make_examples(read_rows(test_file), task, str(test_file), cfg.id_field, cfg.answer_field) if test_file else []
    )
    tmp = folder.with_name(folder.name + ".init-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_json(
        tmp / "project.json",
        {
            "config": dataclasses.asdict(cfg),
            "versions": versions(),
            "pool_file": str(pool_file),
            "test_file": str(test_file) if test_file else None,
        },
    )
    write_jsonl(
        tmp / "pool.jsonl", [{"id": ex.id, "prompt": ex.prompt, "fields": fields.get(ex.id, {})} for ex in examples]
    )
    write_jsonl(tmp / "test.jsonl", [dataclasses.asdict(ex) for ex in test])
    write_jsonl(tmp / "labels.jsonl", labels)
    given = labeled_file is not None or adapter is not None  # round 0 happened before the project: its record
    how = " and ".join(
        ([f"labeled before the project (init --labeled {labeled_file})"] if labeled_file else [])
        + ([f"an existing adapter (init --adapter {adapter})"] if adapter else [])
    )
    write_jsonl(
        tmp / "queries.jsonl",
        [{"round": 0, "ids": [r["id"] for r in labels], "file": "labels.jsonl", "how": how, "initial": True}]
        if given
        else [],
    )
    if adapter is not None:
        shutil.copytree(adapter, tmp / "adapters" / "round_0", ignore=shutil.ignore_patterns("train.json", "stop.json"))
        write_json(
            tmp / "adapters" / "round_0" / "train.json", {"round": 0, "n_labels": len(labels), "imported": str(adapter)}
        )
    (tmp / LOCK).touch()  # the lock file is part of the project: taking the lock never leaves a new file behind
    if folder.exists():
        folder.rmdir()
    tmp.rename(folder)  # the project exists whole or not at all
    logger.info(
        f"{folder}: project created: {len(examples)} unlabeled examples, {len(test)} held-out, task {task.name}, "
        f"strategy {cfg.strategy}, model {cfg.model}"
        + (f"; {len(labels)} labeled already" if labels else "")
        + ("; round 0's adapter imported" if adapter else "")
    )
    return Project(folder, cfg)


def initial_labels(task, cfg, path, pool_ids: set[str]) -> list[dict]:
    """init --labeled: round 0's label records from a file of labeled pool rows (its id field, else the content
    hash init gives the pool's rows), every row checked first as `label` checks: any bad row, none is taken."""
    from ..data import read_rows

    problems, records, seen = [], [], set()
    for where, row in read_rows(path, (cfg.id_field,)):
        answer = cleaned(row.get(cfg.answer_field))
        try:  # the prompt only where there is no id: a labeled file may hold just id and answer
            id_ = row_id(row, cfg.id_field, "" if row.get(cfg.id_field) not in (None, "") else task.prompt(row), "")
        except StarloraError as e:
            problems.append(f"{where}: {e}")
            continue
        if id_ not in pool_ids:
            problems.append(f"{where}: unknown id {id_!r} (not in the pool)")
        elif id_ in seen:
            problems.append(f"{where}: duplicate id {id_!r} (appears earlier in this file)")
        elif not answer:
            problems.append(f"{where}: empty answer for id {id_!r}")
        else:
            seen.add(id_)
            try:
                task.label(answer)
            except ValueError as e:
                problems.append(f"{where}: {e}")
                continue
            records.append({"id": id_, "answer": answer, "round": 0})
    if not problems and not records:
        raise StarloraError(f"--labeled {path}: no rows")
    if len(problems) == 1:
        raise StarloraError(f"--labeled {problems[0]}; no project created")
    if problems:
        shown = "\n  ".join(problems[:50]) + (f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise StarloraError(f"--labeled {path}: {len(problems)} bad row(s), no project created:\n  {shown}")
    return records


def check_adapter(adapter, cfg, task) -> None:
    """init --adapter: a PEFT LoRA adapter folder that loads onto the project's model (shapes and module names)."""
    adapter = Path(adapter)
    config = adapter / "adapter_config.json"
    if not config.exists():
        raise StarloraError(f"--adapter {adapter}: not a PEFT adapter folder (no adapter_config.json)")
    kind = read_json(config).get("peft_type")
    if kind != "LORA":
        raise StarloraError(
            f"--adapter {adapter}: a {kind} adapter; starlora's MC dropout and B decay act on LoRA "
            "layers, so it takes a LoRA adapter"
        )
    from peft import PeftModel

    preflight(cfg, task)
    model, _ = load_model(cfg.model, dtype=cfg.dtype, quantization=cfg.quantization)
    try:
        PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise StarloraError(
            f"--adapter {adapter}: does not load onto {cfg.model} ({str(e).splitlines()[0][:200]})"
        ) from None


# ---------------------------------------------------------------- query


def query(folder, n: int, fmt: str = "jsonl", random: bool = False) -> Path:
    """Choose the next n examples to label and write them to a file (returned). See the module docstring."""
    project = open_project(folder)
    cfg, task = project.cfg, project.task
    if fmt not in FORMATS:
        raise StarloraError(f"unknown --format {fmt!r}: choose {', '.join(FORMATS)}")
    if n < 1:
        raise StarloraError(f"-n must be at least 1 (got {n})")
    labels, adapters, queries = project.labels(), project.adapters(), project.queries()
    check_can_query(project, labels, adapters, queries)
    asked = {i for q in queries for i in q["ids"]}
    pool = project.pool()
    kept = asked | set(stop_set(project))  # the stop set is never asked
    candidates = [Example(r["id"], r["prompt"], "", None) for r in pool if r["id"] not in kept]
    if not candidates:
        raise StarloraError(f"every pool example has been asked already ({len(pool)}); nothing left to query")
    if n > len(candidates):
        logger.warning(f"only {len(candidates)} unasked example(s) left; querying all of them instead of {n}")
        n = len(candidates)
    t = len(queries)  # this query's round; round t-1's adapter is the current model
    fields = {r["id"]: r for r in pool}
    labeled = [Example(r["id"], fields[r["id"]]["prompt"], "", None) for r in labels]
    selected, how, shown = choose(project, candidates, labeled, adapters, n, t, random)
    out = project.folder / "queries" / f"round_{t}{FORMATS[fmt]}"
    out.parent.mkdir(exist_ok=True)
    write_atomic(out, export(task, [fields[i] for i in selected], fmt, cfg.answer_field, shown, how))
    if fmt == "labelstudio":
        write_atomic(out.with_name("labelstudio_config.xml"), labelstudio_config(task, cfg.answer_field))
    record = {"round": t, "ids": selected, "file": str(out.relative_to(project.folder)), "how": how, **shown}
    write_jsonl(project.folder / "queries.jsonl", queries + [record])
    logger.info(f"round {t}: {len(selected)} example(s) chosen by {how}; label them in:")
    logger.info(str(out))
    return out


def choose(
    project,
    candidates: list[Example],
    labeled: list[Example],
    adapters: list[Path],
    n: int,
    t: int,
    random: bool = False,
) -> tuple[list[str], str, dict]:
    """Query t: the n ids chosen from the candidates (all unasked), how they were chosen, and what the page shows
    beside them (the scores, the model's guesses, lambda). The policy (query_policy) decides what scores them."""
    cfg, task, strategy = project.cfg, project.task, project.strategy
    ids = [ex.id for ex in candidates]
    settings, train_settings = method_settings(cfg, strategy)
    acquisition = Acquisition(strategy, cfg, settings, None)
    policy = query_policy(strategy, cfg, acquisition, bool(labeled), bool(adapters), random)
    if policy == "random":  # BALD of the base model alone is 0 everywhere: say it is random
        return (
            select(ids, random_scores(len(ids), cfg.seed, t), n, (), seed=RoundSeeds(cfg.seed, t).round_seed),
            "random",
            {},
        )
    preflight(cfg, task)
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, quantization=cfg.quantization)
    acquisition.base_cache = BaseScoreCache(project.folder / "base_scores.jsonl", cfg.model, task, settings)
    if acquisition.needs_embeddings or policy == "k-means":
        acquisition.embeddings = EmbeddingCache(project.folder / "embeddings.jsonl", cfg.model, task, settings)
    mu, lam = None, None
    if policy == "k-means":  # a diverse first batch: needs no scores
        vectors = acquisition.embeddings.get(model, tokenizer, candidates)
        selected = [ids[i] for i in kmeans_representatives(vectors, n, RoundSeeds(cfg.seed, t).round_seed)]
        how = "k-means cold start"
    elif policy == "adapter":  # round t-1's adapter, lambda(t-1): the round's query, as in starlora run
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapters[-1])).eval()
        if cfg.quantization == "none":
            bf16_frozen_linears(model, settings.precision)
        step = Round(scoring_round(cfg, t), task, tokenizer, acquisition, train_settings)
        selected, mu, lam = step.query(model, candidates, labeled, n, pick_round=t)
        how = f"{strategy.name} with round {t - 1}'s adapter" + ("" if lam is None else f", lambda {lam:.3f}")
    else:  # before any adapter: the base model
        mu, how = base_model_scores(policy, acquisition, task, model, tokenizer, candidates, t)
        selected = acquisition.pick(model, tokenizer, candidates, labeled, mu, n, t)
    if policy != "k-means" and cfg.diversity != "none":
        how += f", spread over k-means clusters (beta {cfg.diversity_beta:g})"
    shown = guesses(model, tokenizer, task, settings, [c for c in candidates if c.id in set(selected)], ids, mu)
    return selected, how, shown | {"lambda": lam}


def base_model_scores(policy: str, acquisition, task, model, tokenizer, candidates, t: int) -> tuple[dict, str]:
    """Before any adapter: the base model's cached uncertainty ("base measure"), or the strategy's own scores on the
    base model ("base model": core-set from nothing, BADGE on the base model, random spread over clusters); and how
    to say it."""
    strategy, cfg = acquisition.strategy, acquisition.cfg
    if policy == "base measure":
        key = strategy.measure_key(cfg.length_norm)
        return {"mu": acquisition.base_cache.get(model, tokenizer, candidates)[key]}, f"base-model {key}"
    mu = acquisition.scores(model, tokenizer, task, candidates, t)
    return (
        mu,
        "random"
        if not strategy.reads_model and not strategy.pick.needs_embeddings
        else f"{strategy.name} on the base model",
    )


def query_policy(strategy, cfg, acquisition, labeled: bool, trained: bool, random: bool = False) -> str:
    """How a query chooses: "random" (--random; a strategy that reads no model and picks by score; a measure over MC
    passes before any adapter, which would be 0 for every example), "k-means" (--cold-start kmeans before any
    label), "adapter" (the last round's adapter scores, as in `starlora run`), or before any adapter, where a fresh
    one would be the base model: "base measure" (the base model's uncertainty, cached) or "base model" (the
    strategy's own scores and pick on the base model: core-set, BADGE, random spread over clusters)."""
    cold = not labeled and cfg.cold_start == "kmeans"
    zero = strategy.reads_model and strategy.measure.needs_passes and not trained
    if random or not cold and ((not strategy.reads_model and not acquisition.needs_embeddings) or zero):
        return "random"
    if cold:
        return "k-means"
    if trained:
        return "adapter"
    return "base measure" if strategy.reads_model and not strategy.pick.needs_probs else "base model"


def check_can_query(project, labels, adapters, queries) -> None:
    waiting = pending(queries, labels, adapters)
    if waiting:
        raise StarloraError(
            f"{len(waiting)} example(s) of the last query ({project.query_file(queries[-1])}) have no "
            f"label yet; import them with starlora label {project.folder} FILE first"
        )
    if labels and len(adapters) < len(queries):
        raise StarloraError(
            f"the labels of round {len(queries) - 1} are not trained on yet; run starlora train {project.folder} first"
        )


def scoring_round(cfg, t: int) -> int:
    """Query t scores with round t-1's adapter; past the planned R rounds lambda stays at its last value."""
    return min(t - 1, cfg.rounds - 1)


def query_lambda(project, t: int) -> float | None:
    """lambda(t) that query t mixes with (STAR's dynamic strategies, once an adapter exists); None otherwise."""
    if t < 1:
        return None
    return project.strategy.combine.weight(scoring_round(project.cfg, t), project.cfg.rounds, project.cfg.schedule)


def guesses(model, tokenizer, task, settings, chosen: list[Example], ids: list[str], mu: dict | None) -> dict:
    """What the web page may show beside each chosen example: the score that chose it and, for closed-set tasks, the
    current model's answer (one deterministic forward pass over the chosen few; for an open task the answer would
    cost a generation per example, so none is kept)."""
    where = {i: j for j, i in enumerate(ids)}
    shown = {"scores": {ex.id: float(mu["mu"][where[ex.id]]) for ex in chosen} if mu else {}}
    if task.closed:
        found = score(model, tokenizer, task, chosen, settings=settings, desc="the model's guesses")
        shown["guesses"] = dict(zip(found.ids, found.predictions))
        shown["confidence"] = dict(zip(found.ids, found.probs.max(1).tolist()))  # the guess's probability
    return shown


# ---------------------------------------------------------------- label


def label(folder, path) -> int:
    """Import answers for the last query. Every row is checked first; any bad row: all are listed, none imported."""
    project = open_project(folder)
    answers = read_answers(path, project.cfg.answer_field)
    if not answers:
        raise StarloraError(f"{path}: no rows")
    with locked(project):
        labels = project.labels()
        new, repeated, problems = check_answers(project, labels, answers)
        if len(problems) == 1:
            raise StarloraError(f"{problems[0]}; nothing imported")
        if problems:
            shown = "\n  ".join(problems[:50]) + (f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else "")
            raise StarloraError(f"{path}: {len(problems)} bad row(s), nothing imported:\n  {shown}")
        append_jsonl(project.folder / "labels.jsonl", new)  # checked whole first; the lines there stay untouched
    left = len(pending(project.queries(), labels + new, project.adapters()))
    logger.info(
        f"{len(new)} label(s) imported"
        + (f", {repeated} already there" if repeated else "")
        + (f"; {left} example(s) of the query still unlabeled" if left else "; the query is fully labeled")
        + f"; {len(labels) + len(new)} labels in all"
    )
    return len(new)


def label_one(folder, id_: str, answer: str) -> bool:
    """One answer for the last query (the web page's label button), checked and written as `label` does. Returns
    False when the same answer was there already (a second tab, a retry); a different one is refused."""
    project = open_project(folder)
    with locked(project):
        labels = project.labels()
        new, _, problems = check_answers(project, labels, [("label", cleaned(id_), cleaned(answer))])
        if problems:
            raise StarloraError(problems[0].removeprefix("label: "))
        if new:
            append_jsonl(project.folder / "labels.jsonl", new)
    return bool(new)


def unlabel(folder, id_: str) -> None:
    """Take back one label of the last query (undo), as long as no adapter has been trained on that round."""
    project = open_project(folder)
    with locked(project):
        labels, queries = project.labels(), project.queries()
        if not any(r["id"] == id_ for r in labels):
            raise StarloraError(f"id {id_!r} has no label to undo")
        if not queries or id_ not in queries[-1]["ids"]:
            raise StarloraError(f"id {id_!r} is not in the last query; only its labels can be undone")
        if len(project.adapters()) >= len(queries):
            raise StarloraError(f"round {len(queries) - 1} is trained already; its labels can no longer be undone")
        write_jsonl(project.folder / "labels.jsonl", [r for r in labels if r["id"] != id_])


def locked(project):
    """One writer of labels.jsonl at a time across processes (the label command, each tab of the web page): the
    check against the labels so far and the write that follows it happen under this lock."""
    return FileLock(project.folder / LOCK)


LOCK = ".labels.lock"


def check_answers(project, labels, answers) -> tuple[list[dict], int, list[str]]:
    """(new label records, answers already there unchanged, problems) for (where, id, answer) rows."""
    task = project.task
    pool_ids = {r["id"] for r in project.pool()}
    already = {r["id"]: r["answer"] for r in labels}
    queries = project.queries()
    last = set(queries[-1]["ids"]) if queries else set()
    closed_round = queries and len(project.adapters()) >= len(queries)  # trained (--partial): its rest left out
    problems, new, repeated, seen = [], [], 0, set()
    for where, id_, answer in answers:
        if not id_:
            problems.append(f"{where}: no id")
        elif id_ not in pool_ids:
            problems.append(f"{where}: unknown id {id_!r} (not in the project's pool)")
        elif id_ in seen:
            problems.append(f"{where}: duplicate id {id_!r} (appears earlier in this file)")
        elif id_ not in last:
            problems.append(
                f"{where}: id {id_!r} was not in the last query (round {len(queries) - 1})"
                if queries
                else f"{where}: nothing has been queried yet"
            )
        elif not answer:
            problems.append(f"{where}: empty answer for id {id_!r}")
        else:
            seen.add(id_)
            try:
                gold = task.label(answer)
            except ValueError as e:
                problems.append(f"{where}: {e}")
                continue
            if id_ in already:
                if task.gold(already[id_]) != gold:
                    problems.append(f"{where}: id {id_!r} is already labeled {already[id_]!r}")
                else:
                    repeated += 1  # the same answer imported again (e.g. after a crash): nothing to do
                continue
            if closed_round:
                problems.append(
                    f"{where}: round {len(queries) - 1} is trained already (train --partial left its "
                    f"unlabeled examples out); label the next query instead"
                )
                continue
            new.append({"id": id_, "answer": answer, "round": len(queries) - 1})
    return new, repeated, problems


# ---------------------------------------------------------------- train


def train(
    folder, report_to=(), push_to_hub: str | None = None, command: str | None = None, partial: bool = False
) -> Path:
    """Train a fresh adapter (STAR's regulariser when the strategy has it) on every label so far. report_to: tracker
    names (one tracker run per training, named after the project and the round). The adapter gets a model card
    (`command`: what made it) and goes to the Hub repo `push_to_hub`. partial: train although the last query is
    partly labeled; its unlabeled examples are then left out of the loop, and train.json records how many."""
    project = open_project(folder)
    cfg, task, strategy = project.cfg, project.task, project.strategy
    labels, adapters, queries = project.labels(), project.adapters(), project.queries()
    check_can_train(project, labels, adapters, queries, partial)
    left_out = pending(queries, labels, adapters)
    prompts = {r["id"]: r["prompt"] for r in project.pool()}
    examples = [Example(r["id"], prompts[r["id"]], task.target(r["answer"]), task.gold(r["answer"])) for r in labels]
    settings, train_settings = method_settings(cfg, strategy)
    t = len(adapters)
    preflight(cfg, task)
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, quantization=cfg.quantization)
    step = Round(t, task, tokenizer, Acquisition(strategy, cfg, settings, None), train_settings)
    model = fresh_adapter(model, train_settings, cfg.quantization)
    stats = step.train(model, examples)
    record = {"round": t, "n_labels": len(labels), "train_loss": stats["loss"], "train_s": stats["seconds"]}
    if left_out:  # honest about a round trained before its query was fully labeled
        record["partial"] = {"asked": len(queries[-1]["ids"]), "unlabeled": len(left_out)}
    test = project.test()
    if test:
        result = step.evaluate(model, test)
        record |= {k: result[k] for k in ("accuracy", "ece", "brier") if k in result}
    stop_examples = [Example(i, prompts[i], "", None) for i in stop_set(project)]
    if stop_examples:  # the stopping criteria: this adapter's predictions on the stop set against the last one's
        last = adapters[-1] / "stop.json" if adapters else None
        figures, kept = step.stop_set(model, stop_examples, read_json(last) if last and last.exists() else None)
        record |= figures
    if report_to:
        tracking = Tracking(report_to, f"{project.folder.name}/round{t}", project.folder, dataclasses.asdict(cfg))
        for loss in stats["step_losses"]:
            tracking.training_step(loss)
        tracking.round(record)
        tracking.finish()
    final = project.folder / "adapters" / f"round_{t}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    earlier = [project.trained(a) for a in adapters]
    curve = [{"round": r["round"], "labeled": r["n_labels"], "accuracy": r.get("accuracy")} for r in earlier + [record]]
    write_card(tmp, cfg, curve, command, f"{project.folder.name}: round {t}")
    if stop_examples:
        write_json(tmp / "stop.json", kept)
    write_json(tmp / "train.json", record)
    with locked(project):  # a label trained on and undone meanwhile would make this adapter a lie
        now = {r["id"]: r["answer"] for r in project.labels()}
        if any(now.get(r["id"]) != r["answer"] for r in labels):
            shutil.rmtree(tmp, ignore_errors=True)
            raise StarloraError(
                f"{project.folder}: labels were undone or changed while round {t} trained; nothing "
                f"saved: starlora train again"
            )
        shutil.rmtree(final, ignore_errors=True)  # a half-renamed leftover without train.json
        tmp.rename(final)  # the round exists once this rename lands
    extra = f", held-out accuracy {record['accuracy']:.1f}%" if "accuracy" in record else ""
    logger.info(f"round {t}: adapter trained on {len(labels)} labels (loss {stats['loss']:.3f}{extra}): {final}")
    if push_to_hub:
        push(final, push_to_hub)
    return final


def check_can_train(project, labels, adapters, queries, partial: bool = False) -> None:
    if not labels:
        raise StarloraError(f"{project.folder} has no labels yet: starlora query, then starlora label, first")
    trained = project.trained(adapters[-1])["n_labels"] if adapters else 0
    if len(labels) == trained:
        raise StarloraError(f"no new labels since round {len(adapters) - 1}'s adapter ({trained} labels)")
    missing = pending(queries, labels, adapters)
    if missing and not partial:
        raise StarloraError(
            f"{len(missing)} of the {len(queries[-1]['ids'])} examples of round {len(queries) - 1}'s "
            f"query have no label yet: label them first, or train with --partial to leave them out "
            f"of the loop (recorded in the round's train.json)"
        )


# ---------------------------------------------------------------- status


def status(folder) -> str:
    project = open_project(folder)
    cfg = project.cfg
    labels, queries, adapters, pool = project.labels(), project.queries(), project.adapters(), project.pool()
    lines = [
        f"project {project.folder}: task {cfg.task}, strategy {cfg.strategy}, model {cfg.model}",
        f"pool {len(pool)}, labeled {len(labels)}, asked {sum(len(q['ids']) for q in queries)}, "
        f"awaiting labels {len(pending(queries, labels, adapters))}, held-out {len(project.test())}",
        "round  queried  labels  trained-on  held-out accuracy",
    ]
    by_round = {r: sum(1 for x in labels if x["round"] == r) for r in range(len(queries))}
    for t in range(max(len(queries), len(adapters))):
        info = project.trained(adapters[t]) if t < len(adapters) else {}
        acc = f"{info['accuracy']:.1f}%" if "accuracy" in info else ("n/a" if info else "-")
        partial = f"  (trained with {info['partial']['unlabeled']} unlabeled, left out)" if "partial" in info else ""
        lines.append(
            f"{t:>5}  {len(queries[t]['ids']) if t < len(queries) else 0:>7}  {by_round.get(t, 0):>6}  "
            f"{info.get('n_labels', '-'):>10}  {acc}{partial}"
        )
    lines += [f"round {t} query: {q.get('how', '?')}" for t, q in enumerate(queries)]
    if not queries:
        lines.append(f"first query: {first_query_rule(project.strategy, project.cfg)}")
    lines += stopping_advice(project, [project.trained(a) for a in adapters])
    lines.append("next: " + next_step(project, labels, queries, adapters))
    return "\n".join(lines)


def stopping_advice(project, records: list[dict]) -> list[str]:
    """The stopping criteria after the last trained round (records: the rounds' train.json), and whether the
    project's --stop-when rule holds ("you can stop")."""
    if not records or "stop_uncertainty" not in records[-1]:
        return []
    last, rule = records[-1], parse_stop_rule(project.cfg.stop_when)
    kappa = "n/a (first round)" if last["stop_kappa"] is None else f"{last['stop_kappa']:.3f}"
    lines = [
        f"stopping ({len(stop_set(project))}-example stop set): kappa with the previous round {kappa}, "
        f"mean uncertainty {last['stop_uncertainty']:.4f}"
    ]
    if rule:
        lines.append(f"you can stop: {rule} holds" if rule.holds(records) else f"{rule} does not hold yet")
    return lines


def stop_set(project) -> list[str]:
    """The project's stop set (--stop-set-size at init): seeded from the pool outside the labels given at init
    (init --labeled), never queried."""
    queries = project.queries() if project.cfg.stop_set_size else []
    given = set(queries[0]["ids"]) if queries and queries[0].get("initial") else set()
    return draw_stop_set([r["id"] for r in project.pool()], given, project.cfg.stop_set_size, project.cfg.seed)


def first_query_rule(strategy, cfg) -> str:
    """How the first query chooses, said once for status and the README: before any label the adapter would be the
    base model (B = 0), so the base model's uncertainty chooses; the simulation's round 0 is random instead."""
    if cfg.cold_start == "kmeans":
        return "k-means over the pool embeddings (--cold-start kmeans), the example nearest each centroid"
    if strategy.pick.first_query:
        return strategy.pick.first_query
    spread = (
        ""
        if cfg.diversity == "none"
        else f", spread over k-means clusters of the best {cfg.diversity_beta:g} x query size"
    )
    if not strategy.reads_model:
        return "random (the strategy is random)" + spread
    name = strategy.measure.name.upper()
    if strategy.measure.needs_passes:
        return (
            f"random in effect: {name} needs MC dropout on a trained adapter, so the base model's {name} is 0 for all"
        )
    return (
        f"the base model's {name} (a fresh adapter is the base model){spread}; "
        f"add --random to choose at random, as starlora run's round 0 does"
    )


def next_step(project, labels, queries, adapters) -> str:
    if pending(queries, labels, adapters):
        return f"label the query: starlora label {project.folder} {project.query_file(queries[-1])} (filled in)"
    if labels and len(adapters) < len(queries):
        return f"starlora train {project.folder}"
    return f"starlora query {project.folder} -n N"
