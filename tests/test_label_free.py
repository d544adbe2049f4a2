"""Acquisition never reads labels: flipping every candidate's answer leaves mu_b, mu_f and mu unchanged, on a
closed and an open task, for STAR and the PE/ME baselines; only --target reference (the official code's way) reads
them, and on one-token answers only through PE: ME's entropy there is the same whichever answer is scored."""

import dataclasses

import numpy as np
import pytest
from helpers import lora_model

from starlora.acquisition import BaseScoreCache, acquisition_scores
from starlora.data import Example
from starlora.scoring import ScoringSettings
from starlora.strategies import get_strategy
from starlora.tasks import Task, get_task
from starlora.tokens import answer_prefix, encode_answer

SMALL = ScoringSettings(batch_size=3, max_new_tokens=4)
BOOLQ = get_task("boolq", template="{question}")
GSM = get_task("gsm8k", template="{question}")
CLOSED = [
    Example(f"b{i}", f"Question: is {i} odd?" + " really" * (i % 3) + "\nAnswer:", t, t)
    for i, t in enumerate(["true", "false"] * 3)
]
OPEN = [
    Example(f"g{i}", f"Question: what is {i} plus {i * 7}?\nAnswer:", f"The final answer is {8 * i}", str(8 * i))
    for i in range(1, 6)
]


pytestmark = pytest.mark.filterwarnings("ignore::starlora.errors.StarloraWarning")  # reference=True on purpose


def flipped(examples):
    """Every answer changed: true <-> false on BoolQ, another number on GSM8K (target and gold alike)."""

    def flip(answer):
        if answer in ("true", "false"):
            return "false" if answer == "true" else "true"
        *words, number = answer.split(" ")  # "The final answer is 8" -> "... is 9"; "8" -> "9"
        return " ".join([*words, str(int(number) + 1)])

    return [dataclasses.replace(ex, target=flip(ex.target), gold=flip(ex.gold)) for ex in examples]


@pytest.fixture(scope="module")
def model():
    return lora_model()  # B != 0: the adapter (and its MC dropout) changes the scores


def scores(model, task, examples, strategy, reference=False):
    lora, tok = model
    cache = BaseScoreCache(None, "tiny", task, SMALL, reference=reference)  # fresh: nothing carried between calls
    return acquisition_scores(
        get_strategy(strategy),
        lora,
        tok,
        task,
        examples,
        t=1,
        rounds=4,
        base_cache=cache,
        passes=2,
        reference=reference,
        seed=0,
        settings=SMALL,
    )


def test_flipping_the_flip_helper_changes_every_answer():
    assert [ex.gold for ex in flipped(CLOSED[:2])] == ["false", "true"]
    assert [(ex.target, ex.gold) for ex in flipped(OPEN[:1])] == [("The final answer is 9", "9")]


@pytest.mark.parametrize("strategy", ["star-me", "star-pe", "pe", "me"])
@pytest.mark.parametrize("task, examples", [(BOOLQ, CLOSED), (GSM, OPEN)], ids=["boolq", "gsm8k"])
def test_acquisition_scores_do_not_depend_on_the_labels(model, strategy, task, examples):
    own, other = scores(model, task, examples, strategy), scores(model, task, flipped(examples), strategy)
    for k in ("mu_b", "mu_f", "mu"):  # same computation in the same order: exactly equal
        assert np.array_equal(own[k], other[k], equal_nan=True), k
    assert np.isfinite(own["mu"]).all() and np.isfinite(own["mu_b"]).all() == strategy.startswith("star")
    ref, ref_other = (scores(model, task, ex, strategy, reference=True) for ex in (examples, flipped(examples)))
    used = ("mu_b", "mu_f", "mu") if strategy.startswith("star") else ("mu_f", "mu")
    for k in used:  # --target reference scores the gold answers, so flipping them changes every term
        assert not np.array_equal(ref[k], ref_other[k]), k


# Candidates of one token each (the tiny tokenizer spells "A" as one token when nothing joins it to the prompt, as
# after a line break): SST-2, BoolQ and OpenBookQA answers are one token under the embedded SmolLM2.
ONE_TOKEN = Task("letters", "{question}", ("A", "B"))
LETTERS = [
    Example(f"l{i}", f"Question: is {i} odd?" + " really" * (i % 3) + "\nAnswer:\n", t, t)
    for i, t in enumerate(["A", "B"] * 3)
]


def flipped_letters(examples):
    return [dataclasses.replace(ex, target=other, gold=other) for ex, other in zip(examples, ["B", "A"] * 3)]


def test_the_candidates_are_one_token_each(model):
    _, tok = model
    assert [len(encode_answer(tok, c, 8, prefix=answer_prefix(LETTERS[0].prompt))) for c in "AB"] == [1, 1]


@pytest.mark.parametrize("strategy", ["me", "star-me"])
def test_me_reads_no_label_on_one_token_answers_even_with_target_reference(model, strategy):
    """ME is the entropy of the next-token distribution at the answer's positions; for a one-token answer that is the
    one distribution after the prompt, whichever answer is scored. So the official code's gold-reading ME equals the
    label-free ME exactly (study II's amendment 1: its star-me oracle picked what star-me picked)."""
    own = scores(model, ONE_TOKEN, LETTERS, strategy)
    assert np.ptp(own["mu"]) > 0  # the examples' scores differ: equal arrays below are not a constant
    for examples in (LETTERS, flipped_letters(LETTERS)):
        ref = scores(model, ONE_TOKEN, examples, strategy, reference=True)
        for k in ("mu_b", "mu_f", "mu"):
            assert np.array_equal(own[k], ref[k], equal_nan=True), k


@pytest.mark.parametrize("strategy", ["pe", "star-pe"])
def test_pe_reads_the_label_on_one_token_answers_with_target_reference(model, strategy):
    """PE is -log p of the scored answer: scoring the gold answer makes it -log p(gold), so flipping the golds changes
    every example's score, while the label-free PE stays as it was."""
    ref, ref_flipped = (
        scores(model, ONE_TOKEN, ex, strategy, reference=True) for ex in (LETTERS, flipped_letters(LETTERS))
    )
    assert not np.isclose(ref["mu_f"], ref_flipped["mu_f"]).any()
    own = scores(model, ONE_TOKEN, LETTERS, strategy)
    assert np.array_equal(own["mu_f"], scores(model, ONE_TOKEN, flipped_letters(LETTERS), strategy)["mu_f"])
