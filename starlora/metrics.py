"""Evaluation metrics: accuracy, learning-curve AUC, RIPL, and calibration (ECE, Brier, confidence when wrong)."""

from __future__ import annotations

import numpy as np


def accuracy(correct) -> float:
    """Percent correct."""
    correct = np.asarray(correct, dtype=bool)
    return float(100.0 * correct.mean()) if correct.size else 0.0


def auc(curve) -> float:
    """Trapezoid area under accuracy-per-round over the round index, divided by the number of intervals (0-100)."""
    y = np.asarray(curve, dtype=np.float64)
    if y.size == 1:
        return float(y[0])
    return float(((y[1:] + y[:-1]) / 2).sum() / (y.size - 1))


def ripl(auc_al: float, auc_random: float) -> float:
    """Share (%) of the possible improvement over passive (random) learning that AL realised."""
    if auc_random >= 100:
        return float("nan")
    return (auc_al - auc_random) / (100.0 - auc_random) * 100.0


def ece(probs, labels, bins: int = 15) -> float:
    """Expected calibration error of the top label with `bins` equal-width confidence bins (0-1 scale)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, pred = probs.max(1), probs.argmax(1)
    hit = pred == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - hit[inside].mean())
    return float(total)


def brier(probs, labels) -> float:
    """Mean over examples of the squared distance between the label distribution and the one-hot gold label."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return float(((probs - onehot) ** 2).sum(1).mean())


def wrong_confidence(probs, labels) -> np.ndarray:
    """Confidence (max label probability) of each wrong prediction (paper Fig. 2)."""
    probs = np.asarray(probs, dtype=np.float64)
    wrong = probs.argmax(1) != np.asarray(labels)
    return probs.max(1)[wrong]


def mean_std_ci(values) -> dict:
    """Mean, sample std and the half-width of a 95% t-interval over seeds."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return {"mean": float(x.mean()) if x.size else float("nan"), "std": 0.0, "ci95": float("nan"), "n": int(x.size)}
    std = float(x.std(ddof=1))
    return {"mean": float(x.mean()), "std": std, "ci95": float(t.ppf(0.975, x.size - 1) * std / np.sqrt(x.size)),
            "n": int(x.size)}
