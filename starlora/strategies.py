"""Query strategies: each is a small value saying which uncertainty it reads and how STAR combines it.

A strategy turns per-candidate uncertainties into one score per candidate; `select` takes the top query_size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import uncertainty as U
from .errors import StarloraError

LABEL_MEASURES = ("lc", "margin", "entropy", "bald")  # need a finite candidate list


@dataclass(frozen=True)
class Strategy:
    name: str
    measure: str | None  # key of scoring.Scores.measures; None: random
    combine: str = "lora"  # "lora": mu_f alone; "mix": STAR's dynamic mixing; "subtract": mu_f - mu_b
    b_decay: bool = False  # train with STAR's decay on lora_B
    mc_dropout: bool = False  # mu_f averaged over K passes with dropout in the LoRA branch
    pick: str = "top"  # "top": the best scores; "coreset", "badge": batch-aware selection on embeddings (diversity.py)

    @property
    def needs_base(self) -> bool:
        return self.combine in ("mix", "subtract")

    def scores(self, mu_base, mu_lora, t: int, rounds: int, schedule="linear", normalisation="minmax"):
        """The acquisition score mu of each candidate in round t (higher is queried first)."""
        if self.combine == "mix":
            return U.star_mix(mu_base, mu_lora, U.mixing_weight(t, rounds, schedule), normalisation)
        if self.combine == "subtract":
            return U.star_subtract(mu_base, mu_lora, normalisation)
        return np.asarray(mu_lora, dtype=np.float64)


def _registry() -> dict[str, Strategy]:
    reg = {"random": Strategy("random", None)}
    for m in ("pe", "me", "lc", "margin", "entropy"):
        reg[m] = Strategy(m, m)
    reg["bald"] = Strategy("bald", "bald", mc_dropout=True)  # BALD is defined over MC passes
    for m in ("pe", "me"):
        star = Strategy(f"star-{m}", m, combine="mix", b_decay=True, mc_dropout=True)
        reg[star.name] = star
        reg[f"star-{m}-subtract"] = replace(star, name=f"star-{m}-subtract", combine="subtract")
        # Ablations: each switches off one component of STAR.
        reg[f"star-{m}-no-dynamic"] = replace(star, name=f"star-{m}-no-dynamic", combine="lora")
        reg[f"star-{m}-no-decay"] = replace(star, name=f"star-{m}-no-decay", b_decay=False)
        reg[f"star-{m}-no-mcd"] = replace(star, name=f"star-{m}-no-mcd", mc_dropout=False)
    # Batch-aware: core-set reads only the embeddings; BADGE the deterministic pass's label distribution with them.
    reg["coreset"] = Strategy("coreset", None, pick="coreset")
    reg["badge"] = Strategy("badge", "margin", pick="badge")
    return reg


STRATEGIES = _registry()


def get_strategy(name: str, closed_task: bool = True) -> Strategy:
    if name not in STRATEGIES:
        raise StarloraError(f"unknown --strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name]
    if strategy.measure in LABEL_MEASURES and not closed_task:
        raise StarloraError(f"--strategy {name} needs a closed-set task (a finite list of answers)")
    return strategy


def measure_key(strategy: Strategy, length_norm: bool) -> str | None:
    """PE/ME read their length-normalised variant when asked."""
    if strategy.measure in ("pe", "me") and length_norm:
        return f"{strategy.measure}_norm"
    return strategy.measure


def one_pass_measure(strategy: Strategy, length_norm: bool) -> str:
    """What one deterministic pass records for this strategy (the probe, the stop set): its own measure; ME for
    strategies without one and for BALD, which is 0 for every example without MC passes."""
    key = measure_key(strategy, length_norm)
    return key if key not in (None, "bald") else ("me_norm" if length_norm else "me")


def select(ids, scores, n: int, labeled, seed: int) -> list[str]:
    """The n highest-scoring ids not in `labeled`; ties fall in a seeded random order, so results are reproducible."""
    labeled = set(labeled)
    keep = [i for i, id_ in enumerate(ids) if id_ not in labeled]
    if not keep:
        return []
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64)[keep], nan=-np.inf)
    tiebreak = np.random.default_rng(seed).permutation(len(keep))
    order = np.lexsort((tiebreak, -scores))  # primary key last: score descending, then the seeded order
    return [ids[keep[j]] for j in order[:n]]
