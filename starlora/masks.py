"""LoRA dropout: when it samples (`lora_sampling`), with which masks, and the adapter switched off (`adapter_disabled`).

Masks here do not depend on how rows are batched or split across processes.

PEFT's `lora_dropout` is an nn.Dropout: one mask per row, drawn from the global random stream with bernoulli_,
which on CPUs costs as much as the matmuls around it. Every sampling path swaps in one of these modules for the
duration of a call (`swap_lora_dropout`), all drawing `keep_mask`'s cheaper masks:
- MC scoring of one-token candidates: one mask per row from the global stream, seeded per batch (MaskDropout);
- training draws the mask for the whole batch once per optimiser step and hands each process, micro-batch and
  checkpoint recompute its rows (BatchDropout);
- MC scoring of multi-token candidates draws one mask per group of rows, so the candidates of one example in one MC
  pass are scored by one sampled network (GroupDropout), as the one-token path does with a single forward.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from peft.tuners.lora import LoraLayer


def keep_mask(shape, p: float, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask keeping each element independently with probability 1 - p (to within 2^-32): one 32-bit random
    integer per element compared with a threshold, which on CPUs costs about half of bernoulli_ (measured: MC
    scoring spent as long drawing masks as in all its matmuls). `generator` None: the global random stream."""
    if p <= 0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1, generator=generator)  # the whole 64-bit range: two uniform int32 per word
    threshold = min(round((1 - p) * 2**32) - 2**31, 2**31 - 1)  # P(int32 < threshold) = 1 - p
    return words.view(torch.int32)[:n].view(shape) < threshold


def drop(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout with a given keep mask: kept elements scaled by 1 / (1 - p), the rest 0."""
    return torch.where(keep, x, 0.0).div_(1 - p)


class MaskDropout(torch.nn.Module):
    """nn.Dropout with keep_mask's cheaper masks, drawn from the global random stream (one mask per row)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return drop(x, keep_mask(x.shape, self.p, x.device), self.p)


class BatchDropout(torch.nn.Module):
    """LoRA dropout drawing one mask per optimiser step for the whole batch and handing each forward its rows: the
    same masks on 1 or N processes (nn.Dropout would draw one per process), over N micro-batches (gradient
    accumulation) and when a checkpointed layer recomputes its forward. Call `step(total, width)` before each
    optimiser step, and set `rows` before each forward."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p, self.generator, self.rows, self.total, self.width, self.keep = p, generator, slice(None), 0, 0, None

    def step(self, total: int, width: int):
        self.total, self.width, self.keep = total, width, None

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.keep is None:  # drawn at the first forward of the step, in model order, as one batch would
            self.keep = keep_mask((self.total, self.width, *x.shape[2:]), self.p, x.device, self.generator)
        return drop(x, self.keep[self.rows, : x.shape[1]], self.p)


def group_seed(seed: int, example: int, mc_pass: int) -> int:
    """The mask seed of one example in one MC pass: a function of the three numbers only, never of the batching."""
    return int(np.random.SeedSequence([seed, example, mc_pass]).generate_state(1)[0])


class GroupDropout(torch.nn.Module):
    """LoRA dropout whose rows come in groups sharing one mask. Before each forward set `groups` (the group of each
    row) and `generators`/`widths` (per group: its own seeded generator and its own padded length). A group's mask is
    drawn at its own width from its own generator, so it is the same whatever else shares the batch; positions past
    a group's width are padding for all its rows."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.groups, self.generators, self.widths = p, None, [], []

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.ones((len(self.generators), *x.shape[1:]), dtype=torch.bool, device=x.device)
        for g, (generator, width) in enumerate(zip(self.generators, self.widths)):
            keep[g, :width] = keep_mask((width, *x.shape[2:]), self.p, x.device, generator)
        return drop(x, keep[self.groups], self.p)


@contextlib.contextmanager
def swap_lora_dropout(model, make):
    """Replace every active LoRA dropout (p > 0) by make(p) for the duration; yields the new modules in model order."""
    swapped = []
    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            for name, drop in layer.lora_dropout.items():
                if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                    layer.lora_dropout[name] = make(drop.p)
                    layer.lora_dropout[name].train(drop.training)
                    swapped.append((layer, name, drop))
    try:
        yield [layer.lora_dropout[name] for layer, name, _ in swapped]
    finally:
        for layer, name, drop in swapped:
            layer.lora_dropout[name] = drop


@contextlib.contextmanager
def lora_sampling(model, active: bool):
    """Everything in eval mode; with active=True only PEFT's lora_dropout modules sample masks (MC dropout, and
    training in LoRA mode: the frozen base runs as at inference)."""
    was_training = model.training
    model.eval()
    if active:
        for name, module in model.named_modules():
            if name.split(".")[-1] == "lora_dropout" or ".lora_dropout." in name + ".":
                module.train()
    try:
        yield
    finally:
        model.train(was_training)


def adapter_disabled(model):
    """Context in which `model` behaves as the frozen base model (PEFT's disable_adapter); a no-op for plain models."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
