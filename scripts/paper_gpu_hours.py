#!/usr/bin/env python
"""Estimate the GPU-hours of the paper's Table 1 setting (paper protocol; GSM8K, BoolQ, OBQA; random, PE, ME,
STAR-PE, STAR-ME; several seeds) for a model of N parameters, from measured numbers:

- FLOPs per token per parameter of a scoring forward, measured with starlora.bench.FlopCount on the embedded model
  (nn.Linear FLOPs of real tokens: close to 2, the textbook rule);
- prompt / answer token counts of every task, measured with the embedded model's tokenizer on the embedded data;
- the paper protocol's sizes (init 500, query 500, 10 rounds, 3 epochs, K = 3) and the hub datasets' split sizes.

Compute-bound work (training, teacher-forced scoring, evaluation) is priced at an assumed sustained bf16 rate;
greedy generation (GSM8K answers) is memory-bound and priced per decode step by reading the weights once per step
for a batch. Both assumptions are printed; the result is an estimate, not a measurement.

    .venv/bin/python scripts/paper_gpu_hours.py --params 6.74e9 --seeds 3
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from starlora.bench import FlopCount
from starlora.data import load_data
from starlora.models import load_model
from starlora.scoring import ScoringSettings, score
from starlora.tasks import get_task
from starlora.tokens import answer_prefix, encode_answer, encode_prompt

HUB_SIZES = {"gsm8k": (7473, 1319), "boolq": (9427, 3270), "obqa": (4957, 500)}  # (train pool, test)
STRATEGIES = {"random": 0, "pe": 1, "me": 1, "star-pe": 1, "star-me": 1}  # 1: scores the pool every round


def token_stats(tok, task_name):
    task = get_task(task_name)
    data = load_data(task)
    examples = data.pool + data.test
    prompt = np.mean([len(encode_prompt(tok, ex.prompt, 128)) for ex in examples])
    answer = np.mean(
        [len(encode_answer(tok, ex.target, 256, eos=True, prefix=answer_prefix(ex.prompt))) for ex in examples]
    )
    return prompt, answer


def measured_flop_per_token_param(model, tok):
    """One scoring pass over 32 embedded BoolQ questions: counted decoder nn.Linear FLOPs per token computed (padding
    included on both sides of the ratio) per non-embedding parameter."""
    examples = load_data(get_task("boolq")).test[:32]
    with FlopCount(model) as flops:
        score(model, tok, get_task("boolq"), examples, settings=ScoringSettings(batch_size=32, precision="fp32"))
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    return flops.linear / max(flops.padded, 1) / params


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=6.74e9, help="model parameters (default LLaMA-2-7B, 6.74e9)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--tflops",
        type=float,
        default=400.0,
        help="assumed sustained bf16 TFLOP/s of compute-bound work (default 400: ~40%% of an H100's dense bf16 peak)",
    )
    p.add_argument("--bandwidth", type=float, default=3.35, help="GPU memory bandwidth, TB/s (default H100 SXM)")
    p.add_argument("--gen-batch", type=int, default=64, help="sequences per generation batch (default 64)")
    args = p.parse_args()

    model, tok = load_model("smollm2")
    rate = measured_flop_per_token_param(model, tok)
    print(f"measured: {rate:.3f} FLOP per token per parameter in a scoring forward (textbook: 2)")
    fwd = rate * args.params  # FLOPs per token, forward
    train = 2 * fwd  # LoRA: forward + activation gradients through the frozen base (no base weight gradients)
    step_s = 2 * args.params / (args.bandwidth * 1e12)  # bf16 weights read once per decode step
    init, query, rounds, epochs, k = 500, 500, 10, 3, 3
    total = 0.0
    print(f"{'task':<6} {'prompt':>6} {'answer':>6} {'random h':>9} {'scoring strategy h':>19}")
    for task_name, (pool, test) in HUB_SIZES.items():
        prompt, answer = token_stats(tok, task_name)
        generate = task_name == "gsm8k"
        seconds = {0: 0.0, 1: 0.0}
        for t in range(rounds):
            labeled = init + query * t
            base = labeled * epochs * (prompt + answer) * train / (args.tflops * 1e12)
            if generate:  # greedy answers of the test set, then teacher-forced nothing more for accuracy
                base += test / args.gen_batch * answer * step_s + test * prompt * fwd / (args.tflops * 1e12)
            else:
                base += test * prompt * fwd / (args.tflops * 1e12)
            seconds[0] += base
            seconds[1] += base
            if t < rounds - 1:  # score U \ L: y_hat (generation or one pass), deterministic + K MC passes
                cands = pool - labeled
                passes = (1 + k) * cands * ((prompt + answer) if generate else prompt) * fwd
                seconds[1] += passes / (args.tflops * 1e12)
                if generate:
                    seconds[1] += cands / args.gen_batch * answer * step_s + cands * prompt * fwd / (args.tflops * 1e12)
        # the base model's mu_b: once per pool example (cached), STAR strategies only; counted for all scoring ones
        seconds[1] += pool * (prompt + answer) * fwd / (args.tflops * 1e12)
        if generate:
            seconds[1] += pool / args.gen_batch * answer * step_s
        hours = {key: v / 3600 for key, v in seconds.items()}
        per_task = args.seeds * sum(hours[STRATEGIES[s]] for s in STRATEGIES)
        total += per_task
        print(f"{task_name:<6} {prompt:>6.0f} {answer:>6.0f} {hours[0]:>9.2f} {hours[1]:>19.2f}")
    print(
        f"Table 1 ({len(STRATEGIES)} strategies x 3 tasks x {args.seeds} seeds, {args.params:.3g} parameters): "
        f"about {total:.0f} GPU-hours at {args.tflops:g} TFLOP/s sustained and {args.bandwidth:g} TB/s "
        f"(an estimate from measured FLOP and token counts, not a measured run)"
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
