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
    import transformers

    assert result["machine"]["transformers"] == transformers.__version__  # the stack the steps ran on
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


def load_script():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_check", loader))
    loader.exec_module(module)
    return module


def test_random_weights_keep_the_architecture_and_tokenizer_and_every_step_uses_the_model(tmp_path):
    """--random-weights-from, for a GPU machine the model's weights cannot reach: the same config and tokenizer, new
    weights; --model (and that model) goes to the bench and to every run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from starlora.models import tiny_random

    source, tok = tiny_random()  # itself random with seed 0, as random_weights draws: trained weights stand apart
    with torch.no_grad():
        source.lm_head.weight.mul_(30.0)
    source.save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "model.safetensors").unlink()  # only the architecture and tokenizer travel
    gpu_check = load_script()
    made = gpu_check.random_weights(tmp_path / "src", tmp_path / "random")
    model = AutoModelForCausalLM.from_pretrained(made)
    ignore = {"dtype": None, "_name_or_path": None}
    assert model.config.to_dict() | ignore == source.config.to_dict() | ignore
    assert AutoTokenizer.from_pretrained(made)("Answer: yes")["input_ids"] == tok("Answer: yes")["input_ids"]
    assert not torch.equal(model.lm_head.weight, source.lm_head.weight)
    size = gpu_check.settings(False, str(made))
    assert size["bench"][:2] == ["--model", str(made)] and size["run"][:2] == ["--model", str(made)]
    assert "--model" not in gpu_check.settings(False)["run"]
