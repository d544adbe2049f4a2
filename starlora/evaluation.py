"""Test-set evaluation: the model's own answers scored for accuracy, plus calibration on closed-set tasks."""

from __future__ import annotations

import numpy as np

from . import metrics
from .scoring import ScoringSettings, score


def evaluate(model, tokenizer, task, examples, settings: ScoringSettings = ScoringSettings(), desc="evaluating"):
    """Test-set metrics of `model` on `examples`, from the same deterministic pass that scoring uses.

    Returns:
        {'accuracy', 'n'} plus 'macro_f1', 'balanced_accuracy' (%, over the candidates), 'ece', 'brier',
            'wrong_confidence' on closed-set tasks, and 'truncated' on open ones: the % of test generations that
            hit max_new_tokens, whose answer is read from a cut-off text.
    """
    scores = score(model, tokenizer, task, examples, passes=1, settings=settings, desc=desc)
    correct = [task.correct(p, ex.gold) for p, ex in zip(scores.predictions, examples)]
    result = {"accuracy": metrics.accuracy(correct), "n": len(examples)}
    if task.closed:
        labels = np.array([task.candidates.index(ex.gold) for ex in examples])
        gold = [ex.gold for ex in examples]
        result |= {
            "macro_f1": metrics.macro_f1(gold, scores.predictions, task.candidates),
            "balanced_accuracy": metrics.balanced_accuracy(gold, scores.predictions, task.candidates),
            "ece": metrics.ece(scores.probs, labels),
            "brier": metrics.brier(scores.probs, labels),
            "wrong_confidence": metrics.wrong_confidence(scores.probs, labels).round(4).tolist(),
        }
    if scores.truncated is not None:
        result["truncated"] = float(100.0 * scores.truncated.mean()) if len(examples) else 0.0
    return result
