"""Configuration as data: the method (shared by `starlora run` and the human-loop project) and the simulation on top.

Each field carries its help text and its rule (metadata), so a new option is one line here: the command line flags
(`cli.add_config_flags`) and the validation (`check`) are generated from the fields. Defaults are the paper protocol
(the design notes, method spec); `resolve` layers a protocol and overrides on top and validates the whole
before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import StarloraError
from .hardware import DTYPES, device, resolve_dtype, resolve_precision
from .stopping import parse_stop_rule
from .strategies import get_strategy
from .tasks import normalise_text
from .uncertainty import mixing_weight

ABOVE_ZERO, AT_LEAST_ONE, AT_LEAST_ZERO, FRACTION = "> 0", ">= 1", ">= 0", "[0, 1)"
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")  # test-set metrics a run's learning curve may follow


def option(default, help: str, rule: str | None = None, choices: tuple | None = None, cli: bool = True):
    """A configuration field: its default, help, value rule or choices; cli=False when another option group (data,
    model) declares the flag."""
    return field(default=default, metadata={"help": help, "rule": rule, "choices": choices, "cli": cli})


@dataclass
class MethodConfig:
    """What decides how a model is trained and how candidates are scored: the same in simulation and human loop."""

    task: str = option("boolq", "task", cli=False)
    strategy: str = option(
        "star-me",
        "random, pe, me, lc, margin, entropy, bald, star-pe, star-me, coreset, badge, "
        "star-{pe,me}-subtract, star-{pe,me}-no-{dynamic,decay,mcd}",
    )
    model: str = option("smollm2", "model", cli=False)
    seed: int = option(0, "seed", AT_LEAST_ZERO, cli=False)
    template: str | None = option(None, "prompt template", cli=False)
    candidates: list[str] | None = option(None, "closed-set candidates", cli=False)
    id_field: str = option("id", "id field", cli=False)
    answer_field: str = option("answer", "answer field", cli=False)
    rounds: int = option(10, "training rounds R (paper 10)", AT_LEAST_ONE)
    epochs: int = option(3, "training epochs per round (paper 3)", AT_LEAST_ONE)
    batch_size: int = option(8, "training batch size (paper 8)", AT_LEAST_ONE)
    lr: float = option(1.5e-4, "AdamW learning rate, linear decay without warm-up (paper 1.5e-4)", ABOVE_ZERO)
    lora_r: int = option(64, "LoRA rank (paper 64)", AT_LEAST_ONE)
    lora_alpha: int = option(16, "LoRA alpha (paper 16)", ABOVE_ZERO)
    lora_dropout: float = option(0.1, "LoRA dropout, also the MC dropout rate (paper 0.1)", FRACTION)
    mode: str = option("lora", "lora, or full (all parameters, no LoRA; paper Fig. 1)", choices=("lora", "full"))
    b_decay: float = option(0.5, "STAR's decoupled weight decay beta on lora_B (paper 0.5)", AT_LEAST_ZERO)
    force_b_decay: bool = option(False, "give the B decay to strategies without STAR's regulariser too")
    k: int = option(3, "MC dropout passes (paper 3)", AT_LEAST_ONE)
    schedule: str = option("linear", "lambda(t): linear, exp[:l0:gamma], cosine, constant:c")
    normalisation: str = option(
        "minmax", "how mu_b and mu_f are normalised before mixing: minmax or rank", choices=("minmax", "rank")
    )
    length_norm: bool = option(False, "divide PE/ME by the answer length")
    max_prompt_tokens: int = option(128, "prompt token limit (left-truncated)", AT_LEAST_ONE)
    max_answer_tokens: int = option(256, "answer token limit", AT_LEAST_ONE)
    max_new_tokens: int = option(256, "generation limit for open tasks", AT_LEAST_ONE)
    score_batch_size: int = option(32, "scoring batch size", AT_LEAST_ONE)
    group_by_length: bool = option(True, "training batches of similar length (less padding; HF's group_by_length)")
    precision: str = option(
        "auto", "auto (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), fp32 or bf16; stored resolved"
    )
    dtype: str = option(
        "auto",
        "frozen base weights: auto (bf16 on CUDA GPUs with bf16, else fp32), fp32, bf16 or "
        "fp16; LoRA weights and optimiser state stay fp32; stored resolved",
        choices=("auto", *DTYPES),
    )
    gradient_accumulation_steps: int = option(
        1,
        "micro-batches of --batch-size per optimiser step (effective batch "
        "batch_size x N; the LR schedule counts optimiser steps)",
        AT_LEAST_ONE,
    )
    gradient_checkpointing: bool = option(
        False,
        "recompute each decoder layer's activations in the backward pass: "
        "less memory, more training time, same numbers",
    )
    quantization: str = option(
        "none",
        "frozen base's linear layers in 4 bits (NF4, QLoRA) or 8 bits through "
        "bitsandbytes (the qlora extra); LoRA weights stay fp32",
        choices=("none", "4bit", "8bit"),
    )
    stop_set_size: int = option(
        0,
        "pool examples set aside (never labeled, apart from the probe) whose predictions "
        "give the stopping criteria every round; 0: none",
        AT_LEAST_ZERO,
    )
    stop_when: str | None = option(
        None,
        "stop once a criterion holds: kappa:K:N (Cohen's kappa of consecutive "
        "rounds' stop-set predictions >= K for N rounds) or uncertainty:D:N (mean "
        "uncertainty changing by <= D for N rounds); needs --stop-set-size",
    )
    cold_start: str = option(
        "random",
        "the first examples to label (run: the initial set; human loop: the first "
        "query): random, or kmeans (the example nearest each k-means centroid of "
        "the base model's prompt embeddings)",
        choices=("random", "kmeans"),
    )
    diversity: str = option(
        "none",
        "kmeans: spread each query over k-means clusters of the pool embeddings among "
        "the diversity_beta x query best-scoring candidates (cluster-margin style)",
        choices=("none", "kmeans"),
    )
    diversity_beta: float = option(
        3.0,
        "with --diversity kmeans: how many times the query size of the best-scoring "
        "candidates are clustered (1 = no diversity)",
        AT_LEAST_ONE,
    )


@dataclass
class RunConfig(MethodConfig):
    """A simulated AL experiment: the method plus where the data comes from and how the simulation runs."""

    data: str = option("embedded", "data source", choices=("embedded", "hub"), cli=False)
    train_file: str | None = option(None, "pool file", cli=False)
    test_file: str | None = option(None, "test file", cli=False)
    init_size: int = option(500, "examples labeled at random in round 0 (paper 500)", AT_LEAST_ONE)
    query_size: int = option(500, "examples queried per round (paper 500)", AT_LEAST_ONE)
    target: str = option(
        "own",
        "own (the model's own answer, label-free) or reference (gold answer, as the official code; simulation only)",
        choices=("own", "reference"),
    )
    candidate_subsample: int | None = option(
        None, "score a random subset of this many unlabeled examples per round", AT_LEAST_ONE
    )
    test_size: int | None = option(None, "evaluate on the first N test examples", AT_LEAST_ONE)
    probe_size: int = option(
        100, "pool examples whose uncertainty is recorded every round (never labeled)", AT_LEAST_ZERO
    )
    fewshot: int = option(3, "demonstrations for the base model's few-shot evaluation (0: skip)", AT_LEAST_ZERO)
    metric: str = option(
        "accuracy",
        "what the learning curve, AUC and the report measure: accuracy, or (closed tasks) "
        "macro_f1 or balanced_accuracy, in %",
        choices=METRICS,
    )
    pool_class_ratio: str | None = option(
        None,
        "CLASS=RATIO (closed tasks), e.g. positive=0.1: the pool subsampled, "
        "per seed, so CLASS is that fraction of it (as large a pool as the "
        "ratio allows; the test set unchanged)",
    )


# What runs and projects made before an option existed used: a stored configuration without the key means this.
LEGACY = {
    "dtype": "fp32",
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    "diversity": "none",
    "diversity_beta": 3.0,
    "cold_start": "random",
    "quantization": "none",
    "stop_set_size": 0,
    "stop_when": None,
    "metric": "accuracy",
    "pool_class_ratio": None,
}
# Options that change memory or speed but not the numbers: a resume may change them.
RESUMABLE_CHANGES = {"gradient_checkpointing"}

PROTOCOLS = {
    "paper": {},
    # The offline demo: few labels, 64 candidates per round and no few-shot evaluation keep it to minutes on a CPU.
    # max_new_tokens is sized from the embedded GSM8K gold solutions (docs/experiments.md); generation also stops at a
    # finished final-answer line (tasks.final_answer_complete).
    "quick": dict(
        init_size=8,
        query_size=8,
        rounds=4,
        epochs=3,
        lr=1e-3,
        lora_r=16,
        candidate_subsample=64,
        test_size=300,
        probe_size=32,
        fewshot=0,
        max_new_tokens=192,
    ),
    # Between quick and paper: results that mean something on a CPU (its timings are in docs/experiments.md).
    "cpu": dict(
        init_size=64,
        query_size=64,
        rounds=6,
        epochs=3,
        lr=5e-4,
        lora_r=32,
        candidate_subsample=768,
        test_size=1000,
        max_new_tokens=256,
    ),
    # The committed study (results/sst2, docs/studies.md): embedded SST-2 from 8 to 48 labels, the range where the
    # 135M model's learning curve still rises.
    "sst2": dict(
        task="sst2",
        init_size=8,
        query_size=8,
        rounds=6,
        epochs=3,
        lr=1e-3,
        lora_r=16,
        candidate_subsample=256,
        probe_size=64,
    ),
}


def stored_config(record: dict) -> MethodConfig:
    """A project's or run's stored configuration as a MethodConfig: an option added since has its LEGACY meaning, and
    keys that are not the method's (a run's data and simulation options, older projects' extras) are left out."""
    known = {f.name for f in dataclasses.fields(MethodConfig)}
    return MethodConfig(**{k: v for k, v in {**LEGACY, **record}.items() if k in known})


def variant(cfg) -> str:
    """A run's strategy with the selection options that change what it labels: star-me, star-me+kmeans,
    star-me+kmeans(beta 5), random+cold-kmeans; star-me+oracle-reference with --target reference. Sweep folders and
    report rows are named by it, so the variants of a strategy compare with random like strategies do."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    name = get("strategy")
    if get("diversity", "none") != "none":
        beta = get("diversity_beta", LEGACY["diversity_beta"])
        name += f"+{get('diversity')}" + ("" if beta == LEGACY["diversity_beta"] else f"(beta {beta:g})")
    if get("cold_start", "random") != "random":
        name += f"+cold-{get('cold_start')}"
    if get("target", "own") == "reference":  # the official code's gold-reading uncertainty: an oracle, never the method
        name += "+oracle-reference"
    return name


def resolve(protocol: str = "paper", config=RunConfig, **overrides):
    """A run's configuration: paper defaults < protocol < overrides, validated whole (nothing is written before
    this passes), with precision and dtype 'auto' resolved for this machine so a resume elsewhere cannot silently
    switch them.

    Args:
        protocol: a name in PROTOCOLS ("paper", "sst2", ...).
        config: the configuration class (RunConfig for `run`; the human loop's own for projects).
        **overrides: any field by its name, e.g. strategy="star-me", seed=3, lr=1e-4.

    Returns:
        The frozen configuration.

    Raises:
        StarloraError: an unknown protocol or field, or a value or combination that is refused (naming the option).
    """
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise StarloraError(f"unknown --protocol {protocol!r}: choose {', '.join(PROTOCOLS)}")
    names = {f.name for f in dataclasses.fields(config)}
    unknown = set(overrides) - names
    if unknown:
        raise StarloraError(f"unknown configuration key(s): {', '.join(sorted(map(str, unknown)))}")
    values = {k: v for k, v in {**PROTOCOLS[protocol], **overrides}.items() if k in names and v is not None}
    cfg = config(**values)
    check(cfg)
    return dataclasses.replace(
        cfg, precision=resolve_precision(cfg.precision, device()), dtype=resolve_dtype(cfg.dtype, device())
    )


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(cfg: MethodConfig) -> None:
    """Every value of a configuration, each refused with a message naming its option."""
    for f in dataclasses.fields(cfg):
        value, rule, choices = getattr(cfg, f.name), f.metadata.get("rule"), f.metadata.get("choices")
        if value is None and f.default is None:  # an optional value left unset
            continue
        _check_type(f, value)
        if choices and value not in choices:
            raise StarloraError(f"unknown {flag(f.name)} {value!r}: choose {' or '.join(choices)}")
        bad = {
            ABOVE_ZERO: lambda v: not v > 0,
            AT_LEAST_ONE: lambda v: v < 1,
            AT_LEAST_ZERO: lambda v: not v >= 0,
            FRACTION: lambda v: not 0 <= v < 1,
        }
        if rule and bad[rule](value):
            words = {
                ABOVE_ZERO: "positive",
                AT_LEAST_ONE: "at least 1",
                AT_LEAST_ZERO: "at least 0",
                FRACTION: "in [0, 1)",
            }
            raise StarloraError(f"{flag(f.name)} must be {words[rule]} (got {value})")
    folded = [normalise_text(c) for c in cfg.candidates or []]  # as Task.gold reads an answer
    twice = next((c for c in cfg.candidates or [] if folded.count(normalise_text(c)) > 1), None)
    if twice is not None:  # an answer must name exactly one candidate
        raise StarloraError(f"--candidates lists {twice.strip()!r} more than once (up to case, spaces and a final '.')")
    if getattr(cfg, "candidate_subsample", None) is not None and cfg.candidate_subsample < cfg.query_size:
        raise StarloraError(
            f"--candidate-subsample {cfg.candidate_subsample} is smaller than --query-size "
            f"{cfg.query_size}: every round would label fewer examples than asked"
        )
    for t in range(cfg.rounds):
        if not 0 <= mixing_weight(t, cfg.rounds, cfg.schedule) <= 1:  # also validates the schedule string
            raise StarloraError(
                f"--schedule {cfg.schedule} gives lambda({t}) = "
                f"{mixing_weight(t, cfg.rounds, cfg.schedule):g}, outside [0, 1]"
            )
    resolve_precision(cfg.precision, device())
    if cfg.mode == "full" and resolve_dtype(cfg.dtype, device()) != "fp32":
        raise StarloraError(
            f"--mode full trains every weight, which needs fp32 master weights: use --dtype fp32 "
            f"(got {cfg.dtype}{' -> ' + resolve_dtype(cfg.dtype, device()) if cfg.dtype == 'auto' else ''})"
        )
    if parse_stop_rule(cfg.stop_when) and not cfg.stop_set_size:
        raise StarloraError(f"--stop-when {cfg.stop_when} reads the stop set: give --stop-set-size (e.g. 100)")
    if cfg.mode == "full" and cfg.quantization != "none":
        raise StarloraError(
            f"--mode full trains every weight; --quantization {cfg.quantization} freezes the base in "
            "4/8 bits: use --mode lora"
        )
    check_closed_options(cfg)
    strategy = get_strategy(cfg.strategy)
    if getattr(cfg, "target", "own") == "reference" and not strategy.reads_model:
        raise StarloraError(
            f"--target reference changes what an uncertainty reads; --strategy {cfg.strategy} reads "
            "none, so it would only rename the baseline: leave --target at own"
        )
    if cfg.diversity != "none" and strategy.pick.spread(cfg.diversity_beta) is None:
        raise StarloraError(
            f"--diversity {cfg.diversity} spreads a score-based strategy; --strategy {cfg.strategy} "
            f"already picks its batch its own way ({strategy.pick.name})"
        )
    if strategy.reads_model and strategy.measure.needs_passes and not uses_mc_dropout(cfg, strategy):
        raise StarloraError(
            f"--strategy {cfg.strategy} needs MC dropout (--mode lora, --k 2 or more, --lora-dropout > "
            f"0); without it {strategy.measure.meaning} is 0 for every example"
        )


def task_candidates(cfg) -> tuple[str, ...] | None | bool:
    """The candidates of a configuration's task (None: an open task; False: not known here, get_task reports it)."""
    from .tasks import BUILTIN

    if cfg.task in BUILTIN:
        return BUILTIN[cfg.task].candidates
    if cfg.task == "closed":
        return tuple(cfg.candidates) if cfg.candidates else False
    return None if cfg.task == "open" else False


def parse_class_ratio(text: str) -> tuple[str, float]:
    """'positive=0.1' -> ('positive', 0.1); the class and the ratio are checked against the task by check()."""
    name, sep, ratio = str(text).rpartition("=")
    try:
        value = float(ratio)
    except ValueError:
        value = None
    if not sep or not name.strip() or value is None:
        raise StarloraError(f"--pool-class-ratio must be CLASS=RATIO, e.g. positive=0.1 (got {text!r})")
    return name.strip(), value


def check_closed_options(cfg) -> None:
    """--metric and --pool-class-ratio: closed tasks only, the class one of the task's candidates, the ratio in
    (0, 1)."""
    metric, ratio = getattr(cfg, "metric", "accuracy"), getattr(cfg, "pool_class_ratio", None)
    if metric == "accuracy" and ratio is None:
        return
    candidates = task_candidates(cfg)
    if candidates is None:
        option_text = f"--metric {metric}" if metric != "accuracy" else f"--pool-class-ratio {ratio}"
        raise StarloraError(
            f"{option_text} needs a closed task (answers from a list of candidates); task {cfg.task} is open"
        )
    if ratio is None:
        return
    name, value = parse_class_ratio(ratio)
    if candidates and name not in candidates:
        raise StarloraError(
            f"--pool-class-ratio {ratio}: {name!r} is not a class of task {cfg.task}: choose {' or '.join(candidates)}"
        )
    if not (math.isfinite(value) and 0 < value < 1):
        raise StarloraError(f"--pool-class-ratio {ratio}: the ratio must be in (0, 1), exclusive (got {value:g})")


def _check_type(f, value) -> None:
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
        raise StarloraError(
            f"{flag(f.name)} must be {'a finite number' if kind is float else kind.__name__} (got {value!r})"
        )


def uses_mc_dropout(cfg: MethodConfig, strategy) -> bool:
    """MC dropout runs only where a strategy asks for it and there is LoRA dropout to sample (K > 1, p > 0)."""
    return strategy.mc_dropout and cfg.mode == "lora" and cfg.lora_dropout > 0 and cfg.k > 1
