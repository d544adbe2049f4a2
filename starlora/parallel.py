"""Data parallelism over the processes `accelerate launch` starts (one process: every helper is a no-op).

The split never changes a result: scoring hands out whole batches round-robin and seeds each batch's dropout by its
index, and training gives each process rows of one globally padded batch with the batch's dropout masks drawn whole
(masks.py). So 1 and N processes select the same examples from the same seed.
"""

from __future__ import annotations

import functools

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


def mine(n: int) -> range:
    """The indices (of batches) this process computes: round-robin, so long and short batches spread evenly."""
    rank, size = world()
    return range(rank, n, size)


def sum_across(*arrays: np.ndarray) -> list[np.ndarray]:
    """Element-wise sums over processes (each process fills its own entries and leaves the rest at zero)."""
    if not distributed():
        return list(arrays)
    from accelerate.utils import reduce

    return [reduce(torch.from_numpy(np.ascontiguousarray(a)).to(_state().device), "sum").cpu().numpy()
            for a in arrays]


def gather(items: list) -> list:
    """Every process's list, concatenated in process order."""
    if not distributed():
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def barrier() -> None:
    if distributed():
        _state().wait_for_everyone()
