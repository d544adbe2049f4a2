"""Where the arithmetic runs: the device of this process, the dtype of the frozen base weights, and the precision of
the matmuls.

Trained weights (LoRA, or every weight in full fine-tuning) always stay fp32: the master copy the optimiser updates.
The frozen base may be stored in bf16/fp16 (`--dtype`: half the memory); bf16 compute enters through autocast
(`--precision`). Both fp32 give the exact fp32 numbers the tests pin down.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from .errors import StarloraError

PRECISIONS = ("auto", "fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device() -> torch.device:
    """This process's accelerator (cuda:LOCAL_RANK under `accelerate launch`), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def machine(dev: torch.device | None = None, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What computed a run, as one comparable line: the GPU's name, or the CPU's model (with family, model and
    stepping, which tell apart CPUs sold under one generic name) and the instruction sets torch's kernels use on it.
    CPUs of different kinds compute bf16 matmuls differently, so the same run from the same commit gives close, not
    identical, numbers on them (docs/studies.md, "Two kinds of CPU")."""
    dev = dev or device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    features = [torch.backends.cpu.get_cpu_capability()]
    for name, check in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported")):
        if getattr(torch.cpu, check, lambda: False)():  # private in torch: a missing check is not a failed run
            features.append(name)
    return f"{_cpu_model(cpuinfo)} ({', '.join(features)})"


def _cpu_model(cpuinfo: Path) -> str:
    """Linux's first processor entry: 'NAME, family F model M stepping S'; elsewhere what platform knows."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux
        text = ""
    first = {}
    for line in text.splitlines():
        if not line.strip():
            if first:
                break
            continue
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    name = first.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    ids = [
        f"{label} {first[key]}"
        for key, label in (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))
        if first.get(key)
    ]
    return ", ".join([name, " ".join(ids)]) if ids else name


def bf16_native(dev: torch.device) -> bool:
    """True where bf16 matmuls run in hardware; on a CPU without AVX512-BF16/AMX they are emulated and slower."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(name: str, dev: torch.device) -> str:
    """'auto' -> bf16 where it is native, else fp32. Returns 'fp32' or 'bf16'."""
    if name not in PRECISIONS:
        raise StarloraError(f"unknown --precision {name!r}: choose {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if bf16_native(dev) else "fp32"
    return name


def autocast(dev: torch.device, precision: str):
    """bf16 autocast for forward passes (fp32 weights and reductions stay fp32); a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_dtype(name: str, dev: torch.device) -> str:
    """'auto' -> bf16 on CUDA GPUs with bf16, else fp32 (a CPU run is limited by speed, not memory, and keeps the
    exact fp32 numbers). Returns 'fp32', 'bf16' or 'fp16'."""
    if name != "auto" and name not in DTYPES:
        raise StarloraError(f"unknown --dtype {name!r}: choose auto, {', '.join(DTYPES)}")
    if name == "auto":
        return "bf16" if dev.type == "cuda" and bf16_native(dev) else "fp32"
    return name


def bf16_frozen_linears(model, precision: str) -> int:
    """Store the frozen base's linear weights (and the LM head) in bf16 when every forward runs under bf16 autocast,
    which would otherwise cast each of them again on every call (README, Speed). Autocast
    computes a linear layer from the bf16-rounded weight either way, so the numbers are the same to the bit; the
    embeddings and norms stay fp32 (a head tied to the embeddings gets a bf16 copy of its own). Call it once the
    adapter is attached (PEFT rounds a new adapter's initial weights to its base layer's dtype), on a model whose
    trained weights are the adapter's only. Returns how many weights were cast."""
    if precision != "bf16":
        return 0
    head = model.get_output_embeddings()
    cast = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, torch.nn.Linear)
            and weight is not None
            and not weight.requires_grad
            and weight.dtype == torch.float32
        ):
            if module is head:  # may be the embedding matrix itself: the input embeddings must stay fp32
                module.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
            else:
                weight.data = weight.data.to(torch.bfloat16)
            cast += 1
    return cast
