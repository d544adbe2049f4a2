"""Query strategies as behaviour. A strategy is three parts and two training switches:

- what it measures (`Measure`: a key of scoring.Scores.measures, or none at all: random scores),
- how it combines the base model's uncertainty mu_b with the current model's mu_f (`Combine`: the current model
  alone, STAR's dynamic mix, or the official code's subtraction),
- how it picks its batch from the scored candidates (`Pick`: the top n, the top spread over k-means clusters, the
  core-set's farthest-first, BADGE's gradient-embedding sampling),
- whether training decays lora_B (STAR's regulariser) and whether mu_f is averaged over MC dropout passes.

Everything that differs between strategies is asked of these objects, so no other module compares a strategy's
name. `register_strategy` adds one from the user's own code (docs/architecture.md has a worked example); modules
named in $STARLORA_PLUGINS are imported before an unknown name is refused, so `starlora run --strategy NAME` and every
process of a sweep find it too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from . import uncertainty as U
from .errors import StarloraError

PLUGINS = "STARLORA_PLUGINS"  # comma-separated modules or .py files that register strategies when imported


# ---------------------------------------------------------------- what a strategy measures


@dataclass(frozen=True)
class Measure:
    """An uncertainty of each candidate, read from scoring.Scores.measures (higher: more uncertain)."""

    name: str  # the key in Scores.measures
    closed_only: bool = False  # needs a finite candidate list (a label distribution): lc, margin, entropy, bald
    normalisable: bool = False  # has a length-normalised variant NAME_norm (PE, ME), read under --length-norm
    needs_passes: bool = False  # defined over MC dropout passes: 0 for every example without them (BALD)
    meaning: str = ""  # what it is, for messages ("the mutual information")

    def key(self, length_norm: bool) -> str:
        return f"{self.name}_norm" if self.normalisable and length_norm else self.name


MEASURES = {
    m.name: m
    for m in (
        Measure("pe", normalisable=True, meaning="the predictive entropy"),
        Measure("me", normalisable=True, meaning="the mean token entropy"),
        Measure("lc", closed_only=True, meaning="the least confidence"),
        Measure("margin", closed_only=True, meaning="one minus the margin of the two best labels"),
        Measure("entropy", closed_only=True, meaning="the label entropy"),
        Measure("bald", closed_only=True, needs_passes=True, meaning="the mutual information"),
    )
}


# ---------------------------------------------------------------- how it combines base and current model


@dataclass(frozen=True)
class Combine:
    """The current model's mu_f alone (the base model is not read)."""

    name: str = "lora"
    needs_base: bool = False  # reads mu_b, the base model's uncertainty (acquisition.BaseScoreCache)
    mixes: bool = False  # weighs mu_b by lambda(t), which each round records

    def scores(self, mu_base, mu_lora, t: int, rounds: int, schedule="linear", normalisation="minmax") -> np.ndarray:
        """The acquisition score mu of each candidate in round t (higher is queried first)."""
        return np.asarray(mu_lora, dtype=np.float64)

    def weight(self, t: int, rounds: int, schedule="linear") -> float | None:
        """lambda(t), the base model's weight in round t, where the combination has one; else None."""
        return U.mixing_weight(t, rounds, schedule) if self.mixes else None


@dataclass(frozen=True)
class Mix(Combine):
    """STAR's dynamic mix: lambda(t) * norm(mu_b) + (1 - lambda(t)) * norm(mu_f)."""

    name: str = "mix"
    needs_base: bool = True
    mixes: bool = True

    def scores(self, mu_base, mu_lora, t, rounds, schedule="linear", normalisation="minmax"):
        return U.star_mix(mu_base, mu_lora, U.mixing_weight(t, rounds, schedule), normalisation)


@dataclass(frozen=True)
class Subtract(Combine):
    """The official code's variant: norm(mu_f) - norm(mu_b)."""

    name: str = "subtract"
    needs_base: bool = True

    def scores(self, mu_base, mu_lora, t, rounds, schedule="linear", normalisation="minmax"):
        return U.star_subtract(mu_base, mu_lora, normalisation)


CURRENT, MIX, SUBTRACT = Combine(), Mix(), Subtract()


# ---------------------------------------------------------------- how it picks its batch


class Embedded(Protocol):
    """What a pick may read besides the scores: the pool embeddings (embeddings.EmbeddingCache) of the candidates,
    and of the labeled examples, each computed on first call."""

    def candidates(self) -> np.ndarray: ...

    def labeled(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Pick:
    """How a strategy picks its batch of n from the scored candidates (subclass it and define `choose`)."""

    name: str = "pick"
    needs_embeddings: bool = False  # reads the pool embeddings (Embedded)
    needs_probs: bool = False  # reads mu["probs"], the deterministic pass's label distribution [N, C]
    first_query: str | None = None  # how the human loop's first query (no adapter yet) picks, if not by the scores

    def choose(self, mu: dict, n: int, seed: int, embedded: Embedded | None) -> list[int]:
        """Candidate indices in the order chosen, n of them (fewer when fewer candidates), from the scores `mu`
        ({'mu_b', 'mu_f', 'mu'}, and 'probs' when needs_probs) and, when needs_embeddings, the embeddings. Every
        random choice comes from `seed` (the round's). A pick may set mu['mu'] to what it read, which the round's
        score file records."""
        raise NotImplementedError

    def spread(self, beta: float) -> Pick | None:
        """This pick spread over k-means clusters (--diversity kmeans), or None where it picks its batch its own
        way."""
        return None


@dataclass(frozen=True)
class Top(Pick):
    """The n best-scoring candidates; ties fall in a seeded random order."""

    name: str = "top"

    def choose(self, mu, n, seed, embedded):
        return top(mu["mu"], n, seed)

    def spread(self, beta):
        return Clustered(beta=beta)


@dataclass(frozen=True)
class Clustered(Pick):
    """--diversity kmeans: of the beta x n best-scoring candidates, the best of each of n k-means clusters of their
    embeddings (diversity.cluster_spread)."""

    name: str = "clustered"
    needs_embeddings: bool = True
    beta: float = 3.0

    def choose(self, mu, n, seed, embedded):
        from .diversity import cluster_spread

        return cluster_spread(mu["mu"], embedded.candidates(), n, self.beta, seed)


@dataclass(frozen=True)
class CoreSet(Pick):
    """Greedy k-center on the embeddings, away from the labeled set; mu becomes each candidate's distance to it."""

    name: str = "coreset"
    needs_embeddings: bool = True
    first_query: str | None = (
        "core-set from nothing: a seeded random first example, then each farthest from those chosen"
    )

    def choose(self, mu, n, seed, embedded):
        from .diversity import kcenter_greedy

        order, mu["mu"] = kcenter_greedy(embedded.candidates(), embedded.labeled(), n, seed)
        return order


@dataclass(frozen=True)
class Badge(Pick):
    """BADGE: k-means++ seeding on gradient embeddings; mu becomes each gradient embedding's norm."""

    name: str = "badge"
    needs_embeddings: bool = True
    needs_probs: bool = True
    first_query: str | None = "BADGE on the base model's label distribution (k-means++ seeding on gradient embeddings)"

    def choose(self, mu, n, seed, embedded):
        from .diversity import badge

        order, mu["mu"] = badge(mu.pop("probs"), embedded.candidates(), n, seed)
        return order


TOP = Top()


def top(scores, n: int, seed: int) -> list[int]:
    """Indices of the n highest scores (NaN lowest); ties in a seeded random order."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    tiebreak = np.random.default_rng(seed).permutation(len(scores))
    order = np.lexsort((tiebreak, -scores))  # primary key last: score descending, then the seeded order
    return [int(j) for j in order[:n]]


# ---------------------------------------------------------------- the strategy


@dataclass(frozen=True)
class Strategy:
    name: str
    measure: Measure | None  # None: reads no model; its scores are random (acquisition.random_scores)
    combine: Combine = CURRENT
    b_decay: bool = False  # train with STAR's decay on lora_B
    mc_dropout: bool = False  # mu_f averaged over K passes with dropout in the LoRA branch
    pick: Pick = TOP

    @property
    def reads_model(self) -> bool:
        """Its scores come from a model (else they are random draws)."""
        return self.measure is not None

    @property
    def needs_base(self) -> bool:
        return self.reads_model and self.combine.needs_base

    @property
    def closed_only(self) -> bool:
        return self.reads_model and self.measure.closed_only

    def measure_key(self, length_norm: bool) -> str | None:
        """The key of scoring.Scores.measures it reads (PE/ME: their length-normalised variant when asked)."""
        return self.measure.key(length_norm) if self.reads_model else None

    def one_pass_measure(self, length_norm: bool) -> str:
        """What one deterministic pass records for it (the probe, the stop set): its own measure; ME for strategies
        without one and for measures over MC passes (BALD), which are 0 for every example without them."""
        if self.reads_model and not self.measure.needs_passes:
            return self.measure.key(length_norm)
        return "me_norm" if length_norm else "me"

    def scores(self, mu_base, mu_lora, t: int, rounds: int, schedule="linear", normalisation="minmax"):
        """The acquisition score mu of each candidate in round t (higher is queried first)."""
        return self.combine.scores(mu_base, mu_lora, t, rounds, schedule, normalisation)


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy, *, replace_existing: bool = False) -> Strategy:
    """Make `strategy` available by its name: `--strategy NAME` in run, sweep and the human loop, and
    get_strategy(NAME). A name already registered is refused unless replace_existing. Returns the strategy.

    Run from a module named in $STARLORA_PLUGINS (a module name or a .py file; several separated by commas), it is
    found by the command line and by every process of a sweep."""
    if not isinstance(strategy, Strategy):
        raise StarloraError(f"register_strategy takes a starlora Strategy, got {type(strategy).__name__}")
    if not strategy.name or strategy.name != strategy.name.strip() or "/" in strategy.name:
        raise StarloraError(
            f"a strategy's name must be non-empty, without surrounding spaces or '/' (it names "
            f"folders): {strategy.name!r}"
        )
    if strategy.name in STRATEGIES and not replace_existing and STRATEGIES[strategy.name] != strategy:
        raise StarloraError(
            f"a strategy named {strategy.name!r} is registered already; pick another name, or pass "
            "replace_existing=True"
        )
    STRATEGIES[strategy.name] = strategy
    return strategy


def _builtins() -> None:
    register_strategy(Strategy("random", None))
    for m in ("pe", "me", "lc", "margin", "entropy"):
        register_strategy(Strategy(m, MEASURES[m]))
    register_strategy(Strategy("bald", MEASURES["bald"], mc_dropout=True))  # BALD is defined over MC passes
    for m in ("pe", "me"):
        star = register_strategy(Strategy(f"star-{m}", MEASURES[m], combine=MIX, b_decay=True, mc_dropout=True))
        register_strategy(replace(star, name=f"star-{m}-subtract", combine=SUBTRACT))
        # Ablations: each switches off one component of STAR.
        register_strategy(replace(star, name=f"star-{m}-no-dynamic", combine=CURRENT))
        register_strategy(replace(star, name=f"star-{m}-no-decay", b_decay=False))
        register_strategy(replace(star, name=f"star-{m}-no-mcd", mc_dropout=False))
    # Batch-aware: core-set reads only the embeddings; BADGE the deterministic pass's label distribution with them.
    register_strategy(Strategy("coreset", None, pick=CoreSet()))
    register_strategy(Strategy("badge", MEASURES["margin"], pick=Badge()))


_builtins()
BASELINE = "random"  # the strategy every other is compared with (report.py)
_imported: set[str] = set()


def load_plugins() -> None:
    """Import each module or .py file named in $STARLORA_PLUGINS once (they call register_strategy)."""
    for entry in (e.strip() for e in os.environ.get(PLUGINS, "").split(",")):
        if not entry or entry in _imported:
            continue
        _imported.add(entry)
        try:
            if entry.endswith(".py"):
                spec = importlib.util.spec_from_file_location(f"starlora_plugin_{Path(entry).stem}", entry)
                if spec is None or not Path(entry).is_file():
                    raise FileNotFoundError(f"no file {entry}")
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            else:
                importlib.import_module(entry)
        except (ImportError, OSError) as e:
            _imported.discard(entry)
            raise StarloraError(f"${PLUGINS}: cannot import {entry!r} ({e})") from None


def get_strategy(name: str, closed_task: bool = True) -> Strategy:
    """The registered strategy called `name` (built-in, or added by register_strategy or $STARLORA_PLUGINS).

    Args:
        name: e.g. "random", "me", "star-me", "badge".
        closed_task: False for open tasks (GSM8K), where strategies that need a label distribution are refused.

    Returns:
        The Strategy (what it measures, how it combines base and current model, how it picks).

    Raises:
        StarloraError: an unknown name (the message lists the known ones) or one the task cannot use.
    """
    if name not in STRATEGIES:
        load_plugins()
    if name not in STRATEGIES:
        raise StarloraError(
            f"unknown --strategy {name!r}: choose one of {', '.join(STRATEGIES)}"
            + ("" if os.environ.get(PLUGINS) else f" (or register your own: ${PLUGINS})")
        )
    strategy = STRATEGIES[name]
    if strategy.closed_only and not closed_task:
        raise StarloraError(f"--strategy {name} needs a closed-set task (a finite list of answers)")
    return strategy


def measure_key(strategy: Strategy, length_norm: bool) -> str | None:
    """PE/ME read their length-normalised variant when asked."""
    return strategy.measure_key(length_norm)


def one_pass_measure(strategy: Strategy, length_norm: bool) -> str:
    """What one deterministic pass records for this strategy (Strategy.one_pass_measure)."""
    return strategy.one_pass_measure(length_norm)


def select(ids, scores, n: int, labeled, seed: int) -> list[str]:
    """The n highest-scoring ids not in `labeled`; ties fall in a seeded random order, so results are reproducible."""
    labeled = set(labeled)
    keep = [i for i, id_ in enumerate(ids) if id_ not in labeled]
    if not keep:
        return []
    return [ids[keep[j]] for j in top(np.asarray(scores, dtype=np.float64)[keep], n, seed)]
