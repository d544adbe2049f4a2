"""Data parallelism over the processes `accelerate launch` starts (one process: every helper is a no-op).

The split never changes a result: scoring hands out whole batches round-robin and seeds each batch's dropout by its
index, and training gives each process rows of one globally padded batch with the batch's dropout masks drawn whole
(masks.py). So 1 and N processes select the same examples from the same seed.

Under `accelerate launch --use_fsdp` (sharded()) each process also holds only its shard of every weight (torch's
FSDP2 `fully_shard`, applied here because accelerate does not shard on CPUs): each forward gathers a layer's weights
from all processes, so every process must run the same number of forwards (mine pads with extra batches).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import types

import numpy as np
import torch


@functools.cache
def _state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def world() -> tuple[int, int]:
    """(this process's index, number of processes)."""
    state = _state()
    return state.process_index, state.num_processes


def is_main() -> bool:
    return world()[0] == 0


def distributed() -> bool:
    return world()[1] > 1


def fsdp_requested() -> bool:
    """Launched by `accelerate launch --use_fsdp` (or an FSDP config file)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def sharded() -> bool:
    """Weights sharded over the processes (FSDP)."""
    return fsdp_requested() and distributed()


def mine(n: int) -> range:
    """The indices (of batches) this process computes: round-robin, so long and short batches spread evenly.
    Sharded, every process gets as many: indices from n on stand for a throw-away batch (its forward must still run,
    as the other processes need this one's weight shards)."""
    rank, size = world()
    return range(rank, size * math.ceil(n / size) if sharded() else n, size)


def my_batches(batches: list[list[int]]) -> list[tuple[int, list[int], bool]]:
    """This process's batches (`mine`) as (index, rows, spare). Sharded, a process short of a batch gets a spare: a
    throw-away repeat of the first batch's first row, whose forward runs (the other processes need this one's weight
    shards) and whose results the caller drops."""
    return [(b, batches[b], False) if b < len(batches) else (b, batches[0][:1], True) for b in mine(len(batches))]


def sum_across(*arrays: np.ndarray) -> list[np.ndarray]:
    """Element-wise sums over processes (each process fills its own entries and leaves the rest at zero)."""
    if not distributed():
        return list(arrays)
    from accelerate.utils import reduce

    return [reduce(torch.from_numpy(np.ascontiguousarray(a)).to(_state().device), "sum").cpu().numpy() for a in arrays]


def gather(items: list) -> list:
    """Every process's list, concatenated in process order."""
    if not distributed():
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def barrier() -> None:
    if distributed():
        _state().wait_for_everyone()


# ---------------------------------------------------------------- sharded weights (FSDP2)


def shard(model):
    """Shard a PEFT model over the processes: each decoder layer, then the causal LM as the root (so generate() runs
    under it with transformers' synced_gpus). Frozen base weights and LoRA weights are sharded alike."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    mesh = init_device_mesh(_state().device.type, (world()[1],))
    for layer in [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model.base_model.model, mesh=mesh)
    return model


def as_forward(model, fn, *args):
    """fn(lm, *args) on the causal LM inside `model` (a PEFT model or the LM itself). Sharded, it runs as one of the
    LM's forwards, so FSDP gathers the LM's own weights (embeddings, final norm, head) around it as around forward."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not sharded():
        return fn(lm, *args)
    from torch.distributed.fsdp import register_fsdp_forward_method

    name = f"_sharded_{fn.__name__}"
    if not hasattr(lm, name):
        setattr(lm, name, types.MethodType(fn, lm))
        register_fsdp_forward_method(lm, name)
    return getattr(lm, name)(*args)


def local_parameters(model) -> tuple[int, int]:
    """(parameters held by this process, parameters of the model)."""
    from torch.distributed.tensor import DTensor

    mine_, total = 0, 0
    for p in model.parameters():
        mine_ += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
        total += p.numel()
    return mine_, total


def full_state(model) -> dict:
    """The whole (unsharded) state dict on CPU; every process must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@torch.no_grad()
def load_full_state(model, state: dict) -> None:
    """Copy whole tensors (some of the model's, e.g. the adapter's) into a sharded model, each process keeping its
    shard; every process holds `state` and must call it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(model.named_parameters())
    for name, full in state.items():
        p = params[name]
        p.copy_(distribute_tensor(full.to(p.dtype), p.device_mesh, p.placements) if isinstance(p, DTensor) else full)


def gradient_sync(model, on: bool):
    """Context for one micro-batch: reduce gradients across processes only when `on` (the step's last micro-batch).
    DDP's no_sync for a DDP-wrapped net; FSDP's switch on the sharded root."""
    if not on and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    root = getattr(getattr(model, "base_model", None), "model", None)
    if sharded() and hasattr(root, "set_requires_gradient_sync"):
        root.set_requires_gradient_sync(on)
    return contextlib.nullcontext()
