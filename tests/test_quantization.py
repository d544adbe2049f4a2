"""4-bit and 8-bit base weights (bitsandbytes) on the tiny model: close to fp32, frozen, LoRA trainable in fp32, and
the same LoRA gradients whether or not a scoring pass ran first (bitsandbytes' CPU repacking once broke that)."""

import pytest
import torch

pytest.importorskip("bitsandbytes")

from starlora.config import resolve  # noqa: E402
from starlora.data import Example  # noqa: E402
from starlora.errors import StarloraError  # noqa: E402
from starlora.models import load_model  # noqa: E402
from starlora.scoring import score  # noqa: E402
from starlora.tasks import get_task  # noqa: E402
from starlora.training import TrainSettings, attach_lora, encode_examples, training_batch  # noqa: E402

EXAMPLES = [
    Example(f"e{i}", f"Question: is {i} even?\nAnswer:", ["no", "yes"][i % 2], ["no", "yes"][i % 2]) for i in range(8)
]
SETTINGS = TrainSettings(lora_r=4, lora_alpha=8, lora_dropout=0.0, seed=1)


def lora_grads(quantization: str, score_first: bool) -> dict:
    base, tok = load_model("tiny-random", quantization=quantization)
    model = attach_lora(base, SETTINGS)
    if score_first:  # an eval-mode, no-grad forward, as every acquisition round runs before the next training
        score(model, tok, get_task("boolq"), EXAMPLES)
    ids, mask, labels = training_batch(encode_examples(tok, EXAMPLES, SETTINGS), tok.pad_token_id)
    model.train()
    torch.manual_seed(0)  # the tiny model's attention dropout draws in train mode
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_base_is_frozen_close_to_fp32_and_trains_lora_the_same_after_scoring(quantization):
    import bitsandbytes as bnb

    base, tok = load_model("tiny-random", quantization=quantization)
    layer = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    assert sum(isinstance(m, layer) for m in base.modules()) == 2 * 7  # 2 layers x the 7 projections
    full, _ = load_model("tiny-random")
    ids = torch.tensor([tok("Question: is 3 even?\nAnswer: no")["input_ids"]])
    with torch.no_grad():
        a, b = full(input_ids=ids).logits, base(input_ids=ids).logits
    # quantization error on the random 32-wide model, measured: mean |error| / std 0.086 (4-bit), 0.003 (8-bit)
    assert (a - b).abs().mean() < (0.2 if quantization == "4bit" else 0.02) * a.std()
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.98
    model = attach_lora(base, SETTINGS)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    fresh, after_scoring = lora_grads(quantization, False), lora_grads(quantization, True)
    assert fresh.keys() == after_scoring.keys() and fresh
    for name in fresh:  # same weights, same batch: the same gradients (to float rounding)
        torch.testing.assert_close(after_scoring[name], fresh[name], rtol=1e-4, atol=1e-6)


def test_quantization_refusals(monkeypatch):
    with pytest.raises(StarloraError, match="--mode full trains every weight"):
        resolve("paper", mode="full", dtype="fp32", quantization="4bit")
    from starlora import models

    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StarloraError, match=r"needs bitsandbytes: pip install 'starlora\[qlora\]'"):
        load_model("tiny-random", quantization="4bit")


def test_memory_estimate_counts_quantized_projections():
    from transformers import LlamaConfig

    from starlora.memory import estimate, projection_parameters

    seven_b = LlamaConfig()  # Llama-2-7B: 32 layers x (4 x 4096² + 3 x 4096 x 11008) projection weights
    projections = projection_parameters(seven_b)
    assert projections == 32 * (4 * 4096**2 + 3 * 4096 * 11008)
    bf16 = estimate(resolve(dtype="bf16"), seven_b)
    nf4 = estimate(resolve(dtype="bf16", quantization="4bit"), seven_b)
    assert bf16.weights - nf4.weights == int(projections * (2 - 0.5625))
    assert nf4.training_state == bf16.training_state  # the adapter and AdamW stay fp32
