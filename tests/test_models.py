import numpy as np
import pytest
import torch

from starlora import models
from starlora.errors import StarloraError


def test_tiny_random_is_seeded_and_has_the_seven_projections():
    (m1, tok), (m2, _) = models.tiny_random(), models.tiny_random()
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    names = {n.split(".")[-1] for n, _ in m1.named_modules()}
    assert set(models.LORA_TARGETS) <= names
    assert tok.decode(tok("Héllo?\nAnswer: true")["input_ids"]) == "Héllo?\nAnswer: true"
    assert not m1.training


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("STARLORA_CACHE", str(tmp_path / "env"))
    assert models.cache_dir() == tmp_path / "env"
    assert models.cache_dir(tmp_path / "opt") == tmp_path / "opt"
    monkeypatch.delenv("STARLORA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "starlora"


def test_cached_conversion_runs_once_and_is_reused(tmp_path):
    calls = []

    def convert(out):
        calls.append(out)
        model, tok = models.tiny_random()
        model.save_pretrained(out)
        tok.save_pretrained(out)

    target = tmp_path / "cache" / "models" / "m"
    assert models.cached_conversion(target, convert) == target
    assert models.cached_conversion(target, convert) == target
    assert len(calls) == 1 and (target / "config.json").exists()
    model, tok = models.load_model(str(target))  # the converted copy loads as an ordinary HF folder
    assert model.config.vocab_size == len(tok)


def test_failed_conversion_leaves_no_cache(tmp_path):
    def broken(out):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        models.cached_conversion(tmp_path / "m", broken)
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_is_one_clear_error(tmp_path):
    with pytest.raises(StarloraError, match="unknown model"):
        models.load_model(str(tmp_path / "no-such-model"))


@pytest.mark.slow
def test_embedded_model_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    calls = []
    real = models._convert_embedded
    monkeypatch.setattr(models, "_convert_embedded", lambda out: (calls.append(out), real(out)))
    model, tok = models.load_model("smollm2", tmp_path)
    assert (tmp_path / "models/smollm2-135m-instruct/model.safetensors").exists()
    again, _ = models.load_model("smollm2", tmp_path)
    assert len(calls) == 1
    assert model.config.num_hidden_layers == 30 and sum(p.numel() for p in again.parameters()) == 134_515_008
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)

    # BoolQ's " true"/" false" are one token each: scoring takes the one-forward path; it matches the official way
    from starlora.bench import naive_answer_stats
    from starlora.data import Example
    from starlora.scoring import score
    from starlora.tasks import get_task
    from starlora.tokens import encode_answer, encode_prompt

    task = get_task("boolq")
    assert all(len(encode_answer(tok, c, 8)) == 1 for c in task.candidates)
    examples = [
        Example(str(i), task.prompt({"question": q}), "true", "true")
        for i, q in enumerate(["is the sky blue", "can a fish climb a tree", "is paris in france"])
    ]
    fast = score(model, tok, task, examples)
    naive = naive_answer_stats(
        model,
        [(encode_prompt(tok, ex.prompt, 128), encode_answer(tok, c, 8)) for ex in examples for c in task.candidates],
    ).reshape(3, 2, 2)
    y_hat = naive[:, :, 0].argmax(1)
    assert fast.predictions == [task.candidates[j] for j in y_hat]
    np.testing.assert_allclose(fast.measures["me"], naive[range(3), y_hat, 1], rtol=1e-4)
