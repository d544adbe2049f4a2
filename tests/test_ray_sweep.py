"""`starlora sweep --backend ray` on one local Ray instance with two CPU workers (shared by the tests: Ray takes ~10 s
to start): the same results as the local backend, a failed run reported and retried by the next sweep, a killed worker
re-run by Ray, a killed sweep resumed. The tiny random model, 2 runs of 3 rounds."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from test_sweep import results as run_results

from starlora import sweep as S
from starlora.cli import main
from starlora.errors import StarloraError

ROUNDS = 3


@pytest.fixture(scope="module")
def ray_address():
    """A fresh local instance with two CPUs (never one another process started), shut down after the module."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    rows = [
        {
            "question": f"Question: is item {i} {'red' if i % 3 else 'blue'}?\nAnswer:",
            "answer": "true" if i % 3 else "false",
        }
        for i in range(44)
    ]
    (folder / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    config = dict(
        model="tiny-random",
        task="boolq",
        train_file=str(folder / "pool.jsonl"),
        test_file=str(folder / "test.jsonl"),
        init_size=4,
        query_size=4,
        rounds=ROUNDS,
        epochs=1,
        lora_r=4,
        probe_size=4,
        fewshot=0,
        score_batch_size=16,
        precision="fp32",
    )
    (folder / "grid.yaml").write_text(
        json.dumps({"tasks": ["boolq"], "strategies": ["random", "star-me"], "seeds": [0], "config": config})
    )
    return folder


def results(folder):
    """Every run's rounds and summary, timings and the code revision aside (other work may change the source tree
    between two sweeps of a test; the revision is not a result)."""
    return {
        name: (rounds, {k: v for k, v in summary.items() if k != "revision"})
        for name, (rounds, summary) in run_results(folder).items()
    }


def jobs(grid, out):
    return S.plan(S.read_grid(grid / "grid.yaml"), grid / out)


@pytest.fixture(scope="module")
def expected(grid):
    """The local backend's results, computed with one thread as each Ray task (1 CPU) computes them: the same
    arithmetic in the same order, so the Ray runs must give identical numbers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        S.sweep(jobs(grid, "local"))
    finally:
        torch.set_num_threads(threads)
    return results(grid / "local")


def run_workers():
    """The Ray worker processes running a starlora run now (Ray titles a busy worker ray::FUNCTION), among this
    test process's descendants only (ray.init(address="local") started the raylet as our child)."""
    return [p for p in psutil.Process().children(recursive=True) if p.name().startswith("ray::run_job")]


def test_ray_runs_give_the_local_results_and_a_failed_run_is_retried_by_the_next_sweep(
    ray_address, grid, expected, caplog
):
    import dataclasses

    good = jobs(grid, "ray")
    late = grid / "late.jsonl"  # a data file that is missing during the first sweep
    broken = S.Job(dataclasses.replace(good[0].cfg, seed=1, train_file=str(late)), grid / "ray/boolq/random/seed1")
    with pytest.raises(StarloraError, match=r"^1 of 3 run\(s\) failed: .*seed1.*late.jsonl"):
        S.sweep([*good, broken], backend="ray", cpus_per_run=1)
    assert any("seed1: failed" in r.message and "re-running the sweep retries it" in r.message for r in caplog.records)
    assert results(grid / "ray") == expected  # identical: rounds (selections, losses, accuracies) and summaries
    finished = {j.folder: (j.folder / "rounds.jsonl").stat().st_mtime_ns for j in good}
    late.write_text((grid / "pool.jsonl").read_text())
    summaries = S.sweep([*good, broken], backend="ray", cpus_per_run=1)
    assert [s["seed"] for s in summaries] == [0, 0, 1] and S.finished_rounds(broken) == ROUNDS
    assert {j.folder: (j.folder / "rounds.jsonl").stat().st_mtime_ns for j in good} == finished  # not run again


@pytest.mark.slow  # ~20-60 s on 2 cores: the module takes ~130 s in all
def test_a_killed_worker_is_re_run_and_its_run_resumes(ray_address, grid, expected):
    todo = jobs(grid, "killed-worker")
    sweep = threading.Thread(target=S.sweep, args=(todo,), kwargs=dict(backend="ray", cpus_per_run=1))
    sweep.start()
    killed = []
    while sweep.is_alive() and not killed:
        if any(0 < S.finished_rounds(j) < ROUNDS for j in todo):  # mid-run: a round landed, more to come
            for worker in run_workers():
                worker.kill()
                killed.append(worker.pid)
        time.sleep(0.05)
    sweep.join()
    assert killed, "the sweep ended before a run could be killed mid-run"
    assert results(grid / "killed-worker") == expected


@pytest.mark.ci  # ~60 s on 2 cores: two whole sweeps in fresh processes
def test_a_killed_sweep_resumes_with_the_uninterrupted_results(ray_address, grid, expected):
    out = grid / "killed-sweep"
    command = [
        sys.executable,
        "-m",
        "starlora",
        "sweep",
        "--grid",
        str(grid / "grid.yaml"),
        "--out",
        str(out),
        "--backend",
        "ray",
        "--address",
        ray_address,
        "--cpus-per-run",
        "1",
    ]
    env = {**os.environ, "STARLORA_NO_PROGRESS": "1"}
    log = grid / "killed-sweep.log"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    todo = jobs(grid, "killed-sweep")
    while first.poll() is None and not any(S.finished_rounds(j) for j in todo):
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert 0 < sum(S.finished_rounds(j) for j in todo) < ROUNDS * len(todo), log.read_text()[-3000:]
    deadline = time.time() + 30  # Ray ends the tasks of a driver that died
    while run_workers() and time.time() < deadline:
        time.sleep(0.2)
    assert not run_workers()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert results(out) == expected
    assert "| star-me | 1 |" in (out / "report" / "report.md").read_text()


def test_ray_options_are_checked_before_any_run(grid, monkeypatch, capsys):
    base = ["sweep", "--grid", str(grid / "grid.yaml"), "--out", str(grid / "bad")]
    for extra, message in [
        (["--address", "10.0.0.1:6379"], "--address is an option of the Ray backend: add --backend ray"),
        (["--cpus-per-run", "2"], "--cpus-per-run is an option of the Ray backend: add --backend ray"),
        (["--backend", "ray", "--workers", "2"], "--workers and --devices place runs on this machine"),
        (["--backend", "ray", "--cpus-per-run", "0"], r"--cpus-per-run must be at least 1 \(got 0\)"),
    ]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message.replace("\\", "") in err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed: importing it fails
    assert main(base + ["--backend", "ray"]) == 2
    assert "--backend ray needs Ray: pip install 'starlora[ray]'" in capsys.readouterr().err
    assert not (grid / "bad").exists()


def test_a_folder_the_worker_cannot_see_is_named(tmp_path):
    from starlora.ray_backend import run_job

    with pytest.raises(
        StarloraError,
        match="is not visible on node .*: the sweep folder must be on storage every node mounts at the same path",
    ):
        run_job(None, str(tmp_path / "out/boolq/random/seed0"), (), str(tmp_path), str(tmp_path / "out"), 1)
