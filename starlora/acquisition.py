"""One round's acquisition: uncertainties of the candidates under the base model (cached) and the current model,
combined by the strategy into the score that picks what to label next."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from .cache import ExampleCache, digest
from .config import MethodConfig, uses_mc_dropout
from .errors import StarloraWarning
from .scoring import ScoringSettings, score
from .strategies import Pick, Strategy

REFERENCE_WARNING = (
    "--target reference scores the GOLD answers of the unlabeled pool, as the "
    "official STAR code does; it reads labels a real pool does not have (simulation only)"
)


class BaseScoreCache(ExampleCache):
    """mu_b per example: the frozen base model's uncertainty measures, computed once per pool (cache.ExampleCache).
    An entry's key covers everything that changes mu_b: the model, the task (name, candidates, answer format), the
    target, the token limits and the precision, and the example's id and prompt (the gold answer too with
    reference=True)."""

    def __init__(
        self, path: str | os.PathLike | None, model_name: str, task, settings: ScoringSettings, reference: bool = False
    ):
        self.reference = reference
        super().__init__(path, model_name, task, settings)

    def identity(self, model_name: str) -> list:
        task, settings = self.task, self.settings
        return [
            model_name,
            task.name,
            task.candidates,
            task.numeric,
            self.reference,
            settings.max_prompt_tokens,
            settings.max_answer_tokens,
            settings.max_new_tokens,
            settings.precision,
        ]

    def key(self, ex) -> str:
        return f"{self.prefix}{ex.id}|{digest(ex.prompt + (chr(0) + ex.target if self.reference else ''))}"

    def compute(self, model, tokenizer, examples, part_of: str) -> list[dict]:
        """The base model's measures (the adapter is switched off)."""
        scores = score(
            model,
            tokenizer,
            self.task,
            examples,
            passes=1,
            settings=self.settings,
            reference=self.reference,
            desc="base model" + part_of,
        )
        return [{name: float(v[i]) for name, v in scores.measures.items()} for i in range(len(examples))]

    def combine(self, rows: list[dict]) -> dict[str, np.ndarray]:
        return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


BaseCache = BaseScoreCache  # its name before it was told apart from the caches' common base (cache.ExampleCache)


@dataclass(frozen=True)
class RoundSeeds:
    """Every random choice of round t of a run with `seed`, so a resumed run (or another process) draws the same:
    one seed for the round's MC dropout masks and its picks (selection tie-breaks, the batch-aware and k-means
    picks), and a stream each for the random strategy's scores and the candidate subsample. (The initial set, adapter
    initialisation and training order are seeded by `seed` alone.)"""

    seed: int
    t: int

    @property
    def round_seed(self) -> int:
        """The MC dropout masks (of the first chunk; acquisition_scores) and the picks of round t."""
        return self.seed * 1000 + self.t

    @property
    def random_scores(self) -> list[int]:
        return [self.seed, self.t]

    @property
    def subsample(self) -> list[int]:
        return [self.seed, self.t, 1]


def random_scores(n: int, seed: int, t: int) -> np.ndarray:
    """The random strategy's scores: seeded per (seed, round), so a resumed run draws the same."""
    return np.random.default_rng(RoundSeeds(seed, t).random_scores).random(n)


def subsample(candidates: list, size: int | None, seed: int, t: int) -> list:
    """A seeded random `size` of the candidates in their pool order (all of them when size is None or larger)."""
    if not size or len(candidates) <= size:
        return candidates
    chosen = np.random.default_rng(RoundSeeds(seed, t).subsample).choice(len(candidates), size, replace=False)
    return [candidates[i] for i in sorted(chosen)]


@dataclass
class Acquisition:
    """A configured query strategy (small-text's QueryStrategy): scores the candidates of round t and selects the
    next batch. Built once per run or project command from the strategy and the method configuration."""

    strategy: Strategy
    cfg: MethodConfig
    settings: ScoringSettings
    base_cache: BaseScoreCache | None
    reference: bool = False
    embeddings: ExampleCache | None = None  # embeddings.EmbeddingCache: needed by coreset, badge and --diversity

    def __post_init__(self):
        if self.base_cache is not None and self.base_cache.reference != self.reference:
            raise ValueError("Acquisition and its BaseScoreCache disagree on reference scoring")

    @property
    def passes(self) -> int:
        return self.cfg.k if uses_mc_dropout(self.cfg, self.strategy) else 1

    def scores(self, model, tokenizer, task, candidates, t: int) -> dict[str, np.ndarray]:
        return acquisition_scores(
            self.strategy,
            model,
            tokenizer,
            task,
            candidates,
            t=t,
            rounds=self.cfg.rounds,
            base_cache=self.base_cache,
            passes=self.passes,
            length_norm=self.cfg.length_norm,
            schedule=self.cfg.schedule,
            normalisation=self.cfg.normalisation,
            reference=self.reference,
            seed=self.cfg.seed,
            settings=self.settings,
        )

    @property
    def picker(self) -> Pick:
        """How the batch is picked: the strategy's own pick, or the top spread over k-means clusters (--diversity)."""
        return (
            self.strategy.pick.spread(self.cfg.diversity_beta) if self.cfg.diversity != "none" else self.strategy.pick
        )

    @property
    def needs_embeddings(self) -> bool:
        return self.picker.needs_embeddings

    def query(self, model, tokenizer, task, candidates, labeled, n: int, t: int) -> tuple[list[str], dict]:
        """Round t's query of n from the candidates (none of them labeled) and the scores to record."""
        mu = self.scores(model, tokenizer, task, candidates, t)
        return self.pick(model, tokenizer, candidates, labeled, mu, n, t), mu

    def pick(self, model, tokenizer, candidates, labeled, mu: dict, n: int, t: int) -> list[str]:
        """The n to label from the candidates (none of them labeled), given their scores `mu`: the picker's choice,
        seeded per round (`labeled`: the labeled examples, whose embeddings core-set keeps away from). A pick may
        set mu["mu"] to what it read (core-set: the distance to the labeled set; BADGE: the gradient embedding's
        norm)."""
        picker = self.picker
        embedded = (
            _Embedded(self.embeddings, model, tokenizer, candidates, labeled) if picker.needs_embeddings else None
        )
        ids = [ex.id for ex in candidates]
        return [ids[i] for i in picker.choose(mu, n, RoundSeeds(self.cfg.seed, t).round_seed, embedded)]


class _Embedded:
    """The pool embeddings a pick reads (strategies.Embedded): the candidates' computed at once (as a round always
    has), the labeled examples' on first call."""

    def __init__(self, cache: ExampleCache, model, tokenizer, candidates, labeled):
        self.cache, self.model, self.tokenizer, self.examples = cache, model, tokenizer, labeled
        self.vectors = cache.get(model, tokenizer, candidates)

    def candidates(self) -> np.ndarray:
        return self.vectors

    def labeled(self) -> np.ndarray:
        return self.cache.get(self.model, self.tokenizer, self.examples)


def acquisition_scores(
    strategy: Strategy,
    model,
    tokenizer,
    task,
    candidates,
    *,
    t: int,
    rounds: int,
    base_cache: BaseScoreCache | None,
    passes: int = 3,
    length_norm=False,
    schedule="linear",
    normalisation="minmax",
    reference=False,
    seed=0,
    settings: ScoringSettings = ScoringSettings(),
) -> dict[str, np.ndarray]:
    """The acquisition scores of round `t` over the candidates (spec: mu_b, mu_f and their mix by lambda(t)).

    Args:
        strategy: what to measure and how to combine base and current model.
        t: the round, 0 for the initial set (STAR's schedule lambda(t) reads it).
        rounds: the run's number of rounds (the schedule's horizon).
        base_cache: the frozen base model's scores, computed once per pool; None when the strategy needs none.
        passes: MC dropout passes (with the deterministic pass that fixes each example's own answer).
        reference: score the gold answer (the official code's oracle); label-free runs leave it False.

    Returns:
        {'mu_b', 'mu_f', 'mu'}, arrays over the candidates (mu_b is NaN when the strategy does not use the base
            model); the highest mu is labeled first.
    """
    n = len(candidates)
    if not strategy.reads_model:
        return {"mu_b": np.full(n, np.nan), "mu_f": np.full(n, np.nan), "mu": random_scores(n, seed, t)}
    if reference:
        warnings.warn(REFERENCE_WARNING, StarloraWarning, stacklevel=2)
    key = strategy.measure_key(length_norm)
    mu_f, probs = [], []
    for start in range(0, n, ExampleCache.CHUNK):  # a pool-independent working set (token lists) per chunk
        part = candidates[start : start + ExampleCache.CHUNK]
        part_of = f" ({start + len(part)} of {n})" if n > ExampleCache.CHUNK else ""
        # masks reproducible per seed, round and chunk, whatever the process split; the first chunk (every pool up
        # to CHUNK) keeps the round's own seed
        masks = RoundSeeds(seed, t).round_seed + 10**9 * (start // ExampleCache.CHUNK)
        lora = score(
            model,
            tokenizer,
            task,
            part,
            passes=passes if strategy.mc_dropout else 1,
            mc_dropout=strategy.mc_dropout,
            reference=reference,
            settings=settings,
            desc=f"scoring round {t}{part_of}",
            seed=masks,
        )
        mu_f.append(lora.measures[key])
        probs.append(lora.probs)
    mu_f = np.concatenate(mu_f) if mu_f else np.zeros(0)
    mu_b = base_cache.get(model, tokenizer, candidates)[key] if strategy.needs_base else np.full(n, np.nan)
    out = {"mu_b": mu_b, "mu_f": mu_f, "mu": strategy.scores(mu_b, mu_f, t, rounds, schedule, normalisation)}
    if strategy.pick.needs_probs:
        out["probs"] = np.concatenate(probs)  # the deterministic pass's label distribution [N, C]
    return out
