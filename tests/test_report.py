"""`starlora report` on hand-made run folders (no model): grouping, RIPL baseline, paired ΔAUC, probe correlations."""

import csv
import json

import numpy as np
import pytest

from starlora import metrics
from starlora.reporting import heatmap, report


def fake_run(folder, strategy, seed, curve, config=True, probe=None, **settings):
    """A finished run folder as `starlora run` writes it: config.json, rounds.jsonl, summary.json (and probe/)."""
    settings = {
        "task": "boolq",
        "model": "a",
        "data": "embedded",
        "train_file": None,
        "init_size": 4,
        "query_size": 4,
        "rounds": len(curve),
        **settings,
    }
    folder.mkdir(parents=True)
    if config:
        cfg = {**settings, "strategy": strategy, "seed": seed}
        (folder / "config.json").write_text(json.dumps({"config": cfg, "versions": {"starlora": "test"}}))
    n_labeled = [settings["init_size"] + settings["query_size"] * t for t in range(len(curve))]
    (folder / "rounds.jsonl").write_text(
        "".join(
            json.dumps({"round": t, "n_labeled": n, "accuracy": a}) + "\n"
            for t, (n, a) in enumerate(zip(n_labeled, curve))
        )
    )
    summary = {
        "task": settings["task"],
        "strategy": strategy,
        "seed": seed,
        "model": settings["model"],
        "curve": curve,
        "n_labeled": n_labeled,
        "auc": metrics.auc(curve),
        "final_accuracy": curve[-1],
        "probe_measure": "me",
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    if probe:
        (folder / "probe").mkdir()
        for name, values in probe.items():
            (folder / "probe" / f"{name}.json").write_text(json.dumps({f"id{i}": v for i, v in enumerate(values)}))
    return folder


def row(rows, strategy, group=None):
    return next(r for r in rows if r["strategy"] == strategy and (group is None or r["group"] == group))


def test_ripl_is_against_the_random_runs_of_the_same_model(tmp_path):
    fake_run(tmp_path / "a-random", "random", 0, [40, 40], model="a")
    fake_run(tmp_path / "b-random", "random", 0, [80, 80], model="b")
    fake_run(tmp_path / "b-star", "star-me", 0, [82, 82], model="b")
    rows = report([tmp_path], tmp_path / "report")
    star = row(rows, "star-me")
    assert star["group"] == "model=b"
    assert star["ripl"]["mean"] == pytest.approx(10.0)  # (82 - 80) / (100 - 80), not against the mean 60 (55.0)
    assert row(rows, "random", "model=a")["auc"]["mean"] == 40 and row(rows, "random", "model=b")["auc"]["mean"] == 80
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| task | group | strategy | seeds |" in md
    assert "| boolq | model=b | star-me | 1 | 82.00 ± 0.00 | 82.00 ± 0.00 | 10.00 ± 0.00 | +2.00 | 1/1 |" in md
    assert "random runs of the same group" in md
    pngs = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert {
        "learning_curves_boolq_model-a.png",
        "learning_curves_boolq_model-b.png",
        "delta_auc_boolq_model-b.png",
    } <= pngs
    assert "learning_curves_boolq.png" not in pngs and "delta_auc_boolq_model-a.png" not in pngs


def test_protocol_values_and_data_files_make_separate_groups(tmp_path):
    fake_run(tmp_path / "r4", "random", 0, [50, 60], init_size=4, train_file="/data/x/pool.jsonl")
    fake_run(tmp_path / "s4", "pe", 0, [54, 65], init_size=4, train_file="/data/x/pool.jsonl")
    fake_run(tmp_path / "r8", "random", 0, [70, 70], init_size=8, train_file="/data/x/pool.jsonl")
    fake_run(tmp_path / "s8", "pe", 0, [70, 70], init_size=8, train_file="/data/y/pool.jsonl")
    rows = report([tmp_path], tmp_path / "report")
    # same file name in two folders: the label keeps the whole path so the groups stay apart
    groups = {r["group"] for r in rows}
    assert groups == {
        "init_size=4, train_file=/data/x/pool.jsonl",
        "init_size=8, train_file=/data/x/pool.jsonl",
        "init_size=8, train_file=/data/y/pool.jsonl",
    }
    small = row(rows, "pe", "init_size=4, train_file=/data/x/pool.jsonl")
    assert small["ripl"]["mean"] == pytest.approx(10.0)  # AUC 59.5 against 55
    assert row(rows, "pe", "init_size=8, train_file=/data/y/pool.jsonl")["ripl"] is None  # no random run there


def test_group_without_random_runs_shows_na_and_says_why(tmp_path):
    fake_run(tmp_path / "a-random", "random", 0, [40, 40], model="a")
    fake_run(tmp_path / "c-star", "star-me", 0, [90, 90], model="c")
    rows = report([tmp_path], tmp_path / "report")
    star = row(rows, "star-me")
    assert star["ripl"] is None and star["delta_auc"] is None
    md = (tmp_path / "report" / "report.md").read_text()
    assert (
        "| boolq | model=c | star-me | 1 | 90.00 ± 0.00 | 90.00 ± 0.00 | n/a (no random runs) | "
        "n/a (no random runs) | — |" in md
    )
    assert "n/a (no random runs): the group has no random runs" in md


def test_runs_without_config_json_are_grouped_by_task_and_model(tmp_path):
    fake_run(tmp_path / "a-random", "random", 0, [40, 40], config=False, model="a")
    fake_run(tmp_path / "b-random", "random", 0, [80, 80], config=False, model="b")
    fake_run(tmp_path / "b-star", "star-me", 0, [82, 82], config=False, model="b")
    rows = report([tmp_path], tmp_path / "report")
    assert row(rows, "star-me")["ripl"]["mean"] == pytest.approx(10.0)
    assert row(rows, "star-me")["group"] == "model=b, no config.json"


def test_paired_delta_by_hand():
    d = metrics.paired_delta([11, 12, 13], [10, 10, 10])  # deltas 1, 2, 3: mean 2, sd 1
    half = 4.302653 * 1 / np.sqrt(3)  # t(0.975, 2) = 4.302653
    assert d["mean"] == pytest.approx(2.0) and d["n"] == 3 and d["wins"] == 3
    assert (d["low"], d["high"]) == pytest.approx((2 - half, 2 + half), abs=1e-5)
    assert half == pytest.approx(2.4841, abs=1e-4)
    one = metrics.paired_delta([5.0], [3.0])
    assert one["mean"] == 2.0 and one["n"] == 1 and np.isnan(one["low"]) and np.isnan(one["high"])
    assert metrics.paired_delta([1, 2, 3], [2, 2, 1])["wins"] == 1  # a tie is not a win
    with pytest.raises(ValueError):
        metrics.paired_delta([1, 2], [1])


def test_report_pairs_strategy_and_random_by_seed(tmp_path):
    for seed, (rand, star) in enumerate([(60, 61), (62, 64), (64, 67)]):
        fake_run(tmp_path / f"random-{seed}", "random", seed, [rand, rand])
        fake_run(tmp_path / f"star-{seed}", "star-me", seed, [star, star])
    fake_run(tmp_path / "star-9", "star-me", 9, [10, 10])  # no random run with seed 9: not paired
    rows = report([tmp_path], tmp_path / "report")
    d = row(rows, "star-me")["delta_auc"]
    assert d["n"] == 3 and d["wins"] == 3 and d["mean"] == pytest.approx(2.0)
    assert d["high"] - d["mean"] == pytest.approx(2.4841, abs=1e-4)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| task | strategy | seeds | final accuracy (%) | AUC | RIPL (%) | ΔAUC vs random [95% CI] | wins |" in md
    random_line = next(line for line in md.splitlines() if line.startswith("| boolq | random | 3 |"))
    assert random_line.endswith("| — | — |")
    assert "| +2.00 [-0.48, +4.48] | 3/3 |" in md
    with open(tmp_path / "report" / "report.csv") as f:
        csv_rows = list(csv.DictReader(f))
    star = next(r for r in csv_rows if r["strategy"] == "star-me")
    assert star["seeds"] == "4" and star["pairs"] == "3" and star["wins"] == "3"
    assert float(star["delta_auc_mean"]) == pytest.approx(2.0)
    assert float(star["delta_auc_low"]) == pytest.approx(2 - 2.4841, abs=1e-4)
    assert next(r for r in csv_rows if r["strategy"] == "random")["delta_auc_mean"] == ""
    assert (tmp_path / "report" / "delta_auc_boolq.png").exists()


def test_correlations_by_hand_and_undefined_for_constant_rows():
    # x = 1..4, y = [1, 3, 2, 10]: Pearson 13 / sqrt(5 * 50); ranks of y are [1, 3, 2, 4]: Spearman 4 / 5
    corr = metrics.correlations([[0, 0, 0, 0], [1, 2, 3, 4], [1, 3, 2, 10]])
    assert corr["pearson"][1, 2] == pytest.approx(13 / np.sqrt(250)) and corr["spearman"][2, 1] == pytest.approx(0.8)
    assert corr["pearson"][1, 1] == 1.0 and corr["spearman"][2, 2] == 1.0
    for kind in ("pearson", "spearman"):
        assert np.isnan(corr[kind][0]).all() and np.isnan(corr[kind][:, 0]).all()


def test_all_zero_base_probe_is_null_not_perfect(tmp_path):
    probe = {"base": [0.0, 0.0, 0.0, 0.0], "round_0": [1.0, 2.0, 3.0, 4.0], "round_1": [1.0, 3.0, 2.0, 10.0]}
    fake_run(tmp_path / "star", "star-me", 0, [50, 60], probe=probe)
    report([tmp_path], tmp_path / "report")
    saved = json.loads((tmp_path / "report" / "probe_correlations_boolq_star-me_seed0.json").read_text())
    assert saved["rounds"] == ["base", "round 0", "round 1"]
    for kind in ("pearson", "spearman"):
        assert saved[kind][0] == [None, None, None] and [r[0] for r in saved[kind]] == [None, None, None]
        assert saved[kind][1][1] == 1.0 and saved[kind][2][2] == 1.0
    assert saved["pearson"][1][2] == round(13 / np.sqrt(250), 4) and saved["spearman"][2][1] == 0.8
    assert (tmp_path / "report" / "probe_heatmap_boolq_star-me_seed0.png").exists()


def test_heatmap_hatches_undefined_cells_without_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = metrics.correlations([[0, 0, 0], [1, 2, 3], [3, 1, 2]])["spearman"]
    fig, ax = plt.subplots()
    heatmap(ax, ["base", "round 0", "round 1"], values)
    texts = [t.get_text() for t in ax.texts]
    plt.close(fig)
    assert sorted(texts) == ["-0.50", "-0.50", "1.00", "1.00"]  # the four defined cells only
    assert len(ax.patches) == 5  # base's row and column, hatched


def test_runs_from_before_an_option_group_with_runs_that_store_its_old_value():
    from starlora.reporting import group_key

    old = {"config": {"task": "sst2", "strategy": "me", "seed": 0, "lr": 1e-3}}
    new = {
        "config": {
            "task": "sst2",
            "strategy": "random",
            "seed": 0,
            "lr": 1e-3,
            "dtype": "fp32",
            "gradient_accumulation_steps": 1,
            "gradient_checkpointing": False,
            "quantization": "none",
        }
    }
    assert group_key(old) == group_key(new)
    assert group_key(old) != group_key({"config": {**new["config"], "dtype": "bf16"}})
