import math

import numpy as np
import pytest
import torch

from starlora import uncertainty as U
from starlora.errors import StarloraError


def test_me_of_uniform_logits_is_log_v_per_position():
    V, L = 50, 4
    logp, ent = U.token_logprobs_and_entropies(torch.zeros(L, V), torch.zeros(L, dtype=torch.long))
    assert torch.allclose(ent, torch.full((L,), math.log(V)))
    assert U.mean_entropy(ent.sum()) == pytest.approx(L * math.log(V))
    assert U.mean_entropy(ent.sum(), L) == pytest.approx(math.log(V))  # length-normalised: per position
    assert torch.allclose(logp, torch.full((L,), -math.log(V)))


def test_pe_of_known_logits_is_hand_computed_nll():
    # position 1: logits [ln 1, ln 3] -> p(target=1) = 3/4; position 2: [ln 1, ln 1, ln 2] -> p(target=2) = 1/2
    logits = torch.tensor([[0.0, math.log(3), -1e9], [0.0, 0.0, math.log(2)]])
    logp, _ = U.token_logprobs_and_entropies(logits, torch.tensor([1, 2]))
    expected = -(math.log(3 / 4) + math.log(1 / 2))
    assert U.predictive_entropy(logp.sum().item()) == pytest.approx(expected, rel=1e-6)
    assert U.predictive_entropy(logp.sum().item(), 2) == pytest.approx(expected / 2, rel=1e-6)
    assert U.predictive_entropy([-1.0, -4.0], [1, 2]).tolist() == [1.0, 2.0]


def test_label_measures_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    assert U.least_confidence(p) == pytest.approx([0.3, 0.5])
    assert U.margin(p) == pytest.approx([1 - 0.5, 1.0])
    assert U.entropy(p) == pytest.approx(
        [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)), math.log(2)]
    )
    assert U.label_distribution([math.log(1), math.log(3)]) == pytest.approx([0.25, 0.75])


def test_bald_is_zero_when_passes_agree_and_positive_when_they_disagree():
    agree = np.array([[[0.5, 0.5], [0.5, 0.5]]])
    disagree = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    assert U.bald(agree) == pytest.approx([0.0])
    assert U.bald(disagree) == pytest.approx([math.log(2)])  # H(mean) = ln 2, mean H = 0


def test_linear_schedule_for_ten_rounds():
    assert [round(U.mixing_weight(t, 10), 10) for t in range(9)] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]


def test_other_schedules():
    assert U.mixing_weight(2, 10, "exp:0.8:0.5") == pytest.approx(0.2)
    assert U.mixing_weight(0, 4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert U.mixing_weight(5, 10, "constant:0.3") == 0.3
    weights = [U.mixing_weight(t, 10, "cosine") for t in range(9)]
    assert weights == sorted(weights, reverse=True)
    for bad in ("linear:2", "constant:1.5", "exp:a:b", "sigmoid"):
        with pytest.raises(StarloraError, match="schedule"):
            U.mixing_weight(0, 10, bad)


def test_minmax_and_rank_normalisation():
    assert U.normalise([2.0, 4.0, 6.0]).tolist() == [0.0, 0.5, 1.0]
    assert U.normalise([3.0, 3.0]).tolist() == [0.0, 0.0]  # constant: no NaN
    assert U.normalise([10.0, -5.0, 10.0, 0.0], "rank").tolist() == [5 / 6, 0.0, 5 / 6, 1 / 3]
    with pytest.raises(StarloraError):
        U.normalise([1.0], "zscore")


def test_star_mix_and_subtract_by_hand():
    mu_b, mu_f = [0.0, 5.0, 10.0], [4.0, 2.0, 0.0]  # normalised: [0, .5, 1] and [1, .5, 0]
    assert U.star_mix(mu_b, mu_f, 0.9).tolist() == pytest.approx([0.1, 0.5, 0.9])
    assert U.star_subtract(mu_b, mu_f).tolist() == pytest.approx([1.0, 0.0, -1.0])
