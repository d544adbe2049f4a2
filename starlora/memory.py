"""The memory preflight: will this configuration fit on this device? Asked before any weights load, so a run that
cannot fit fails in seconds with what to change instead of after an hour in an out-of-memory error.

The estimate counts parameters exactly (the model built on the meta device from its configuration) and activations
from per-token constants measured with autograd's saved-tensor hooks on SmolLM2 and the tiny LLaMA (bytes held for
backward per token and decoder layer, in units of the hidden size), so it is an estimate of the right size, not a
bound: it refuses runs clearly too large and lets the rest try.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

from . import parallel
from .errors import StarloraError
from .hardware import DTYPES, device, resolve_dtype, resolve_precision
from .models import LORA_TARGETS, model_config

logger = logging.getLogger(__name__)
GIB = 2**30
# Bytes autograd holds for backward per token (parameters excluded): per decoder layer in units of the hidden size,
# and per vocabulary entry (the fp32 logits). Measured on SmolLM2 (docs/large-models.md); each constant is at or
# above the measurements of the cases it covers, so the estimate errs towards refusing.
PER_LAYER = {"fp32": 72, "half": 65, "checkpointed": 5}
PER_VOCAB = 4
RUNTIME = 0.5 * GIB  # the framework itself (CUDA context, allocator slack, Python)
LIMIT_ENV = "STARLORA_MEMORY_LIMIT_MB"


@dataclass(frozen=True)
class Estimate:
    weights: int
    training_state: int  # trainable parameters' fp32 copy, gradients and AdamW's two moments
    activations: int  # the larger of training's and scoring's working memory

    @property
    def total(self) -> int:
        return self.weights + self.training_state + self.activations + RUNTIME

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, adapter and optimiser "
            f"{self.training_state / GIB:.1f}, activations {self.activations / GIB:.1f}, runtime "
            f"{RUNTIME / GIB:.1f})"
        )


def count_parameters(config, targets=tuple(LORA_TARGETS), r: int = 0) -> tuple[int, int]:
    """(parameters of the model, LoRA parameters of rank r on the target projections), from the configuration
    alone: the model is built on the meta device, so nothing is allocated."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    lora = sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in targets
    )
    return total, lora


def projection_parameters(config, targets=tuple(LORA_TARGETS)) -> int:
    """Weights of the target projections: what bitsandbytes quantizes (embeddings, norms and the head stay)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in targets
    )


# Bytes per quantized weight: NF4 packs two per byte plus one fp32 absmax per block of 64; int8 one byte plus one
# fp32 scale per row (negligible).
QUANTIZED_BYTES = {"4bit": 0.5 + 4 / 64, "8bit": 1.0}


def estimate(cfg, config, generates: bool = True) -> Estimate:
    """Memory one process needs for the configuration `cfg` (a MethodConfig) with the model `config`; `generates`:
    the task's answers are generated (open tasks), which holds a KV cache."""
    dev = device()
    dtype = resolve_dtype(cfg.dtype, dev)
    total, lora = count_parameters(config, r=cfg.lora_r)
    trainable = lora if cfg.mode == "lora" else total
    weights = total * DTYPES[dtype].itemsize
    quantization = getattr(cfg, "quantization", "none")
    if quantization != "none":
        projections = projection_parameters(config)
        weights -= int(projections * (DTYPES[dtype].itemsize - QUANTIZED_BYTES[quantization]))
    training_state = trainable * (4 + 4 + 8) - (total * 4 if cfg.mode == "full" else 0)  # full: weights are the copy
    half = dtype != "fp32" or resolve_precision(cfg.precision, dev) == "bf16"
    act_bytes = 2 if half else 4
    layers, hidden = config.num_hidden_layers, config.hidden_size
    per_layer = PER_LAYER["checkpointed"] if cfg.gradient_checkpointing else PER_LAYER["half" if half else "fp32"]
    sequence = cfg.max_prompt_tokens + cfg.max_answer_tokens
    training = cfg.batch_size * sequence * (layers * hidden * per_layer + config.vocab_size * PER_VOCAB)
    # backward's working set: one layer's full activations (recomputed, when checkpointed) and their gradients
    training += 2 * cfg.batch_size * sequence * hidden * PER_LAYER["half" if half else "fp32"]
    heads = config.num_attention_heads
    kv_width = getattr(config, "num_key_value_heads", heads) * getattr(config, "head_dim", hidden // heads)
    scoring_sequence = cfg.max_prompt_tokens + max(cfg.max_answer_tokens, cfg.max_new_tokens)
    cache = 2 * layers * kv_width if generates else 0
    scoring = cfg.score_batch_size * (
        scoring_sequence * (cache + 8 * hidden) * act_bytes + config.vocab_size * 4 * 2
    )  # KV cache, one layer's work, answer logits
    if parallel.sharded():  # FSDP: each process keeps 1/N of every weight, gradient and optimiser state
        weights, training_state = weights // parallel.world()[1], training_state // parallel.world()[1]
    return Estimate(weights, training_state, max(training, scoring))


def free_bytes(dev: torch.device) -> int:
    """Memory free for this process: $STARLORA_MEMORY_LIMIT_MB when set, else the GPU's free memory or the host's
    available memory."""
    limit = os.environ.get(LIMIT_ENV)
    if limit:
        try:
            return int(float(limit) * 2**20)
        except ValueError:
            raise StarloraError(f"${LIMIT_ENV}={limit!r}: not a number of MiB") from None
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    import psutil

    return psutil.virtual_memory().available


def preflight(cfg, task, cache=None) -> Estimate:
    """Refuse, with one line saying what to change, a configuration whose estimate exceeds the free memory."""
    dev = device()
    need = estimate(cfg, model_config(cfg.model, cache), generates=not task.closed)
    free = free_bytes(dev)
    logger.debug(f"memory estimate {need.describe()}; {free / GIB:.1f} GiB free on {dev}")
    if need.total <= free:
        return need
    hints = []
    if resolve_dtype(cfg.dtype, dev) == "fp32" and cfg.quantization == "none":
        hints.append(f"--dtype bf16 (weights {need.weights / 2 / GIB:.1f} GiB)")
    if cfg.quantization == "none" and importlib.util.find_spec("bitsandbytes") is not None:
        hints.append("--quantization 4bit")
    if not cfg.gradient_checkpointing:
        hints.append("--gradient-checkpointing")
    if cfg.batch_size > 1:
        smaller = cfg.batch_size // 2 if cfg.batch_size % 2 == 0 else 1
        hints.append(
            f"--batch-size {smaller} --gradient-accumulation-steps "
            f"{cfg.gradient_accumulation_steps * cfg.batch_size // smaller} (the same effective batch)"
        )
    if cfg.score_batch_size > 1:
        hints.append(f"--score-batch-size {max(1, cfg.score_batch_size // 2)}")
    if dev.type == "cuda" and torch.cuda.device_count() > 1 and not parallel.sharded():
        hints.append(
            "sharding the weights over the GPUs (accelerate launch --config_file configs/accelerate/fsdp.yaml)"
        )
    raise StarloraError(
        f"{cfg.model} will not fit: estimated {need.describe()} but {free / GIB:.1f} GiB are free on "
        f"{dev}; try {', '.join(hints) or 'a smaller model or a larger device'}"
    )
