"""Training one round: a fresh, seeded LoRA adapter (PEFT) or full fine-tuning, loss on the answer tokens only.

STAR's regulariser is decoupled weight decay on the lora_B parameters only (AdamW parameter groups). The linear LR
schedule is sized from the real number of optimiser steps, so the last round trains as hard as the first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from transformers import get_linear_schedule_with_warmup

from .models import LORA_TARGETS
from .scoring import encode_answer, encode_prompt, progress


@dataclass(frozen=True)
class TrainSettings:
    mode: str = "lora"  # "lora" or "full" (all parameters; the paper's Fig. 1 comparison)
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    targets: tuple[str, ...] = tuple(LORA_TARGETS)
    lr: float = 1.5e-4
    epochs: int = 3
    batch_size: int = 8
    b_decay: float = 0.0  # STAR's beta; strategies without STAR's regulariser train with 0
    seed: int = 0
    max_prompt_tokens: int = 128
    max_answer_tokens: int = 256


def attach_lora(base, settings: TrainSettings):
    """Wrap `base` in a fresh adapter; the same seed gives the same initial A matrices every round (B starts at 0)."""
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=list(settings.targets), task_type="CAUSAL_LM")
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        model = get_peft_model(base, config)
    return model.eval()  # like every model we hand out; train() switches modes itself


def make_optimizer(model, lr: float, b_decay: float) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay b_decay on lora_B parameters and 0 on everything else that trains."""
    decay, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if "lora_B" in name else rest).append(param)
    groups = [{"params": decay, "weight_decay": b_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def training_batch(pairs, pad_id: int):
    """Right-pad (prompt_ids, answer_ids) pairs to the batch's longest; labels are -100 except on answer tokens."""
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (prompt, answer) in enumerate(pairs):
        n = len(prompt) + len(answer)
        ids[r, :n] = torch.tensor(prompt + answer)
        mask[r, :n] = 1
        labels[r, len(prompt):n] = torch.tensor(answer)
    return ids, mask, labels


def encode_examples(tokenizer, examples, settings: TrainSettings):
    return [(encode_prompt(tokenizer, ex.prompt, settings.max_prompt_tokens),
             encode_answer(tokenizer, ex.target, settings.max_answer_tokens, eos=True)) for ex in examples]


def train(model, tokenizer, examples, settings: TrainSettings, desc: str = "training") -> dict:
    """Train `model` in place (its trainable parameters) on examples; returns {'loss', 'steps', 'seconds'}."""
    pairs = encode_examples(tokenizer, examples, settings)
    steps_per_epoch = math.ceil(len(pairs) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = make_optimizer(model, settings.lr, settings.b_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=total)
    generator = torch.Generator().manual_seed(settings.seed)
    device = next(model.parameters()).device
    start, losses = time.time(), []
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)  # dropout masks during training
        bar = progress(total=total, desc=desc, leave=False)
        for _ in range(settings.epochs):
            for idx in torch.randperm(len(pairs), generator=generator).split(settings.batch_size):
                ids, mask, labels = training_batch([pairs[i] for i in idx], tokenizer.pad_token_id)
                loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
    model.eval()
    return {"loss": sum(losses[-steps_per_epoch:]) / max(1, min(len(losses), steps_per_epoch)), "steps": total,
            "seconds": time.time() - start}
