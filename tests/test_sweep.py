"""`starlora sweep` on the tiny model: the grid, one folder per run, resume after an interruption, the report."""

import json

import pytest

from starlora import sweep as S
from starlora.cli import main
from starlora.errors import StarloraError
from starlora.files import read_jsonl


@pytest.fixture
def grid(tmp_path):
    rows = [
        {
            "question": f"Question: is item {i} {'red' if i % 3 else 'blue'}?\nAnswer:",
            "answer": "true" if i % 3 else "false",
        }
        for i in range(44)
    ]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    config = dict(
        model="tiny-random",
        task="boolq",
        train_file=str(tmp_path / "pool.jsonl"),
        test_file=str(tmp_path / "test.jsonl"),
        init_size=4,
        query_size=4,
        rounds=2,
        epochs=1,
        lora_r=4,
        probe_size=4,
        fewshot=0,
        score_batch_size=16,
    )
    (tmp_path / "grid.yaml").write_text(
        json.dumps(
            [  # YAML is a superset of JSON
                {"tasks": ["boolq"], "strategies": ["random", "star-me"], "seeds": [0, 1], "config": config},
                {"tasks": ["boolq"], "strategies": ["star-me-no-mcd"], "seeds": [0], "config": config},
            ]
        )
    )
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
    assert sorted(done) == [
        "boolq/random/seed0",
        "boolq/random/seed1",
        "boolq/star-me-no-mcd/seed0",
        "boolq/star-me/seed0",
        "boolq/star-me/seed1",
    ]
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


def test_blocks_that_differ_only_in_config_run_in_folders_of_their_own(grid):
    """A block repeating another with lr 0.001 is a run of its own, named by the value that differs; a block listed
    twice still runs once, and a grid without such differences keeps the plain names."""
    config = S.read_grid(grid / "grid.yaml")[0]["config"]
    blocks = [
        {"tasks": ["boolq"], "strategies": ["random", "star-me"], "seeds": [0], "config": config},
        {"tasks": ["boolq"], "strategies": ["random"], "seeds": [0], "config": {**config, "lr": 0.001}},
        {"tasks": ["boolq"], "strategies": ["random", "star-me"], "seeds": [0], "config": config},
    ]
    jobs = S.plan(blocks, grid / "o")
    assert [str(j.folder.relative_to(grid / "o")) for j in jobs] == [
        "boolq/random[lr=0.00015]/seed0",
        "boolq/star-me/seed0",
        "boolq/random[lr=0.001]/seed0",
    ]
    assert [j.cfg.lr for j in jobs] == [1.5e-4, 1.5e-4, 0.001]
    plain = S.plan([blocks[0], blocks[2]], grid / "o")
    assert [str(j.folder.relative_to(grid / "o")) for j in plain] == ["boolq/random/seed0", "boolq/star-me/seed0"]
    assert len(S.folder_names([j.cfg for j in jobs])) == 3


def test_every_block_is_checked_before_the_first_run(grid, capsys):
    config = S.read_grid(grid / "grid.yaml")[0]["config"]
    good = {"tasks": ["boolq"], "strategies": ["random"], "seeds": [0], "config": config}
    for bad, message in [
        ({**config, "train_file": str(grid / "missing.jsonl")}, ".*missing.jsonl: no such file"),
        ({**config, "init_size": 40}, r"--init-size 40 \+ 1 queries of 4 need 44 pool examples .* the pool has 32"),
        ({**config, "train_file": None}, r"--test-file without --train-file: the run needs a pool to label"),
        ({**config, "test_file": None}, "--train-file needs --test-file"),
        ({**config, "lr": -1}, "--lr must be positive"),
        # fits the 32-example pool, not the 12 (11 false, 1 true) of the imbalanced one the run will have
        ({**config, "pool_class_ratio": "true=0.1", "init_size": 8}, r"--init-size 8 .* the pool has 12"),
    ]:
        (grid / "two.yaml").write_text(json.dumps([good, {**good, "config": bad}]))
        with pytest.raises(StarloraError, match=f"^{grid / 'two.yaml'}: block 2: {message}"):
            S.plan(S.read_grid(grid / "two.yaml"), grid / "b", grid=grid / "two.yaml")
        capsys.readouterr()
        assert main(["sweep", "--grid", str(grid / "two.yaml"), "--out", str(grid / "b")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "two.yaml: block 2: " in err
        assert not (grid / "b").exists()  # block 1 never ran
    (grid / "two.yaml").write_text(json.dumps([good, {**good, "strategies": ["nope"]}]))
    with pytest.raises(StarloraError, match="two.yaml: block 2: unknown --strategy 'nope'"):
        S.plan(S.read_grid(grid / "two.yaml"), grid / "b", grid=grid / "two.yaml")


def test_devices_the_machine_lacks_are_refused(grid, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(StarloraError, match=r"--devices cuda:0,cuda:1 needs 2 CUDA GPU\(s\); this machine has 1"):
        S.sweep([], devices=["cuda:0", "cuda:1"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert (
        main(["sweep", "--grid", str(grid / "grid.yaml"), "--out", str(grid / "d"), "--devices", "cuda:0,cuda:1"]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs 2 CUDA GPU(s); this machine has 0" in err
    assert not (grid / "d").exists()


def test_blocks_differing_in_metric_or_pool_class_ratio_get_folders_of_their_own(grid):
    """The imbalance study's blocks beside the balanced ones: each metric and pool ratio runs in a folder named by
    it."""
    config = S.read_grid(grid / "grid.yaml")[0]["config"]
    blocks = [
        {"tasks": ["boolq"], "strategies": ["random"], "seeds": [0], "config": config},
        {"tasks": ["boolq"], "strategies": ["random"], "seeds": [0], "config": {**config, "metric": "macro_f1"}},
        {
            "tasks": ["boolq"],
            "strategies": ["random"],
            "seeds": [0],
            "config": {**config, "metric": "macro_f1", "pool_class_ratio": "false=0.25"},
        },
    ]
    cfgs = [S.resolve("paper", **{**b["config"], "task": "boolq", "strategy": "random", "seed": 0}) for b in blocks]
    names = S.folder_names(cfgs)
    assert names == [
        "random[metric=accuracy,pool_class_ratio=None]",
        "random[metric=macro_f1,pool_class_ratio=None]",
        "random[metric=macro_f1,pool_class_ratio=false_0.25]",
    ]
    assert [j.cfg.metric for j in S.plan(blocks, grid / "o")] == ["accuracy", "macro_f1", "macro_f1"]


def test_configs_is_an_axis_of_variants_and_the_grid_runs_seed_by_seed(grid):
    """`configs` merges each variant over the block's config (flags win over both); the plan orders the whole grid by
    seed, blocks kept in their order within a seed."""
    config = S.read_grid(grid / "grid.yaml")[0]["config"]
    (grid / "v.yaml").write_text(
        json.dumps(
            [
                {"tasks": ["boolq"], "strategies": ["random"], "seeds": [0, 1], "config": config},
                {
                    "tasks": ["boolq"],
                    "strategies": ["star-me"],
                    "seeds": [0, 1],
                    "config": config,
                    "configs": [{}, {"diversity": "kmeans"}, {"diversity": "kmeans", "diversity_beta": 10}],
                },
            ]
        )
    )
    jobs = S.plan(S.read_grid(grid / "v.yaml"), grid / "v", overrides={"epochs": 2})
    assert [str(j.folder.relative_to(grid / "v")) for j in jobs] == [
        "boolq/random/seed0",
        "boolq/star-me/seed0",
        "boolq/star-me+kmeans/seed0",
        "boolq/star-me+kmeans(beta 10)/seed0",
        "boolq/random/seed1",
        "boolq/star-me/seed1",
        "boolq/star-me+kmeans/seed1",
        "boolq/star-me+kmeans(beta 10)/seed1",
    ]
    assert [(j.cfg.diversity, j.cfg.diversity_beta, j.cfg.epochs) for j in jobs[1:4]] == [
        ("none", 3.0, 2),
        ("kmeans", 3.0, 2),
        ("kmeans", 10.0, 2),
    ]
    for bad in ([], {"diversity": "kmeans"}, ["kmeans"]):
        (grid / "bad.yaml").write_text(
            json.dumps({"tasks": ["boolq"], "strategies": ["random"], "seeds": [0], "configs": bad})
        )
        with pytest.raises(StarloraError, match=r"bad.yaml: block 1: 'configs' must be a non-empty list of mappings"):
            S.read_grid(grid / "bad.yaml")
