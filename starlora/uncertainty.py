"""Uncertainty heuristics and STAR's mixing as pure functions on arrays (higher = more uncertain).

Inputs are per-example sums over the answer tokens (sequence log-likelihood, summed token entropies) or label
distributions; nothing here touches a model, so every formula is testable with hand-computed numbers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata

from .errors import StarloraError


def token_logprobs_and_entropies(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For logits [..., V] and target ids [...] (or [..., C]): log p(target) and the full-vocabulary entropy at each
    position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    entropy = -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)  # 0 * log 0 = 0: a -inf logit (masked token) is fine
    # NaN or +inf logits still give NaN here; scoring.check_finite stops on those and names the examples
    if targets.dim() == logits.dim():  # several targets per position [..., C]: log p of each
        return logp.gather(-1, targets), entropy
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy


def predictive_entropy(logprob_sum, length=None):
    """PE = -sum_t log p(y_t | x, y_<t); divided by the answer length when given."""
    pe = -np.asarray(logprob_sum, dtype=np.float64)
    return pe / np.maximum(np.asarray(length, dtype=np.float64), 1) if length is not None else pe


def mean_entropy(entropy_sum, length=None):
    """ME = sum_t H(p(. | x, y_<t)); divided by the answer length when given."""
    me = np.asarray(entropy_sum, dtype=np.float64)
    return me / np.maximum(np.asarray(length, dtype=np.float64), 1) if length is not None else me


def label_distribution(logliks) -> np.ndarray:
    """Candidates' sequence log-likelihoods [..., C] renormalised into a distribution over labels."""
    x = np.asarray(logliks, dtype=np.float64)
    top = x.max(-1, keepdims=True)
    p = np.exp(x - np.where(np.isfinite(top), top, 0.0))  # every candidate at log 0 = -inf: no NaN from -inf - -inf
    total = p.sum(-1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / x.shape[-1])  # ... but a uniform guess


def least_confidence(p) -> np.ndarray:
    return 1.0 - np.asarray(p).max(-1)


def margin(p) -> np.ndarray:
    """1 - (p_top1 - p_top2): 1 when the two best labels tie, 0 when one label has all the mass."""
    top = np.sort(np.asarray(p), axis=-1)
    return 1.0 - (top[..., -1] - top[..., -2])


def entropy(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)


def bald(p_passes) -> np.ndarray:
    """Mutual information over MC passes [N, K, C]: H(mean_k p_k) - mean_k H(p_k)."""
    p_passes = np.asarray(p_passes, dtype=np.float64)
    return np.maximum(entropy(p_passes.mean(1)) - entropy(p_passes).mean(1), 0.0)


def normalise(x, method: str = "minmax") -> np.ndarray:
    """Map scores over the current candidates to [0, 1]: min-max, or rank (ties share their mean rank)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    if method == "minmax":
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)  # a constant vector carries no ranking
    if method == "rank":
        return (rankdata(x) - 1) / (x.size - 1) if x.size > 1 else np.zeros_like(x)
    raise StarloraError(f"unknown normalisation {method!r}: choose minmax or rank")


def mixing_weight(t: int, rounds: int, schedule: str = "linear") -> float:
    """lambda(t), the base model's weight in round t of R: linear 1-(t+1)/R; exp[:l0:g] l0*g^t; cosine; constant:c."""
    name, *args = schedule.split(":")
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise StarloraError(f"bad --schedule {schedule!r}: parameters must be numbers") from None
    if name == "linear" and not values:
        return 1.0 - (t + 1) / rounds
    if name == "exp" and len(values) in (0, 2):
        l0, gamma = values or (0.9, 0.7)
        return l0 * gamma**t
    if name == "cosine" and not values:
        return 0.5 * (1.0 + math.cos(math.pi * (t + 1) / rounds))
    if name == "constant" and len(values) == 1 and 0 <= values[0] <= 1:
        return values[0]
    raise StarloraError(f"unknown --schedule {schedule!r}: choose linear, exp[:l0:gamma], cosine or constant:c")


def star_mix(mu_base, mu_lora, lam: float, normalisation: str = "minmax") -> np.ndarray:
    """mu = lambda * norm(mu_b) + (1 - lambda) * norm(mu_f), both normalised over the same candidates."""
    return lam * normalise(mu_base, normalisation) + (1.0 - lam) * normalise(mu_lora, normalisation)


def star_subtract(mu_base, mu_lora, normalisation: str = "minmax") -> np.ndarray:
    """The official code's variant mu_f - mu_b, here on normalised terms (it mixed raw and normalised ones)."""
    return normalise(mu_lora, normalisation) - normalise(mu_base, normalisation)
