"""Faults: SIGKILL at random moments then resume, determinism run after run, a full disk, numerics guards."""

import errno
import json
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from starlora import files as F
from starlora import project as P
from starlora import uncertainty as U
from starlora.data import Example
from starlora.errors import StarloraError
from starlora.experiment import resolve, run
from starlora.files import read_jsonl
from starlora.scoring import answer_stats, score
from starlora.tasks import get_task
from starlora.tokens import encode_prompt
from starlora.training import TrainSettings, attach_lora

RUN = [
    "--model",
    "tiny-random",
    "--task",
    "boolq",
    "--strategy",
    "star-me",
    "--init-size",
    "6",
    "--query-size",
    "6",
    "--rounds",
    "4",
    "--epochs",
    "2",
    "--lora-r",
    "4",
    "--probe-size",
    "8",
    "--score-batch-size",
    "8",
    "--batch-size",
    "4",
    "--fewshot",
    "2",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = random.Random(1)
    for name, n in (("train", 40), ("test", 10)):
        (d / f"{name}.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "id": f"{name}{i}",
                        "question": f"Is {rng.choice(['a cat', 'the sea', 'fire'])} number {i} "
                        f"{rng.choice(['wet', 'hot'])}?\nAnswer:",
                        "answer": rng.choice(["true", "false"]),
                    }
                )
                + "\n"
                for i in range(n)
            )
        )
    return d


def strip(records):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]  # timings differ


def cli(*args):
    return [sys.executable, "-m", "starlora", *map(str, args)]


def kill_after(cmd, delay):
    """Start cmd, SIGKILL it after `delay` seconds; True when it finished on its own first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        return True
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    files = ["--train-file", data / "train.jsonl", "--test-file", data / "test.jsonl"]
    start = time.time()
    subprocess.run(cli("run", *RUN, *files, "--out", tmp_path / "whole"), check=True, capture_output=True)
    whole_s = time.time() - start
    rng = random.Random(7)
    killed = 0
    for attempt in range(3):  # three runs, each killed at a random moment, its resume killed again, then finished
        out = tmp_path / f"killed{attempt}"
        for _ in range(2):
            killed += not kill_after(cli("run", *RUN, *files, "--out", out), rng.uniform(0.3, 0.9 * whole_s))
        subprocess.run(cli("run", *RUN, *files, "--out", out), check=True, capture_output=True)
        assert strip(read_jsonl(out / "rounds.jsonl")) == strip(read_jsonl(tmp_path / "whole" / "rounds.jsonl"))
        summary = lambda p: json.loads((p / "summary.json").read_text())  # noqa: E731
        assert summary(out) == summary(tmp_path / "whole")
    assert killed >= 3  # the first kill of each run lands before its end
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary file survives a finished run


def test_same_seed_same_everything_run_after_run(data, tmp_path):
    cfg = resolve(
        "paper",
        model="tiny-random",
        task="boolq",
        train_file=str(data / "train.jsonl"),
        test_file=str(data / "test.jsonl"),
        init_size=6,
        query_size=6,
        rounds=3,
        epochs=1,
        lora_r=4,
        probe_size=8,
        fewshot=0,
        score_batch_size=8,
    )
    a, b = run(cfg, tmp_path / "a"), run(cfg, tmp_path / "b")
    assert a == b
    assert strip(read_jsonl(tmp_path / "a" / "rounds.jsonl")) == strip(read_jsonl(tmp_path / "b" / "rounds.jsonl"))
    weights = "adapter/adapter_model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    for name in ("scores/round_0.jsonl", "scores/round_1.jsonl", "probe/round_2.json", "base_scores.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    other = run(resolve("paper", **{**cfg.__dict__, "seed": 1}), tmp_path / "c")
    assert (
        read_jsonl(tmp_path / "c" / "rounds.jsonl")[0]["added"]
        != read_jsonl(tmp_path / "a" / "rounds.jsonl")[0]["added"]
    )
    assert other["seed"] == 1


def test_a_full_disk_keeps_the_state_as_it_was_and_the_run_resumes(data, tmp_path, monkeypatch):
    cfg = resolve(
        "paper",
        model="tiny-random",
        task="boolq",
        train_file=str(data / "train.jsonl"),
        test_file=str(data / "test.jsonl"),
        init_size=6,
        query_size=6,
        rounds=3,
        epochs=1,
        lora_r=4,
        probe_size=8,
        fewshot=0,
        score_batch_size=8,
    )
    real_fsync, writes = F.os.fsync, []

    def fsync(fd):  # the disk fills up while round 1's line is being written
        writes.append(fd)
        if len(read_jsonl(tmp_path / "x" / "rounds.jsonl")) == 1 and len(writes) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(F.os, "fsync", fsync)
    with pytest.raises(StarloraError, match="cannot write .*No space left on device.*previous state is kept"):
        run(cfg, tmp_path / "x")
    assert len(read_jsonl(tmp_path / "x" / "rounds.jsonl")) == 1
    assert not list((tmp_path / "x").rglob(".*.tmp"))
    monkeypatch.setattr(F.os, "fsync", real_fsync)
    resumed = run(cfg, tmp_path / "x")
    assert resumed == run(cfg, tmp_path / "y")


# ---------------------------------------------------------------- the human loop under kills


def project_with_labels(data, folder):
    cfg = resolve("paper", model="tiny-random", task="boolq", epochs=2, lora_r=4, score_batch_size=8, rounds=3)
    P.init(folder, cfg, data / "train.jsonl", data / "test.jsonl")
    query_file = P.query(folder, 8)
    gold = {json.loads(line)["id"]: json.loads(line)["answer"] for line in (data / "train.jsonl").open()}
    answers = folder.parent / f"{folder.name}-answers.jsonl"
    answers.write_text(
        "".join(
            json.dumps({"id": json.loads(line)["id"], "answer": gold[json.loads(line)["id"]]}) + "\n"
            for line in query_file.read_text().splitlines()
        )
    )
    return answers


def test_kills_during_label_and_train_lose_nothing_and_import_nothing_twice(data, tmp_path):
    answers = project_with_labels(data, tmp_path / "calm")
    shutil.copytree(tmp_path / "calm", tmp_path / "killed")
    P.label(tmp_path / "calm", answers)
    P.train(tmp_path / "calm")
    rng = random.Random(3)
    for step in ("label", "train"):
        for _ in range(3):
            if kill_after(cli(step, tmp_path / "killed", *([answers] if step == "label" else [])), rng.uniform(0.5, 6)):
                break
            labels = read_jsonl(tmp_path / "killed" / "labels.jsonl")
            assert len(labels) in (0, 8)  # all of the file or none of it
        if step == "label":
            subprocess.run(cli("label", tmp_path / "killed", answers), check=True, capture_output=True)
        else:
            done = (tmp_path / "killed" / "adapters" / "round_0" / "train.json").exists()
            if not done:
                subprocess.run(cli("train", tmp_path / "killed"), check=True, capture_output=True)
    assert read_jsonl(tmp_path / "killed" / "labels.jsonl") == read_jsonl(tmp_path / "calm" / "labels.jsonl")
    weights = "adapters/round_0/adapter_model.safetensors"
    assert (tmp_path / "killed" / weights).read_bytes() == (tmp_path / "calm" / weights).read_bytes()
    assert not (tmp_path / "killed" / "adapters" / "round_1").exists()


def test_a_full_disk_during_label_imports_nothing(data, tmp_path, monkeypatch):
    answers = project_with_labels(data, tmp_path / "p")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(F.os, "fsync", full)
    with pytest.raises(StarloraError, match="labels.jsonl: cannot write"):
        P.label(tmp_path / "p", answers)
    monkeypatch.undo()
    assert read_jsonl(tmp_path / "p" / "labels.jsonl") == []
    assert P.label(tmp_path / "p", answers) == 8


# ---------------------------------------------------------------- numerics


BOOLQ = get_task("boolq", template="{question}")
EXAMPLES = [Example(f"ex{i}", f"Is {i} even?\nAnswer:", "true", "true") for i in range(12)]


def test_non_finite_logits_stop_with_the_example_ids(tiny):
    base, tok = tiny
    model = attach_lora(base, TrainSettings(lora_r=4))
    try:
        with torch.no_grad():
            model.base_model.model.lm_head.weight[5] = float("nan")  # every position's logits hold one NaN
        with pytest.raises(
            StarloraError, match=r"non-finite logits for example\(s\) ex0, ex1, .* and 2 more; .*a lower --lr"
        ):
            score(model, tok, BOOLQ, EXAMPLES)
    finally:
        with torch.no_grad():
            model.base_model.model.lm_head.weight[5] = 0.0
        model.unload()


def test_huge_logits_give_finite_scores(tiny):
    base, tok = tiny
    model = attach_lora(base, TrainSettings(lora_r=4))
    head = model.base_model.model.lm_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.mul_(1e30)  # logits around 1e30: softmax must subtract the maximum, not exponentiate
        scores = score(model, tok, BOOLQ, EXAMPLES)
        assert all(np.isfinite(v).all() for v in scores.measures.values())
        assert np.isfinite(scores.probs).all() and np.allclose(scores.probs.sum(1), 1)
    finally:
        with torch.no_grad():
            head.copy_(saved)
        model.unload()


def test_empty_answers_and_degenerate_distributions_stay_finite(tiny):
    model, tok = tiny
    prompt = encode_prompt(tok, "Q?", 16)
    logp, ent, length = answer_stats(model, [(prompt, []), (prompt, [70])], 4)
    assert logp[0] == 0 and ent[0] == 0 and length.tolist() == [0, 1] and np.isfinite(logp).all()
    assert np.isfinite(U.predictive_entropy(logp, length)).all() and np.isfinite(U.mean_entropy(ent, length)).all()
    p = U.label_distribution([[-np.inf, -np.inf], [0.0, -np.inf]])
    assert p.tolist() == [[0.5, 0.5], [1.0, 0.0]]
    assert U.entropy(p).tolist() == pytest.approx([np.log(2), 0.0])
    assert U.normalise([3.0, 3.0, 3.0]).tolist() == [0.0, 0.0, 0.0]  # all-equal scores: no 0/0


def test_prompts_longer_than_the_limit_lose_their_start(tiny):
    _, tok = tiny
    long = "x" * 500 + " the end?\nAnswer:"
    kept = encode_prompt(tok, long, 32)
    assert len(kept) == 32 and tok.decode(kept).endswith("the end?\nAnswer:")


def test_a_truncated_prompt_keeps_the_bos_token_its_tokenizer_puts_first():
    class WithBos:  # LLaMA-style: every encoding starts with BOS (id 1); one token per character
        bos_token_id = 1

        def __call__(self, text):
            return {"input_ids": [1] + [ord(c) for c in text]}

    assert encode_prompt(WithBos(), "abcdef", 4) == [1, ord("d"), ord("e"), ord("f")]
    assert encode_prompt(WithBos(), "ab", 4) == [1, ord("a"), ord("b")]  # short: untouched
    WithBos.bos_token_id = None  # id 1 is not its BOS: plainly the last 4 tokens
    assert encode_prompt(WithBos(), "abcdef", 4) == [ord(c) for c in "cdef"]
