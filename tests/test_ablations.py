"""Each ablation switch changes exactly what it claims: --force-b-decay, star-*-no-decay, -no-dynamic, -no-mcd,
star-*'s mixing with lambda(t), and --mode full."""

import numpy as np
import pytest
import torch
from helpers import lora_model

from starlora.acquisition import BaseScoreCache, acquisition_scores
from starlora.data import Example
from starlora.experiment import method_settings, resolve, uses_mc_dropout
from starlora.scoring import ScoringSettings, score
from starlora.strategies import get_strategy
from starlora.tasks import get_task
from starlora.training import make_optimizer

BOOLQ = get_task("boolq", template="{question}")
EXAMPLES = [
    Example(f"e{i}", f"Question: is {i} odd?" + " really" * (i % 3) + "\nAnswer:", t, t)
    for i, t in enumerate(["true", "false"] * 4)
]
SMALL = ScoringSettings(batch_size=3)
ROUNDS = 4  # lambda(t) = 1 - (t + 1) / 4: 0.75, 0.5, 0.25
LR, BETA = 0.1, 0.3  # one decay step multiplies lora_B by 1 - LR * BETA = 0.97


@pytest.fixture(scope="module")
def model():
    return lora_model()


def acquire(model, strategy, t=1):
    lora, tok = model
    cache = BaseScoreCache(None, "tiny", BOOLQ, SMALL)
    out = acquisition_scores(
        get_strategy(strategy),
        lora,
        tok,
        BOOLQ,
        EXAMPLES,
        t=t,
        rounds=ROUNDS,
        base_cache=cache,
        passes=3,
        seed=0,
        settings=SMALL,
    )
    return out, cache.computed


def minmax(x):
    return (x - x.min()) / (x.max() - x.min())


def train_settings(strategy, **kw):
    return method_settings(resolve(strategy=strategy, lr=LR, b_decay=BETA, **kw), get_strategy(strategy))[1]


def lora_weights_after_one_decay_step(settings):
    """lora_A, lora_B before and after one AdamW step with zero gradients: only the decoupled decay moves weights."""
    model, _ = lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = make_optimizer(model, settings.lr, settings.b_decay)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    return before, {n: p.detach() for n, p in model.named_parameters() if n in before}


@pytest.mark.parametrize("strategy", ["pe", "random"])
def test_force_b_decay_gives_a_baseline_the_decay_on_b_only(strategy):
    assert train_settings(strategy).b_decay == 0.0  # the paper's baselines train without STAR's regulariser
    forced = train_settings(strategy, force_b_decay=True)
    assert forced.b_decay == BETA  # cfg.b_decay
    for settings, b_factor in ((train_settings(strategy), 1.0), (forced, 0.97)):
        before, after = lora_weights_after_one_decay_step(settings)
        for name in before:
            torch.testing.assert_close(after[name], before[name] * (b_factor if "lora_B" in name else 1.0))


def test_star_trains_with_the_decay_and_no_decay_without_it():
    assert train_settings("star-me").b_decay == BETA
    assert train_settings("star-me-no-decay").b_decay == 0.0
    assert train_settings("star-me-no-mcd").b_decay == train_settings("star-me-no-dynamic").b_decay == BETA


def test_star_mixes_base_and_lora_uncertainty_with_lambda_of_the_round(model):
    for t, lam in ((0, 0.75), (1, 0.5), (2, 0.25)):  # by hand, R = 4
        out, computed = acquire(model, "star-me", t)
        assert computed == len(EXAMPLES)  # the base model was scored
        np.testing.assert_allclose(
            out["mu"], lam * minmax(out["mu_b"]) + (1 - lam) * minmax(out["mu_f"]), rtol=0, atol=1e-12
        )


def test_no_decay_scores_exactly_like_star(model):
    star, _ = acquire(model, "star-me")
    no_decay, _ = acquire(model, "star-me-no-decay")
    assert uses_mc_dropout(resolve(strategy="star-me-no-decay"), get_strategy("star-me-no-decay"))
    for k in ("mu_b", "mu_f", "mu"):  # same MC passes, same mixing: the decay is a training switch only
        assert np.array_equal(no_decay[k], star[k]), k


def test_no_dynamic_scores_mu_f_alone_without_the_base_model(model):
    star, _ = acquire(model, "star-me")
    out, computed = acquire(model, "star-me-no-dynamic")
    assert np.array_equal(out["mu"], out["mu_f"])
    assert np.isnan(out["mu_b"]).all() and computed == 0  # the base model is never scored
    assert np.array_equal(out["mu_f"], star["mu_f"])  # still the MC-dropout mu_f


def test_no_mcd_takes_mu_f_from_the_deterministic_pass(model):
    lora, tok = model
    deterministic = score(lora, tok, BOOLQ, EXAMPLES, passes=1, settings=SMALL).measures["me"]
    out, _ = acquire(model, "star-me-no-mcd")
    star, _ = acquire(model, "star-me")
    assert np.array_equal(out["mu_f"], deterministic)  # the same single pass, computed the same way
    assert np.abs(star["mu_f"] - deterministic).max() > 1e-5 * deterministic.max()  # dropout 0.1 moves star's mu_f
    np.testing.assert_allclose(out["mu"], 0.5 * minmax(out["mu_b"]) + 0.5 * minmax(out["mu_f"]), rtol=0, atol=1e-12)
    assert not uses_mc_dropout(resolve(strategy="star-me-no-mcd"), get_strategy("star-me-no-mcd"))


def test_full_fine_tuning_turns_off_decay_and_mc_dropout():
    star = get_strategy("star-me")
    assert uses_mc_dropout(resolve(strategy="star-me"), star)
    full = resolve(strategy="star-me", mode="full", force_b_decay=True)
    assert not uses_mc_dropout(full, star)  # no LoRA branch to drop out
    assert method_settings(full, star)[1].b_decay == 0.0  # no lora_B to decay
