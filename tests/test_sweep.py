"""`starlora sweep` on the tiny model: the grid, one folder per run, resume after an interruption, the report."""

import json

import pytest

from starlora import sweep as S
from starlora.cli import main
from starlora.errors import StarloraError
from starlora.files import read_jsonl


@pytest.fixture
def grid(tmp_path):
    rows = [{"question": f"Question: is item {i} {'red' if i % 3 else 'blue'}?\nAnswer:",
             "answer": "true" if i % 3 else "false"} for i in range(44)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    config = dict(model="tiny-random", task="boolq", train_file=str(tmp_path / "pool.jsonl"),
                  test_file=str(tmp_path / "test.jsonl"), init_size=4, query_size=4, rounds=2, epochs=1, lora_r=4,
                  probe_size=4, fewshot=0, score_batch_size=16)
    (tmp_path / "grid.yaml").write_text(json.dumps([  # YAML is a superset of JSON
        {"tasks": ["boolq"], "strategies": ["random", "star-me"], "seeds": [0, 1], "config": config},
        {"tasks": ["boolq"], "strategies": ["star-me-no-mcd"], "seeds": [0], "config": config}]))
    return tmp_path


def results(folder):
    """Every run's rounds and summary, timings aside."""
    out = {}
    for f in sorted(folder.rglob("rounds.jsonl")):
        rounds = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in read_jsonl(f)]
        out[str(f.parent.relative_to(folder))] = (rounds, json.loads((f.parent / "summary.json").read_text()))
    return out


def test_a_grid_runs_every_cell_into_its_folder_and_reports(grid, capsys):
    assert main(["sweep", "--grid", str(grid / "grid.yaml"), "--out", str(grid / "a")]) == 0
    done = results(grid / "a")
    assert sorted(done) == ["boolq/random/seed0", "boolq/random/seed1", "boolq/star-me-no-mcd/seed0",
                            "boolq/star-me/seed0", "boolq/star-me/seed1"]
    assert all(len(rounds) == 2 and summary["strategy"] in name for name, (rounds, summary) in done.items())
    md = (grid / "a" / "report" / "report.md").read_text()
    assert "| star-me | 2 |" in md and "| star-me-no-mcd | 1 |" in md
    captured = capsys.readouterr()
    assert "sweep: 5 run(s)" in captured.out
    lines = (captured.out + captured.err).splitlines()
    finals = [line for line in lines if ": AUC " in line and "final accuracy" in line]
    assert len(finals) == 5 and len(set(finals)) == 5  # each run's line once (no second handler echoing it)
    # flags win over the grid: another seed list makes a smaller grid; finished runs are not run again
    assert main(["sweep", "--grid", str(grid / "grid.yaml"), "--seeds", "0", "--out", str(grid / "a")]) == 0
    assert results(grid / "a") == done


def test_an_interrupted_sweep_finishes_with_the_uninterrupted_results(grid, monkeypatch):
    jobs = lambda out: S.plan(S.read_grid(grid / "grid.yaml"), out)  # noqa: E731
    S.sweep(jobs(grid / "whole"))

    class Interrupting:  # Ctrl-C right after the third round of the sweep lands
        n = 0

        def __init__(self, **_):
            pass

        def update(self, k=1):
            Interrupting.n += k
            if Interrupting.n == 3:
                raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr(S, "progress", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        S.sweep(jobs(grid / "part"))
    assert sum(S.finished_rounds(j) for j in jobs(grid / "part")) == 3
    monkeypatch.undo()
    S.sweep(jobs(grid / "part"))
    assert results(grid / "part") == results(grid / "whole")


def test_two_workers_run_side_by_side(grid):
    jobs = S.plan(S.read_grid(grid / "grid.yaml"), grid / "w")
    summaries = S.sweep(jobs, workers=2)
    assert [s["strategy"] for s in summaries] == [j.cfg.strategy for j in jobs]
    assert all(S.finished_rounds(j) == 2 for j in jobs)


def test_bad_grids_are_refused_before_any_run(grid):
    (grid / "bad.yaml").write_text("tasks: [boolq]\nstrategies: [random]\nseeds: [0]\nepochs: 2\n")
    with pytest.raises(StarloraError, match="unknown key.*epochs"):
        S.read_grid(grid / "bad.yaml")
    with pytest.raises(StarloraError, match="unknown --strategy 'nope'"):
        S.plan([{"tasks": ["boolq"], "strategies": ["random", "nope"], "seeds": [0]}], grid / "x")
    with pytest.raises(StarloraError, match="non-empty list of seeds"):
        S.plan([{"tasks": ["boolq"], "strategies": ["random"]}], grid / "x")
    with pytest.raises(StarloraError, match="not cpu or cuda:N"):
        S.sweep([], devices=["gpu0"])
    assert not (grid / "x").exists()


def test_a_failing_run_is_reported_and_the_others_finish(grid, caplog):
    import dataclasses

    jobs = S.plan(S.read_grid(grid / "grid.yaml"), grid / "f")[:3]
    broken = S.Job(dataclasses.replace(jobs[1].cfg, train_file=str(grid / "missing.jsonl")), jobs[1].folder)
    with pytest.raises(StarloraError, match=r"1 of 3 run\(s\) failed: .*seed0.*missing.jsonl"):
        S.sweep([jobs[0], broken, jobs[2]], workers=2)
    assert S.finished_rounds(jobs[0]) == S.finished_rounds(jobs[2]) == 2  # the others ran to the end
    assert any("failed" in r.message and "the other runs go on" in r.message for r in caplog.records)


def test_a_conversion_another_process_finished_first_is_used(tmp_path):
    from starlora.models import cached_conversion

    target = tmp_path / "model"

    def convert(tmp):  # while this process converts, another one lands the same folder
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
        target.mkdir()
        (target / "config.json").write_text('{"first": true}')

    assert cached_conversion(target, convert) == target
    assert json.loads((target / "config.json").read_text()) == {"first": True}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no leftover temporary folder
