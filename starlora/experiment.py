"""The active-learning experiment, top to bottom: label an initial random set, then every round train a fresh adapter,
evaluate, and (except in the last round) score the candidates and query the best ones. Resumable round by round."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics, parallel
from .acquisition import Acquisition, BaseScoreCache, subsample
from .card import push, write_card
from .config import (
    LEGACY,
    PROTOCOLS,
    RESUMABLE_CHANGES,
    RunConfig,
    parse_class_ratio,
    resolve,
    uses_mc_dropout,
    variant,
)
from .data import Example, imbalanced_pool, load_data
from .diversity import kmeans_representatives
from .embeddings import EmbeddingCache
from .errors import StarloraError
from .evaluation import evaluate
from .files import RESUMED_ROUND, check_out_folder, read_json, read_rounds, write_json, write_jsonl
from .hardware import machine
from .masks import adapter_disabled
from .memory import preflight
from .models import load_model
from .provenance import ORACLE_NOTE, code_revision, versions
from .rounds import Round, fresh_adapter, method_settings
from .scoring import ScoringSettings, score
from .stopping import draw_stop_set, parse_stop_rule
from .strategies import Strategy, get_strategy
from .tasks import Task, get_task
from .tokens import join
from .tracking import Tracking, run_name
from .training import TrainSettings, attach_lora

logger = logging.getLogger(__name__)
__all__ = ["PROTOCOLS", "RunConfig", "resolve", "run", "run_seeds", "method_settings", "uses_mc_dropout"]


RUN_FILES = (
    "config.json",
    "rounds.jsonl",
    "summary.json",
    "base_scores.jsonl",
    "base_scores.json",
    "embeddings.jsonl",
    "probe",
    "stop",
    "scores",
    "adapter",
)  # base_scores.json: the base-score cache in its old format


def folder_resumes(out: Path, cfg: RunConfig) -> bool:
    """Does this run resume `out` (True: it holds finished rounds of this very configuration) or start there afresh
    (False)? Raises when `out` cannot take it; writes nothing.

    A folder of another configuration is refused once it has a finished round; before that it is taken over (a
    corrected typo must not be locked out by the failed first attempt). Every process checks before any process
    writes, so all of them raise the same error or none."""
    try:
        check_out_folder(out)
        config_file = out / "config.json"
        if config_file.exists():
            stored = {**LEGACY, **read_json(config_file, {"config": dict})["config"]}
            wanted = dataclasses.asdict(cfg)
            diff = sorted(k for k in (set(stored) | set(wanted)) - RESUMABLE_CHANGES if stored.get(k) != wanted.get(k))
            if diff and read_rounds(out):
                shown = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in diff[:4])
                hint = " (precision 'auto' resolves per machine: pass the stored value)" if "precision" in diff else ""
                raise StarloraError(f"{out} holds a run with another configuration ({shown}){hint}; use another --out")
            return not diff
        if out.exists() and any(out.iterdir()):
            raise StarloraError(f"{out} is not empty and holds no starlora run; use another --out")
        return False
    except OSError as e:
        raise StarloraError(f"--out {out}: cannot use this folder ({e.strerror or e})") from None
    except (KeyError, TypeError):
        raise StarloraError(f"{out / 'config.json'}: not a starlora configuration; use another --out") from None


def open_folder(out: Path, cfg: RunConfig, resume: bool) -> list[dict]:
    """Create the run folder (or clear one holding no finished round of another configuration); returns the
    finished rounds."""
    if parallel.is_main() and not resume:
        try:
            for name in RUN_FILES:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StarloraError(f"--out {out}: cannot write here ({e.strerror or e})") from None
        write_json(out / "config.json", {"config": dataclasses.asdict(cfg), "versions": versions()})
    elif parallel.is_main() and not (out / "rounds.jsonl").exists():  # nothing ran yet: this code starts the run
        write_json(out / "config.json", {"config": dataclasses.asdict(cfg), "versions": versions()})
    parallel.barrier()
    return read_rounds(out, RESUMED_ROUND) if resume else []


def draw_probe_and_initial(pool_ids: list[str], cfg: RunConfig) -> tuple[list[str], list[str]]:
    """The probe first, then the initial labeled set from the rest: the probe (paper Fig. 3's fixed subset) is never
    labeled, so its uncertainties are those of unseen examples in every round."""
    rng = np.random.default_rng(cfg.seed)
    probe = [pool_ids[i] for i in rng.choice(len(pool_ids), cfg.probe_size, replace=False)]
    kept = set(probe)
    rest = [i for i in pool_ids if i not in kept]
    return probe, [rest[i] for i in rng.choice(len(rest), cfg.init_size, replace=False)]


def cold_start(embeddings: EmbeddingCache, model, tokenizer, pool: list[Example], probe: set, cfg) -> list[str]:
    """The initial set by diversity: the examples nearest the init_size k-means centroids of the base model's prompt
    embeddings, over the pool without the probe (a seeded --candidate-subsample of it when set)."""
    size = max(cfg.candidate_subsample, cfg.init_size) if cfg.candidate_subsample else None
    rest = subsample([ex for ex in pool if ex.id not in probe], size, cfg.seed, 0)
    with adapter_disabled(model):
        vectors = embeddings.get(model, tokenizer, rest)
    return [rest[i].id for i in kmeans_representatives(vectors, cfg.init_size, cfg.seed)]


def fewshot_examples(examples: list[Example], demos: list[Example]) -> list[Example]:
    """The test examples with labeled demonstrations prepended (base model prompted with a few labels)."""
    prefix = "".join(join(d.prompt, d.target) + "\n\n" for d in demos)
    return [dataclasses.replace(ex, prompt=prefix + ex.prompt) for ex in examples]


@dataclass
class Experiment:
    """What setup() prepares for the rounds: the run's data, model and method pieces, all fixed for the run."""

    cfg: RunConfig
    out: Path
    task: Task
    strategy: Strategy
    pool: dict[str, Example]
    test: list[Example]
    model: torch.nn.Module
    tokenizer: object
    settings: ScoringSettings
    training: TrainSettings
    acquisition: Acquisition
    probe: list[Example]
    initial: list[str]
    measure: str  # what the probe and the stop set record
    base_state: dict | None  # the weights each round starts from: full fine-tuning's base, a sharded adapter's init
    tracking: Tracking | None = None  # --report-to
    stop: list[Example] = dataclasses.field(default_factory=list)  # the stop set: never labeled, apart from the probe
    lora_init: dict | None = None  # the adapter's initial weights, drawn on the fp32 base (see fresh_model)

    def fresh_model(self):
        """This round's model to train: a fresh adapter on the frozen base, or the starting weights restored (a
        sharded model keeps its adapter, whose initial weights are what attach_lora draws every round).

        Under bf16 autocast on one process the frozen linear weights are kept in bf16 from the first round on
        (hardware.bf16_frozen_linears: the same numbers, no cast per call). PEFT would round a new adapter's initial
        weights to that dtype, so later rounds restore the ones the first round drew on the fp32 base."""
        if self.base_state is None:
            current = fresh_adapter(self.model, self.training, self.cfg.quantization, self.lora_init)
            if self.lora_init is None:  # what the cast leaves alone: the adapter's weights, as attach_lora drew them
                self.lora_init = {k: v.detach().clone() for k, v in current.state_dict().items() if "lora_" in k}
            return current
        if parallel.sharded():
            parallel.load_full_state(self.model, self.base_state)
        else:
            self.model.load_state_dict(self.base_state)
        return self.model

    def round(self, t: int) -> Round:
        return Round(t, self.task, self.tokenizer, self.acquisition, self.training)

    def release(self, current) -> None:
        if self.base_state is None:
            self.model = current.unload()  # back to the untouched base model; next round attaches a fresh adapter


def run(
    cfg: RunConfig,
    out: str | Path,
    *,
    dry_run: bool = False,
    on_round=None,
    report_to=(),
    push_to_hub: str | None = None,
    command: str | None = None,
) -> dict | None:
    """Run (or resume) one AL experiment into `out`, as `starlora run` does.

    Args:
        cfg: the whole configuration, from `resolve` (validated, precision and dtype resolved).
        out: the run folder; a folder holding an unfinished run of the same configuration is resumed.
        dry_run: check everything (data, model, folder) and return None having written nothing.
        on_round: called with no arguments after each finished round.
        report_to: tracker names (tracking.parse_report_to); a resumed run's tracker run starts where it resumes.
        push_to_hub: a Hub repo for the final adapter (with its model card, card.py).
        command: what made the run, recorded in the model card.

    Returns:
        The summary, also written to `out/summary.json` (per-round accuracies, AUC, RIPL, the code revision).
    """
    out = Path(out)
    prepared = setup(cfg, out, dry_run)
    if not isinstance(prepared, Experiment):  # a dry run, or a run finished before
        return prepared
    records = read_rounds(out, RESUMED_ROUND)
    if report_to:
        prepared.tracking = Tracking(
            report_to, run_name(cfg.task, variant(cfg), cfg.seed), out, dataclasses.asdict(cfg)
        )
        prepared.tracking.step = sum(r.get("train_steps", 0) for r in records)
    labeled = [i for r in records for i in r["added"]]
    added = records[-1]["selected"] if records else prepared.initial
    stopped = bool(records and records[-1].get("stopped"))  # a crash after the stopping round: it stays stopped
    for t in range(len(records), len(records) if stopped else cfg.rounds):
        labeled += added
        records.append(run_round(prepared, t, labeled, added, records))
        write_jsonl(out / "rounds.jsonl", records)  # the round is finished once this rename lands
        if prepared.tracking:
            prepared.tracking.round(records[-1])
        if on_round:
            on_round()
        if records[-1].get("stopped"):
            logger.info(f"{out}: --stop-when {cfg.stop_when} holds after round {t}: stopping early")
            break
        added = records[-1]["selected"]
    summary = summarise(prepared, records)
    if cfg.mode == "lora" and parallel.is_main():
        curve = [{"round": r["round"], "labeled": r["n_labeled"], "accuracy": r["accuracy"]} for r in records]
        write_card(out / "adapter", cfg, curve, command, f"{cfg.task} / {variant(cfg)} / seed {cfg.seed}")
        if push_to_hub:
            push(out / "adapter", push_to_hub)
    if prepared.tracking:
        prepared.tracking.summary(summary)
        prepared.tracking.finish()
    return summary


def run_pool(cfg: RunConfig, pool: list[Example]) -> list[Example]:
    """The pool a run draws from: the data's, with one class made rare (--pool-class-ratio, drawn per seed, before
    anything else is drawn, so the initial set reflects the imbalance), refused when it cannot hold the initial set,
    the queries, the probe and the stop set. `run` and `sweep`'s check before the first run both use it."""
    if cfg.pool_class_ratio:
        pool = imbalanced_pool(pool, *parse_class_ratio(cfg.pool_class_ratio), cfg.seed)
    needed = cfg.init_size + cfg.query_size * (cfg.rounds - 1)
    if needed + cfg.probe_size + cfg.stop_set_size > len(pool):
        raise StarloraError(
            f"--init-size {cfg.init_size} + {cfg.rounds - 1} queries of {cfg.query_size} need {needed} "
            f"pool examples besides the --probe-size {cfg.probe_size} probe and the --stop-set-size "
            f"{cfg.stop_set_size} stop set (never labeled); the pool has {len(pool)}"
        )
    return pool


def setup(cfg: RunConfig, out: Path, dry_run: bool = False) -> Experiment | dict | None:
    """Load and check everything, then (not in a dry run) open the folder and record the base model's probe."""
    task = get_task(cfg.task, cfg.candidates, cfg.template, user_files=bool(cfg.train_file or cfg.test_file))
    strategy = get_strategy(cfg.strategy, task.closed)
    data = load_data(task, cfg.data, cfg.train_file, cfg.test_file, cfg.id_field, cfg.answer_field)
    data = dataclasses.replace(data, pool=run_pool(cfg, data.pool))
    if cfg.pool_class_ratio:
        counts = metrics.class_counts([ex.gold for ex in data.pool], task.candidates)
        logger.info(
            f"--pool-class-ratio {cfg.pool_class_ratio}: a pool of {len(data.pool)}: "
            + ", ".join(f"{c} {n} ({100 * n / len(data.pool):.1f}%)" for c, n in counts.items())
        )
    test = data.test[: cfg.test_size] if cfg.test_size else data.test
    resume = folder_resumes(out, cfg)
    done = read_rounds(out, RESUMED_ROUND) if resume else []
    if (len(done) >= cfg.rounds or done and done[-1].get("stopped")) and (out / "summary.json").exists():
        logger.info(f"{out}: all {cfg.rounds} rounds already finished")
        return read_json(out / "summary.json")
    lora = cfg.mode == "lora"
    if not lora and (strategy.b_decay or strategy.mc_dropout):
        logger.info(
            "note: full fine-tuning: STAR's B decay and LoRA MC dropout do not apply (no LoRA); "
            "scoring is deterministic"
        )
    if cfg.target == "reference":
        logger.warning("target=reference reads the pool's gold labels (reproduces the official code; simulation only)")

    if parallel.sharded() and cfg.quantization != "none":
        raise StarloraError(
            "FSDP (accelerate launch --use_fsdp) does not shard 4/8-bit weights; use --quantization "
            "none, or plain data parallelism (--multi_gpu)"
        )
    if parallel.sharded() and not lora:
        raise StarloraError(
            "FSDP (accelerate launch --use_fsdp) shards LoRA runs only; use --mode lora, or plain "
            "data parallelism (--multi_gpu) for --mode full"
        )
    preflight(cfg, task)  # before any weights load
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, quantization=cfg.quantization)
    if dry_run:
        logger.info(json.dumps(dataclasses.asdict(cfg), indent=2))
        logger.info(
            f"{out}: configuration, data ({len(data.pool)} pool, {len(test)} test) and model {cfg.model} "
            f"check out; {'would resume' if resume else 'would start'} this run"
        )
        return None
    open_folder(out, cfg, resume)  # nothing is written before the data and the model have loaded
    pool = {ex.id: ex for ex in data.pool}
    probe_ids, initial = draw_probe_and_initial([ex.id for ex in data.pool], cfg)
    stop_ids = draw_stop_set([ex.id for ex in data.pool], set(probe_ids) | set(initial), cfg.stop_set_size, cfg.seed)
    settings, training = method_settings(cfg, strategy)
    base_state = None
    if not lora:
        base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    elif parallel.sharded():  # sharding is done once: the adapter stays and is reset every round
        model = attach_lora(model, training)
        base_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
        held, total = parallel.local_parameters(parallel.shard(model))
        logger.info(f"FSDP over {parallel.world()[1]} processes: this one holds {held:,} of {total:,} parameters")
    reference = cfg.target == "reference"
    cache = BaseScoreCache(out / "base_scores.jsonl", cfg.model, task, settings, reference=reference)
    measure = strategy.one_pass_measure(cfg.length_norm)
    (out / "scores").mkdir(exist_ok=True)
    (out / "probe").mkdir(exist_ok=True)
    probe = [pool[i] for i in probe_ids]
    if probe and not (out / "probe" / "base.json").exists():
        with adapter_disabled(model):
            base_probe = score(model, tokenizer, task, probe, settings=settings, desc="probe (base)")
        write_json(out / "probe" / "base.json", dict(zip(probe_ids, base_probe.measures[measure].tolist())))
    acquisition = Acquisition(strategy, cfg, settings, cache, reference)
    if acquisition.needs_embeddings or cfg.cold_start == "kmeans":
        acquisition.embeddings = EmbeddingCache(out / "embeddings.jsonl", cfg.model, task, settings)
    if cfg.cold_start == "kmeans":
        initial = cold_start(acquisition.embeddings, model, tokenizer, data.pool, set(probe_ids) | set(stop_ids), cfg)
    if not lora:  # the full-tuned model has no adapter to switch off: what the base model gives, up front
        unprobed = [ex for ex in data.pool if ex.id not in set(probe_ids)]
        for needed in (cache if strategy.needs_base else None, acquisition.embeddings):
            if needed:
                needed.get(model, tokenizer, unprobed)
    if stop_ids:
        (out / "stop").mkdir(exist_ok=True)
    return Experiment(
        cfg,
        out,
        task,
        strategy,
        pool,
        test,
        model,
        tokenizer,
        settings,
        training,
        acquisition,
        probe,
        initial,
        measure,
        base_state,
        stop=[pool[i] for i in stop_ids],
    )


def run_round(x: Experiment, t: int, labeled: list[str], added: list[str], previous: list[dict] = ()) -> dict:
    """Round t: train a fresh model on the labeled set, evaluate, record the probe and the stop set and (except in
    the last round, or when --stop-when holds after `previous` rounds and this one) score the candidates and select
    the next query. Returns the round's record."""
    cfg, out, times, step = x.cfg, x.out, {}, x.round(t)
    start = time.time()
    current = x.fresh_model()
    stats = step.train(current, [x.pool[i] for i in labeled])
    times["train_s"] = time.time() - start
    for loss in stats["step_losses"] if x.tracking else ():
        x.tracking.training_step(loss)
    start = time.time()
    result = step.evaluate(current, x.test)
    times["eval_s"] = time.time() - start
    probe_ids = [ex.id for ex in x.probe]
    if x.probe:
        probe = score(current, x.tokenizer, x.task, x.probe, settings=x.settings, desc=f"round {t} probe")
        write_json(out / "probe" / f"round_{t}.json", dict(zip(probe_ids, probe.measures[x.measure].tolist())))
    figures = stop_set_figures(x, step, current)
    rule = parse_stop_rule(cfg.stop_when)
    # the last planned round ends the run anyway: "stopped" means ended early
    stopped = bool(rule and t < cfg.rounds - 1 and rule.holds([*previous, {"round": t, **figures}]))
    selected, lam = [], None
    if t < cfg.rounds - 1 and not stopped:
        start = time.time()
        # the probe (uncertainty-gap analysis) and the stop set are never labeled
        taken = set(labeled) | set(probe_ids) | {ex.id for ex in x.stop}
        candidates = subsample(
            [ex for ex in x.pool.values() if ex.id not in taken], cfg.candidate_subsample, cfg.seed, t
        )
        selected, mu, lam = step.query(current, candidates, [x.pool[i] for i in labeled], cfg.query_size)
        ids = [ex.id for ex in candidates]
        write_scores(out / "scores" / f"round_{t}.jsonl", ids, mu)
        times["score_s"] = time.time() - start
    if (t == cfg.rounds - 1 or stopped) and cfg.mode == "lora":
        state = parallel.full_state(current) if parallel.sharded() else None  # every process takes part in gathering
        if parallel.is_main():
            current.save_pretrained(out / "adapter", state_dict=state)
    extra = (f", {cfg.metric} {result[cfg.metric]:.1f}%" if cfg.metric != "accuracy" else "") + (
        f", ECE {result['ece']:.3f}" if "ece" in result else ""
    )
    classes = (
        {"labeled_classes": metrics.class_counts([x.pool[i].gold for i in labeled], x.task.candidates)}
        if x.task.closed
        else {}
    )
    logger.info(
        f"round {t}: {len(labeled)} labeled, accuracy {result['accuracy']:.1f}%{extra}, "
        f"loss {stats['loss']:.3f}, {sum(times.values()):.0f}s"
    )
    x.release(current)
    return {
        "round": t,
        "n_labeled": len(labeled),
        "accuracy": result["accuracy"],
        "added": added,
        "selected": selected,
        "lambda": lam,
        "train_loss": stats["loss"],
        "train_steps": stats["steps"],
        **times,
        **{
            k: result[k]
            for k in ("macro_f1", "balanced_accuracy", "ece", "brier", "wrong_confidence", "truncated")
            if k in result
        },
        **classes,
        **figures,
        **({"stopped": True} if stopped else {}),
    }


def stop_set_figures(x: Experiment, step: Round, current) -> dict:
    """The round's stopping figures (Round.stop_set); each round's predictions are kept in stop/round_T.json for the
    next round's kappa (and a resumed run's)."""
    if not x.stop:
        return {}
    t, previous = step.t, x.out / "stop" / f"round_{step.t - 1}.json"
    figures, kept = step.stop_set(current, x.stop, read_json(previous) if t and previous.exists() else None)
    write_json(x.out / "stop" / f"round_{t}.json", kept)
    return figures


def summarise(x: Experiment, records: list[dict]) -> dict:
    """AUC and the curve of --metric ("metric": accuracy, or macro_f1 / balanced_accuracy, in %; final_accuracy is
    accuracy whatever the metric), plus (closed-set tasks) the base model prompted with a few labels (paper Fig. 2)."""
    cfg = x.cfg
    curve = [r[cfg.metric] for r in records]
    summary = {
        "task": x.task.name,
        "strategy": x.strategy.name,
        "seed": cfg.seed,
        "model": cfg.model,
        "metric": cfg.metric,
        "curve": curve,
        "n_labeled": [r["n_labeled"] for r in records],
        "auc": metrics.auc(curve),
        "final_accuracy": records[-1]["accuracy"],
        "probe_measure": x.measure,
    }
    if cfg.pool_class_ratio:
        summary["pool_classes"] = metrics.class_counts([ex.gold for ex in x.pool.values()], x.task.candidates)
    if records[-1].get("stopped"):
        summary["stopped_at"] = records[-1]["round"]  # --stop-when held: the curve ends here
    if x.task.closed and cfg.fewshot > 0:
        if cfg.mode != "lora":
            x.model.load_state_dict(x.base_state)
        demos = [x.pool[i] for i in x.initial[: cfg.fewshot]]
        wide = dataclasses.replace(x.settings, max_prompt_tokens=cfg.max_prompt_tokens * (cfg.fewshot + 1))
        with adapter_disabled(x.model):
            few = evaluate(x.model, x.tokenizer, x.task, fewshot_examples(x.test, demos), wide, desc="few-shot base")
        summary["fewshot"] = {k: few[k] for k in ("accuracy", "ece", "brier", "wrong_confidence")}
    summary["revision"] = code_revision()  # the code that finished the run (config.json: the code that started it)
    summary["machine"] = machine()  # likewise the machine that finished it
    if cfg.target == "reference":
        summary["oracle"] = ORACLE_NOTE
    write_json(x.out / "summary.json", summary)
    logger.info(f"{x.out}: AUC ({cfg.metric}) {summary['auc']:.2f}, final accuracy {summary['final_accuracy']:.1f}%")
    return summary


def write_scores(path, ids: list[str], mu: dict[str, np.ndarray]) -> None:
    """A round's candidate scores, one line per candidate, streamed to the file (no pool-sized string in memory)."""
    write_jsonl(path, ({"id": i, **{k: _num(v[j]) for k, v in mu.items()}} for j, i in enumerate(ids)))


def _num(x):
    x = float(x)
    return None if np.isnan(x) else x


def run_seeds(cfg: RunConfig, seeds: list[int], out: str | Path, dry_run: bool = False, **options) -> list[dict]:
    """One sub-folder per seed when several are given; options go to every run (report_to, command; push_to_hub
    only with one seed: one repo holds one adapter)."""
    if len(seeds) == 1:
        return [run(dataclasses.replace(cfg, seed=seeds[0]), out, dry_run=dry_run, **options)]
    if options.get("push_to_hub"):
        raise StarloraError("--push-to-hub takes one seed (one repo holds one adapter); push each seed's run alone")
    return [run(dataclasses.replace(cfg, seed=s), Path(out) / f"seed{s}", dry_run=dry_run, **options) for s in seeds]
