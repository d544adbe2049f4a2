"""`starlora sweep`: a grid of tasks x strategies x seeds, one run folder each, resumable, then the report.

Runs are independent, so with several workers (CPU processes, or one per GPU with --devices) they run side by side,
one run per worker. Every run is `experiment.run` on its own folder, so an interrupted sweep resumes exactly where
each run stopped and ends with the results an uninterrupted sweep gives.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import RunConfig, resolve, variant
from .errors import StarloraError
from .experiment import run
from .files import read_jsonl
from .tokens import progress

GRID_KEYS = {"tasks", "strategies", "seeds", "protocol", "config"}
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    cfg: RunConfig
    folder: Path


def read_grid(path) -> list[dict]:
    """A YAML grid: one block {tasks, strategies, seeds, protocol, config} or a list of them (e.g. the main
    comparison with 5 seeds and the ablations with 3)."""
    try:
        blocks = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise StarloraError(f"{path}: cannot read the grid file ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise StarloraError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    blocks = blocks if isinstance(blocks, list) else [blocks]
    for i, block in enumerate(blocks, 1):
        if not isinstance(block, dict):
            raise StarloraError(f"{path}: grid block {i} is not a mapping of {', '.join(sorted(GRID_KEYS))}")
        unknown = set(map(str, block)) - GRID_KEYS
        if unknown:
            raise StarloraError(f"{path}: grid block {i}: unknown key(s) {', '.join(sorted(unknown))} "
                                f"(allowed: {', '.join(sorted(GRID_KEYS))})")
        if not isinstance(block.get("config", {}), dict):
            raise StarloraError(f"{path}: grid block {i}: 'config' must be a mapping of configuration keys")
    return blocks


def plan(blocks: list[dict], out, overrides: dict | None = None) -> list[Job]:
    """Every run of the grid, resolved and validated before any starts: OUT/TASK/STRATEGY/seedN, seed by seed.
    `overrides`
    (command-line flags) win over a block's config, as flags win over a config file in `run`."""
    jobs, seen = [], set()
    for block in blocks:
        config = {**block.get("config", {}), **(overrides or {})}
        for name in ("tasks", "strategies", "seeds"):
            if not isinstance(block.get(name), list) or not block[name]:
                raise StarloraError(f"the grid needs a non-empty list of {name} (--{name} or the grid file)")
        for task in block["tasks"]:
            for seed in block["seeds"]:  # seed by seed: a half-finished sweep already holds whole comparisons
                for strategy in block["strategies"]:
                    cfg = resolve(block.get("protocol") or "paper", **{**config, "task": task, "strategy": strategy,
                                                                          "seed": seed})
                    folder = Path(out) / str(task) / variant(cfg) / f"seed{seed}"
                    if folder not in seen:  # blocks may overlap: each run once
                        seen.add(folder)
                        jobs.append(Job(cfg, folder))
    return jobs


def finished_rounds(job: Job) -> int:
    return len(read_jsonl(job.folder / "rounds.jsonl")) if (job.folder / "config.json").exists() else 0


def sweep(jobs: list[Job], workers: int = 1, devices: list[str] | None = None, report_to=()) -> list[dict]:
    """Run every job (finished ones are skipped, interrupted ones resume); one overall progress bar over all rounds,
    with its ETA. workers > 1 or several devices: that many runs side by side, one per worker process."""
    for device in devices or []:
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise StarloraError(f"--devices: {device!r} is not cpu or cuda:N")
    slots = len(devices) if devices else workers
    if slots < 1:
        raise StarloraError(f"--workers must be at least 1 (got {workers})")
    done = sum(min(finished_rounds(job), job.cfg.rounds) for job in jobs)
    bar = progress(total=sum(job.cfg.rounds for job in jobs), initial=done, desc="sweep", unit="round")
    try:
        if slots == 1:
            return [run(job.cfg, job.folder, on_round=lambda: bar.update(1), report_to=report_to) for job in jobs]
        return _side_by_side(jobs, slots, devices or ["cpu"] * slots, bar, report_to)
    finally:
        bar.close()


def _side_by_side(jobs, slots, devices, bar, report_to=()) -> list[dict]:
    """One run per worker process; the bar follows the rounds.jsonl files, the only state the workers share. A run
    that fails is reported when it fails and the others go on; the sweep then ends with its error."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads or CUDA state
    claims = context.Queue()
    for device in devices:
        claims.put(device)
    with futures.ProcessPoolExecutor(slots, mp_context=context, initializer=claim_device,
                                     initargs=(claims, os.cpu_count() or 1, slots)) as pool:
        pending = [pool.submit(run, job.cfg, job.folder, report_to=report_to) for job in jobs]  # workers log nothing below warnings
        failed = {}
        while True:
            finished = all(f.done() for f in pending)
            bar.update(sum(min(finished_rounds(job), job.cfg.rounds) for job in jobs) - bar.n)
            for job, f in zip(jobs, pending):
                if f.done() and f.exception() is not None and job.folder not in failed:
                    failed[job.folder] = f.exception()
                    logger.error(f"{job.folder}: failed: {f.exception()} (the other runs go on; re-running the "
                                 "sweep retries it)")
            if finished:
                break
            time.sleep(1)
        if failed and all(isinstance(e, StarloraError) for e in failed.values()):
            raise StarloraError(f"{len(failed)} of {len(jobs)} run(s) failed: "
                                + "; ".join(f"{folder}: {e}" for folder, e in failed.items()))
        return [f.result() for f in pending]  # re-raises an unexpected error with its traceback


def claim_device(claims, cores: int, slots: int) -> None:
    """Worker start: take one device for the worker's whole life. A GPU is pinned through CUDA_VISIBLE_DEVICES
    (read when CUDA first initialises, which has not happened yet in a fresh process); CPU workers share the cores."""
    import torch

    device = claims.get()
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    torch.set_num_threads(max(1, cores // slots))
    os.environ["STARLORA_WORKER_DEVICE"] = device
