"""The method on the tiny random model: MC dropout only on the LoRA path, base-model passes, B-only decay, caching."""

import numpy as np
import pytest
import torch
from helpers import lora_model

from starlora.acquisition import REFERENCE_WARNING, BaseScoreCache, acquisition_scores
from starlora.data import Example
from starlora.errors import StarloraWarning
from starlora.masks import adapter_disabled, lora_sampling
from starlora.models import tiny_random
from starlora.scoring import ScoringSettings, answer_stats, score
from starlora.strategies import get_strategy
from starlora.tasks import get_task
from starlora.training import TrainSettings, attach_lora, make_optimizer, train

BOOLQ = get_task("boolq", template="{question}")
GSM = get_task("gsm8k", template="{question}")
EXAMPLES = [Example(f"e{i}", f"Question: is {i} odd?\nAnswer:", t, t) for i, t in enumerate(["true", "false"] * 4)]
SMALL = ScoringSettings(batch_size=3, max_new_tokens=6)


def test_mc_dropout_only_in_lora_branch():
    model, tok = lora_model()
    with lora_sampling(model, True):
        active = {n for n, m in model.named_modules() if m.training}
        assert active and all("lora_dropout" in n for n in active)
        attention = [m for n, m in model.named_modules() if n.endswith("self_attn")]
        assert attention and not any(m.training for m in attention)  # attention_dropout=0.1 stays off
    assert not any(m.training for m in model.modules())
    pairs = [
        (tok(ex.prompt)["input_ids"], tok(" " + ex.target, add_special_tokens=False)["input_ids"]) for ex in EXAMPLES
    ]
    torch.manual_seed(0)
    with lora_sampling(model, True):
        a, _, _ = answer_stats(model, pairs, 4)
        b, _, _ = answer_stats(model, pairs, 4)
    assert not np.allclose(a, b)  # two MC passes differ


def test_mc_passes_differ_with_dropout_and_a_seed_repeats_them():
    model, tok = lora_model(dropout=0.1)  # B != 0: dropout on the LoRA path changes the output
    det = score(model, tok, BOOLQ, EXAMPLES, passes=1, settings=SMALL)
    mc = score(model, tok, BOOLQ, EXAMPLES, passes=3, mc_dropout=True, seed=0, settings=SMALL)
    again = score(model, tok, BOOLQ, EXAMPLES, passes=3, mc_dropout=True, seed=0, settings=SMALL)
    other = score(model, tok, BOOLQ, EXAMPLES, passes=3, mc_dropout=True, seed=1, settings=SMALL)
    assert (mc.measures["bald"] > 1e-6).any()  # the K passes disagree (BALD is 0 iff they all agree); measured ~1e-4
    for k in ("pe", "me"):
        assert np.array_equal(mc.measures[k], again.measures[k])  # same seed: same masks, same computation
        assert np.abs(mc.measures[k] - other.measures[k]).max() > 1e-5 * np.abs(mc.measures[k]).max()  # other masks
        assert np.abs(mc.measures[k] - det.measures[k]).max() > 1e-5 * np.abs(det.measures[k]).max()  # mu_f != det
    assert mc.predictions == det.predictions  # y_hat is fixed by the deterministic pass


def test_without_dropout_the_mc_passes_are_the_deterministic_pass():
    model, tok = lora_model(dropout=0.0)
    det = score(model, tok, BOOLQ, EXAMPLES, passes=1, settings=SMALL)
    for seed in (0, 1):
        mc = score(model, tok, BOOLQ, EXAMPLES, passes=3, mc_dropout=True, seed=seed, settings=SMALL)
        # identical passes: BALD = H(mean p) - mean H(p) is 0 up to the float64 rounding of a mean of equal rows
        assert mc.measures["bald"].max() <= 1e-12
        for k in ("pe", "me", "lc", "entropy"):  # the passes run in other batches than the deterministic one: rounding
            np.testing.assert_allclose(mc.measures[k], det.measures[k], rtol=1e-6, atol=1e-9)


def test_disabled_adapter_equals_the_base_model():
    base, tok = tiny_random()
    expected = score(base, tok, BOOLQ, EXAMPLES, settings=SMALL)
    model, tok = lora_model()
    with adapter_disabled(model):
        got = score(model, tok, BOOLQ, EXAMPLES, settings=SMALL)
    adapted = score(model, tok, BOOLQ, EXAMPLES, settings=SMALL)
    for k in ("pe", "me", "entropy"):
        np.testing.assert_allclose(got.measures[k], expected.measures[k], rtol=1e-6)
        assert not np.allclose(adapted.measures[k], expected.measures[k])


def test_batched_scoring_equals_one_at_a_time():
    model, tok = lora_model()
    batched = score(model, tok, BOOLQ, EXAMPLES, settings=ScoringSettings(batch_size=16))
    single = score(model, tok, BOOLQ, EXAMPLES, settings=ScoringSettings(batch_size=1))
    for k in batched.measures:
        np.testing.assert_allclose(batched.measures[k], single.measures[k], rtol=1e-5, atol=1e-6)


def test_open_task_scores_greedy_answer():
    model, tok = lora_model()
    gsm = [
        Example("g1", "Question: 1+1?\nAnswer:", "2\nThe final answer is 2", "2"),
        Example("g2", "Question: what is 10 times 3?\nAnswer:", "The final answer is 30", "30"),
    ]
    s = score(model, tok, GSM, gsm, passes=2, mc_dropout=True, settings=SMALL)
    assert set(s.measures) == {"pe", "pe_norm", "me", "me_norm"} and np.isfinite(s.measures["me"]).all()
    ref = score(model, tok, GSM, gsm, reference=True, settings=SMALL)
    assert not np.allclose(ref.measures["pe"], score(model, tok, GSM, gsm, settings=SMALL).measures["pe"])


def test_b_decay_shrinks_only_lora_b_by_the_decoupled_factor():
    model, _ = lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    lr, beta, steps = 0.1, 0.5, 3
    opt = make_optimizer(model, lr, beta)
    for _ in range(steps):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)  # zero gradient: Adam's step is 0, only decay moves weights
        opt.step()
    factor = (1 - lr * beta) ** steps  # 0.95^3
    for name, p in model.named_parameters():
        if name in before:
            expected = before[name] * factor if "lora_B" in name else before[name]
            torch.testing.assert_close(p.detach(), expected)
    assert any("lora_B" in n for n in before) and any("lora_A" in n for n in before)


def test_training_is_seeded_and_masks_the_prompt():
    def trained(seed):
        base, tok = tiny_random()
        model = attach_lora(base, TrainSettings(lora_r=4, seed=seed))
        stats = train(model, tok, EXAMPLES, TrainSettings(lora_r=4, epochs=2, batch_size=3, lr=1e-2, seed=seed))
        return model, stats

    (m1, s1), (m2, s2), (m3, _) = trained(0), trained(0), trained(1)
    assert s1["steps"] == 2 * 3 and s1["loss"] == s2["loss"]
    w1, w2, w3 = ({n: p for n, p in m.named_parameters() if "lora_" in n} for m in (m1, m2, m3))
    assert all(torch.equal(w1[n], w2[n]) for n in w1)
    assert not all(torch.equal(w1[n], w3[n]) for n in w1)
    from starlora.training import training_batch

    ids, mask, labels = training_batch([([5, 6, 7], [8, 2]), ([5], [9, 9, 2])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 2], [5, 9, 9, 2, 0]]
    assert labels.tolist() == [[-100, -100, -100, 8, 2], [-100, 9, 9, 2, -100]]  # EOS trained, pad and prompt masked
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_base_cache_scores_each_example_once(tmp_path):
    model, tok = lora_model()
    star, path = get_strategy("star-me"), tmp_path / "base.json"

    def mu_b(cache, examples, t=0):
        return acquisition_scores(
            star, model, tok, BOOLQ, examples, t=t, rounds=4, base_cache=cache, passes=2, settings=SMALL
        )["mu_b"]

    cache = BaseScoreCache(path, "tiny", BOOLQ, SMALL)
    first = mu_b(cache, EXAMPLES[:6])
    assert cache.computed == 6  # every candidate on first use
    with adapter_disabled(model):  # ... under the base model (adapter disabled)
        np.testing.assert_allclose(
            first, score(model, tok, BOOLQ, EXAMPLES[:6], settings=SMALL).measures["me"], rtol=1e-9
        )
    assert np.array_equal(mu_b(cache, EXAMPLES[:6], t=1), first) and cache.computed == 6  # a later round: none
    reopened = BaseScoreCache(path, "tiny", BOOLQ, SMALL)  # from disk: a resumed run recomputes nothing
    assert np.array_equal(mu_b(reopened, EXAMPLES[:6]), first) and reopened.computed == 0
    grown = mu_b(reopened, EXAMPLES)  # the candidate set grows: only the two new examples are scored
    assert reopened.computed == 2 and np.array_equal(grown[:6], first)
    other = BaseScoreCache(path, "other-model", BOOLQ, SMALL)  # another model shares no entry
    mu_b(other, EXAMPLES[:3])
    assert other.computed == 3


def test_reference_target_warns():
    model, tok = lora_model()
    with pytest.warns(StarloraWarning, match="GOLD answers"):
        acquisition_scores(
            get_strategy("pe"),
            model,
            tok,
            BOOLQ,
            EXAMPLES,
            t=0,
            rounds=3,
            base_cache=None,
            reference=True,
            settings=SMALL,
        )
    assert "reads labels a real pool does not have" in REFERENCE_WARNING


def test_the_answer_position_loss_is_hf_causal_lm_loss_with_its_gradients():
    """training.causal_lm_loss runs the LM head only where there are labels: the same loss as HF's over every
    position (to float summation order) and the same gradients on every LoRA weight (to 1e-6 relative)."""
    from starlora.training import causal_lm_loss, encode_examples, training_batch

    model, tok = lora_model(dropout=0.0)
    examples = [
        Example(f"e{i}", f"Question: is {i} even?\nAnswer:", "true" if i % 2 == 0 else "false", "") for i in range(5)
    ]
    ids, mask, labels = training_batch(encode_examples(tok, examples, TrainSettings()), tok.pad_token_id)
    items = int((labels[:, 1:] != -100).sum())
    losses, grads = [], []
    for path in ("hf", "answers"):
        model.zero_grad()
        with lora_sampling(model, True):
            if path == "hf":
                loss = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=items).loss
            else:
                loss = causal_lm_loss(model, model, ids, mask, labels, items)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert 0 < items < int(mask.sum()) - 5  # the prompts carry no label: the head skips them
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-9)
