"""When to stop labeling: criteria read from a fixed unlabeled stop set (never labeled, disjoint from the probe) that
the current model predicts every round. Stabilizing predictions (Bloodgood & Vijay-Shanker 2009): Cohen's kappa
between consecutive rounds' predictions on the stop set; and the change in the stop set's mean uncertainty.
A rule `kappa:0.99:3` holds once the last 3 rounds each had kappa >= 0.99; `uncertainty:0.01:2` once the last 2
rounds each changed the mean uncertainty by at most 0.01 (absolute)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import StarloraError

FIELDS = {"kappa": "stop_kappa", "uncertainty": "stop_uncertainty_change"}  # criterion -> its rounds.jsonl field


@dataclass(frozen=True)
class StopRule:
    criterion: str  # "kappa" or "uncertainty"
    threshold: float
    patience: int  # consecutive rounds

    def holds(self, records: list[dict]) -> bool:
        """Do the last `patience` rounds meet the threshold? (Rounds without a value, e.g. round 0, do not.)"""
        values = [r.get(FIELDS[self.criterion]) for r in records[-self.patience :]]
        if len(values) < self.patience or any(v is None for v in values):
            return False
        if self.criterion == "kappa":
            return all(v >= self.threshold for v in values)
        return all(abs(v) <= self.threshold for v in values)

    def first_round(self, records: list[dict]) -> int | None:
        """The round after which the rule first held, or None."""
        return next((r["round"] for i, r in enumerate(records) if self.holds(records[: i + 1])), None)

    def __str__(self) -> str:
        return f"{self.criterion}:{self.threshold:g}:{self.patience}"


def parse_stop_rule(text: str | None) -> StopRule | None:
    """'kappa:0.99:3' -> StopRule; None -> None. One line naming --stop-when when malformed."""
    if text is None:
        return None
    parts = str(text).split(":")
    try:
        criterion, threshold, patience = parts[0], float(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        criterion, threshold, patience = None, 0.0, 0
    if len(parts) != 3 or criterion not in FIELDS or patience < 1 or threshold < 0:
        raise StarloraError(
            f"--stop-when {text!r}: expected kappa:K:N or uncertainty:D:N (e.g. kappa:0.99:3: "
            "kappa >= 0.99 in 3 consecutive rounds)"
        )
    return StopRule(criterion, threshold, patience)


def cohen_kappa(previous: list, current: list) -> float:
    """Cohen's kappa of two rounds' predictions on the same examples (scikit-learn's); identical predictions give 1
    even when they are all one label (where the formula is 0/0)."""
    previous, current = (["" if p is None else str(p) for p in side] for side in (previous, current))
    if previous == current:  # compared as the strings scikit-learn is given, so "the same" means the same to both
        return 1.0
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(previous, current))


def stop_figures(previous: dict | None, predictions: list, uncertainties: np.ndarray) -> dict:
    """This round's stop-set figures for rounds.jsonl, given the previous round's (None in the first round)."""
    mean = float(np.mean(uncertainties)) if len(uncertainties) else float("nan")
    return {
        "stop_kappa": cohen_kappa(previous["predictions"], predictions) if previous else None,
        "stop_uncertainty": mean,
        "stop_uncertainty_change": mean - previous["mean"] if previous else None,
    }


def draw_stop_set(pool_ids: list[str], kept_out: set, size: int, seed: int) -> list[str]:
    """The stop set: a seeded sample of `size` pool ids outside `kept_out` (the probe, the initial set), never to be
    labeled; its own random stream, so runs without one draw everything else as before."""
    if not size:
        return []
    rest = [i for i in pool_ids if i not in kept_out]
    chosen = np.random.default_rng([seed, 5]).choice(len(rest), min(size, len(rest)), replace=False)
    return [rest[i] for i in sorted(chosen)]
