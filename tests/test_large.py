"""Large-model options on the tiny model: half-precision base weights, gradient accumulation and checkpointing."""

import dataclasses
import json

import pytest
import torch

from starlora.config import resolve
from starlora.data import Example
from starlora.errors import StarloraError
from starlora.experiment import folder_resumes
from starlora.hardware import resolve_dtype
from starlora.models import load_model, tiny_random
from starlora.training import TrainSettings, attach_lora, micro_batches, train

# Different micro-batch shapes change the float summation order: same numbers to this tolerance, not bit for bit.
TOL = 1e-5


def examples(n=16):
    words = ["alpha", "beta gamma", "delta epsilon zeta", "eta", "theta iota kappa lambda mu"]
    return [
        Example(f"e{i}", f"Q: {words[i % 5]} {i}\nA:", ["yes", "no"][i % 2], ["yes", "no"][i % 2]) for i in range(n)
    ]


def trained(mode="lora", **kw):
    base, tok = tiny_random()
    settings = TrainSettings(
        **{**dict(mode=mode, lora_r=4, lora_alpha=8, lora_dropout=0.1, lr=1e-2, epochs=2, batch_size=8, seed=3), **kw}
    )
    model = attach_lora(base, settings) if mode == "lora" else base
    stats = train(model, tok, examples(), settings)
    return stats, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(a, b):
    (stats_a, params_a), (stats_b, params_b) = a, b
    assert stats_a["steps"] == stats_b["steps"]
    assert stats_a["loss"] == pytest.approx(stats_b["loss"], abs=TOL)
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], atol=TOL, rtol=0, msg=name)


def test_micro_batches_cover_each_process_share_once():
    assert micro_batches(8, 0, 1, 1) == [slice(0, 8)]
    assert micro_batches(8, 0, 1, 4) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert micro_batches(5, 1, 2, 2) == [slice(2, 3), slice(3, 5)]  # rank 1 of 2 holds rows 2-4
    assert micro_batches(1, 0, 1, 3) == [slice(0, 0), slice(0, 0), slice(0, 1)]  # empty ones still run (all-reduce)


def test_accumulation_equals_one_batch_n_times_larger():
    # batch 8 in one step = 4 x 2 = 2 x 4 micro-batches: same steps (the schedule counts optimiser steps, 2 epochs
    # of 16 examples = 4), same masks (drawn per step), same loss and adapter
    one = trained(batch_size=8)
    assert one[0]["steps"] == 4
    for batch, n in ((4, 2), (2, 4)):
        assert_same(one, trained(batch_size=batch, gradient_accumulation_steps=n))
    assert trained(batch_size=4)[0]["steps"] == 8  # without accumulation a batch of 4 is a step


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_checkpointing_gives_the_same_numbers(mode):
    # full mode has attention dropout on (the tiny model's 0.1): the recompute must replay the same random stream
    assert_same(trained(mode), trained(mode, gradient_checkpointing=True))
    if mode == "lora":  # full mode's own dropout draws per forward: micro-batches get other (equally random) masks
        assert_same(
            trained(mode), trained(mode, gradient_checkpointing=True, batch_size=4, gradient_accumulation_steps=2)
        )


def test_checkpointing_keeps_fewer_activations_for_backward():
    """Bytes of tensors autograd holds for backward after one forward: the memory checkpointing saves."""
    from starlora.training import checkpointed, training_batch

    base, tok = tiny_random()
    model = attach_lora(base, TrainSettings(lora_r=4, lora_dropout=0.0))
    pairs = [(tok.encode("x" * 200), tok.encode("yes"))] * 4
    ids, mask, labels = training_batch(pairs, tok.pad_token_id)

    def held(checkpointing):
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        import contextlib

        with (
            checkpointed(model) if checkpointing else contextlib.nullcontext(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        return sum(sizes)

    assert held(True) < 0.5 * held(False)


def test_half_precision_base_keeps_the_adapter_and_optimiser_in_fp32():
    base, tok = load_model("tiny-random", dtype="bf16")
    assert {p.dtype for p in base.parameters()} == {torch.bfloat16}
    fp32_bytes = sum(p.numel() * 4 for p in base.parameters())
    assert sum(p.numel() * p.element_size() for p in base.parameters()) == fp32_bytes // 2
    settings = TrainSettings(lora_r=4, lora_alpha=8, lr=1e-2, epochs=1, batch_size=8)
    model = attach_lora(base, settings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    before = [p.detach().clone() for p in trainable]
    stats = train(model, tok, examples(), settings)
    assert torch.isfinite(torch.tensor(stats["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable))  # the fp32 adapter learned


def test_dtype_resolves_per_device_and_is_stored_resolved(tmp_path):
    assert resolve_dtype("auto", torch.device("cpu")) == "fp32"  # CPU runs keep exact fp32 numbers
    assert resolve_dtype("fp16", torch.device("cpu")) == "fp16"
    with pytest.raises(StarloraError, match="--dtype"):
        resolve_dtype("int4", torch.device("cpu"))
    assert resolve(dtype="auto").dtype == "fp32"
    with pytest.raises(StarloraError, match="--mode full .* --dtype fp32"):
        resolve(mode="full", dtype="bf16")
    with pytest.raises(StarloraError, match="--gradient-accumulation-steps must be at least 1"):
        resolve(gradient_accumulation_steps=0)


def test_runs_made_before_the_options_existed_still_resume(tmp_path):
    cfg = resolve("quick", model="tiny-random", precision="fp32")
    stored = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in ("dtype", "gradient_accumulation_steps", "gradient_checkpointing")
    }
    (tmp_path / "config.json").write_text(json.dumps({"config": stored}))
    finished = {"round": 0, "n_labeled": 8, "accuracy": 50.0, "added": [], "selected": []}  # one finished round
    (tmp_path / "rounds.jsonl").write_text(json.dumps(finished) + "\n")
    assert folder_resumes(tmp_path, cfg)  # the missing keys mean fp32, 1, off: this very configuration
    assert folder_resumes(tmp_path, dataclasses.replace(cfg, gradient_checkpointing=True))  # memory only: may change
    with pytest.raises(StarloraError, match="another configuration .*dtype"):
        folder_resumes(tmp_path, dataclasses.replace(cfg, dtype="bf16"))
    with pytest.raises(StarloraError, match="gradient_accumulation_steps"):
        folder_resumes(tmp_path, dataclasses.replace(cfg, gradient_accumulation_steps=2))


def test_memory_estimate_counts_parameters_exactly_and_scales_with_the_options():
    from transformers import LlamaConfig

    from starlora.memory import count_parameters, estimate
    from starlora.models import tiny_config

    base, _ = tiny_random()
    total, lora = count_parameters(tiny_config(), r=4)
    assert total == sum(p.numel() for p in base.parameters())
    adapted = attach_lora(base, TrainSettings(lora_r=4))
    assert lora == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    seven_b = LlamaConfig()  # Llama-2-7B's shape: 6.74e9 parameters
    assert count_parameters(seven_b)[0] == 6_738_415_616
    fp32, bf16 = estimate(resolve(), seven_b), estimate(resolve(dtype="bf16"), seven_b)
    assert bf16.weights * 2 == fp32.weights == 6_738_415_616 * 4
    checkpointed = estimate(resolve(dtype="bf16", gradient_checkpointing=True), seven_b, generates=False)
    assert checkpointed.activations < estimate(resolve(dtype="bf16"), seven_b, generates=False).activations / 3
    # half the micro-batch, twice the steps: the training activations halve, nothing else changes
    a = estimate(resolve(score_batch_size=1), seven_b, generates=False)
    b = estimate(resolve(score_batch_size=1, batch_size=4, gradient_accumulation_steps=2), seven_b, generates=False)
    assert b.activations == pytest.approx(a.activations / 2, rel=0.01) and b.weights == a.weights


def test_memory_estimate_under_fsdp_divides_weights_and_optimiser_state(monkeypatch):
    from transformers import LlamaConfig

    from starlora import parallel
    from starlora.memory import estimate

    whole = estimate(resolve(dtype="bf16"), LlamaConfig())
    monkeypatch.setattr(parallel, "sharded", lambda: True)
    monkeypatch.setattr(parallel, "world", lambda: (0, 8))
    shard = estimate(resolve(dtype="bf16"), LlamaConfig())
    assert shard.weights == whole.weights // 8 and shard.activations == whole.activations


def test_a_run_that_will_not_fit_is_refused_before_loading_with_what_to_change(tmp_path, monkeypatch):
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**__import__("os").environ, "STARLORA_MEMORY_LIMIT_MB": "64"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "starlora",
            "run",
            "--model",
            "tiny-random",
            "--task",
            "sst2",
            "--protocol",
            "quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "will not fit" in lines[0] and "0.1 GiB are free" in lines[0]
    assert "--gradient-checkpointing" in lines[0] and "--score-batch-size 16" in lines[0]
    assert not out.exists()
    env["STARLORA_MEMORY_LIMIT_MB"] = "100000"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "starlora",
            "run",
            "--model",
            "tiny-random",
            "--task",
            "sst2",
            "--protocol",
            "quick",
            "--out",
            str(out),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr


def test_fsdp_refuses_full_fine_tuning_and_other_commands(tmp_path, monkeypatch):
    from starlora import cli, experiment, parallel

    monkeypatch.setattr(parallel, "sharded", lambda: True)
    cfg = resolve(
        task="boolq",
        strategy="random",
        model="tiny-random",
        mode="full",
        rounds=2,
        init_size=4,
        query_size=4,
        probe_size=0,
        test_size=4,
    )
    with pytest.raises(StarloraError, match="FSDP .* shards LoRA runs only"):
        experiment.run(cfg, tmp_path / "full")
    assert not (tmp_path / "full").exists()  # refused before anything is written
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert cli.main(["status", str(tmp_path / "project")]) == 2


def test_sharded_processes_run_as_many_batches(monkeypatch):
    """FSDP gathers weights in every forward, so both processes must run as many: 3 batches over 2 processes give
    process 1 batch 1 and a spare (index 3, a throw-away forward); unsharded it just runs batch 1."""
    from starlora import parallel

    monkeypatch.setattr(parallel, "world", lambda: (1, 2))
    monkeypatch.setattr(parallel, "fsdp_requested", lambda: False)
    assert list(parallel.mine(3)) == [1]
    monkeypatch.setattr(parallel, "fsdp_requested", lambda: True)
    assert list(parallel.mine(3)) == [1, 3] and list(parallel.mine(4)) == [1, 3] and list(parallel.mine(0)) == []
