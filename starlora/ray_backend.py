"""`starlora sweep --backend ray`: every run of the grid is a Ray task, placed by Ray on any node of a cluster.

Runs write their folders directly, so the sweep folder must be on storage every node mounts at the same path (NFS or
similar); each task starts in the driver's working directory, so relative paths (--out, data files) mean what they
mean on the driver. The driver follows the runs through their rounds.jsonl files, as the local backend does: one
progress bar for the grid, a failed run reported when it fails, the sweep ending with its error. A task whose worker
dies (a killed process, a lost node) is re-run by Ray and resumes from its folder, like a sweep run again.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from .errors import StarloraError

logger = logging.getLogger(__name__)
BACKENDS = ("local", "ray")
MAX_RETRIES = 3  # re-runs of a task whose worker died; a run that raises is not re-run (the next sweep retries it)
FORWARDED_ENV = "STARLORA_"  # starlora's own settings from the command line (--cache-dir, --delimiter, ...)


def check_options(backend: str, address, cpus_per_run, workers: int | None, devices) -> None:
    """One-line errors for options that do not go together, before anything runs."""
    if backend not in BACKENDS:
        raise StarloraError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "ray":
        for name, value in (("--address", address), ("--cpus-per-run", cpus_per_run)):
            if value is not None:
                raise StarloraError(f"{name} is an option of the Ray backend: add --backend ray")
        return
    if workers not in (None, 1) or devices:
        raise StarloraError(
            "--workers and --devices place runs on this machine; with --backend ray, Ray places them "
            "(a GPU per run where the cluster has GPUs, else --cpus-per-run cores)"
        )
    if cpus_per_run is not None and cpus_per_run < 1:
        raise StarloraError(f"--cpus-per-run must be at least 1 (got {cpus_per_run})")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise StarloraError("--backend ray needs Ray: pip install 'starlora[ray]'") from None


def run_job(cfg, folder: str, report_to, cwd: str, root: str, threads: int) -> dict | None:
    """One run inside a Ray task, on whichever node Ray chose."""
    import torch

    from .experiment import run

    if not Path(cwd).is_dir() or not Path(root).is_dir():
        raise StarloraError(
            f"{root} is not visible on node {socket.gethostname()}: the sweep folder must be on "
            "storage every node mounts at the same path (NFS or similar)"
        )
    os.chdir(cwd)
    torch.set_num_threads(threads)
    return run(cfg, folder, report_to=report_to)


def sweep_on_ray(jobs, bar, report_to=(), address: str | None = None, cpus_per_run: int | None = None) -> list:
    """Run the jobs as Ray tasks; returns their summaries in job order. Connects to `address` (none: a cluster
    started on this machine with `ray start`, else a new local instance), unless this process is connected already."""
    import ray

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(
                address=address, logging_level=logging.WARNING, **({} if address else {"include_dashboard": False})
            )
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"--address {address}" if address else "the Ray cluster this machine last started"
            raise StarloraError(f"{where}: cannot connect to it ({str(e).splitlines()[0]})") from None
    refs = []
    try:
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        cpus = cpus_per_run or 1
        root = Path(os.path.commonpath([job.folder.absolute() for job in jobs])) if jobs else Path.cwd()
        root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        task = ray.remote(run_job).options(
            num_cpus=cpus,
            num_gpus=1 if gpus else 0,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
            runtime_env={"env_vars": {**env, "STARLORA_NO_PROGRESS": "1"}},
        )  # a task's bars would garble the driver's
        logger.info(f"sweep on Ray: {len(jobs)} run(s), each with {cpus} CPU(s){' and 1 GPU' if gpus else ''}")
        refs = [task.remote(job.cfg, str(job.folder), report_to, os.getcwd(), str(root), cpus) for job in jobs]
        return _follow(jobs, refs, bar)
    except BaseException:  # Ctrl-C or an error here: stop the runs still going (each resumes on the next sweep)
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _follow(jobs, refs, bar) -> list:
    """Wait for every task, moving the bar as rounds land and reporting each failure as it comes."""
    import ray

    from .sweep import raise_failures, report_failure, rounds_done

    results, failed, pending = {}, {}, list(refs)
    index = {ref: i for i, ref in enumerate(refs)}
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1)
        for ref in ready:
            job = jobs[index[ref]]
            try:
                results[index[ref]] = ray.get(ref)
                if not (job.folder / "summary.json").exists():  # it finished where this driver cannot see it
                    raise StarloraError(
                        "finished, but its folder is not visible to the driver: the sweep folder "
                        "must be on storage every node mounts at the same path (NFS or similar)"
                    )
            except ray.exceptions.RayTaskError as e:  # the run raised: its message, or the remote traceback
                failed[job.folder] = e.cause if isinstance(e.cause, StarloraError) else e
            except ray.exceptions.RayError as e:  # its worker died MAX_RETRIES + 1 times, or its node went away
                failed[job.folder] = StarloraError(f"Ray gave up on it: {str(e).splitlines()[0]}")
            except StarloraError as e:
                failed[job.folder] = e
            if job.folder in failed:
                report_failure(job.folder, failed[job.folder])
        bar.update(rounds_done(jobs) - bar.n)
    raise_failures(failed, len(jobs))
    for e in failed.values():
        if not isinstance(e, StarloraError):
            raise e  # an unexpected error, with its traceback
    return [results[i] for i in range(len(jobs))]
