"""Evaluation metrics: accuracy, learning-curve AUC, RIPL, calibration (ECE, Brier, confidence when wrong), statistics
over seeds (mean ± CI, paired differences) and the probe's correlations."""

from __future__ import annotations

import numpy as np


def accuracy(correct) -> float:
    """Percent correct."""
    correct = np.asarray(correct, dtype=bool)
    return float(100.0 * correct.mean()) if correct.size else 0.0


def macro_f1(gold, predicted, labels) -> float:
    """Macro-averaged F1 (%) over the labels of `labels` (a closed task's candidates) that are gold or predicted at
    least once: each one's F1 from its own precision and recall, averaged with equal weight (a class absent from
    both, e.g. from a cut test set, would score 0 and cap the average). A label predicted but never gold scores 0."""
    from sklearn.metrics import f1_score

    if not len(gold):
        return 0.0
    present = [c for c in labels if c in set(gold) | set(predicted)]
    return float(100.0 * f1_score(list(gold), list(predicted), labels=present, average="macro", zero_division=0))


def balanced_accuracy(gold, predicted, labels) -> float:
    """Balanced accuracy (%): the recall of each label, averaged over the labels of `labels` that occur in `gold`
    (sklearn's balanced_accuracy_score, without its warning when a prediction is a label the gold lacks)."""
    from sklearn.metrics import recall_score

    present = [c for c in labels if c in set(gold)]
    if not present:
        return 0.0
    return float(100.0 * recall_score(list(gold), list(predicted), labels=present, average="macro", zero_division=0))


def class_counts(golds, labels) -> dict[str, int]:
    """How many of `golds` each label has, every label listed (0 included), in the labels' order."""
    golds = list(golds)
    return {c: golds.count(c) for c in labels}


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
    return {
        "mean": float(x.mean()),
        "std": std,
        "ci95": float(t.ppf(0.975, x.size - 1) * std / np.sqrt(x.size)),
        "n": int(x.size),
    }


def paired_delta(a, b) -> dict:
    """Paired comparison over seeds: d_i = a_i - b_i (a strategy's and random's AUC with the same seed, hence the same
    initial labeled set). Mean, 95% paired t-interval mean ± t(0.975, n-1)·sd/√n (NaN with fewer than two pairs),
    n, and wins = the number of pairs with d_i > 0."""
    from scipy.stats import t

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths (got {a.size} and {b.size})")
    d = a - b
    mean = float(d.mean()) if d.size else float("nan")
    half = float(t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return {
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "n": int(d.size),
        "wins": int((d > 0).sum()),
        "deltas": d.tolist(),
    }


def correlations(rows) -> dict[str, np.ndarray]:
    """Pearson and Spearman correlation between every pair of rows (the probe: base model, round 0, ...). A correlation
    with a constant (or non-finite) row is undefined, so NaN rather than a made-up 1; a defined row has 1 on the
    diagonal."""
    from scipy.stats import pearsonr, spearmanr

    m = np.asarray(rows, dtype=np.float64)
    n = len(m)
    defined = [bool(row.size and np.isfinite(row).all() and (row != row[0]).any()) for row in m]
    out = {"pearson": np.full((n, n), np.nan), "spearman": np.full((n, n), np.nan)}
    for i in range(n):
        for j in range(i, n):
            if defined[i] and defined[j]:
                p, s = (1.0, 1.0) if i == j else (pearsonr(m[i], m[j])[0], spearmanr(m[i], m[j])[0])
                out["pearson"][i, j] = out["pearson"][j, i] = p
                out["spearman"][i, j] = out["spearman"][j, i] = s
    return out


# ---------------------------------------------------------------- what a study's seeds can detect (paired t, Holm)
# A strategy's ΔAUC is paired with random's by seed: d_i = AUC_strategy,i - AUC_random,i, tested with the one-sample
# (paired) t-test of mean(d) = 0. Power and sample size come from the noncentral t distribution (scipy.stats.nct),
# with the standard deviation of the paired differences taken as the true one: a plan from an estimate, as noisy as
# that estimate is with few seeds.


def paired_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level alpha with n pairs when the true mean difference is delta and
    the differences' standard deviation is sd: P(|T| > t_crit) for T ~ noncentral t(df n-1, nc delta·√n/sd)."""
    from scipy.stats import nct, t

    if n < 2 or not np.isfinite(sd) or sd == 0:  # no spread: the t-test is undefined (a tie of seeds, one test
        return float("nan")  # example per round), not certain
    df, nc = n - 1, delta * np.sqrt(n) / sd
    crit = t.ppf(1 - alpha / 2, df)
    power = float(nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc))
    if np.isnan(power):  # scipy's nct fails far out (nc in the tens, many df), where T is close to normal
        from scipy.stats import norm

        power = float(norm.sf(crit - abs(nc)) + norm.cdf(-crit - abs(nc)))
    return power


def min_detectable_delta(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference (> 0) that n pairs detect with the given power: paired_power solved for
    delta. NaN with fewer than two pairs or differences that do not vary (no spread to plan from)."""
    from scipy.optimize import brentq

    if n < 2 or not np.isfinite(sd) or sd == 0:
        return float("nan")
    high = sd
    while paired_power(high, sd, n, alpha) < power:  # power rises with delta: bracket, then solve
        high *= 2
    return float(brentq(lambda d: paired_power(d, sd, n, alpha) - power, 0.0, high, xtol=1e-10, rtol=1e-12))


def seeds_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05, most: int = 10_000) -> int | None:
    """The fewest pairs (seeds) whose paired t-test detects a true mean difference delta with the given power, for
    differences of standard deviation sd; None when even `most` do not (or sd is unknown). At least 2 (one degree
    of freedom). The inverse of min_detectable_delta: seeds_needed(min_detectable_delta(sd, n), sd) == n."""
    if not np.isfinite(sd) or sd == 0 or delta == 0 or not np.isfinite(delta):
        return None
    low, high = 1, 2  # power(low) < power <= power(high); power rises with n
    while paired_power(delta, sd, high, alpha) < power:
        if high >= most:
            return None
        low, high = high, min(2 * high, most)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if paired_power(delta, sd, mid, alpha) >= power else (mid, high)
    return high


def paired_t_p(d) -> float:
    """Two-sided p-value of the paired t-test of mean(d) = 0 (scipy.stats.ttest_1samp); NaN with fewer than two
    pairs. Differences that are all exactly 0 (two strategies that picked alike) give p 1: nothing speaks against
    equality, and the comparison stays in its Holm family. Other differences that do not vary leave the t statistic
    undefined: NaN, and the sign test beside it speaks."""
    from scipy.stats import ttest_1samp

    d = np.asarray(d, dtype=np.float64)
    if d.size < 2:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    if np.all(d == d[0]):
        return float("nan")
    return float(ttest_1samp(d, 0.0).pvalue)


def sign_test_p(d) -> float:
    """Two-sided exact sign test (scipy.stats.binomtest, p = 1/2) of the differences' signs; ties (d = 0) are
    dropped. When every difference is exactly 0, p 1 (nothing against equality); NaN with no pairs or only NaN."""
    from scipy.stats import binomtest

    d = np.asarray(d, dtype=np.float64)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    if wins + losses == 0:
        return 1.0 if d.size and np.all(d == 0) else float("nan")
    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (family-wise error rate): the i-th smallest p (i from 0)
    times (m - i), made non-decreasing in that order, capped at 1. NaN entries are not part of the family and stay
    NaN. holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    kept = np.flatnonzero(np.isfinite(p))
    m, running = kept.size, 0.0
    for i, j in enumerate(kept[np.argsort(p[kept], kind="stable")]):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out.tolist()
