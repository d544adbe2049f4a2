"""Training one round: a fresh, seeded LoRA adapter (PEFT) or full fine-tuning, loss on the answer tokens only.

STAR's regulariser is decoupled weight decay on the lora_B parameters only (AdamW parameter groups). The linear LR
schedule is sized from the real number of optimiser steps, so the last round trains as hard as the first. Batches
group similar lengths and pad to their own longest. Under `accelerate launch` the model is wrapped in torch's
DistributedDataParallel (or is sharded, parallel.shard) and each process takes rows of every batch, and gradient
accumulation cuts a process's rows into micro-batches; either way the loss is normalised by the whole batch's token
count and the dropout masks are drawn for the whole batch, so N processes or N micro-batches compute what one batch
does.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import get_linear_schedule_with_warmup

from . import parallel
from .errors import StarloraError
from .hardware import autocast
from .masks import BatchDropout, lora_sampling, swap_lora_dropout
from .models import LORA_TARGETS
from .progress import progress
from .scoring import answer_logits
from .tokens import answer_prefix, encode_answer, encode_prompt


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
    group_by_length: bool = True  # batches of similar length (less padding); False: plain random batches
    precision: str = "fp32"  # or "bf16": autocast over fp32 master weights
    gradient_accumulation_steps: int = 1  # micro-batches of batch_size per optimiser step
    gradient_checkpointing: bool = False  # recompute decoder layers in backward (less memory)


def attach_lora(base, settings: TrainSettings | LoraConfig, seed: int | None = None):
    """Wrap `base` in a fresh adapter, from starlora's TrainSettings or PEFT's own LoraConfig; the same seed
    (settings.seed, or `seed`, default 0) gives the same initial A matrices every round (B starts at 0)."""
    if isinstance(settings, LoraConfig):
        config, seed = settings, seed or 0
    else:
        config = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.targets),
            task_type="CAUSAL_LM",
        )
        seed = settings.seed if seed is None else seed
    with torch.random.fork_rng():
        torch.manual_seed(seed)
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
        labels[r, len(prompt) : n] = torch.tensor(answer)
    return ids, mask, labels


def encode_examples(tokenizer, examples, settings: TrainSettings):
    return [
        (
            encode_prompt(tokenizer, ex.prompt, settings.max_prompt_tokens),
            encode_answer(tokenizer, ex.target, settings.max_answer_tokens, eos=True, prefix=answer_prefix(ex.prompt)),
        )
        for ex in examples
    ]


def batch_order(lengths: list[int], batch_size: int, generator: torch.Generator, group_by_length: bool = True):
    """One epoch's batches. Grouped: shuffle, sort each run of 50 batches' worth by length, cut, shuffle the batches
    (HF Trainer's group_by_length), so batches pad little and their order stays random."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return [perm[s : s + batch_size] for s in range(0, len(perm), batch_size)]
    batches, mega = [], 50 * batch_size
    for start in range(0, len(perm), mega):
        run = sorted(perm[start : start + mega], key=lambda i: -lengths[i])
        batches += [run[s : s + batch_size] for s in range(0, len(run), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def train(model, tokenizer, examples, settings: TrainSettings, desc: str = "training") -> dict:
    """Train `model` in place (its trainable parameters) on examples; returns {'loss' (the last epoch's mean),
    'steps', 'seconds', 'step_losses' (each optimiser step's loss)}.

    LoRA mode runs the frozen base as at inference (its own dropout off, as in MC scoring); only the LoRA dropout
    samples. Full mode trains with every dropout of the model on. An optimiser step takes batch_size x
    gradient_accumulation_steps examples, split over the processes and then into micro-batches; its loss is the mean
    over all its answer tokens, so the split changes nothing but memory (and float summation order)."""
    pairs = encode_examples(tokenizer, examples, settings)
    lengths = [len(p) + len(a) for p, a in pairs]
    rank, size = parallel.world()
    micro = settings.gradient_accumulation_steps
    order = torch.Generator().manual_seed(settings.seed)
    epochs = [
        batch_order(lengths, settings.batch_size * micro, order, settings.group_by_length)
        for _ in range(settings.epochs)
    ]
    total = sum(len(e) for e in epochs)
    optimizer = make_optimizer(model, settings.lr, settings.b_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=total)
    device = next(model.parameters()).device
    masks = torch.Generator(device=device).manual_seed(settings.seed)
    net = model
    if parallel.distributed() and not parallel.sharded():  # a sharded model reduces its own gradients
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    start, losses = time.time(), []
    bar = progress(total=total, desc=desc, leave=False, disable=not parallel.is_main())
    whole_batch = swap_lora_dropout(model, lambda p: BatchDropout(p, masks))
    checkpointing = checkpointed(model) if settings.gradient_checkpointing else contextlib.nullcontext()
    with (
        whole_batch as dropouts,
        checkpointing,
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
    ):
        torch.manual_seed(settings.seed)  # any other dropout (full mode)
        modes = lora_sampling(model, True) if settings.mode == "lora" else _train_mode(model)
        with modes:
            for batch in (b for epoch in epochs for b in epoch):
                ids, mask, labels = training_batch([pairs[i] for i in batch], tokenizer.pad_token_id)
                tokens = int((labels[:, 1:] != -100).sum())  # the tokens the loss averages over (shifted labels)
                for drop in dropouts:
                    drop.step(len(batch), ids.shape[1])
                loss = 0.0
                for j, rows in enumerate(micro_batches(len(batch), rank, size, micro)):
                    share = 1.0 if rows.stop > rows.start else 0.0  # a process with no rows still joins all-reduce
                    rows = rows if share else slice(0, 1)
                    width = int(mask[rows].sum(1).max())  # pad to this micro-batch's own longest
                    for drop in dropouts:
                        drop.rows = rows
                    with parallel.gradient_sync(net, j == micro - 1):
                        with autocast(device, settings.precision):
                            step_loss = causal_lm_loss(
                                net,
                                model,
                                ids[rows, :width].to(device),
                                mask[rows, :width].to(device),
                                labels[rows, :width].to(device),
                                max(tokens, 1),
                            )
                        (step_loss * size * share).backward()  # DDP and FSDP average over processes
                    loss += step_loss.item() * share
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1] * size:.3f}")
                if not np.isfinite(loss) and not parallel.distributed():  # diverged: check_diverged says so
                    break
    bar.close()
    del net
    model.eval()
    losses = parallel.sum_across(np.array(losses))[0]  # each process holds its rows' share of every batch's loss
    check_diverged(model, losses, total, settings)
    last = losses[-len(epochs[-1]) :] if epochs and epochs[-1] else losses
    return {
        "loss": float(np.mean(last)) if len(last) else float("nan"),
        "steps": total,
        "seconds": time.time() - start,
        "step_losses": [float(x) for x in losses],
    }


def check_diverged(model, losses: np.ndarray, total: int, settings: TrainSettings) -> None:
    """Stop, blaming the learning rate first, when a step's loss or a trained weight is NaN/inf: scoring with such
    weights would only report non-finite logits. Every process reaches the same verdict (the losses are summed, and
    so is each process's count of non-finite weights)."""
    bad = np.flatnonzero(~np.isfinite(losses))
    weights = sum(
        int((~torch.isfinite(getattr(p, "to_local", lambda: p)())).any()) for p in model.parameters() if p.requires_grad
    )
    weights = int(parallel.sum_across(np.array([weights]))[0][0])
    if not len(bad) and not weights:
        return
    where = (
        f"the loss became {losses[bad[0]]:g} at step {bad[0] + 1} of {total}"
        if len(bad)
        else f"{weights} trained weight tensor(s) became non-finite"
    )
    blame = f"--lr {settings.lr:g} is likely too high for this model; lower it"
    if settings.precision != "fp32":
        blame += f", or train in fp32 (--precision fp32; this ran in {settings.precision})"
    raise StarloraError(f"training diverged: {where}; {blame}")


def causal_lm_loss(net, model, ids, mask, labels, items: int) -> torch.Tensor:
    """HF's causal-LM loss (the answer tokens' cross-entropies summed, over `items`), with the LM head run only on
    the answer positions: on short prompts with one-token answers the head and its log-softmax over every position
    and the whole vocabulary were work for nothing (README, Speed). A DDP-wrapped `net` must run its own
    forward (its hooks reduce the gradients), so it takes HF's path over every position."""
    if net is not model:
        return net(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=items, use_cache=False).loss
    shifted = labels[:, 1:]  # the logits at position p predict the token at p + 1
    rows, positions = (shifted != -100).nonzero(as_tuple=True)
    logits = parallel.as_forward(model, answer_logits, ids, mask, rows, positions)
    return torch.nn.functional.cross_entropy(logits.float(), shifted[rows, positions], reduction="sum") / items


def micro_batches(n: int, rank: int, size: int, micro: int) -> list[slice]:
    """This process's rows of an n-row batch (a contiguous share), cut into `micro` contiguous micro-batches; some
    may be empty, so every process runs the same number of forwards."""
    lo, hi = (n * rank) // size, (n * (rank + 1)) // size
    return [slice(lo + ((hi - lo) * j) // micro, lo + ((hi - lo) * (j + 1)) // micro) for j in range(micro)]


@contextlib.contextmanager
def checkpointed(model):
    """Recompute each decoder layer's forward during backward instead of keeping its activations (non-reentrant
    torch.utils.checkpoint). transformers' own switch only acts on modules in train mode, which would also turn on
    the frozen base's dropout; this wraps the layers whatever their mode. The global random state is replayed in
    the recompute (full mode's dropout) and BatchDropout reuses its step's masks, so the numbers do not change."""
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the class's forward again


@contextlib.contextmanager
def _train_mode(model):
    model.train()
    try:
        yield
    finally:
        model.eval()
