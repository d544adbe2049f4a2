"""Batch-aware selection: hand-computed cases on small arrays, properties (no example twice, never a labeled one,
deterministic per seed), the embedding cache, and whole runs with coreset, badge and --diversity kmeans."""

import numpy as np
import pytest
from helpers import separated_run
from hypothesis import given, settings
from hypothesis import strategies as st

from starlora import diversity as D
from starlora.config import resolve
from starlora.errors import StarloraError
from starlora.experiment import run
from starlora.files import read_jsonl


def test_kcenter_greedy_by_hand():
    # points on a line at 0, 1, 2, 10, 11; labeled at 0. Distances to the labeled set: 0, 1, 2, 10, 11 -> pick 11
    # (index 4); then distances min(d, |x - 11|): 0, 1, 2, 1, 0 -> pick 2 (index 2); then 0, 1, 0, 1, 0 -> the
    # lowest index of the tie, 1.
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    order, before = D.kcenter_greedy(x, np.array([[0.0]]), 3)
    assert order == [4, 2, 1]
    np.testing.assert_allclose(before, [0, 1, 2, 10, 11])
    # no labeled examples: the first pick is a seeded random one, then the farthest from it
    order, before = D.kcenter_greedy(x, np.zeros((0, 1)), 2, seed=5)
    first = int(np.random.default_rng(5).integers(5))
    assert order[0] == first and order[1] == (0 if x[first, 0] > 5 else 4) and np.isnan(before).all()


def test_gradient_embeddings_by_hand():
    # p = (0.7, 0.3): y_hat = 0, residual (-0.3, 0.3); h = (1, 2) -> (-0.3, -0.6, 0.3, 0.6)
    g = D.gradient_embeddings(np.array([[0.7, 0.3]]), np.array([[1.0, 2.0]]))
    np.testing.assert_allclose(g, [[-0.3, -0.6, 0.3, 0.6]])


def test_badge_distances_from_the_factors_equal_the_embeddings():
    rng = np.random.default_rng(1)
    probs, hidden = rng.dirichlet(np.ones(3), size=7), rng.normal(size=(7, 5))
    g = D.gradient_embeddings(probs, hidden)
    r = probs.copy()
    r[np.arange(7), probs.argmax(1)] -= 1
    sq = (g**2).sum(1)
    for i in range(7):
        np.testing.assert_allclose(D.gradient_d2(r, hidden, sq, i), ((g - g[i]) ** 2).sum(1), atol=1e-12)
    np.testing.assert_allclose(D.badge(probs, hidden, 3, 0)[1], np.linalg.norm(g, axis=1), rtol=1e-12)


def test_badge_takes_one_point_from_each_far_cluster():
    # two tight clusters 100 apart: once a point of one is chosen, the other cluster holds all but ~1e-6 of the D² mass
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.01, (10, 3)), rng.normal(100, 0.01, (10, 3))])
    probs = np.tile([0.7, 0.3], (20, 1))  # one residual for all: g = (-0.3, 0.3) outer h keeps the clusters apart
    for seed in range(5):
        a, b = D.badge(probs, x, 2, seed)[0]
        assert (a < 10) != (b < 10)
    # a point that coincides with a chosen one is never drawn while others are left: 3 distinct points, 2 copies
    same = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    for seed in range(10):
        picks = D.badge(np.tile([0.9, 0.1], (5, 1)), same, 4, seed)[0]
        assert len({tuple(same[i]) for i in picks[:3]}) == 3 and len(set(picks)) == 4


def test_cluster_spread_trades_score_for_spread():
    # scores favour three near-duplicates at 0; with beta 2 and k 2 the 4 best are clustered into 2 groups
    # ({0, 0.01, 0.02} and {5}), and each group's best goes in: index 0 (score 10) and index 3 (score 7)
    x = np.array([[0.0], [0.01], [0.02], [5.0], [9.0]])
    scores = np.array([10.0, 9.0, 8.0, 7.0, 1.0])
    assert D.cluster_spread(scores, x, 2, beta=1.0) == [0, 1]  # beta 1: the plain top 2
    assert D.cluster_spread(scores, x, 2, beta=2.0) == [0, 3]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), k=st.integers(1, 12), seed=st.integers(0, 3), data_seed=st.integers(0, 100))
def test_selection_properties(n, k, seed, data_seed):
    rng = np.random.default_rng(data_seed)
    x = rng.normal(size=(n, 4)).round(1)  # rounding makes duplicate points likely
    scores = rng.random(n)
    probs = rng.dirichlet(np.ones(2), size=n).round(1)
    labeled = rng.normal(size=(3, 4))
    picks = [
        D.kcenter_greedy(x, labeled, k, seed)[0],
        D.kcenter_greedy(x, labeled[:0], k, seed)[0],
        D.badge(probs, x, k, seed)[0],
        D.cluster_spread(scores, x, k, 3.0, seed),
    ]
    again = [
        D.kcenter_greedy(x, labeled, k, seed)[0],
        D.kcenter_greedy(x, labeled[:0], k, seed)[0],
        D.badge(probs, x, k, seed)[0],
        D.cluster_spread(scores, x, k, 3.0, seed),
    ]
    for p in picks:
        assert len(p) == min(n, k) and len(set(p)) == len(p) and all(0 <= i < n for i in p)
    assert picks == again  # deterministic per seed, core-set with and without a labeled set too
    # the defining properties: cluster-spread picks among the ceil(beta k) best scores only; each core-set pick is
    # (up to ties) the candidate farthest from the labeled set and the picks before it
    assert set(picks[3]) <= set(np.argsort(-scores)[: int(np.ceil(3.0 * k))])
    nearest = np.linalg.norm(x[:, None] - labeled[None], axis=2).min(1)
    for i in picks[0]:
        assert nearest[i] == pytest.approx(nearest.max())
        nearest = np.minimum(nearest, np.linalg.norm(x - x[i], axis=1))
        nearest[i] = -np.inf


def test_cluster_spread_takes_exactly_ceil_beta_k():
    # 1.1 * 100 is 110.00000000000001 in floats: the 111th best (far from the rest, so any clustering of it would
    # pick it) must stay out
    x = np.arange(200, dtype=float)[:, None]
    x[110] = 1e6
    picks = D.cluster_spread(-np.arange(200.0), x, 100, beta=1.1)
    assert len(picks) == 100 and max(picks) < 110


def small_run(tmp_path, **kw):
    cfg = resolve("paper", **separated_run(tmp_path, 40, 8, **kw))
    out = tmp_path / "run"
    run(cfg, out)
    return out, read_jsonl(out / "rounds.jsonl")


@pytest.mark.parametrize(
    "kw",
    [
        dict(strategy="coreset"),
        dict(strategy="badge"),
        dict(strategy="star-me", diversity="kmeans", diversity_beta=2.0),
    ],
)
def test_runs_with_batch_aware_strategies(tmp_path, kw):
    out, rounds = small_run(tmp_path, **kw)
    labeled = [i for r in rounds for i in r["added"]]
    probe = set(__import__("json").loads((out / "probe" / "base.json").read_text()))
    assert len(labeled) == len(set(labeled)) == 6 + 5 + 5 and not probe & set(labeled)
    for r in rounds[:-1]:
        assert len(r["selected"]) == 5
    embedded = read_jsonl(out / "embeddings.jsonl")
    assert len({e["key"] for e in embedded}) == len(embedded)  # each example embedded once, cached after
    scores = read_jsonl(out / "scores" / "round_0.jsonl")
    if kw["strategy"] == "coreset":  # the recorded mu is the distance to the labeled set; the first pick the farthest
        by_id = {s["id"]: s["mu"] for s in scores}
        assert by_id[rounds[0]["selected"][0]] == max(by_id.values())


def test_diversity_refused_with_a_batch_aware_strategy():
    with pytest.raises(StarloraError, match="already picks its batch"):
        resolve("paper", strategy="coreset", diversity="kmeans")


@pytest.mark.parametrize("kw", [dict(strategy="coreset"), dict(strategy="me", diversity="kmeans")])
def test_human_loop_queries_batch_aware_from_the_first_query_on(tmp_path, kw):
    import json

    from starlora import project as P

    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "question": f"Is {i} {'odd' if i % 2 else 'even'}?", "passage": "p"}) + "\n"
            for i in range(16)
        )
    )
    cfg = resolve("paper", P.MethodConfig, model="tiny-random", task="boolq", epochs=1, batch_size=2, lora_r=4, **kw)
    proj = P.init(tmp_path / "proj", cfg, pool).folder
    asked = []
    for _ in range(2):
        rows = read_jsonl(P.query(proj, 4, "jsonl"))
        asked += [r["id"] for r in rows]
        labels = tmp_path / "labels.jsonl"
        labels.write_text("".join(json.dumps({"id": r["id"], "answer": "yes"}) + "\n" for r in rows))
        P.label(proj, labels)
        P.train(proj)
    assert len(asked) == len(set(asked)) == 8  # never asked twice, never an already labeled one
    queries = read_jsonl(proj / "queries.jsonl")
    name = kw["strategy"]
    assert queries[0]["how"].startswith(f"{name} on the base model" if name == "coreset" else "base-model me")
    assert queries[1]["how"].startswith(f"{name} with round 0's adapter")
    assert ("k-means" in queries[1]["how"]) == ("diversity" in kw)
    assert len(read_jsonl(proj / "embeddings.jsonl")) == 16  # every candidate of the first query, once


def test_kmeans_representatives_by_hand():
    # three well-separated groups; each representative is the member nearest its centroid (the middle one)
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0], [20.0], [21.0], [22.0]])
    assert sorted(D.kmeans_representatives(x, 3, seed=0)) == [1, 4, 7]


def test_cold_start_by_kmeans_in_a_run_and_the_human_loop(tmp_path):
    import base64
    import json

    from starlora import project as P

    out, rounds = small_run(tmp_path, strategy="random", cold_start="kmeans", stop_set_size=5)
    random_out, random_rounds = small_run(tmp_path / "r", strategy="random", stop_set_size=5)
    assert len(rounds[0]["added"]) == 6 and rounds[0]["added"] != random_rounds[0]["added"]
    assert (out / "embeddings.jsonl").exists() and not (random_out / "embeddings.jsonl").exists()
    # the initial set is k-means' representatives over the pool (file order) without the probe and the stop set
    vectors = {
        e["key"].split("|")[1]: np.frombuffer(base64.b64decode(e["embedding"]), dtype=np.float32)
        for e in read_jsonl(out / "embeddings.jsonl")
    }
    kept_out = set(json.loads((out / "probe" / "base.json").read_text()))
    kept_out |= set(json.loads((out / "stop" / "round_0.json").read_text())["ids"])
    rest = [r["id"] for r in read_jsonl(tmp_path / "train.jsonl") if r["id"] not in kept_out]
    assert sorted(vectors) == sorted(rest)  # nothing else was embedded
    want = [rest[i] for i in D.kmeans_representatives(np.stack([vectors[i] for i in rest]), 6, seed=0)]
    assert rounds[0]["added"] == want
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": f"Q{i}?", "passage": "p"}) + "\n" for i in range(12))
    )
    cfg = resolve("paper", P.MethodConfig, model="tiny-random", task="boolq", cold_start="kmeans")
    proj = P.init(tmp_path / "proj", cfg, pool).folder
    assert len(read_jsonl(P.query(proj, 3, "jsonl"))) == 3
    assert read_jsonl(proj / "queries.jsonl")[0]["how"] == "k-means cold start"


def test_variants_name_sweep_folders_and_report_rows(tmp_path):
    """star-me with --diversity is its own row next to star-me, paired with random of the same seed."""
    from starlora.config import variant
    from starlora.sweep import plan

    assert variant(resolve("paper", strategy="star-me")) == "star-me"
    assert variant(resolve("paper", strategy="star-me", diversity="kmeans")) == "star-me+kmeans"
    assert variant({"strategy": "me", "diversity": "kmeans", "diversity_beta": 5.0}) == "me+kmeans(beta 5)"
    assert variant({"strategy": "random", "cold_start": "kmeans"}) == "random+cold-kmeans"
    assert variant({"strategy": "me"}) == "me"  # a folder from before these options
    blocks = [
        {"tasks": ["sst2"], "protocol": "sst2", "strategies": ["random", "star-me"], "seeds": [0]},
        {
            "tasks": ["sst2"],
            "protocol": "sst2",
            "strategies": ["star-me"],
            "seeds": [0],
            "config": {"diversity": "kmeans"},
        },
    ]
    folders = [str(j.folder.relative_to(tmp_path)) for j in plan(blocks, tmp_path)]
    assert folders == ["sst2/random/seed0", "sst2/star-me/seed0", "sst2/star-me+kmeans/seed0"]


def test_embeddings_ignore_padding_and_are_cached_per_model_and_prompt(tmp_path, tiny):
    import torch

    from starlora.data import Example
    from starlora.embeddings import EmbeddingCache, embed
    from starlora.scoring import ScoringSettings
    from starlora.tasks import get_task

    model, tokenizer = tiny
    short, long = Example("a", "Is it?", "", None), Example("b", "Is it " + "very " * 30 + "blue?", "", None)
    alone = embed(model, tokenizer, [short], desc=None)
    padded = embed(model, tokenizer, [short, long], desc=None)  # one batch: the short prompt right-padded
    np.testing.assert_allclose(padded[0], alone[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # by definition: the mean of the last hidden state over the prompt's own tokens
        ids = torch.tensor([tokenizer("Is it?")["input_ids"]])
        want = model.get_decoder()(input_ids=ids).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(alone[0], want, rtol=1e-4, atol=1e-5)
    # bf16 weights (--dtype bf16): the mean is still taken in fp32; a bf16 token count reads 301 tokens as 300
    from starlora.models import tiny_random

    half, _ = tiny_random(dtype="bf16")
    long_prompt = Example("c", "word " * 60 + "end?", "", None)
    ids = tokenizer(long_prompt.prompt)["input_ids"]
    assert len(ids) > 256
    with torch.no_grad():
        mask = torch.ones(1, len(ids), dtype=torch.long)  # as embed() calls it: the same attention kernels
        hidden = half.get_decoder()(input_ids=torch.tensor([ids]), attention_mask=mask).last_hidden_state[0]
    assert hidden.dtype == torch.bfloat16
    want = hidden.float().sum(0).numpy() / len(ids)
    got = embed(half, tokenizer, [long_prompt], max_prompt_tokens=512, desc=None)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    task, path = get_task("boolq"), tmp_path / "embeddings.jsonl"
    cache = EmbeddingCache(path, "tiny", task, ScoringSettings())
    first = cache.get(model, tokenizer, [short, long])
    assert cache.computed == 2 and first.shape == (2, alone.shape[1])
    np.testing.assert_array_equal(cache.get(model, tokenizer, [long, short]), first[::-1])  # from memory
    cache.get(model, tokenizer, [Example("a", "Is it not?", "", None)])  # same id, another prompt: embedded anew
    assert cache.computed == 3
    reopened = EmbeddingCache(path, "tiny", task, ScoringSettings())
    np.testing.assert_array_equal(reopened.get(model, tokenizer, [short]), first[:1])
    assert reopened.computed == 0  # read back from disk
    other = EmbeddingCache(path, "another-model", task, ScoringSettings())
    other.get(model, tokenizer, [short])
    assert other.computed == 1  # another model's embeddings are never reused
