import numpy as np
import pytest

from starlora.errors import StarloraError
from starlora.strategies import STRATEGIES, get_strategy, measure_key, select


def test_strategy_table():
    star = get_strategy("star-me")
    assert (star.measure.name, star.combine.name, star.b_decay, star.mc_dropout) == ("me", "mix", True, True)
    assert not get_strategy("me").b_decay and not get_strategy("me").mc_dropout  # baselines: no STAR regulariser
    assert get_strategy("star-pe-subtract").combine.name == "subtract"
    assert get_strategy("star-me-no-dynamic").combine.name == "lora" and get_strategy("star-me-no-dynamic").b_decay
    assert not get_strategy("star-me-no-decay").b_decay and get_strategy("star-me-no-decay").mc_dropout
    assert not get_strategy("star-me-no-mcd").mc_dropout and get_strategy("star-me-no-mcd").b_decay
    assert measure_key(get_strategy("star-pe"), True) == "pe_norm" and measure_key(get_strategy("lc"), True) == "lc"
    assert {"random", "pe", "me", "lc", "margin", "entropy", "bald"} <= set(STRATEGIES)


def test_unknown_or_unsuitable_strategy():
    with pytest.raises(StarloraError, match="unknown --strategy"):
        get_strategy("kcenter")
    with pytest.raises(StarloraError, match="closed-set"):
        get_strategy("margin", closed_task=False)
    with pytest.raises(StarloraError, match="closed-set"):
        get_strategy("badge", closed_task=False)  # its gradient embedding is over the label distribution
    assert get_strategy("coreset", closed_task=False).pick.name == "coreset"


def test_star_scores_use_the_round_weight():
    star = get_strategy("star-me")
    mu = star.scores([0.0, 10.0], [1.0, 0.0], t=0, rounds=10)  # lambda = 0.9: 0.9*[0,1] + 0.1*[1,0]
    assert mu.tolist() == pytest.approx([0.1, 0.9])
    assert star.scores([0.0, 10.0], [1.0, 0.0], t=8, rounds=10).tolist() == pytest.approx([0.9, 0.1])


def test_select_never_returns_labeled_and_breaks_ties_by_seed():
    ids = ["a", "b", "c", "d", "e"]
    scores = [5.0, 9.0, 9.0, 9.0, np.nan]
    picked = select(ids, scores, 2, labeled={"b"}, seed=0)
    assert "b" not in picked and set(picked) <= {"c", "d"} and len(picked) == 2
    assert picked == select(ids, scores, 2, labeled={"b"}, seed=0)
    orders = {tuple(select(ids, [1.0] * 5, 5, set(), seed=s)) for s in range(10)}
    assert len(orders) > 1  # the seed decides ties
    assert select(ids, scores, 10, labeled={"a", "b"}, seed=0)[-1] == "e"  # NaN scores go last, never first
    assert select(["a"], [1.0], 3, labeled={"a"}, seed=0) == []
