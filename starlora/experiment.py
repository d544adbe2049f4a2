"""The active-learning experiment, top to bottom: label an initial random set, then every round train a fresh adapter,
evaluate, and (except in the last round) score the candidates and query the best ones. Resumable round by round."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
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
from .scoring import ScoringSettings, base_model, join, score
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
    "quick": dict(init_size=8, query_size=8, rounds=4, epochs=3, lr=1e-3, lora_r=16, candidate_subsample=128,
                  test_size=300, probe_size=32, max_new_tokens=96),
    # Meaningful on 2 cores in about an hour per strategy and seed.
    "cpu": dict(init_size=64, query_size=64, rounds=6, epochs=3, lr=5e-4, lora_r=32, candidate_subsample=768,
                test_size=1000, max_new_tokens=128),
    # The committed study (results/): embedded SST-2, 8 -> 48 labels, where the 135M model's curve still rises
    # (measured: 66% at 16 labels, 82% at 32); a few minutes per run on 2 cores.
    "sst2": dict(task="sst2", init_size=8, query_size=8, rounds=6, epochs=3, lr=1e-3, lora_r=16,
                 candidate_subsample=256, probe_size=64),
}


def resolve(protocol: str = "paper", **overrides) -> RunConfig:
    """Paper defaults < protocol < overrides, validated whole (nothing is written before this passes), with
    precision 'auto' resolved for this machine so a resume elsewhere cannot silently switch it."""
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise StarloraError(f"unknown --protocol {protocol!r}: choose {', '.join(PROTOCOLS)}")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise StarloraError(f"unknown configuration key(s): {', '.join(sorted(map(str, unknown)))}")
    cfg = RunConfig(**{**PROTOCOLS[protocol], **{k: v for k, v in overrides.items() if v is not None}})
    check(cfg)
    return dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device()))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


AT_LEAST_ONE = ("init_size", "query_size", "rounds", "epochs", "batch_size", "k", "lora_r", "score_batch_size",
                "max_prompt_tokens", "max_answer_tokens", "max_new_tokens", "candidate_subsample", "test_size")
AT_LEAST_ZERO = ("seed", "probe_size", "fewshot")
CHOICES = {"mode": ("lora", "full"), "target": ("own", "reference"), "data": ("embedded", "hub"),
           "normalisation": ("minmax", "rank")}


def check(cfg: RunConfig) -> None:
    """Every value of a configuration, each refused with a message naming its option."""
    for f in dataclasses.fields(RunConfig):
        value = getattr(cfg, f.name)
        if value is None and f.default is None:  # an optional value left unset
            continue
        kind = next(k for k in (bool, int, float, str, list) if str(f.type).startswith(k.__name__))
        if f.name == "candidates":
            ok = isinstance(value, list) and all(isinstance(c, str) for c in value)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise StarloraError(f"{_flag(f.name)} must be {'a finite number' if kind is float else kind.__name__}"
                                f" (got {value!r})")
    for name in AT_LEAST_ONE:
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise StarloraError(f"{_flag(name)} must be at least 1 (got {getattr(cfg, name)})")
    for name in AT_LEAST_ZERO:
        if getattr(cfg, name) < 0:
            raise StarloraError(f"{_flag(name)} must be at least 0 (got {getattr(cfg, name)})")
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise StarloraError(f"unknown {_flag(name)} {getattr(cfg, name)!r}: choose {' or '.join(choices)}")
    if not cfg.lr > 0:
        raise StarloraError(f"--lr must be positive (got {cfg.lr})")
    if not cfg.lora_alpha > 0:
        raise StarloraError(f"--lora-alpha must be positive (got {cfg.lora_alpha})")
    if not 0 <= cfg.lora_dropout < 1:
        raise StarloraError(f"--lora-dropout must be in [0, 1) (got {cfg.lora_dropout})")
    if not cfg.b_decay >= 0:
        raise StarloraError(f"--b-decay must be at least 0 (got {cfg.b_decay})")
    if cfg.candidate_subsample is not None and cfg.candidate_subsample < cfg.query_size:
        raise StarloraError(f"--candidate-subsample {cfg.candidate_subsample} is smaller than --query-size "
                            f"{cfg.query_size}: every round would label fewer examples than asked")
    for t in range(cfg.rounds):
        if not 0 <= mixing_weight(t, cfg.rounds, cfg.schedule) <= 1:  # also validates the schedule string
            raise StarloraError(f"--schedule {cfg.schedule} gives lambda({t}) = "
                                f"{mixing_weight(t, cfg.rounds, cfg.schedule):g}, outside [0, 1]")
    resolve_precision(cfg.precision, device())
    strategy = get_strategy(cfg.strategy)
    if strategy.measure == "bald" and not (cfg.mode == "lora" and cfg.k > 1 and cfg.lora_dropout > 0):
        raise StarloraError("--strategy bald needs MC dropout (--mode lora, --k 2 or more, --lora-dropout > 0); "
                            "without it the mutual information is 0 for every example")


def versions() -> dict:
    import peft
    import transformers

    return {"starlora": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "device": str(device()), "processes": parallel.world()[1]}


RUN_FILES = ("config.json", "rounds.jsonl", "summary.json", "base_scores.json", "probe", "scores", "adapter")


def check_folder(out: Path, cfg: RunConfig) -> bool:
    """May `out` take this run? Writes nothing. True when it holds finished rounds of this very configuration.

    A folder of another configuration is refused once it has a finished round; before that it is taken over (a
    corrected typo must not be locked out by the failed first attempt). Every process checks before any process
    writes, so all of them raise the same error or none."""
    try:
        if out.exists() and not out.is_dir():
            raise StarloraError(f"--out {out}: is a file, not a folder")
        parent = next(p for p in [out, *out.absolute().parents] if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise StarloraError(f"--out {out}: cannot create a folder under {parent}")
        config_file = out / "config.json"
        if config_file.exists():
            stored = json.loads(config_file.read_text())["config"]
            wanted = dataclasses.asdict(cfg)
            diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            if diff and read_jsonl(out / "rounds.jsonl"):
                shown = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in diff[:4])
                hint = " (precision 'auto' resolves per machine: pass the stored value)" if "precision" in diff else ""
                raise StarloraError(f"{out} holds a run with another configuration ({shown}){hint}; use another --out")
            return not diff
        if out.exists() and any(out.iterdir()):
            raise StarloraError(f"{out} is not empty and holds no starlora run; use another --out")
        return False
    except OSError as e:
        raise StarloraError(f"--out {out}: cannot use this folder ({e.strerror or e})") from None
    except (json.JSONDecodeError, KeyError, TypeError):
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
    parallel.barrier()
    return read_jsonl(out / "rounds.jsonl") if resume else []


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


def draw_probe_and_initial(pool_ids: list[str], cfg: RunConfig) -> tuple[list[str], list[str]]:
    """The probe first, then the initial labeled set from the rest: the probe (paper Fig. 3's fixed subset) is never
    labeled, so its uncertainties are those of unseen examples in every round."""
    rng = np.random.default_rng(cfg.seed)
    probe = [pool_ids[i] for i in rng.choice(len(pool_ids), cfg.probe_size, replace=False)]
    kept = set(probe)
    rest = [i for i in pool_ids if i not in kept]
    return probe, [rest[i] for i in rng.choice(len(rest), cfg.init_size, replace=False)]


def fewshot_examples(examples: list[Example], demos: list[Example]) -> list[Example]:
    """The test examples with labeled demonstrations prepended (base model prompted with a few labels)."""
    prefix = "".join(join(d.prompt, d.target) + "\n\n" for d in demos)
    return [dataclasses.replace(ex, prompt=prefix + ex.prompt) for ex in examples]


def run(cfg: RunConfig, out: str | Path, log=print, dry_run: bool = False, on_round=None) -> dict | None:
    """Run (or resume) one AL experiment into `out`; returns the summary. dry_run: check everything (data, model,
    folder) and return None having written nothing. on_round() is called after each finished round."""
    out = Path(out)
    if not parallel.is_main():
        log = _quiet
    task = get_task(cfg.task, cfg.candidates, cfg.template, user_files=bool(cfg.train_file or cfg.test_file))
    strategy = get_strategy(cfg.strategy, task.closed)
    data = load_data(task, cfg.data, cfg.train_file, cfg.test_file, cfg.id_field, cfg.answer_field)
    needed = cfg.init_size + cfg.query_size * (cfg.rounds - 1)
    if needed + cfg.probe_size > len(data.pool):
        raise StarloraError(f"--init-size {cfg.init_size} + {cfg.rounds - 1} queries of {cfg.query_size} need {needed} "
                            f"pool examples besides the --probe-size {cfg.probe_size} probe (never labeled); "
                            f"the pool has {len(data.pool)}")
    test = data.test[: cfg.test_size] if cfg.test_size else data.test
    resume = check_folder(out, cfg)
    if resume and len(read_jsonl(out / "rounds.jsonl")) >= cfg.rounds and (out / "summary.json").exists():
        log(f"{out}: all {cfg.rounds} rounds already finished")
        return json.loads((out / "summary.json").read_text())
    lora = cfg.mode == "lora"
    mc = uses_mc_dropout(cfg, strategy)
    if not lora and (strategy.b_decay or strategy.mc_dropout):
        log("note: full fine-tuning: STAR's B decay and LoRA MC dropout do not apply (no LoRA); scoring is deterministic")
    if cfg.target == "reference":
        log("warning: target=reference reads the pool's gold labels (reproduces the official code; simulation only)")

    model, tokenizer = load_model(cfg.model)
    if dry_run:
        log(json.dumps(dataclasses.asdict(cfg), indent=2))
        log(f"{out}: configuration, data ({len(data.pool)} pool, {len(test)} test) and model {cfg.model} check out; "
            f"{'would resume' if resume else 'would start'} this run")
        return None
    finished = open_folder(out, cfg, resume)  # nothing is written before the data and the model have loaded
    pool_by_id = {ex.id: ex for ex in data.pool}
    probe_ids, initial = draw_probe_and_initial([ex.id for ex in data.pool], cfg)
    settings, train_settings = method_settings(cfg, strategy)
    cache = BaseCache(out / "base_scores.json", cfg.model, task, settings, reference=cfg.target == "reference")
    key = measure_key(strategy, cfg.length_norm) or ("me_norm" if cfg.length_norm else "me")
    (out / "scores").mkdir(exist_ok=True)
    (out / "probe").mkdir(exist_ok=True)
    probe = [pool_by_id[i] for i in probe_ids]
    if probe and not (out / "probe" / "base.json").exists():
        with base_model(model):
            base_probe = score(model, tokenizer, task, probe, settings=settings, desc="probe (base)")
        write_json(out / "probe" / "base.json", dict(zip(probe_ids, base_probe.measures[key].tolist())))
    if not lora and strategy.needs_base:  # the full-tuned model has no adapter to switch off: cache mu_b up front
        cache.get(model, tokenizer, [ex for ex in data.pool if ex.id not in set(probe_ids)])
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
        if probe:
            probe_scores = score(current, tokenizer, task, probe, settings=settings, desc=f"round {t} probe")
            write_json(out / "probe" / f"round_{t}.json", dict(zip(probe_ids, probe_scores.measures[key].tolist())))
        selected, lam = [], None
        if t < cfg.rounds - 1:
            start = time.time()
            taken = set(labeled) | set(probe_ids)  # the probe is never labeled (uncertainty-gap analysis)
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
                  **{k: result[k] for k in ("ece", "brier", "wrong_confidence", "truncated") if k in result}}
        records.append(record)
        write_jsonl(out / "rounds.jsonl", records)  # the round is finished once this rename lands
        if on_round:
            on_round()
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


def run_seeds(cfg: RunConfig, seeds: list[int], out: str | Path, log=print, dry_run: bool = False) -> list[dict]:
    """One sub-folder per seed when several are given."""
    if len(seeds) == 1:
        return [run(dataclasses.replace(cfg, seed=seeds[0]), out, log, dry_run)]
    return [run(dataclasses.replace(cfg, seed=s), Path(out) / f"seed{s}", log, dry_run) for s in seeds]
