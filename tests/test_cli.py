import json
import re
import subprocess
import sys

import pytest

from starlora.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "starlora.cli", *args], capture_output=True, text=True)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    listed = set(re.findall(r"^    (\w+)\s{2,}\S", out.stdout, re.M))  # the sub-command table, one per line
    assert listed == {
        "run",
        "sweep",
        "report",
        "eval",
        "demo",
        "bench",
        "init",
        "query",
        "label",
        "train",
        "status",
        "serve",
        "predict",
        "export",
    }
    sub = run("eval", "--help")
    assert "--train-file" in sub.stdout and "--template" in sub.stdout and "--model" in sub.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "boolq", "--test-file", "{d}/missing.jsonl"], "missing.jsonl: no such file"),
        (["--task", "boolq", "--test-file", "{d}/bad.jsonl"], "bad.jsonl:2: malformed JSON"),
        (["--task", "boolq", "--test-file", "{d}/empty.jsonl"], "no examples"),
        (["--task", "boolq", "--test-file", "{d}/nofield.jsonl"], "nofield.jsonl:1: missing field 'answer'"),
        (["--task", "boolq", "--test-file", "{d}/good.jsonl", "--model", "{d}/nomodel"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "true"}\n{oops\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "nofield.jsonl").write_text('{"question": "q"}\n')
    (tmp_path / "good.jsonl").write_text(json.dumps({"question": "q", "answer": "true"}) + "\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = run("eval", *[a.format(d=tmp_path) for a in args])
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("starlora: error: ") and message in lines[0]
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    "args,message",
    [
        (["bench", "--n", "0"], "--n must be at least 1"),
        (["bench", "--model", "tiny-random", "--pool-sizes", "1000,x"], "--pool-sizes takes comma-separated positive"),
        (["bench", "--model", "tiny-random", "--pool-sizes", "0"], "--pool-sizes takes comma-separated positive"),
        (["bench", "--model", "tiny-random", "--precision", "fp8"], "unknown --precision 'fp8'"),
        (["run", "--model", "tiny-random", "--precision", "fp8", "--out", "{d}/r"], "unknown --precision 'fp8'"),
        (["status", "{d}"], "is not a starlora project"),
        (["run", "--model", "tiny-random", "--lr", "-1", "--out", "{d}/r"], "--lr must be positive"),
        (
            [
                "run",
                "--model",
                "tiny-random",
                "--task",
                "boolq",
                "--train-file",
                "{d}/p.jsonl",
                "--test-file",
                "{d}/t.jsonl",
                "--init-size",
                "1",
                "--query-size",
                "1",
                "--rounds",
                "1",
                "--probe-size",
                "0",
                "--out",
                "{d}/p.jsonl",
            ],
            "is a file, not a folder",
        ),
        (
            [
                "run",
                "--model",
                "tiny-random",
                "--task",
                "boolq",
                "--train-file",
                "{d}/p.jsonl",
                "--test-file",
                "{d}/t.jsonl",
                "--init-size",
                "1",
                "--query-size",
                "1",
                "--rounds",
                "1",
                "--probe-size",
                "0",
                "--out",
                "/proc/starlora/r",
            ],
            "--out /proc/starlora/r: cannot",
        ),
    ],
)
def test_other_commands_reject_bad_options_in_one_line(tmp_path, args, message):
    (tmp_path / "p.jsonl").write_text(json.dumps({"question": "q", "answer": "true"}) + "\n")
    (tmp_path / "t.jsonl").write_text(json.dumps({"question": "q2", "answer": "false"}) + "\n")
    out = run(*[a.format(d=tmp_path) for a in args])
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr
    assert not (tmp_path / "r").exists()


def test_eval_on_tiny_model(tmp_path, capsys):
    rows = [
        {"question": f"Question: is {i} even?\nAnswer:", "answer": f"the correct answer is {str(i % 2 == 0).lower()}"}
        for i in range(6)
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--task", "boolq", "--test-file", str(tmp_path / "t.jsonl"), "--model", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot accuracy on boolq test:" in out and "(n=6" in out


def test_demo_runs_three_strategies_from_one_initial_set_and_prints_the_report(tmp_path, capsys):
    assert main(["demo", "--model", "tiny-random", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| random |" in out and "| me |" in out and "| star-me |" in out and "demo finished in" in out
    rounds = {
        s: [json.loads(line) for line in (tmp_path / f"sst2-{s}" / "rounds.jsonl").open()]
        for s in ("random", "me", "star-me")
    }
    assert all(len(r) == 4 and r[-1]["n_labeled"] == 32 for r in rounds.values())  # quick: 8 -> 32 labels
    assert rounds["random"][0]["added"] == rounds["me"][0]["added"] == rounds["star-me"][0]["added"]
