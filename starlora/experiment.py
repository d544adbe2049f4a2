"""The active-learning experiment, top to bottom: label an initial random set, then every round train a fresh adapter,
evaluate, and (except in the last round) score the candidates and query the best ones. Resumable round by round."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, metrics, parallel
from .acquisition import BaseCache, acquisition_scores
from .data import Example, load_data
from .errors import StarloraError
from .evaluation import evaluate
from .files import read_jsonl, write_json, write_jsonl
from .hardware import device, resolve_precision
from .models import load_model
from .scoring import ScoringSettings, base_model, score
from .strategies import get_strategy, measure_key, select
from .tasks import get_task
from .training import TrainSettings, attach_lora, train
from .uncertainty import mixing_weight


@dataclass
class RunConfig:
    """Everything that determines a run's results. Defaults are the paper protocol (DESIGN.md)."""

    task: str = "boolq"
    strategy: str = "star-me"
    model: str = "smollm2"
    seed: int = 0
    data: str = "embedded"
    train_file: str | None = None
    test_file: str | None = None
    template: str | None = None
    candidates: list[str] | None = None
    id_field: str = "id"
    answer_field: str = "answer"
    init_size: int = 500
    query_size: int = 500
    rounds: int = 10
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1.5e-4
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    mode: str = "lora"  # or "full"
    b_decay: float = 0.5  # beta, applied when the strategy uses STAR's regulariser (or --force-b-decay)
    force_b_decay: bool = False  # give baselines the decay too (off by default: the paper's baselines lack it)
    k: int = 3  # MC dropout passes
    schedule: str = "linear"
    normalisation: str = "minmax"
    length_norm: bool = False
    target: str = "own"  # or "reference" (the official code's gold-label scoring; simulation only)
    candidate_subsample: int | None = None  # score a random subset of U \ L per round (None: all)
    test_size: int | None = None  # evaluate on the first N test examples (None: all)
    probe_size: int = 100  # fixed pool subset whose uncertainty is recorded every round (paper Fig. 3)
    fewshot: int = 3  # demonstrations for the base-model few-shot evaluation (paper Fig. 2); 0 disables
    max_prompt_tokens: int = 128
    max_answer_tokens: int = 256
    max_new_tokens: int = 256
    score_batch_size: int = 32
    group_by_length: bool = True  # training batches of similar length (HF group_by_length)
    precision: str = "auto"  # bf16 autocast where the hardware has it (CUDA, AVX512-BF16/AMX CPUs), else fp32


PROTOCOLS = {
    "paper": {},
    # The offline demo: minutes on 2 CPU cores with the embedded model.
    "quick": dict(init_size=32, query_size=32, rounds=4, epochs=2, lr=1e-3, lora_r=16, candidate_subsample=256,
                  test_size=300, probe_size=64, max_new_tokens=96),
    # Meaningful on 2 cores in about an hour per strategy and seed.
    "cpu": dict(init_size=64, query_size=64, rounds=6, epochs=3, lr=5e-4, lora_r=32, candidate_subsample=768,
                test_size=1000, max_new_tokens=128),
}


def resolve(protocol: str = "paper", **overrides) -> RunConfig:
    if protocol not in PROTOCOLS:
        raise StarloraError(f"unknown --protocol {protocol!r}: choose {', '.join(PROTOCOLS)}")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise StarloraError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
    cfg = RunConfig(**{**PROTOCOLS[protocol], **{k: v for k, v in overrides.items() if v is not None}})
    for name in ("init_size", "query_size", "rounds", "epochs", "batch_size", "k", "lora_r", "score_batch_size"):
        if getattr(cfg, name) < 1:
            raise StarloraError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})")
    if cfg.mode not in ("lora", "full"):
        raise StarloraError(f"unknown --mode {cfg.mode!r}: choose lora or full")
    if cfg.target not in ("own", "reference"):
        raise StarloraError(f"unknown --target {cfg.target!r}: choose own or reference")
    mixing_weight(0, cfg.rounds, cfg.schedule)  # validates the schedule string
    resolve_precision(cfg.precision, device())  # validates the precision
    return cfg


def versions() -> dict:
    import peft
    import transformers

    return {"starlora": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "device": str(device()), "processes": parallel.world()[1]}


def prepare_folder(out: Path, cfg: RunConfig) -> list[dict]:
    """Create or reopen a run folder; returns the finished rounds. A different configuration is refused.

    Every process checks before any process writes (the barrier), so all of them raise the same error or none."""
    wanted = dataclasses.asdict(cfg)
    config_file = out / "config.json"
    exists = config_file.exists()
    if exists:
        stored = json.loads(config_file.read_text())["config"]
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if diff:
            shown = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in diff[:4])
            raise StarloraError(f"{out} holds a run with another configuration ({shown}); use another --out")
    elif out.exists() and any(out.iterdir()):
        raise StarloraError(f"{out} is not empty and holds no starlora run; use another --out")
    parallel.barrier()
    if not exists:
        if parallel.is_main():
            out.mkdir(parents=True, exist_ok=True)
            write_json(config_file, {"config": wanted, "versions": versions()})
        parallel.barrier()
    return read_jsonl(out / "rounds.jsonl")


def method_settings(cfg: RunConfig, strategy) -> tuple[ScoringSettings, TrainSettings]:
    """Scoring and training settings of a configuration (shared by `run` and the human-loop project)."""
    precision = resolve_precision(cfg.precision, device())
    decay = (strategy.b_decay or cfg.force_b_decay) and cfg.mode == "lora"
    scoring = ScoringSettings(cfg.score_batch_size, cfg.max_prompt_tokens, cfg.max_answer_tokens, cfg.max_new_tokens,
                              precision)
    training = TrainSettings(
        mode=cfg.mode, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, lr=cfg.lr,
        epochs=cfg.epochs, batch_size=cfg.batch_size, b_decay=cfg.b_decay if decay else 0.0, seed=cfg.seed,
        max_prompt_tokens=cfg.max_prompt_tokens, max_answer_tokens=cfg.max_answer_tokens,
        group_by_length=cfg.group_by_length, precision=precision)
    return scoring, training


def uses_mc_dropout(cfg: RunConfig, strategy) -> bool:
    return strategy.mc_dropout and cfg.mode == "lora" and cfg.lora_dropout > 0


def fewshot_examples(examples: list[Example], demos: list[Example]) -> list[Example]:
    """The test examples with labeled demonstrations prepended (base model prompted with a few labels)."""
    prefix = "".join(f"{d.prompt} {d.target}\n\n" for d in demos)
    return [dataclasses.replace(ex, prompt=prefix + ex.prompt) for ex in examples]


def run(cfg: RunConfig, out: str | Path, log=print) -> dict:
    """Run (or resume) one AL experiment into `out`; returns the summary."""
    out = Path(out)
    if not parallel.is_main():
        log = _quiet
    task = get_task(cfg.task, cfg.candidates, cfg.template, user_files=bool(cfg.train_file or cfg.test_file))
    strategy = get_strategy(cfg.strategy, task.closed)
    data = load_data(task, cfg.data, cfg.train_file, cfg.test_file, cfg.id_field, cfg.answer_field)
    if cfg.init_size + cfg.query_size * (cfg.rounds - 1) > len(data.pool):
        raise StarloraError(f"--init-size {cfg.init_size} + {cfg.rounds - 1} queries of {cfg.query_size} need "
                            f"{cfg.init_size + cfg.query_size * (cfg.rounds - 1)} pool examples; the pool has "
                            f"{len(data.pool)}")
    test = data.test[: cfg.test_size] if cfg.test_size else data.test
    finished = prepare_folder(out, cfg)
    if len(finished) >= cfg.rounds and (out / "summary.json").exists():
        log(f"{out}: all {cfg.rounds} rounds already finished")
        return json.loads((out / "summary.json").read_text())
    lora = cfg.mode == "lora"
    mc = uses_mc_dropout(cfg, strategy)
    if not lora and (strategy.b_decay or strategy.mc_dropout):
        log("note: full fine-tuning: STAR's B decay and LoRA MC dropout do not apply (no LoRA); scoring is deterministic")
    if cfg.target == "reference":
        log("warning: target=reference reads the pool's gold labels (reproduces the official code; simulation only)")

    model, tokenizer = load_model(cfg.model)
    pool_by_id = {ex.id: ex for ex in data.pool}
    pool_ids = [ex.id for ex in data.pool]
    rng = np.random.default_rng(cfg.seed)
    initial = [pool_ids[i] for i in rng.choice(len(pool_ids), cfg.init_size, replace=False)]
    probe_ids = [pool_ids[i] for i in rng.choice(len(pool_ids), min(cfg.probe_size, len(pool_ids)), replace=False)]
    settings, train_settings = method_settings(cfg, strategy)
    cache = BaseCache(out / "base_scores.json", cfg.model, f"{task.name}|{cfg.target}")
    key = measure_key(strategy, cfg.length_norm) or ("me_norm" if cfg.length_norm else "me")
    (out / "scores").mkdir(exist_ok=True)
    (out / "probe").mkdir(exist_ok=True)
    probe = [pool_by_id[i] for i in probe_ids]
    if not (out / "probe" / "base.json").exists():
        with base_model(model):
            base_probe = score(model, tokenizer, task, probe, settings=settings, desc="probe (base)")
        write_json(out / "probe" / "base.json", dict(zip(probe_ids, base_probe.measures[key].tolist())))
    if not lora and strategy.needs_base:  # the full-tuned model has no adapter to switch off: cache mu_b up front
        cache.get(model, tokenizer, task, data.pool, settings, cfg.target == "reference")
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if not lora else None

    records = list(finished)
    labeled = [i for r in records for i in r["added"]]
    added = records[-1]["selected"] if records else initial
    for t in range(len(records), cfg.rounds):
        labeled += added
        times = {}
        start = time.time()
        if lora:
            current = attach_lora(model, train_settings)
        else:
            model.load_state_dict(base_state)
            current = model
        stats = train(current, tokenizer, [pool_by_id[i] for i in labeled], train_settings,
                      desc=f"round {t} training")
        times["train_s"] = time.time() - start
        start = time.time()
        result = evaluate(current, tokenizer, task, test, settings, desc=f"round {t} evaluating")
        times["eval_s"] = time.time() - start
        probe_scores = score(current, tokenizer, task, probe, settings=settings, desc=f"round {t} probe")
        write_json(out / "probe" / f"round_{t}.json", dict(zip(probe_ids, probe_scores.measures[key].tolist())))
        selected, lam = [], None
        if t < cfg.rounds - 1:
            start = time.time()
            taken = set(labeled)
            candidates = [ex for ex in data.pool if ex.id not in taken]
            if cfg.candidate_subsample and len(candidates) > cfg.candidate_subsample:
                sub = np.random.default_rng([cfg.seed, t, 1]).choice(len(candidates), cfg.candidate_subsample,
                                                                   replace=False)
                candidates = [candidates[i] for i in sorted(sub)]
            mu = acquisition_scores(
                strategy, current, tokenizer, task, candidates, t=t, rounds=cfg.rounds,
                base_cache=cache, passes=cfg.k if mc else 1,
                length_norm=cfg.length_norm, schedule=cfg.schedule, normalisation=cfg.normalisation,
                reference=cfg.target == "reference", seed=cfg.seed, settings=settings)
            ids = [ex.id for ex in candidates]
            selected = select(ids, mu["mu"], cfg.query_size, taken, seed=cfg.seed * 1000 + t)
            lam = mixing_weight(t, cfg.rounds, cfg.schedule) if strategy.combine == "mix" else None
            write_jsonl(out / "scores" / f"round_{t}.jsonl",
                        [{"id": i, **{k: _num(v[j]) for k, v in mu.items()}} for j, i in enumerate(ids)])
            times["score_s"] = time.time() - start
        if t == cfg.rounds - 1 and lora and parallel.is_main():
            current.save_pretrained(out / "adapter")
        record = {"round": t, "n_labeled": len(labeled), "accuracy": result["accuracy"], "added": added,
                  "selected": selected, "lambda": lam, "train_loss": stats["loss"], **times,
                  **{k: result[k] for k in ("ece", "brier", "wrong_confidence") if k in result}}
        records.append(record)
        write_jsonl(out / "rounds.jsonl", records)  # the round is finished once this rename lands
        extra = f", ECE {result['ece']:.3f}" if "ece" in result else ""
        log(f"round {t}: {len(labeled)} labeled, accuracy {result['accuracy']:.1f}%{extra}, loss {stats['loss']:.3f}, "
            f"{sum(times.values()):.0f}s")
        if lora:
            model = current.unload()  # back to the untouched base model; next round attaches a fresh adapter
        added = selected

    summary = {"task": task.name, "strategy": strategy.name, "seed": cfg.seed, "model": cfg.model,
               "curve": [r["accuracy"] for r in records], "n_labeled": [r["n_labeled"] for r in records],
               "auc": metrics.auc([r["accuracy"] for r in records]), "final_accuracy": records[-1]["accuracy"],
               "probe_measure": key}
    if task.closed and cfg.fewshot > 0:
        if not lora:
            model.load_state_dict(base_state)
        demos = [pool_by_id[i] for i in initial[: cfg.fewshot]]
        wide = dataclasses.replace(settings, max_prompt_tokens=cfg.max_prompt_tokens * (cfg.fewshot + 1))
        with base_model(model):
            few = evaluate(model, tokenizer, task, fewshot_examples(test, demos), wide, desc="few-shot base")
        summary["fewshot"] = {k: few[k] for k in ("accuracy", "ece", "brier", "wrong_confidence")}
    write_json(out / "summary.json", summary)
    log(f"{out}: AUC {summary['auc']:.2f}, final accuracy {summary['final_accuracy']:.1f}%")
    return summary


def _quiet(*_):
    pass


def _num(x):
    x = float(x)
    return None if np.isnan(x) else x


def run_seeds(cfg: RunConfig, seeds: list[int], out: str | Path, log=print) -> list[dict]:
    """One sub-folder per seed when several are given."""
    if len(seeds) == 1:
        return [run(dataclasses.replace(cfg, seed=seeds[0]), out, log)]
    return [run(dataclasses.replace(cfg, seed=s), Path(out) / f"seed{s}", log) for s in seeds]
