"""scripts/gpu_check in its dry mode: every step it would run on a GPU runs on CPU with tiny settings, and the results
file holds each step's status, command and figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check"


@pytest.mark.ci  # ~130 s on 2 cores: seven fresh starlora processes, two of them 2-process launches
def test_the_dry_run_runs_every_step_and_writes_its_figures(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = json.loads(out.read_text())
    checks = {c["name"]: c for c in result["checks"]}
    assert list(checks) == ["bench", "sst2", "4bit", "one", "ddp", "fsdp", "sweep"]
    assert all(c["status"] == "pass" for c in checks.values()), checks
    assert result["mode"].startswith("dry-run") and result["passed"] is True
    assert done.stdout.count("PASS") == 7 and "all steps passed" in done.stdout
    bench = checks["bench"]["figures"]
    assert bench["precision"] == "bf16" and bench["device"] == "cpu" and bench["scoring_examples_per_s"] > 0
    sst2 = checks["sst2"]["figures"]
    assert sst2["rounds"] == 2 and len(sst2["accuracy"]) == 2 and sst2["processes"] == 1
    assert checks["4bit"]["figures"]["rounds"] == 1
    for name, sharded in (("ddp", False), ("fsdp", True)):
        f = checks[name]["figures"]
        assert f["processes"] == 2 and f["sharded"] is sharded and f["round0_loss_rel_diff"] <= 1e-4
        assert "accelerate" in checks[name]["command"] and f"{name}.yaml" in checks[name]["command"]
    assert checks["sweep"]["figures"]["runs"] == 2 and "--devices cpu,cpu" in checks["sweep"]["command"]
    assert (tmp_path / "w" / "steps" / "4bit" / "summary.json").exists()


def test_without_a_gpu_it_asks_for_the_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "no CUDA GPU here; --dry-run" in done.stderr
    assert not (tmp_path / "x.json").exists()
