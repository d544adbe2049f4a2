"""LoRA dropout: when it samples (`lora_sampling`), with which masks, and the adapter switched off (`adapter_disabled`).

Masks here do not depend on how rows are batched or split across processes.

PEFT's `lora_dropout` is an nn.Dropout: one mask per row, drawn from the global random stream. Two places need more
control, and swap in one of these modules for the duration of a call (`swap_lora_dropout`):
- training under data parallelism draws the mask for the whole batch and keeps this process's rows (BatchDropout);
- MC scoring of multi-token candidates draws one mask per group of rows, so the candidates of one example in one MC
  pass are scored by one sampled network (GroupDropout), as the one-token path does with a single forward.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from peft.tuners.lora import LoraLayer


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
            self.keep = torch.empty((self.total, self.width, *x.shape[2:]), device=x.device).bernoulli_(
                1 - self.p, generator=self.generator)
        return x * self.keep[self.rows, :x.shape[1]] / (1 - self.p)


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
        keep = torch.ones((len(self.generators), *x.shape[1:]), device=x.device)
        for g, (generator, width) in enumerate(zip(self.generators, self.widths)):
            keep[g, :width].bernoulli_(1 - self.p, generator=generator)
        return x * keep[self.groups] / (1 - self.p)


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
