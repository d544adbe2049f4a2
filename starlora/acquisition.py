"""One round's acquisition: uncertainties of the candidates under the base model (cached) and the current model,
combined by the strategy into the score that picks what to label next."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import MethodConfig, uses_mc_dropout
from .errors import StarloraWarning
from .files import append_jsonl, read_jsonl
from .masks import adapter_disabled
from .scoring import ScoringSettings, score
from .strategies import Strategy, measure_key, select

REFERENCE_WARNING = ("--target reference scores the GOLD answers of the unlabeled pool, as the "
                     "official STAR code does; it reads labels a real pool does not have (simulation only)")


class BaseCache:
    """mu_b per example, on disk in the run or project folder. The base model is frozen, so each example is scored
    once per pool. An entry's key covers everything that changes mu_b: the model, the task (name, candidates,
    answer format), the target, the token limits and the precision, and the example's id and prompt (the gold answer
    too with reference=True); `computed` counts examples actually scored (for tests and logs).

    The file is JSON lines, one {"key", measures...} per example, appended every CHUNK examples as scoring proceeds:
    a round writes only its new examples, never the whole cache again, and an interrupted run keeps what it scored
    (a torn last line is ignored). A path ending in .json means its .jsonl sibling; the old format in that .json
    file (one JSON object, key -> measures) is still read, never written."""

    CHUNK = 4096  # examples per score() call and append. Batches differ across a chunk boundary, so on pools larger
    # than this mu_b can differ in the last float digits from one unchunked call (as with another batch size).

    def __init__(self, path: str | os.PathLike | None, model_name: str, task, settings: ScoringSettings,
                 reference: bool = False):
        self.path = Path(path) if path else None
        if self.path and self.path.suffix == ".json":
            self.path = self.path.with_suffix(".jsonl")
        self.task, self.settings, self.reference = task, settings, reference
        self.prefix = _digest(json.dumps(self.identity(model_name))) + "|"
        self.values: dict[str, dict[str, float]] = {}
        if self.path:
            legacy = self.path.with_suffix(".json")
            if self.path.suffix == ".jsonl" and legacy.exists():
                self.values = json.loads(legacy.read_text())
            self.values |= {r.pop("key"): r for r in read_jsonl(self.path, appended=True) if "key" in r}
        self.computed = 0

    def identity(self, model_name: str) -> list:
        """Everything besides the example that changes an entry."""
        task, settings = self.task, self.settings
        return [model_name, task.name, task.candidates, task.numeric, self.reference, settings.max_prompt_tokens,
                settings.max_answer_tokens, settings.max_new_tokens, settings.precision]

    def key(self, ex) -> str:
        return f"{self.prefix}{ex.id}|{_digest(ex.prompt + (chr(0) + ex.target if self.reference else ''))}"

    def get(self, model, tokenizer, examples) -> dict[str, np.ndarray]:
        keys = [self.key(ex) for ex in examples]
        missing = [(k, ex) for k, ex in zip(keys, examples) if k not in self.values]
        for start in range(0, len(missing), self.CHUNK):
            part = missing[start:start + self.CHUNK]
            part_of = f" ({start + len(part)} of {len(missing)})" if len(missing) > self.CHUNK else ""
            with adapter_disabled(model):
                new = list(zip([k for k, _ in part], self.compute(model, tokenizer, [ex for _, ex in part], part_of)))
            self.values.update(new)
            self.computed += len(part)
            if self.path:
                append_jsonl(self.path, ({"key": k, **entry} for k, entry in new))
        return self.combine([self.values[k] for k in keys])

    def compute(self, model, tokenizer, examples, part_of: str) -> list[dict]:
        """One JSON-able entry per example, computed with the adapter switched off: the base model's measures."""
        scores = score(model, tokenizer, self.task, examples, passes=1, settings=self.settings,
                       reference=self.reference, desc="base model" + part_of)
        return [{name: float(v[i]) for name, v in scores.measures.items()} for i in range(len(examples))]

    def combine(self, rows: list[dict]) -> dict[str, np.ndarray]:
        return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RoundSeeds:
    """Every random choice of round t of a run with `seed`, one rule each, so a resumed run (or another process)
    draws the same: MC dropout masks and selection tie-breaks, the random strategy's scores, the candidate subsample.
    (The initial set, adapter initialisation and training order are seeded by `seed` alone.)"""

    seed: int
    t: int

    @property
    def masks(self) -> int:
        return self.seed * 1000 + self.t

    @property
    def tiebreak(self) -> int:
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
    base_cache: BaseCache | None
    reference: bool = False
    embeddings: BaseCache | None = None  # embeddings.EmbeddingCache: needed by coreset, badge and --diversity

    def __post_init__(self):
        if self.base_cache is not None and self.base_cache.reference != self.reference:
            raise ValueError("Acquisition and its BaseCache disagree on reference scoring")

    @property
    def passes(self) -> int:
        return self.cfg.k if uses_mc_dropout(self.cfg, self.strategy) else 1

    def scores(self, model, tokenizer, task, candidates, t: int) -> dict[str, np.ndarray]:
        return acquisition_scores(self.strategy, model, tokenizer, task, candidates, t=t, rounds=self.cfg.rounds,
                                  base_cache=self.base_cache, passes=self.passes, length_norm=self.cfg.length_norm,
                                  schedule=self.cfg.schedule, normalisation=self.cfg.normalisation,
                                  reference=self.reference, seed=self.cfg.seed, settings=self.settings)

    def select(self, ids, mu, n: int, taken, t: int) -> list[str]:
        return select(ids, mu, n, taken, seed=RoundSeeds(self.cfg.seed, t).tiebreak)

    @property
    def needs_embeddings(self) -> bool:
        return self.strategy.pick != "top" or self.cfg.diversity != "none"

    def query(self, model, tokenizer, task, candidates, labeled, n: int, t: int) -> tuple[list[str], dict]:
        """Round t's query of n from the candidates (none of them labeled) and the scores to record."""
        mu = self.scores(model, tokenizer, task, candidates, t)
        return self.pick(model, tokenizer, candidates, labeled, mu, n, t), mu

    def pick(self, model, tokenizer, candidates, labeled, mu: dict, n: int, t: int) -> list[str]:
        """The n to label from the candidates (none of them labeled), given their scores `mu`: the top n, or a
        batch-aware pick on the pool embeddings (`labeled`: the labeled examples, which core-set keeps away from).
        For core-set and BADGE, mu["mu"] becomes what the pick reads: the distance to the labeled set, the gradient
        embedding's norm."""
        ids = [ex.id for ex in candidates]
        if not self.needs_embeddings:
            return self.select(ids, mu["mu"], n, (), t)
        from . import diversity

        seed = RoundSeeds(self.cfg.seed, t).tiebreak
        emb = self.embeddings.get(model, tokenizer, candidates)
        if self.strategy.pick == "coreset":
            order, mu["mu"] = diversity.kcenter_greedy(emb, self.embeddings.get(model, tokenizer, labeled), n, seed)
        elif self.strategy.pick == "badge":
            order, mu["mu"] = diversity.badge(mu.pop("probs"), emb, n, seed)
        else:
            order = diversity.cluster_spread(mu["mu"], emb, n, self.cfg.diversity_beta, seed)
        return [ids[i] for i in order]


def acquisition_scores(strategy: Strategy, model, tokenizer, task, candidates, *, t: int, rounds: int,
                       base_cache: BaseCache | None, passes: int = 3, length_norm=False, schedule="linear",
                       normalisation="minmax", reference=False, seed=0,
                       settings: ScoringSettings = ScoringSettings()) -> dict[str, np.ndarray]:
    """{'mu_b', 'mu_f', 'mu'} over the candidates (mu_b is NaN when the strategy does not use the base model)."""
    n = len(candidates)
    if strategy.measure is None:
        return {"mu_b": np.full(n, np.nan), "mu_f": np.full(n, np.nan), "mu": random_scores(n, seed, t)}
    if reference:
        warnings.warn(REFERENCE_WARNING, StarloraWarning, stacklevel=2)
    key = measure_key(strategy, length_norm)
    mu_f, probs = [], []
    for start in range(0, n, BaseCache.CHUNK):  # a pool-independent working set (token lists) per chunk
        part = candidates[start:start + BaseCache.CHUNK]
        part_of = f" ({start + len(part)} of {n})" if n > BaseCache.CHUNK else ""
        # masks reproducible per seed, round and chunk, whatever the process split; the first chunk (every pool up
        # to CHUNK) keeps the round's own seed
        masks = RoundSeeds(seed, t).masks + 10**9 * (start // BaseCache.CHUNK)
        lora = score(model, tokenizer, task, part, passes=passes if strategy.mc_dropout else 1,
                     mc_dropout=strategy.mc_dropout, reference=reference, settings=settings,
                     desc=f"scoring round {t}{part_of}", seed=masks)
        mu_f.append(lora.measures[key])
        probs.append(lora.probs)
    mu_f = np.concatenate(mu_f) if mu_f else np.zeros(0)
    mu_b = base_cache.get(model, tokenizer, candidates)[key] if strategy.needs_base \
        else np.full(n, np.nan)
    out = {"mu_b": mu_b, "mu_f": mu_f, "mu": strategy.scores(mu_b, mu_f, t, rounds, schedule, normalisation)}
    if strategy.pick == "badge":
        out["probs"] = np.concatenate(probs)  # the deterministic pass's label distribution [N, C]
    return out
