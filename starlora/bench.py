"""`starlora bench`: throughput of one round's pool scoring and training, against the official code's way, and
against this machine's matmul roofline, all measured in the same process; with --pool-sizes, the time and memory of
one round's acquisition against the pool size (pool_bench).

Naive scoring is the official STAR code's loop: one sequence at a time, logits at every position, a softmax per
position. Naive training pads every example to 384 tokens in random batches. Both compute the same quantities as
the fast paths (the report checks the deterministic numbers agree), so the ratios measure speed only.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import multiprocessing
import resource
import tempfile
import time
from concurrent import futures
from pathlib import Path

import numpy as np
import torch

from .acquisition import Acquisition, BaseScoreCache, acquisition_scores, subsample
from .data import load_data, make_examples, read_rows
from .evaluation import evaluate
from .experiment import write_scores
from .hardware import autocast, bf16_frozen_linears, device, resolve_dtype, resolve_precision
from .masks import adapter_disabled, lora_sampling
from .models import load_model
from .scoring import ScoringSettings
from .strategies import get_strategy, select
from .tasks import get_task
from .tokens import answer_prefix, encode_answer, encode_prompt
from .training import TrainSettings, attach_lora, encode_examples, make_optimizer, train

logger = logging.getLogger(__name__)

NAIVE_PAD = 384  # the official code's max_length


def matmul_gflops(precision: str, dev: torch.device, size: int = 2048, seconds: float = 1.0) -> float:
    """Sustained square-matmul throughput in this precision: the roofline the scoring is compared with."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype, device=dev), torch.randn(size, size, dtype=dtype, device=dev)
    a @ b  # warm-up (thread pool, kernel selection)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    _sync(dev)
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e9


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class FlopCount:
    """Counts matmul FLOPs of every nn.Linear call (forward hooks) and the decoder's real vs padded tokens, so the
    achieved rate can leave padding out. Attention's score/value products are not counted (small at these lengths)."""

    def __init__(self, model):
        self.model, self.linear, self.head, self.tokens, self.padded = model, 0, 0, 0, 0

    def __enter__(self):
        head = self.model.get_output_embeddings()
        self.hooks = [
            m.register_forward_hook(self._count_linear(m is head))
            for m in self.model.modules()
            if isinstance(m, torch.nn.Linear)
        ]
        self.hooks.append(self.model.get_decoder().register_forward_pre_hook(self._count_tokens, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()

    def _count_linear(self, is_head):
        def hook(module, inputs, output):
            flops = 2 * inputs[0].numel() * module.out_features
            if is_head:
                self.head += flops
            else:
                self.linear += flops

        return hook

    def _count_tokens(self, module, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if ids is not None:
            self.padded += ids.numel()
            self.tokens += int(mask[:, -ids.shape[1] :].sum()) if mask is not None else ids.numel()

    @property
    def useful(self) -> float:
        return self.linear * self.tokens / max(self.padded, 1) + self.head


# ---------------------------------------------------------------- the official code's way


@torch.no_grad()
def naive_answer_stats(model, pairs):
    """One sequence per forward, logits at every position, log-softmax over the whole sequence."""
    dev = next(model.parameters()).device
    out = []
    for prompt, answer in pairs:
        logits = model(input_ids=torch.tensor([prompt + answer], device=dev)).logits[0].float()
        logp_all = torch.log_softmax(logits, -1)
        entropy_all = -(logp_all.exp() * logp_all).sum(-1)
        at = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(answer), device=dev)
        logp = logp_all[at, torch.tensor(answer, device=dev)]
        out.append((float(logp.sum()), float(entropy_all[at].sum())))
    return np.array(out).reshape(len(pairs), 2)


@torch.no_grad()
def naive_generate(model, tokenizer, prompt, max_new_tokens):
    dev = next(model.parameters()).device
    tokens = model.generate(
        input_ids=torch.tensor([prompt], device=dev),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[0, len(prompt) :].tolist()
    eos = tokenizer.eos_token_id
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def naive_scoring(model, tokenizer, task, examples, k, settings):
    """The same passes as STAR's acquisition (own answer, K MC-dropout passes, base model), example by example.
    Returns the base model's ME per example (deterministic, so it can be compared with the fast path)."""
    base_me = []
    for ex in examples:
        prompt = encode_prompt(tokenizer, ex.prompt, settings.max_prompt_tokens)

        def answers():
            if task.closed:
                return [
                    encode_answer(tokenizer, c, settings.max_answer_tokens, prefix=answer_prefix(ex.prompt))
                    for c in task.candidates
                ]
            return [naive_generate(model, tokenizer, prompt, settings.max_new_tokens)]

        with lora_sampling(model, False):
            own = answers()
            naive_answer_stats(model, [(prompt, a) for a in own])  # fixes y_hat (the fast path's first pass)
        with lora_sampling(model, True):
            for _ in range(k):
                naive_answer_stats(model, [(prompt, a) for a in own])
        with adapter_disabled(model), lora_sampling(model, False):
            base = answers()
            base_stats = naive_answer_stats(model, [(prompt, a) for a in base])
        chosen = int(base_stats[:, 0].argmax()) if task.closed else 0
        base_me.append(base_stats[chosen, 1])
    return np.array(base_me)


def naive_train(model, tokenizer, examples, settings: TrainSettings):
    """One epoch, random batches, every example padded to 384 tokens (the official code's collator)."""
    dev = next(model.parameters()).device
    pairs = encode_examples(tokenizer, examples, settings)
    optimizer = make_optimizer(model, settings.lr, settings.b_decay)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(settings.seed)).tolist()
    model.train()
    for start in range(0, len(order), settings.batch_size):
        batch = [pairs[i] for i in order[start : start + settings.batch_size]]
        ids = torch.full((len(batch), NAIVE_PAD), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for r, (p, a) in enumerate(batch):
            seq = (p + a)[:NAIVE_PAD]
            ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
            labels[r, len(p) : len(seq)] = torch.tensor(seq[len(p) :])
        with autocast(dev, settings.precision):
            loss = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


# ---------------------------------------------------------------- the benchmark


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024  # kB


def reset_peak_memory(dev: torch.device) -> bool:
    """Start a new peak: the process's peak RSS (Linux: clear_refs 5 resets VmHWM) and on CUDA the allocator's
    statistics. False where the host peak cannot be reset (not Linux): peak_memory_mb is then the lifetime peak."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_host_mb() -> float:
    """The resident set's peak since reset_peak_memory (or the process's lifetime)."""
    try:
        return _status_mb("VmHWM")
    except (OSError, StopIteration):
        return peak_rss_mb()


def peak_memory_mb(dev: torch.device) -> float:
    """Peak since reset_peak_memory: CUDA memory allocated by torch, else the process's resident memory."""
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_host_mb()


def _set_up(model_name, task_name, train_file, batch_size: int, precision: str, dtype: str, strategy: str):
    """What bench and pool_round measure with: (task, its pool examples, device, resolved precision and dtype, model
    with the paper's adapter (r 64, alpha 16, dropout 0.1), tokenizer, scoring settings, strategy)."""
    task = get_task(task_name, user_files=bool(train_file))
    examples = make_examples(read_rows(train_file), task, str(train_file)) if train_file else load_data(task).pool
    dev = device()
    precision, dtype = resolve_precision(precision, dev), resolve_dtype(dtype, dev)
    model, tokenizer = load_model(model_name, dtype=dtype)
    model = attach_lora(model, TrainSettings())
    settings = ScoringSettings(batch_size=batch_size, precision=precision)
    return task, examples, dev, precision, dtype, model, tokenizer, settings, get_strategy(strategy, task.closed)


def bench(
    model_name="smollm2",
    task_name="boolq",
    train_file=None,
    n=256,
    k=3,
    naive_n=32,
    batch_size=32,
    train_batch_size=8,
    precision="auto",
    strategy="star-me",
    dtype="auto",
    gradient_checkpointing=False,
) -> dict:
    """Measure everything in one process; returns the JSON-able result."""
    task, examples, dev, precision, dtype, model, tokenizer, settings, star = _set_up(
        model_name, task_name, train_file, batch_size, precision, dtype, strategy
    )
    examples = examples[:n]
    result = {
        "model": model_name,
        "task": task.name,
        "strategy": star.name,
        "n": len(examples),
        "k": k,
        "naive_n": min(naive_n, len(examples)),
        "device": str(dev),
        "precision": precision,
        "dtype": dtype,
        "gradient_checkpointing": gradient_checkpointing,
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "threads": torch.get_num_threads(),
    }

    logger.info(f"matmul roofline ({precision}) ...")
    result["matmul_gflops"] = matmul_gflops(precision, dev)

    logger.info(f"scoring {len(examples)} examples ({star.name}, K={k}, batched) ...")
    cache_b = BaseScoreCache(None, model_name, task, settings)
    with FlopCount(model) as flops:
        start = time.perf_counter()
        acquisition_scores(
            star, model, tokenizer, task, examples, t=0, rounds=10, base_cache=cache_b, passes=k, settings=settings
        )
        _sync(dev)
        seconds = time.perf_counter() - start
    result["scoring_examples_per_s"] = len(examples) / seconds
    result["scoring_gflops"] = flops.useful / seconds / 1e9
    result["scoring_padding_fraction"] = 1 - flops.tokens / max(flops.padded, 1)
    result["scoring_roofline_fraction"] = result["scoring_gflops"] / result["matmul_gflops"]

    sub = examples[: result["naive_n"]]
    logger.info(f"scoring {len(sub)} examples the official way (one at a time, full logits) ...")
    with autocast(dev, precision):
        start = time.perf_counter()
        naive_me = naive_scoring(model, tokenizer, task, sub, k, settings)
        _sync(dev)
        seconds = time.perf_counter() - start
    result["naive_scoring_examples_per_s"] = len(sub) / seconds
    result["scoring_speedup"] = result["scoring_examples_per_s"] / result["naive_scoring_examples_per_s"]
    fast_me = cache_b.get(model, tokenizer, sub)["me"]
    result["naive_vs_fast_max_abs_diff"] = float(np.max(np.abs(fast_me - naive_me))) if len(sub) else 0.0

    logger.info(f"training one epoch on {len(examples)} examples (length-grouped, dynamic padding) ...")
    train_settings = TrainSettings(
        epochs=1, batch_size=train_batch_size, precision=precision, gradient_checkpointing=gradient_checkpointing
    )
    reset_peak_memory(dev)
    start = time.perf_counter()
    train(model, tokenizer, examples, train_settings, desc="bench training")
    _sync(dev)
    result["training_examples_per_s"] = len(examples) / (time.perf_counter() - start)
    result["training_peak_mb"] = peak_memory_mb(dev)  # the whole process: weights included
    result["peak_rss_mb"] = peak_rss_mb()  # before the naive paths, whose 384-token batches need more

    logger.info(f"training {len(sub)} examples the official way (padded to {NAIVE_PAD}) ...")
    start = time.perf_counter()
    naive_train(model, tokenizer, sub, train_settings)
    _sync(dev)
    result["naive_training_examples_per_s"] = len(sub) / (time.perf_counter() - start)
    result["training_speedup"] = result["training_examples_per_s"] / result["naive_training_examples_per_s"]
    result["peak_rss_mb_with_naive"] = peak_rss_mb()
    return {key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()}


# ---------------------------------------------------------------- cost against pool size

POOL_QUERY = 500  # the query size of the measured round (the paper's)


def synthetic_pool(examples, n: int) -> list:
    """n examples: the given ones in turn, each pass over them under new ids, so no example is a base-cache hit."""
    return [
        dataclasses.replace(ex, id=f"{ex.id}#{i // len(examples)}")
        for i, ex in zip(range(n), itertools.cycle(examples))
    ]


class PeakMemory:
    """Peak memory growth over a stretch of code, from the memory in use at its start. Host: the resident set's
    high-water mark, reset at the start (Linux /proc/self/clear_refs); where it cannot be reset, the process's
    lifetime peak, which can only overstate. CUDA: torch's peak allocation."""

    def __init__(self, dev):
        self.dev = dev
        gc.collect()
        self.rss_before = _status_mb("VmRSS")
        self.gpu_before = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        self.reset = reset_peak_memory(dev)

    def result(self) -> dict:
        out = {
            "rss_before_mb": self.rss_before,
            "peak_rss_growth_mb": peak_host_mb() - self.rss_before,
            "rss_peak": "reset before the round" if self.reset else "process lifetime (upper bound)",
        }
        if self.dev.type == "cuda":
            out["peak_gpu_growth_mb"] = (torch.cuda.max_memory_allocated(self.dev) - self.gpu_before) / 2**20
        return out


def pool_round(
    model_name,
    task_name,
    train_file,
    n: int,
    k: int,
    batch_size: int,
    precision: str,
    strategy: str,
    dtype: str = "auto",
) -> dict:
    """One round's acquisition on a synthetic pool of n, as experiment.run_round does it: mu_b through an on-disk
    BaseScoreCache (empty, so every example is scored and appended), the current LoRA model's scores for the strategy,
    the selection of the query and the round's score file. Meant for a fresh process (pool_bench)."""
    task, base, dev, precision, dtype, model, tokenizer, settings, star = _set_up(
        model_name, task_name, train_file, batch_size, precision, dtype, strategy
    )
    pool = synthetic_pool(base, n)
    warm_up = [dataclasses.replace(ex, id=f"warm-up {ex.id}") for ex in base[:batch_size]]
    acquisition_scores(
        star,
        model,
        tokenizer,
        task,
        warm_up,
        t=0,
        rounds=10,
        passes=k,
        settings=settings,
        base_cache=BaseScoreCache(None, model_name, task, settings),
    )  # one-off allocations and kernel set-up
    with tempfile.TemporaryDirectory() as tmp:
        cache = BaseScoreCache(Path(tmp) / "base_scores.jsonl", model_name, task, settings)
        memory = PeakMemory(dev)
        start = time.perf_counter()
        mu = acquisition_scores(
            star, model, tokenizer, task, pool, t=0, rounds=10, base_cache=cache, passes=k, settings=settings
        )
        _sync(dev)
        scored = time.perf_counter()
        ids = [ex.id for ex in pool]
        select(ids, mu["mu"], min(POOL_QUERY, n), (), seed=0)
        write_scores(Path(tmp) / "round_0.jsonl", ids, mu)
        end = time.perf_counter()
        row = {
            "n": n,
            "seconds": end - start,
            "ms_per_example": 1000 * (end - start) / n,
            "select_write_ms": 1000 * (end - scored),
            **memory.result(),
        }
    about = {
        "model": model_name,
        "task": task.name,
        "examples_repeated": len(base),
        "strategy": star.name,
        "k": k,
        "query_size": POOL_QUERY,
        "device": str(dev),
        "precision": precision,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
    }
    return {"about": about, "row": {key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()}}


def pool_bench(
    model_name="smollm2",
    task_name="boolq",
    train_file=None,
    sizes=(1000, 10000, 100000),
    k=3,
    batch_size=32,
    precision="auto",
    strategy="star-me",
    dtype="auto",
) -> dict:
    """One round's acquisition cost per pool size, each size in a fresh process: a process's peak memory and its
    allocator's free lists would otherwise carry over from one size to the next."""
    # bad names fail here, before a worker starts (the worker resolves 'auto' for its own device)
    get_strategy(strategy, get_task(task_name, user_files=bool(train_file)).closed)
    resolve_precision(precision, torch.device("cpu"))
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as sweep's workers
    about, rows = {}, []
    for n in sizes:
        logger.info(f"pool of {n}: one round's acquisition in a fresh process ...")
        with futures.ProcessPoolExecutor(1, mp_context=context) as worker:
            out = worker.submit(
                pool_round, model_name, task_name, train_file, n, k, batch_size, precision, strategy, dtype
            ).result()  # re-raises the worker's error here
        about = out["about"]
        rows.append(out["row"])
    return {**about, "pool_sizes": rows}


def pool_table(result: dict) -> str:
    """The pool-size result as a text table, with what was measured above it."""
    r = result
    lines = [
        f"one round's acquisition: {r['strategy']} (K={r['k']}), query {r['query_size']}, {r['model']} on "
        f"{r['task']} ({r['examples_repeated']} examples repeated under new ids), {r['device']} {r['precision']} "
        f"(weights {r['dtype']}), "
        f"{r['threads']} thread(s)",
        f"each pool size in a fresh process after a warm-up; peak RSS growth: the resident set's peak during "
        f"the round above its size before it (peak {r['pool_sizes'][0]['rss_peak']})",
    ]
    gpu = "peak_gpu_growth_mb" in r["pool_sizes"][0]
    head = ["pool size", "seconds", "ms/example", "select+write ms", "RSS before MB", "peak RSS growth MB"] + (
        ["peak GPU growth MB"] if gpu else []
    )
    table = [
        [
            f"{row['n']}",
            f"{row['seconds']:.1f}",
            f"{row['ms_per_example']:.2f}",
            f"{row['select_write_ms']:.0f}",
            f"{row['rss_before_mb']:.0f}",
            f"{row['peak_rss_growth_mb']:.0f}",
        ]
        + ([f"{row['peak_gpu_growth_mb']:.0f}"] if gpu else [])
        for row in r["pool_sizes"]
    ]
    return "\n".join(lines + right_aligned(head, table))


# ---------------------------------------------------------------- one round of a protocol, phase by phase

ROUND_PHASES = ("train", "evaluate", "base", "score")


def round_bench(
    protocol: str = "sst2",
    strategies=("random", "me", "star-me"),
    model_name: str | None = None,
    precision: str = "auto",
    seed: int = 0,
    cast_weights: bool = True,
    **overrides,
) -> dict:
    """What a user of `protocol` waits for in its most expensive round, phase by phase, per strategy: training on the
    last round's labeled set, evaluating the test set, the base model's scores (once per run, cached), and scoring
    the round's candidates. Each phase's matmul FLOPs (nn.Linear calls, padding left out; training counts forward
    and backward, 2x the forward's for a frozen base with LoRA, 3x with every weight trained) over its time, against
    this machine's square-matmul rate in the same precision. cast_weights=False leaves out
    hardware.bf16_frozen_linears (how runs worked before it), for a before/after in one process."""
    from .config import resolve
    from .experiment import method_settings

    base_cfg = resolve(
        protocol, **{"model": model_name, "precision": precision, "seed": seed, **overrides, "strategy": strategies[0]}
    )
    task = get_task(base_cfg.task, base_cfg.candidates, base_cfg.template)
    data = load_data(task, base_cfg.data, base_cfg.train_file, base_cfg.test_file)
    test = data.test[: base_cfg.test_size] if base_cfg.test_size else data.test
    n_labeled = base_cfg.init_size + base_cfg.query_size * (base_cfg.rounds - 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.pool))
    labeled = [data.pool[i] for i in order[:n_labeled]]
    candidates = subsample([data.pool[i] for i in order[n_labeled:]], base_cfg.candidate_subsample, seed, 0)
    dev = device()
    model, tokenizer = load_model(base_cfg.model, dtype=base_cfg.dtype)
    result = {
        "protocol": protocol,
        "model": base_cfg.model,
        "task": task.name,
        "device": str(dev),
        "precision": base_cfg.precision,
        "dtype": base_cfg.dtype,
        "threads": torch.get_num_threads(),
        "labeled": len(labeled),
        "test": len(test),
        "candidates": len(candidates),
        "round": base_cfg.rounds - 2,
        "matmul_gflops": matmul_gflops(base_cfg.precision, dev),
        "strategies": {},
    }
    for name in strategies:
        cfg = dataclasses.replace(base_cfg, strategy=name)
        strategy = get_strategy(name, task.closed)
        settings, training = method_settings(cfg, strategy)
        phases = {}
        current = attach_lora(model, training) if cfg.mode == "lora" else model
        if cfg.mode == "lora" and cast_weights:
            bf16_frozen_linears(current, cfg.precision)
        backward = 2 if cfg.mode == "lora" else 3
        phases["train"] = _timed(
            dev,
            current,
            len(labeled),
            backward,
            lambda: train(current, tokenizer, labeled, training, desc=f"{name}: training"),
        )
        phases["evaluate"] = _timed(
            dev,
            current,
            len(test),
            1,
            lambda: evaluate(current, tokenizer, task, test, settings, desc=f"{name}: evaluating"),
        )
        cache = BaseScoreCache(None, cfg.model, task, settings)
        acquisition = Acquisition(strategy, cfg, settings, cache)
        if strategy.needs_base:
            phases["base"] = _timed(dev, current, len(candidates), 1, lambda: cache.get(current, tokenizer, candidates))
        phases["score"] = _timed(
            dev,
            current,
            len(candidates),
            1,
            lambda: acquisition.query(current, tokenizer, task, candidates, labeled, cfg.query_size, result["round"]),
        )
        for phase in phases.values():
            phase["matmul_fraction"] = phase["gflops"] / result["matmul_gflops"]
        result["strategies"][name] = {"round_s": sum(p["seconds"] for k, p in phases.items() if k != "base"), **phases}
        if cfg.mode == "lora":
            model = current.unload()
    result["peak_rss_mb"] = peak_rss_mb()
    return _rounded(result)


def _timed(dev, model, n: int, flop_factor: int, work) -> dict:
    with FlopCount(model) as flops:
        start = time.perf_counter()
        work()
        _sync(dev)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "examples": n,
        "examples_per_s": n / seconds,
        "gflops": flop_factor * flops.useful / seconds / 1e9,
    }


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def round_table(result: dict) -> str:
    """round_bench's result as a text table."""
    r = result
    lines = [
        f"one round of the {r['protocol']} protocol: {r['model']} on {r['task']}, {r['device']} {r['precision']} "
        f"(weights {r['dtype']}), {r['threads']} thread(s); training on {r['labeled']} labels, evaluating "
        f"{r['test']}, scoring {r['candidates']} candidates (round {r['round']}); matmul rate "
        f"{r['matmul_gflops']:.0f} GFLOP/s",
        "'base' is the frozen base model's scores, computed once per run and cached; 'round' leaves it out",
    ]
    head = ["strategy", "phase", "seconds", "examples/s", "GFLOP/s", "of matmul rate"]
    table = []
    for name, phases in r["strategies"].items():
        for phase in ROUND_PHASES:
            if phase in phases:
                p = phases[phase]
                table.append(
                    [
                        name,
                        phase,
                        f"{p['seconds']:.1f}",
                        f"{p['examples_per_s']:.1f}",
                        f"{p['gflops']:.0f}",
                        f"{100 * p['matmul_fraction']:.0f}%",
                    ]
                )
        table.append([name, "round", f"{phases['round_s']:.1f}", "", "", ""])
    return "\n".join(lines + right_aligned(head, table) + [f"peak RSS {r['peak_rss_mb']:.0f} MB"])


def right_aligned(head: list[str], table: list[list[str]]) -> list[str]:
    """A text table's lines: the head, then the rows, each column right-aligned to its widest cell."""
    widths = [max(len(c) for c in col) for col in zip(head, *table)]
    return ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [head, *table]]
