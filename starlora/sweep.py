"""`starlora sweep`: a grid of tasks x strategies x seeds, one run folder each, resumable, then the report.

Runs are independent, so with several workers (CPU processes, or one per GPU with --devices) they run side by side,
one run per worker. Every run is `experiment.run` on its own folder, so an interrupted sweep resumes exactly where
each run stopped and ends with the results an uninterrupted sweep gives.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import RunConfig, resolve, variant
from .data import load_data
from .errors import StarloraError
from .experiment import run, run_pool
from .files import read_json, read_jsonl
from .progress import progress
from .provenance import code_revision, revision_label
from .ray_backend import check_options, sweep_on_ray
from .strategies import get_strategy
from .tasks import get_task

GRID_KEYS = {"tasks", "strategies", "seeds", "protocol", "config", "configs"}
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    cfg: RunConfig
    folder: Path


def read_grid(path) -> list[dict]:
    """A YAML grid: one block {tasks, strategies, seeds, protocol, config, configs} or a list of them (e.g. the
    main comparison with 5 seeds and the ablations with 3). `configs` is an axis of configuration variants, each
    merged over the block's `config`: `configs: [{}, {diversity: kmeans}]` runs every cell once plain and once
    with k-means diversity."""
    try:
        blocks = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise StarloraError(f"{path}: cannot read the grid file ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise StarloraError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    blocks = blocks if isinstance(blocks, list) else [blocks]
    for i, block in enumerate(blocks, 1):
        if not isinstance(block, dict):
            raise StarloraError(f"{path}: block {i}: not a mapping of {', '.join(sorted(GRID_KEYS))}")
        unknown = set(map(str, block)) - GRID_KEYS
        if unknown:
            raise StarloraError(
                f"{path}: block {i}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(GRID_KEYS))})"
            )
        if not isinstance(block.get("config", {}), dict):
            raise StarloraError(f"{path}: block {i}: 'config' must be a mapping of configuration keys")
        variants = block.get("configs", [{}])
        if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
            raise StarloraError(
                f"{path}: block {i}: 'configs' must be a non-empty list of mappings of "
                f"configuration keys, e.g. [{{}}, {{diversity: kmeans}}]"
            )
    return blocks


def plan(blocks: list[dict], out, overrides: dict | None = None, grid=None) -> list[Job]:
    """Every run of the grid, resolved and validated before any starts (configuration, data files and sizes; not
    the model): OUT/TASK/STRATEGY/seedN, where STRATEGY is config.variant with the configuration values that differ
    between runs of that task and variant, e.g. random[lr=0.001] (folder_names). The whole grid runs seed by seed,
    across its blocks, so a half-finished sweep already holds whole comparisons. `overrides` (command-line flags)
    win over a block's config and configs, as flags win over a config file in `run`. Errors name the grid file and
    the block: 'grid.yaml: block 2: ...'."""
    resolved = []  # (block number, cfg)
    for number, block in enumerate(blocks, 1):
        with in_block(grid, number, len(blocks)):
            for name in ("tasks", "strategies", "seeds"):
                if not isinstance(block.get(name), list) or not block[name]:
                    raise StarloraError(f"the grid needs a non-empty list of {name} (--{name} or the grid file)")
            for task in block["tasks"]:
                for seed in block["seeds"]:
                    for variant_config in block.get("configs", [{}]):
                        config = {**block.get("config", {}), **variant_config, **(overrides or {})}
                        for strategy in block["strategies"]:
                            cfg = resolve(
                                block.get("protocol") or "paper",
                                **{**config, "task": task, "strategy": strategy, "seed": seed},
                            )
                            resolved.append((number, cfg))
    resolved.sort(key=lambda item: item[1].seed)  # stable: within a seed, the grid's own order
    names = folder_names([cfg for _, cfg in resolved])
    jobs, seen = [], {}
    for (number, cfg), name in zip(resolved, names):
        folder = Path(out) / str(cfg.task) / name / f"seed{cfg.seed}"
        if folder in seen:  # blocks may overlap: the same run listed twice runs once
            if seen[folder][1] != cfg:  # folder_names keeps runs that differ apart; never run one in another's place
                raise StarloraError(
                    f"{grid or 'the grid'}: blocks {seen[folder][0]} and {number} both map to "
                    f"{folder} with different configurations"
                )
            continue
        seen[folder] = (number, cfg)
        jobs.append(Job(cfg, folder))
    check_data([(seen[job.folder][0], job) for job in jobs], grid, len(blocks))
    return jobs


@contextlib.contextmanager
def in_block(grid, number: int, blocks: int):
    """Errors raised inside are prefixed with the grid file and block number ('grid.yaml: block 2: ...'); without a
    grid file, with the block number where there are several blocks."""
    prefix = f"{grid}: block {number}: " if grid else (f"block {number}: " if blocks > 1 else "")
    try:
        yield
    except StarloraError as e:
        if not prefix:
            raise
        raise StarloraError(prefix + str(e)) from None


SAME_NAME = {"seed"}  # in the folder's name already


def folder_names(cfgs: list[RunConfig]) -> list[str]:
    """One folder name per configuration: its variant (star-me, star-me+kmeans, ...), and where runs of one task and
    variant differ in other configuration values, those values for each: random[lr=0.00015] and random[lr=0.001].
    A grid whose runs differ only in task, strategy variant and seed keeps the plain names."""
    values = [dataclasses.asdict(cfg) for cfg in cfgs]
    groups = [(cfg.task, variant(cfg)) for cfg in cfgs]
    members: dict[tuple, list[dict]] = {}
    for group, value in zip(groups, values):
        members.setdefault(group, []).append(value)
    differ = {
        group: sorted(k for k in ms[0] if k not in SAME_NAME and len({_key(m[k]) for m in ms}) > 1)
        for group, ms in members.items()
    }
    names = {}  # (group, its differing values) -> folder name
    for group, ms in members.items():
        keys = differ[group]
        named = {
            tuple(_key(m[k]) for k in keys): group[1]
            + ("[" + ",".join(f"{k}={_show(m[k])}" for k in keys) + "]" if keys else "")
            for m in ms
        }
        if len(set(named.values())) < len(named) or any(len(n) > 120 for n in named.values()):  # unreadable
            named = {c: f"{group[1]}[config-{hashlib.sha1(repr((keys, c)).encode()).hexdigest()[:8]}]" for c in named}
        names |= {(group, c): folder for c, folder in named.items()}
    return [names[group, tuple(_key(value[k]) for k in differ[group])] for group, value in zip(groups, values)]


def _key(value) -> str:
    """Equal values, equal keys (1 and 1.0 too: a YAML grid may write either)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return json.dumps(float(value) if number else value, sort_keys=True)


def _show(value) -> str:
    """A configuration value as a short, portable piece of a folder name."""
    if isinstance(value, float):
        value = f"{value:g}" if float(f"{value:g}") == value else repr(value)
    elif isinstance(value, list):
        value = "+".join(map(str, value))
    elif isinstance(value, str) and ("/" in value or os.sep in value):
        value = Path(value).name  # a data file: its name (two files of one name fall back to a hash)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))[:40]


def check_data(jobs: list[tuple[int, Job]], grid=None, blocks: int = 1) -> None:
    """What `run` checks before loading the model, for every run of the grid before the first starts: the task and
    strategy, the data (loaded once per task and data source) and that the pool holds the initial set, the queries,
    the probe and the stop set. jobs: (block number, job)."""
    loaded = {}
    for number, job in jobs:
        cfg = job.cfg
        with in_block(grid, number, blocks):
            key = (
                cfg.task,
                tuple(cfg.candidates or ()),
                cfg.template,
                cfg.data,
                cfg.train_file,
                cfg.test_file,
                cfg.id_field,
                cfg.answer_field,
            )
            if cfg.test_file and not cfg.train_file:
                raise StarloraError("--test-file without --train-file: the run needs a pool to label (--train-file)")
            if key not in loaded:
                task = get_task(
                    cfg.task, cfg.candidates, cfg.template, user_files=bool(cfg.train_file or cfg.test_file)
                )
                loaded[key] = (
                    task,
                    load_data(task, cfg.data, cfg.train_file, cfg.test_file, cfg.id_field, cfg.answer_field).pool,
                )
            task, examples = loaded[key]
            get_strategy(cfg.strategy, task.closed)
            run_pool(cfg, examples)  # the pool the run will have (--pool-class-ratio), checked as run checks it


def finished_rounds(job: Job) -> int:
    return len(read_jsonl(job.folder / "rounds.jsonl")) if (job.folder / "config.json").exists() else 0


def rounds_done(jobs: list[Job]) -> int:
    """The grid's finished rounds, read from the runs' rounds.jsonl files: what the sweep's bar shows, whichever
    processes or nodes run them."""
    return sum(min(finished_rounds(job), job.cfg.rounds) for job in jobs)


def report_failure(folder, error) -> None:
    logger.error(f"{folder}: failed: {error} (the other runs go on; re-running the sweep retries it)")


def raise_failures(failed: dict, total: int) -> None:
    """End the sweep naming every failed run, when each failed on bad input or configuration (StarloraError); an
    unexpected error is left to its caller to re-raise with its traceback."""
    if failed and all(isinstance(e, StarloraError) for e in failed.values()):
        raise StarloraError(
            f"{len(failed)} of {total} run(s) failed: " + "; ".join(f"{folder}: {e}" for folder, e in failed.items())
        )


def warn_changed_code(jobs: list[Job]) -> None:
    """A run that resumes on other code than the code that started it says so, naming both revisions (it is not
    refused: the report then warns that its group mixes revisions). Finished runs do not run again, and a folder
    without a finished round starts afresh, so neither mixes code."""
    current = revision_label(code_revision())
    for job in jobs:
        if (job.folder / "summary.json").exists() or not finished_rounds(job):
            continue
        try:
            stored = read_json(job.folder / "config.json").get("versions", {}).get("revision")
        except (StarloraError, AttributeError):
            continue  # an unreadable config.json: the run itself reports it
        if revision_label(stored) != current:
            logger.warning(
                f"{job.folder}: resuming on code revision {current}; its finished rounds were made by "
                f"{revision_label(stored)} (the report will flag the mix)"
            )


def sweep(
    jobs: list[Job],
    workers: int = 1,
    devices: list[str] | None = None,
    report_to=(),
    backend: str = "local",
    address: str | None = None,
    cpus_per_run: int | None = None,
) -> list[dict]:
    """Run every job (finished ones are skipped, interrupted ones resume); one overall progress bar over all rounds,
    with its ETA. workers > 1 or several devices: that many runs side by side, one per worker process. backend "ray":
    each run a Ray task on the cluster at `address` (ray_backend.py)."""
    check_options(backend, address, cpus_per_run, workers, devices)
    for device in devices or []:
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise StarloraError(f"--devices: {device!r} is not cpu or cuda:N")
    gpus = [int(device[5:]) for device in devices or [] if device.startswith("cuda:")]
    if gpus:
        import torch

        if max(gpus) >= torch.cuda.device_count():
            raise StarloraError(
                f"--devices {','.join(devices)} needs {max(gpus) + 1} CUDA GPU(s); this machine has "
                f"{torch.cuda.device_count()} (give cpu, or fewer cuda:N)"
            )
    slots = len(devices) if devices else workers
    if slots < 1:
        raise StarloraError(f"--workers must be at least 1 (got {workers})")
    warn_changed_code(jobs)
    bar = progress(total=sum(job.cfg.rounds for job in jobs), initial=rounds_done(jobs), desc="sweep", unit="round")
    try:
        if backend == "ray":
            return sweep_on_ray(jobs, bar, report_to, address, cpus_per_run)
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
    with futures.ProcessPoolExecutor(
        slots, mp_context=context, initializer=claim_device, initargs=(claims, os.cpu_count() or 1, slots)
    ) as pool:
        pending = [
            pool.submit(run, job.cfg, job.folder, report_to=report_to) for job in jobs
        ]  # workers log nothing below warnings
        failed = {}
        while True:
            finished = all(f.done() for f in pending)
            bar.update(rounds_done(jobs) - bar.n)
            for job, f in zip(jobs, pending):
                if f.done() and f.exception() is not None and job.folder not in failed:
                    failed[job.folder] = f.exception()
                    report_failure(job.folder, f.exception())
            if finished:
                break
            time.sleep(1)
        raise_failures(failed, len(jobs))
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
