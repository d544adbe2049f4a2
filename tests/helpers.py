"""Shared test helpers: a tiny LoRA model whose adapter has an effect, and data whose uncertainties are well apart."""

import json
import random
from pathlib import Path

import torch

from starlora.models import tiny_random
from starlora.training import TrainSettings, attach_lora


def lora_model(dropout: float = 0.1, seed: int = 0):
    """The tiny model with a fresh adapter whose B is random (it starts at zero): dropout on the LoRA path, its
    decay and disabling it all change the output."""
    base, tok = tiny_random()
    model = attach_lora(base, TrainSettings(lora_r=4, lora_alpha=8, lora_dropout=dropout, seed=seed))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model, tok


def separated_inputs(folder: Path, n_train: int, n_test: int) -> dict:
    """A tiny LLaMA with its output layer scaled up (confident, prompt-dependent predictions) saved to folder/model,
    and train/test files of prompts with very different lengths and alphabets, so candidates' uncertainties spread
    over several nats instead of sitting within float rounding of each other (where another summation order -- two
    processes, another machine -- would reorder near-ties). Returns the run configuration keys that use them."""
    model, tok = tiny_random()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    rng = random.Random(0)
    alphabets = ["abcdefghij", "0123456789", "XYZ!?.,;", "thequickbrownfox", "a\n\tb "]
    for name, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            alphabet = rng.choice(alphabets)
            text = "Q" + "".join(rng.choice(alphabet) for _ in range(rng.choice([3, 8, 20, 45, 90])))
            rows.append({"id": f"{name}{i}", "question": text, "answer": rng.choice(["true", "false"])})
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dict(
        model=str(folder / "model"), train_file=str(folder / "train.jsonl"), test_file=str(folder / "test.jsonl")
    )


def separated_run(folder: Path, n_train: int, n_test: int, **overrides) -> dict:
    """The small run the logic tests share, as `resolve` keys: separated_inputs' model and files, BoolQ, me, 3 rounds
    from 6 labels in queries of 5, LoRA r 4, fp32; `overrides` change any key."""
    return {
        **separated_inputs(folder, n_train, n_test),
        "task": "boolq",
        "strategy": "me",
        "init_size": 6,
        "query_size": 5,
        "rounds": 3,
        "epochs": 1,
        "batch_size": 4,
        "seed": 0,
        "probe_size": 4,
        "lora_r": 4,
        "score_batch_size": 16,
        "precision": "fp32",
        **overrides,
    }
