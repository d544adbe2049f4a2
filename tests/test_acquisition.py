"""The base-model cache: mu_b is computed once per example, and again whenever anything that changes it changes."""

import dataclasses

from starlora.acquisition import BaseCache
from starlora.data import Example
from starlora.models import tiny_random
from starlora.scoring import ScoringSettings
from starlora.tasks import get_task

BOOLQ = get_task("boolq", template="{question}")
EXAMPLES = [Example(f"e{i}", f"Question: is {i} odd?\nAnswer:", t, t) for i, t in enumerate(["true", "false"] * 3)]
FP32 = ScoringSettings(batch_size=4, precision="fp32")


def computed(path, examples=EXAMPLES, model="tiny", task=BOOLQ, settings=FP32, reference=False):
    """How many examples a fresh cache over `path` has to score for these settings."""
    model_, tok = tiny_random()
    cache = BaseCache(path, model, task, settings, reference=reference)
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
