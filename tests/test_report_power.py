"""What `starlora report` says a study can detect, on hand-made run folders: paired tests with Holm and the sign test,
the minimum detectable ΔAUC and the seeds needed (--target-delta), per-round paired differences, the code revisions
per row with a warning when a group mixes them."""

import csv
import json
import math
import warnings

import pytest
from test_report import fake_run, row

from starlora import metrics
from starlora.cli import main
from starlora.errors import StarloraWarning
from starlora.reporting import report


def stamp(folder, started=None, finished=None):
    """Record code revisions as a run does: config.json's versions (started), summary.json (finished)."""
    config = json.loads((folder / "config.json").read_text())
    if started:
        config["versions"]["revision"] = started
    (folder / "config.json").write_text(json.dumps(config))
    summary = json.loads((folder / "summary.json").read_text())
    if finished:
        summary["revision"] = finished
    (folder / "summary.json").write_text(json.dumps(summary))


A, B = (
    {"commit": "a" * 40, "dirty": False, "source_sha256": "1" * 64},
    {"commit": "b" * 40, "dirty": True, "source_sha256": "2" * 64},
)


def study(tmp_path, revision=A):
    """Three seeds: random flat at 70; me +1, +2, +3 (flat curves: AUC = the level); pe gains only in round 1."""
    for seed, gain in enumerate([1.0, 2.0, 3.0]):
        for strategy, curve in [
            ("random", [70.0, 70.0, 70.0]),
            ("me", [70.0 + gain] * 3),
            ("pe", [70.0, 70.0 + 2 * gain, 70.0]),
        ]:
            stamp(fake_run(tmp_path / strategy / f"seed{seed}", strategy, seed, curve), revision, revision)
    return tmp_path


def test_paired_tests_what_the_seeds_detect_and_holm(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarloraWarning)  # one revision: no warning
        rows = report([study(tmp_path)], tmp_path / "r")
    me, pe = row(rows, "me"), row(rows, "pe")
    # me: d = 1, 2, 3 -> mean 2, sd 1; pe: AUC gain = trapezoid of (0, 2g, 0) over 2 intervals = g -> the same d
    for r in (me, pe):
        t = r["tests"]
        assert r["delta_auc"]["deltas"] == pytest.approx([1, 2, 3]) and t["sd"] == pytest.approx(1.0)
        assert t["p_t"] == pytest.approx(metrics.paired_t_p([1, 2, 3])) and t["p_sign"] == pytest.approx(0.25)
        assert t["p_holm"] == pytest.approx(min(1, 2 * t["p_t"]))  # two equal p: both 2p
        assert t["mde"] == pytest.approx(metrics.min_detectable_delta(1.0, 3))
        assert t["seeds_needed"] == {1.0: metrics.seeds_needed(1.0, 1.0), 2.0: metrics.seeds_needed(2.0, 1.0)}
    assert "tests" not in row(rows, "random") or not row(rows, "random").get("tests")
    md = (tmp_path / "r" / "report.md").read_text()
    assert (
        "| task | strategy | pairs | ΔAUC vs random [95% CI] | p (t) | p (t, Holm) | p (sign) | sd of Δ | "
        "MDE (80% power) | seeds for ΔAUC 1 | seeds for ΔAUC 2 |"
    ) in md
    assert (
        f"| boolq | me | 3 | +2.00 [{me['delta_auc']['low']:+.2f}, {me['delta_auc']['high']:+.2f}] | "
        f"{me['tests']['p_t']:.3f} | {me['tests']['p_holm']:.3f} | 0.250 | 1.00 | {me['tests']['mde']:.2f} | "
        f"{metrics.seeds_needed(1.0, 1.0)} | {metrics.seeds_needed(2.0, 1.0)} |"
    ) in md
    with open(tmp_path / "r" / "tests.csv") as f:
        lines = {r["strategy"]: r for r in csv.DictReader(f)}
    assert float(lines["me"]["p_holm"]) == pytest.approx(me["tests"]["p_holm"])
    assert int(lines["me"]["seeds_for_2"]) == metrics.seeds_needed(2.0, 1.0)
    assert lines["random"]["p_t"] == "" and lines["me"]["revisions"] == "aaaaaaa: 3"


def test_holm_adjusts_over_the_strategies_of_a_group_only(tmp_path):
    for seed, (gain_me, gain_pe) in enumerate([(1.0, 0.5), (2.0, -0.5), (3.0, 1.5), (2.5, 0.0)]):
        for strategy, level in [("random", 60.0), ("me", 60 + gain_me), ("pe", 60 + gain_pe)]:
            fake_run(tmp_path / "a" / strategy / f"seed{seed}", strategy, seed, [level] * 2)
        fake_run(tmp_path / "b" / f"random{seed}", "random", seed, [50.0] * 2, model="b")  # another group
        fake_run(tmp_path / "b" / f"me{seed}", "me", seed, [50.0 + gain_me] * 2, model="b")
    rows = report([tmp_path], tmp_path / "r")
    ps = [row(rows, s, "model=a")["tests"]["p_t"] for s in ("me", "pe")]
    assert [row(rows, s, "model=a")["tests"]["p_holm"] for s in ("me", "pe")] == pytest.approx(metrics.holm(ps))
    alone = row(rows, "me", "model=b")["tests"]
    assert alone["p_holm"] == pytest.approx(alone["p_t"])  # a family of one in its own group


def test_per_round_paired_differences_table_csv_and_plot(tmp_path):
    rows = report([study(tmp_path)], tmp_path / "r")
    pe = row(rows, "pe")["per_round"]
    assert [x["round"] for x in pe] == [0, 1, 2] and [x["n_labeled"] for x in pe] == [4, 8, 12]
    assert [x["mean"] for x in pe] == pytest.approx([0, 4, 0])  # 2g for g = 1, 2, 3
    assert pe[1]["deltas"] == pytest.approx([2, 4, 6]) and pe[1]["wins"] == 3
    assert pe[1]["p_t"] == pytest.approx(metrics.paired_t_p([2, 4, 6]))
    me1 = row(rows, "me")["per_round"][1]
    assert [pe[1]["p_holm"], me1["p_holm"]] == pytest.approx(metrics.holm([pe[1]["p_t"], me1["p_t"]]))
    assert pe[0]["p_t"] == 1.0 and pe[0]["wins"] == 0  # no difference at all in round 0: nothing against equality
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Per-round paired differences" in md
    assert (
        f"| boolq | pe | 1 | 8 | +4.00 [{pe[1]['low']:+.2f}, {pe[1]['high']:+.2f}] | {pe[1]['p_t']:.3f} | "
        f"{pe[1]['p_holm']:.3f} | 3/3 |"
    ) in md
    with open(tmp_path / "r" / "per_round.csv") as f:
        lines = [r for r in csv.DictReader(f) if r["strategy"] == "pe"]
    assert [float(r["delta_mean"]) for r in lines] == pytest.approx([0, 4, 0])
    assert (tmp_path / "r" / "per_round_delta_boolq.png").stat().st_size > 0


def test_target_delta_names_the_seeds_asked_for(tmp_path, capsys):
    study(tmp_path)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--target-delta", "1.5"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| seeds for ΔAUC 1.5 |" in md and "seeds for ΔAUC 2 |" not in md
    assert f"| {metrics.seeds_needed(1.5, 1.0)} |" in md
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--target-delta", "0"]) == 2
    assert "--target-delta must be positive" in capsys.readouterr().err


def test_one_pair_has_nothing_to_plan_from(tmp_path):
    fake_run(tmp_path / "r0", "random", 0, [60.0, 60.0])
    fake_run(tmp_path / "m0", "me", 0, [62.0, 62.0])
    rows = report([tmp_path], tmp_path / "r")
    t = row(rows, "me")["tests"]
    assert math.isnan(t["p_t"]) and math.isnan(t["mde"]) and t["seeds_needed"] == {1.0: None, 2.0: None}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| boolq | me | 1 | +2.00 | — | — | 1.000 | n/a | n/a | n/a | n/a |" in md


def test_report_shows_revisions_and_warns_when_a_group_mixes_them(tmp_path):
    study(tmp_path)
    stamp(tmp_path / "me" / "seed1", B, B)  # one run on other (dirty) code
    stamp(tmp_path / "pe" / "seed2", A, B)  # one run resumed on other code
    fake_run(tmp_path / "old" / "me", "me", 3, [71.0] * 3)  # made before revisions were recorded
    fake_run(tmp_path / "old" / "random", "random", 3, [70.0] * 3)
    with pytest.warns(
        StarloraWarning,
        match=r"boolq: the compared runs come from 4 code revisions \(aaaaaaa: 7 runs, "
        r"unrecorded: 2 runs, aaaaaaa→bbbbbbb\+dirty:22222222: 1 run, "
        r"bbbbbbb\+dirty:22222222: 1 run\): a difference between strategies "
        r"may be a difference between code",
    ):
        rows = report([tmp_path], tmp_path / "r")
    assert row(rows, "me")["revisions"] == {"aaaaaaa": 2, "bbbbbbb+dirty:22222222": 1, "unrecorded": 1}
    assert row(rows, "pe")["revisions"] == {"aaaaaaa": 2, "aaaaaaa→bbbbbbb+dirty:22222222": 1}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| boolq | me | aaaaaaa (2), bbbbbbb+dirty:22222222 (1), unrecorded (1) | unrecorded (4) |" in md
    assert "| boolq | random | aaaaaaa (3), unrecorded (1) | unrecorded (4) |" in md
    assert "**Note:**" not in md  # no run recorded a machine: nothing to compare
    assert "**Warning:** boolq: the compared runs come from 4 code revisions" in md
    # a resumed run alone is enough to warn; runs that all predate revisions are unrecorded, without a warning
    for folder in ("me", "pe", "old"):
        for run in (tmp_path / folder).iterdir():
            stamp(run, A, A)
    stamp(tmp_path / "pe" / "seed2", A, B)
    with pytest.warns(StarloraWarning, match="2 code revisions"):
        report([tmp_path], tmp_path / "r")
    fake_run(tmp_path / "plain" / "random", "random", 0, [50.0, 50.0], model="p")
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarloraWarning)
        rows = report([tmp_path / "plain"], tmp_path / "r2")
    assert rows[0]["revisions"] == {"unrecorded": 1}
    assert "| boolq | random | unrecorded (1) | unrecorded (1) |" in (tmp_path / "r2" / "report.md").read_text()


def machine_stamp(folder, started, finished):
    """Record machines as a run does: config.json's versions (started), summary.json (finished)."""
    for name, key, value in (("config.json", "versions", started), ("summary.json", None, finished)):
        data = json.loads((folder / name).read_text())
        (data[key] if key else data)["machine"] = value
        (folder / name).write_text(json.dumps(data))


def test_report_shows_machines_and_notes_a_group_that_ran_on_several(tmp_path):
    x, y = "Xeon (AVX512, AVX512-BF16)", "Xeon (AVX512, AVX512-BF16, AMX)"
    study(tmp_path)
    for run in (tmp_path / "random").iterdir():
        machine_stamp(run, x, x)
    machine_stamp(tmp_path / "me" / "seed0", y, y)
    machine_stamp(tmp_path / "me" / "seed1", x, y)  # resumed on another machine
    with warnings.catch_warnings():
        warnings.simplefilter("error", StarloraWarning)  # machines are noted, not warned about
        rows = report([tmp_path], tmp_path / "r")
    assert row(rows, "me")["machines"] == {x + "→" + y: 1, y: 1, "unrecorded": 1}
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"| boolq | random | aaaaaaa (3) | {x} (3) |" in md
    assert f"| boolq | me | aaaaaaa (3) | {x}→{y} (1), {y} (1), unrecorded (1) |" in md
    assert (
        f"**Note:** boolq: the compared runs ran on 2 machines (unrecorded: 4 runs, {x}: 3 runs, {x}→{y}: 1 run, "
        f"{y}: 1 run): bf16 arithmetic differs between CPU kinds, so their numbers are close, not identical."
    ) in md
    with open(tmp_path / "r" / "tests.csv") as f:
        lines = {r["strategy"]: r for r in csv.DictReader(f)}
    assert lines["random"]["machines"] == f"{x}: 3"
    # one recorded machine beside unrecorded runs is no mix; a run resumed on another machine alone is
    machine_stamp(tmp_path / "me" / "seed0", x, x)
    machine_stamp(tmp_path / "me" / "seed1", x, x)
    report([tmp_path], tmp_path / "r")
    assert "**Note:**" not in (tmp_path / "r" / "report.md").read_text()
    machine_stamp(tmp_path / "me" / "seed1", x, y)
    report([tmp_path], tmp_path / "r")
    assert "**Note:** boolq: the compared runs ran on 2 machines (" in (tmp_path / "r" / "report.md").read_text()


def test_a_strategy_that_equals_random_at_every_seed_stays_in_its_family_with_p_1(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path / f"r{seed}", "random", seed, [60.0, 70.0])
        fake_run(tmp_path / f"m{seed}", "me", seed, [60.0, 70.0])  # what random labeled, to the last digit
        fake_run(tmp_path / f"p{seed}", "pe", seed, [60.0 + 2 * seed, 72.0])
    rows = report([tmp_path], tmp_path / "r")
    me, pe = row(rows, "me")["tests"], row(rows, "pe")["tests"]
    assert (me["p_t"], me["p_sign"]) == (1.0, 1.0)
    assert [me["p_holm"], pe["p_holm"]] == pytest.approx(metrics.holm([1.0, pe["p_t"]]))  # a family of two
    md = (tmp_path / "r" / "report.md").read_text()
    tests = md[md.index("## Paired tests") :]
    assert "| boolq | me | 2 | +0.00 [+0.00, +0.00] | 1.000 | 1.000 | 1.000 | 0.00 | n/a | n/a | n/a |" in tests
