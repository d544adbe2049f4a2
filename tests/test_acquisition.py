"""The base-model cache: mu_b is computed once per example, and again whenever anything that changes it changes; its
file only grows, keeps what an interrupted run scored, and the old single-object format is still read."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from starlora import acquisition as A
from starlora.acquisition import BaseScoreCache
from starlora.cache import ExampleCache
from starlora.data import Example
from starlora.files import read_jsonl
from starlora.models import tiny_random
from starlora.scoring import ScoringSettings
from starlora.tasks import get_task

BOOLQ = get_task("boolq", template="{question}")
EXAMPLES = [Example(f"e{i}", f"Question: is {i} odd?\nAnswer:", t, t) for i, t in enumerate(["true", "false"] * 3)]
FP32 = ScoringSettings(batch_size=4, precision="fp32")


def computed(path, examples=EXAMPLES, model="tiny", task=BOOLQ, settings=FP32, reference=False):
    """How many examples a fresh cache over `path` has to score for these settings."""
    model_, tok = tiny_random()
    cache = BaseScoreCache(path, model, task, settings, reference=reference)
    cache.get(model_, tok, examples)
    return cache.computed


def test_the_cache_key_covers_everything_that_changes_mu_b(tmp_path):
    path = tmp_path / "base.json"
    assert computed(path) == 6
    assert computed(path) == 0  # read back from disk: a resumed run scores nothing
    assert computed(path, model="other") == 6
    assert computed(path, settings=dataclasses.replace(FP32, precision="bf16")) == 6
    assert computed(path, settings=dataclasses.replace(FP32, max_prompt_tokens=8)) == 6
    assert computed(path, settings=dataclasses.replace(FP32, max_new_tokens=9)) == 6
    assert computed(path, settings=dataclasses.replace(FP32, batch_size=1)) == 0  # batching does not change mu_b
    assert computed(path, task=get_task("closed", ["true", "false", "maybe"], "{question}")) == 6
    assert computed(path, reference=True) == 6  # scores the gold answers instead
    edited = [dataclasses.replace(ex, prompt="Q: " + ex.prompt) if i < 2 else ex for i, ex in enumerate(EXAMPLES)]
    assert computed(path, examples=edited) == 2  # a changed prompt (template, data file) under the same id


def test_the_cache_file_only_grows_and_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "base_scores.jsonl"
    assert computed(path, examples=EXAMPLES[:4]) == 4
    first = path.read_bytes()
    assert len(first.splitlines()) == 4  # one line per scored example
    with open(path, "ab") as f:
        f.write(b'{"key": "a kill mid-app')
    assert computed(path, examples=EXAMPLES[:4]) == 0  # the complete lines are read, the torn one ignored
    assert computed(path) == 2  # only the new examples are scored and appended, after the torn line is cut
    grown = path.read_bytes()
    assert grown.startswith(first) and len(grown.splitlines()) == 6  # earlier bytes never rewritten
    assert [set(r) >= {"key", "me", "pe"} for r in read_jsonl(path)] == [True] * 6


def test_an_interrupted_scoring_keeps_the_chunks_it_finished(tmp_path, monkeypatch):
    path, real, calls = tmp_path / "base_scores.jsonl", A.score, []

    def score(*args, **kwargs):  # killed while scoring the second chunk
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ExampleCache, "CHUNK", 4)
    monkeypatch.setattr(A, "score", score)
    with pytest.raises(KeyboardInterrupt):
        computed(path)
    assert len(read_jsonl(path)) == 4  # the first chunk was appended as soon as it was scored
    monkeypatch.setattr(A, "score", real)
    assert computed(path) == 2


def test_an_old_single_object_cache_file_is_still_read_and_never_written(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    model, tok = tiny_random()
    fresh = BaseScoreCache(tmp_path / "new" / "base_scores.jsonl", "tiny", BOOLQ, FP32)
    expected = fresh.get(model, tok, EXAMPLES)
    old = json.dumps({r.pop("key"): r for r in read_jsonl(tmp_path / "new" / "base_scores.jsonl")})
    (tmp_path / "old" / "base_scores.json").write_text(old)  # the format before the cache was JSON lines
    for name in ("base_scores.jsonl", "base_scores.json"):  # the old name means the new file beside it
        cache = BaseScoreCache(tmp_path / "old" / name, "tiny", BOOLQ, FP32)
        got = cache.get(model, tok, EXAMPLES)
        assert cache.computed == 0 and all(np.array_equal(got[k], expected[k]) for k in expected)
    assert computed(tmp_path / "old" / "base_scores.jsonl", examples=[dataclasses.replace(EXAMPLES[0], id="n")]) == 1
    assert (tmp_path / "old" / "base_scores.json").read_text() == old
    assert len(read_jsonl(tmp_path / "old" / "base_scores.jsonl")) == 1  # new entries go to the JSON-lines file


def test_large_pools_are_scored_in_chunks_with_the_same_deterministic_scores(monkeypatch):
    """Pools above CHUNK are scored chunk by chunk (a bounded working set): the deterministic measures equal one
    unchunked call's (to float rounding: other batches), MC-dropout scores are reproducible per seed and round, and
    the chunks draw different masks."""
    from starlora.strategies import get_strategy
    from starlora.training import TrainSettings, attach_lora

    base, tok = tiny_random()
    model = attach_lora(base, TrainSettings(lora_r=4, seed=2))
    for p in model.parameters():  # a trained-looking adapter: B != 0, so the LoRA path changes the scores
        if p.requires_grad:
            p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    pool = [Example(f"p{i}", f"Question: is {i} odd?\nAnswer:", "", None) for i in range(12)]

    def scores(strategy, chunk):
        monkeypatch.setattr(ExampleCache, "CHUNK", chunk)
        return A.acquisition_scores(
            get_strategy(strategy),
            model,
            tok,
            BOOLQ,
            pool,
            t=1,
            rounds=3,
            passes=3,
            base_cache=BaseScoreCache(None, "tiny", BOOLQ, FP32),
            settings=FP32,
            seed=0,
        )

    whole, chunked = scores("me", 4096), scores("me", 5)
    np.testing.assert_allclose(chunked["mu_f"], whole["mu_f"], rtol=1e-5, atol=1e-7)
    mc = scores("star-me", 5)
    np.testing.assert_array_equal(mc["mu"], scores("star-me", 5)["mu"])  # same seed, round and chunking
    # one prompt everywhere: chunks 1 and 2 (rows 0-4, 5-9, batched alike) differ only by their masks
    pool[:] = [dataclasses.replace(ex, prompt=pool[0].prompt) for ex in pool]
    same = scores("star-me", 5)["mu_f"]
    assert not np.allclose(same[:5], same[5:10])  # chunk 2 does not reuse chunk 1's masks
