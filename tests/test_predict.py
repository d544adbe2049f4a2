"""`starlora predict` and `starlora export` on the tiny model: every output format and input format, the numbers
against scoring.score on the same model, resuming after an interruption and after SIGKILL, bad rows, and the merged
model through plain transformers."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import lora_model
from peft import PeftModel

from starlora import predict as PR
from starlora.cli import main
from starlora.data import Example
from starlora.errors import StarloraError
from starlora.models import tiny_random
from starlora.scoring import ScoringSettings, score
from starlora.tasks import get_task

TOL = 1e-5  # another batching sums in another order: probabilities agree to float32 rounding, not bit for bit


def rows(n, start=0):
    return [
        {"id": f"r{i}", "question": f"Is item {i} {'red' if i % 2 else 'a long and winding road'}?\nAnswer:"}
        for i in range(start, start + n)
    ]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def project_with_adapter(tmp_path, *extra, task="boolq"):
    """A BoolQ project on the tiny model whose round 0 adapter has random B (so it changes the predictions),
    saved as `starlora train` would (without training: the numbers are what is tested)."""
    pool = write_jsonl(tmp_path / "pool.jsonl", rows(12))
    assert (
        main(
            [
                "init",
                str(tmp_path / "proj"),
                "--task",
                task,
                "--pool",
                str(pool),
                "--model",
                "tiny-random",
                "--rounds",
                "3",
                "--lora-r",
                "4",
                "--score-batch-size",
                "4",
                "--precision",
                "fp32",
                *extra,
            ]
        )
        == 0
    )
    model, _ = lora_model(dropout=0.1)
    adapter = tmp_path / "proj" / "adapters" / "round_0"
    model.save_pretrained(adapter)
    (adapter / "train.json").write_text(json.dumps({"round": 0, "n_labels": 4}))
    return tmp_path / "proj", adapter


def read_out(path):
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [{k: v for k, v in r.items()} for r in csv.DictReader(f)]
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference(adapter, examples, task, **settings):
    """scoring.score with the adapter, one example per batch: what predict must agree with."""
    base, tok = tiny_random()
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    return score(model, tok, task, examples, settings=ScoringSettings(batch_size=1, **settings))


def test_closed_set_predictions_match_scoring_in_every_format(tmp_path):
    proj, adapter = project_with_adapter(tmp_path)
    data = rows(10, start=100)  # rows the project never saw
    src = write_jsonl(tmp_path / "new.jsonl", data)
    assert (
        main(["predict", str(proj), "--input", str(src), "--out", str(tmp_path / "p.jsonl"), "--chunk-size", "3"]) == 0
    )
    got = read_out(tmp_path / "p.jsonl")
    task = get_task("boolq", template="{question}")
    expected = reference(adapter, [Example(r["id"], r["question"], "", None) for r in data], task)
    assert [r["id"] for r in got] == [r["id"] for r in data]  # input order, every row once
    for r, i in zip(got, range(len(data))):
        p = expected.probs[i]
        assert r["p_true"] == pytest.approx(p[0], abs=TOL) and r["p_false"] == pytest.approx(p[1], abs=TOL)
        assert r["p_true"] + r["p_false"] == pytest.approx(1, abs=1e-9)
        assert r["prediction"] == ("true" if r["p_true"] > r["p_false"] else "false") == expected.predictions[i]
        assert r["confidence"] == max(r["p_true"], r["p_false"])
        assert r["measure"] == "me" and r["uncertainty"] == pytest.approx(expected.measures["me"][i], abs=TOL)
    assert not (tmp_path / "p.jsonl.partial.jsonl").exists() and not (tmp_path / "p.jsonl.partial.json").exists()
    # the same rows as CSV and Parquet input, written as CSV and Parquet: the same table
    with open(tmp_path / "new.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "question"])
        writer.writeheader()
        writer.writerows(data)
    datasets.Dataset.from_list(data).to_parquet(str(tmp_path / "new.parquet"))
    for source, out in (("new.csv", "p.csv"), ("new.parquet", "p.parquet")):
        assert main(["predict", str(proj), "--input", str(tmp_path / source), "--out", str(tmp_path / out)]) == 0
        table = read_out(tmp_path / out)
        assert list(table[0]) == PR.columns(task)
        assert [r["id"] for r in table] == [r["id"] for r in got]
        assert [r["prediction"] for r in table] == [r["prediction"] for r in got]
        assert all(float(a["p_true"]) == pytest.approx(b["p_true"], abs=TOL) for a, b in zip(table, got))
    # a finished output is never overwritten
    assert main(["predict", str(proj), "--input", str(src), "--out", str(tmp_path / "p.jsonl")]) == 2


def test_an_open_task_gives_the_text_and_its_log_probability(tmp_path):
    model, tok = lora_model(dropout=0.0)
    model.save_pretrained(tmp_path / "adapter")  # a bare adapter folder: the task comes from --task
    with pytest.raises(StarloraError, match="names no base model"):  # (the tiny model has no name PEFT reads)
        PR.predict(tmp_path / "adapter", "x.jsonl", tmp_path / "x.jsonl")
    model.peft_config["default"].base_model_name_or_path = "tiny-random"
    model.save_pretrained(tmp_path / "adapter")
    data = rows(5)
    src = write_jsonl(tmp_path / "in.jsonl", data)
    with pytest.raises(StarloraError, match="give --task"):
        PR.predict(tmp_path / "adapter", src, tmp_path / "x.jsonl")
    proj, adapter = project_with_adapter(tmp_path, "--max-new-tokens", "6", task="open")
    PR.predict(proj, src, tmp_path / "o.jsonl", batch_size=1)  # greedy answers: the reference's batches
    got = read_out(tmp_path / "o.jsonl")
    task = get_task("open", user_files=True)
    examples = [Example(r["id"], r["question"], "", None) for r in data]
    found = reference(adapter, examples, task, max_new_tokens=6)
    for i, r in enumerate(got):
        assert r["text"] == found.texts[i] and r["prediction"] == task.predict_text(found.texts[i])
        assert r["logprob"] == pytest.approx(-found.measures["pe"][i], abs=1e-4) and r["logprob"] < 0
        assert r["confidence"] == pytest.approx(math.exp(-found.measures["pe_norm"][i]), rel=1e-4)
        assert r["truncated"] == bool(found.truncated[i]) and r["measure"] == "me"


def test_an_interrupted_predict_resumes_without_losing_or_repeating_a_row(tmp_path, monkeypatch):
    proj, _ = project_with_adapter(tmp_path)
    src = write_jsonl(tmp_path / "in.jsonl", rows(11))
    out = tmp_path / "p.csv"
    whole = tmp_path / "whole.csv"
    PR.predict(proj, src, whole, chunk_size=4)
    written = []
    real = PR.write_chunk

    def dies_at_the_third_chunk(*args):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(1)
        real(*args)

    monkeypatch.setattr(PR, "write_chunk", dies_at_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        PR.predict(proj, src, out, chunk_size=4)
    journal = tmp_path / "p.csv.partial.jsonl"
    assert not out.exists() and len(journal.read_text().splitlines()) == 8
    with open(journal, "a") as f:
        f.write('{"id": "r8", "predic')  # a kill mid-append tears the last line
    monkeypatch.setattr(PR, "write_chunk", real)
    with pytest.raises(StarloraError, match="other settings"):  # another source may not finish this journal
        PR.predict(proj, src, out, chunk_size=4, template="Q: {question}")
    PR.predict(proj, src, out, chunk_size=4)
    assert read_out(out) == read_out(whole)  # the same chunks: the same numbers, each row once, in order
    assert not journal.exists()


def test_sigkill_then_resume(tmp_path):
    """The command killed with SIGKILL mid-way, then run again: every row exactly once."""
    proj, _ = project_with_adapter(tmp_path)
    data = rows(600)
    src = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "p.jsonl"
    journal = tmp_path / "p.jsonl.partial.jsonl"
    command = [
        sys.executable,
        "-m",
        "starlora",
        "predict",
        str(proj),
        "--input",
        str(src),
        "--out",
        str(out),
        "--chunk-size",
        "10",
        "--batch-size",
        "2",
    ]
    child = subprocess.Popen(
        command, env={**os.environ, "STARLORA_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    end = time.time() + 120
    while (
        time.time() < end
        and child.poll() is None
        and (not journal.exists() or len(journal.read_bytes().splitlines()) < 30)
    ):
        time.sleep(0.02)
    assert child.poll() is None, child.stderr.read().decode()
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = len(journal.read_bytes().splitlines())
    assert 30 <= before < 600 and not out.exists()
    assert main(command[3:]) == 0
    got = [r["id"] for r in read_out(out)]
    assert got == [r["id"] for r in data]


def test_bad_rows_are_named_and_nothing_is_written(tmp_path, capsys):
    proj, _ = project_with_adapter(tmp_path)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(rows(1)[0]) + "\n" + json.dumps({"id": "x", "text": "no question"}) + "\n")
    assert main(["predict", str(proj), "--input", str(src), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert f"{src}:2: prompt template '{{question}}' needs field 'question'" in capsys.readouterr().err
    twice = write_jsonl(tmp_path / "twice.jsonl", [rows(1)[0], {"id": "r0", "question": "another?"}])
    assert main(["predict", str(proj), "--input", str(twice), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert f"{twice}:2: id 'r0' is used by an earlier row with a different prompt" in capsys.readouterr().err
    assert main(["predict", str(proj), "--input", str(twice), "--out", str(tmp_path / "p.txt")]) == 2
    assert "the suffix chooses the format" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--input", str(twice), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "not a project (project.json), run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "pool.jsonl", "proj", "twice.jsonl"]


def test_export_merged_loads_without_starlora_and_predicts_the_same(tmp_path):
    proj, adapter = project_with_adapter(tmp_path)
    assert main(["export", str(proj), "--merged", str(tmp_path / "merged")]) == 0
    # transformers alone: no adapter files, the tokenizer beside the weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert AutoTokenizer.from_pretrained(tmp_path / "merged")("hi")["input_ids"] == tiny_random()[1]("hi")["input_ids"]
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "library_name: transformers" in card and "merged in" in card and "AutoModelForCausalLM" in card
    # the merged weights give the adapter's predictions, to float32 rounding of W x + B A x against (W + B A) x
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base, tok = tiny_random()
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.tensor([tok("Is item 3 red?\nAnswer: true")["input_ids"]])
    with torch.no_grad():
        a, b = merged(ids).logits, with_adapter(ids).logits
    assert (a - b).abs().max() < 1e-4 and (b - tiny_random()[0](ids).logits).abs().max() > 1e-2
    src = write_jsonl(tmp_path / "in.jsonl", rows(6))
    PR.predict(proj, src, tmp_path / "adapter.jsonl")
    PR.predict(tmp_path / "merged", src, tmp_path / "merged.jsonl")  # the task from starlora_config.json
    for x, y in zip(read_out(tmp_path / "adapter.jsonl"), read_out(tmp_path / "merged.jsonl")):
        assert x["prediction"] == y["prediction"] and np.isclose(x["p_true"], y["p_true"], atol=TOL)
    with pytest.raises(StarloraError, match="exists and is not an empty folder"):
        PR_export(proj, tmp_path / "merged")


def PR_export(source, out):
    from starlora.export import export_merged

    return export_merged(source, out)


def test_export_refuses_a_quantized_base_with_the_reason(tmp_path):
    proj, _ = project_with_adapter(tmp_path)
    stored = json.loads((proj / "project.json").read_text())
    stored["config"]["quantization"] = "4bit"
    (proj / "project.json").write_text(json.dumps(stored))
    with pytest.raises(StarloraError, match=r"quantized \(4bit.*loses its update to rounding"):
        PR_export(proj, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
