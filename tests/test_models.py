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
    # the GGUF's own special tokens (transformers 5.17.0 read eos as <|im_start|>; load_model refuses that)
    assert (
        models.gguf_special_tokens(models.embedded_gguf_folder() / models.GGUF_FILE) == models.EMBEDDED_SPECIAL_TOKENS
    )
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.bos_token) == ("<|im_end|>", 2, 2, "<|im_start|>")
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


def gguf_with_special_tokens(path, bos, eos, pad):
    """A GGUF file with no tensors and only the special-token metadata, written by the gguf library itself."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(pad)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_special_tokens_that_differ_from_the_gguf_file_are_found(tmp_path):
    tok = models.tiny_tokenizer()  # <pad> 0, <s> 1, </s> 2
    agrees = gguf_with_special_tokens(tmp_path / "agrees.gguf", bos=1, eos=2, pad=0)
    assert models.gguf_special_tokens(agrees) == {"bos": 1, "eos": 2, "pad": 0}
    assert models.special_token_mismatches(tok, models.gguf_special_tokens(agrees)) == []
    # transformers 5.17.0 read SmolLM2's GGUF this way round: its eos as the file's bos, and no pad
    assert models.special_token_mismatches(tok, {"bos": 1, "eos": 1, "pad": 0}) == [
        "eos id 2 </s> where the file says 1 <s>"
    ]
    tok.pad_token = None
    assert models.special_token_mismatches(tok, {"pad": 0}) == ["pad unset where the file says 0 <pad>"]


def test_a_cache_converted_by_a_misreading_transformers_is_refused_naming_the_folder(tmp_path, monkeypatch):
    model, tok = models.tiny_random()
    folder = tmp_path / "cache" / "models" / "smollm2-135m-instruct"  # where the embedded model's conversion lives
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    monkeypatch.setattr(models, "EMBEDDED_SPECIAL_TOKENS", {"bos": 1, "eos": 1, "pad": 0})  # as 5.17.0 reads them
    with pytest.raises(StarloraError) as raised:
        models.load_model("smollm2", tmp_path / "cache")
    assert str(raised.value) == (
        f"the converted model in {folder} has special tokens that differ from {models.GGUF_FILE}'s "
        "(eos id 2 </s> where the file says 1 <s>): delete that folder, and it is converted again by a "
        "transformers other than 5.17.0"
    )


def test_a_transformers_that_misreads_the_gguf_file_converts_nothing(tmp_path, monkeypatch):
    import transformers

    (tmp_path / "pkg").mkdir()
    gguf_with_special_tokens(tmp_path / "pkg" / models.GGUF_FILE, bos=1, eos=1, pad=0)
    monkeypatch.setattr(models, "embedded_gguf_folder", lambda: tmp_path / "pkg")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: models.tiny_tokenizer())
    with pytest.raises(StarloraError, match=rf"^transformers {transformers.__version__} misread the special tokens"):
        models.load_model("smollm2", tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no half-converted cache left behind
