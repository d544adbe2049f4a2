"""End-to-end AL runs on the tiny model: output files, invariants, resume, refusal, report, metrics."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from starlora import metrics
from starlora.errors import StarloraError
from starlora.experiment import resolve, run
from starlora.files import read_jsonl
from starlora.reporting import report
from starlora.strategies import STRATEGIES


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = random.Random(0)

    def rows(n, offset):
        out = []
        for i in range(n):
            yes = rng.random() < 0.5
            out.append(
                {
                    "question": f"Question: is item {i + offset} {'red' if yes else 'blue'}?\nAnswer:",
                    "answer": f"the correct answer is {str(yes).lower()}",
                }
            )
        return "".join(json.dumps(r) + "\n" for r in out)

    (d / "train.jsonl").write_text(rows(48, 0))
    (d / "test.jsonl").write_text(rows(16, 1000))
    return d / "train.jsonl", d / "test.jsonl"


def tiny_cfg(files, **kw):
    train, test = files
    base = dict(
        model="tiny-random",
        task="boolq",
        train_file=str(train),
        test_file=str(test),
        strategy="star-me",
        init_size=8,
        query_size=8,
        rounds=3,
        epochs=1,
        seed=0,
        probe_size=12,
        lora_r=4,
        score_batch_size=16,
    )
    return resolve("paper", **{**base, **kw})


def test_auc_ripl_ece_by_hand():
    assert metrics.auc([50, 60, 70]) == 60.0
    assert metrics.auc([0, 100]) == 50.0
    # RIPL = (AUC - AUC_random) / (100 - AUC_random) * 100, by hand: 10/40, -5/40, 20/20 of the possible gain
    assert metrics.ripl(70, 60) == 25.0 and metrics.ripl(55, 60) == -12.5 and metrics.ripl(100, 80) == 100.0
    assert np.isnan(metrics.ripl(100, 100))  # random already perfect: no improvement is possible
    # two bins: conf 0.9 (right, wrong) -> |0.9 - 0.5| ; conf 0.6 (right, right) -> |0.6 - 1| ; weights 1/2 each
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 1])
    assert metrics.ece(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert metrics.brier(np.array([[1.0, 0.0], [0.5, 0.5]]), [0, 0]) == pytest.approx((0 + 0.5) / 2)
    assert metrics.wrong_confidence(probs, labels).tolist() == [0.9]
    stats = metrics.mean_std_ci([1.0, 3.0])
    assert stats["mean"] == 2.0 and stats["std"] == pytest.approx(2**0.5)


def test_run_writes_every_file_and_keeps_the_invariants(files, tmp_path):
    out = tmp_path / "run"
    summary = run(tiny_cfg(files), out)
    for name in (
        "config.json",
        "rounds.jsonl",
        "summary.json",
        "base_scores.jsonl",
        "adapter/adapter_config.json",
        "scores/round_0.jsonl",
        "scores/round_1.jsonl",
        "probe/base.json",
        "probe/round_2.json",
    ):
        assert (out / name).exists(), name
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["n_labeled"] for r in rounds] == [8, 16, 24]
    pool_ids = {json.loads(line)["id"] for line in (out / "scores/round_0.jsonl").read_text().splitlines()}
    seen = set()
    for r in rounds:
        assert len(r["added"]) == len(set(r["added"])) and not seen & set(r["added"])
        seen |= set(r["added"])
        assert {"train_s", "eval_s", "ece", "brier", "accuracy"} <= set(r)
    assert set(rounds[1]["added"]) | set(rounds[2]["added"]) <= pool_ids  # queried from the scored candidates
    minmax = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    for t, lam in ((0, 2 / 3), (1, 1 / 3)):  # lambda(t) = 1 - (t + 1) / R with R = 3, by hand
        assert rounds[t]["lambda"] == pytest.approx(lam)
        rows = read_jsonl(out / "scores" / f"round_{t}.jsonl")
        mu_b, mu_f, mu = (np.array([r[k] for r in rows]) for k in ("mu_b", "mu_f", "mu"))
        np.testing.assert_allclose(mu, lam * minmax(mu_b) + (1 - lam) * minmax(mu_f), rtol=0, atol=1e-9)
        assert np.abs(mu - (1 - lam) * minmax(mu_b) - lam * minmax(mu_f)).max() > 1e-3  # another lambda would show
    scores = [json.loads(line) for line in (out / "scores/round_0.jsonl").read_text().splitlines()]
    assert len(scores) == 48 - 8 - 12 and {"id", "mu_b", "mu_f", "mu"} <= set(scores[0])  # the probe is no candidate
    assert summary["auc"] == pytest.approx(metrics.auc(summary["curve"]))
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["k"] == 3 and "transformers" in config["versions"]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_runs(files, tmp_path, strategy):
    summary = run(tiny_cfg(files, strategy=strategy, rounds=2, probe_size=4, fewshot=0), tmp_path / strategy)
    assert len(summary["curve"]) == 2


def test_resume_equals_uninterrupted_and_other_config_is_refused(files, tmp_path):
    whole = run(tiny_cfg(files), tmp_path / "whole")
    part = tmp_path / "part"
    run(tiny_cfg(files, rounds=3), part)
    # simulate a run interrupted after round 1: drop the last round and the summary (rounds.jsonl is replaced whole
    # by a rename, so a kill leaves the old file or the new, never a torn line)
    rounds = read_jsonl(part / "rounds.jsonl")
    (part / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds[:2]))
    (part / "summary.json").unlink()
    resumed = run(tiny_cfg(files), part)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rs]  # noqa: E731
    assert strip(read_jsonl(part / "rounds.jsonl")) == strip(read_jsonl(tmp_path / "whole" / "rounds.jsonl"))
    assert resumed["curve"] == whole["curve"] and resumed["auc"] == whole["auc"]
    with pytest.raises(StarloraError, match="another configuration .*query_size: 8 -> 4"):
        run(tiny_cfg(files, query_size=4), part)


def test_pool_too_small_is_refused_before_writing(files, tmp_path):
    with pytest.raises(StarloraError, match="pool has 48"):
        run(tiny_cfg(files, init_size=40, query_size=8, rounds=3), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_report_on_tiny_runs(files, tmp_path):
    for strategy in ("random", "star-me"):
        for seed in (0, 1):
            run(tiny_cfg(files, strategy=strategy, seed=seed, rounds=2), tmp_path / f"{strategy}-{seed}")
    rows = report([tmp_path], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| boolq | star-me | 2 |" in md and "| boolq | random | 2 |" in md
    star = next(r for r in rows if r["strategy"] == "star-me")
    rand = next(r for r in rows if r["strategy"] == "random")
    expected = np.mean(
        [
            metrics.ripl(a, rand["auc"]["mean"])
            for a in [json.loads((tmp_path / f"star-me-{s}" / "summary.json").read_text())["auc"] for s in (0, 1)]
        ]
    )
    assert star["ripl"]["mean"] == pytest.approx(expected)
    assert (tmp_path / "report" / "report.csv").read_text().startswith("task,strategy,seeds,final_accuracy_mean")
    pngs = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert {
        "learning_curves_boolq.png",
        "wrong_confidence_boolq.png",
        "probe_heatmap_boolq_star-me_seed0.png",
        "probe_scatter_boolq_star-me_seed0.png",
    } <= pngs
    only_star = report([tmp_path / "star-me-0"], tmp_path / "r2")
    assert only_star[0]["ripl"] is None
    assert "n/a (no random runs)" in (tmp_path / "r2" / "report.md").read_text()


def test_cli_run_with_yaml_and_flags(files, tmp_path):
    train, test = files
    (tmp_path / "c.yaml").write_text(
        "strategy: me\ninit_size: 8\nquery_size: 8\nrounds: 2\nepochs: 1\nlora_r: 4\nprobe_size: 4\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "starlora.cli",
        "run",
        "--config",
        str(tmp_path / "c.yaml"),
        "--model",
        "tiny-random",
        "--task",
        "boolq",
        "--train-file",
        str(train),
        "--test-file",
        str(test),
        "--query-size",
        "4",
        "--seed",
        "0",
        "1",
        "--out",
        str(tmp_path / "o"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "o" / "seed1" / "config.json").read_text())["config"]
    assert (config["strategy"], config["query_size"], config["init_size"], config["seed"]) == ("me", 4, 8, 1)
    assert "round 1: 12 labeled" in done.stdout
    other = cmd[: cmd.index("--seed")] + ["--query-size", "5", "--seed", "0", "--out", str(tmp_path / "o" / "seed0")]
    bad = subprocess.run(other, capture_output=True, text=True)
    assert bad.returncode == 2 and "another configuration" in bad.stderr


def test_the_probe_is_never_labeled(files, tmp_path):
    out = tmp_path / "run"
    run(tiny_cfg(files, init_size=8, query_size=8, rounds=3, probe_size=24), out)  # 24 + 24 = the pool
    probe = set(json.loads((out / "probe" / "base.json").read_text()))
    labeled = {i for r in read_jsonl(out / "rounds.jsonl") for i in r["added"] + r["selected"]}
    assert len(probe) == 24 and len(labeled) == 24 and not probe & labeled
    scored = {json.loads(line)["id"] for t in range(2) for line in (out / f"scores/round_{t}.jsonl").open()}
    assert not probe & scored  # never even a candidate
    with pytest.raises(StarloraError, match="besides the --probe-size 25 probe"):
        run(tiny_cfg(files, init_size=8, query_size=8, rounds=3, probe_size=25), tmp_path / "x")


def test_a_failed_start_does_not_lock_the_folder(files, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(StarloraError, match="unknown model 'nope'"):
        run(tiny_cfg(files, model="nope"), out)
    assert not out.exists()  # nothing written before the model loaded
    run(tiny_cfg(files, rounds=1, query_size=4), out)
    (out / "rounds.jsonl").unlink()  # a folder with no finished round ...
    (out / "summary.json").unlink()
    run(tiny_cfg(files, rounds=1, query_size=5), out)  # ... is taken over by a changed configuration
    assert json.loads((out / "config.json").read_text())["config"]["query_size"] == 5
    assert len(read_jsonl(out / "rounds.jsonl")) == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(lr=-1.0), "--lr must be positive"),
        (dict(lr=float("nan")), "--lr must be a finite number"),
        (dict(lora_dropout=1.0), r"--lora-dropout must be in \[0, 1\)"),
        (dict(b_decay=-0.1), "--b-decay must be at"),
        (dict(max_new_tokens=0), "--max-new-tokens must be at least 1"),
        (dict(init_size="8"), "--init-size must be int"),
        (dict(schedule="exp:2:0.5"), r"lambda\(0\) = 2, outside"),
        (dict(schedule="constant:x"), "parameters must be"),
        (dict(candidate_subsample=4, query_size=8), "--candidate-subsample 4 is smaller than --query-size 8"),
        (dict(strategy="bald", k=1), "bald needs MC dropout"),
        (dict(strategy="bald", lora_dropout=0.0), "bald needs"),
        (dict(strategy="bald", mode="full"), "bald needs MC dropout"),
        (dict(probe_size=-1), "--probe-size must be at"),
        (dict(normalisation="zscore"), "unknown --normalisation"),
        (dict(strategy="nope"), "unknown --strategy"),
    ],
)
def test_bad_values_are_refused_naming_the_option(files, bad, message):
    with pytest.raises(StarloraError, match=message):
        tiny_cfg(files, **bad)


def test_precision_is_stored_resolved(files, tmp_path):
    cfg = tiny_cfg(files, rounds=1, precision="auto")
    assert cfg.precision in ("fp32", "bf16")
    run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["precision"] == cfg.precision
    other = "bf16" if cfg.precision == "fp32" else "fp32"
    with pytest.raises(StarloraError, match=f"precision: '{cfg.precision}' -> '{other}'"):
        run(tiny_cfg(files, rounds=1, precision=other), tmp_path / "run")


def test_bf16_frozen_weights_change_no_number(files, tmp_path, monkeypatch):
    """Under bf16 autocast the frozen linear weights are stored in bf16 once (hardware.bf16_frozen_linears) instead
    of cast on every call: a whole run gives the same numbers to the bit as with the casts."""
    from starlora import rounds  # rounds.fresh_adapter casts, for the simulation and the human loop alike

    counts, real = [], rounds.bf16_frozen_linears
    monkeypatch.setattr(rounds, "bf16_frozen_linears", lambda model, precision: counts.append(real(model, precision)))
    cast = run(tiny_cfg(files, precision="bf16"), tmp_path / "cast")
    assert len(counts) == 3 and counts[0] > 0 and counts[1:] == [0, 0]  # cast once, in the first round; kept after
    monkeypatch.setattr(rounds, "bf16_frozen_linears", lambda model, precision: 0)
    plain = run(tiny_cfg(files, precision="bf16"), tmp_path / "plain")
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rs]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "cast" / "rounds.jsonl")) == strip(
        read_jsonl(tmp_path / "plain" / "rounds.jsonl")
    )
    assert cast["auc"] == plain["auc"]
    for name in ("adapter_model.safetensors",):
        assert (tmp_path / "cast" / "adapter" / name).read_bytes() == (
            tmp_path / "plain" / "adapter" / name
        ).read_bytes()
    assert (tmp_path / "cast" / "scores" / "round_1.jsonl").read_text() == (
        tmp_path / "plain" / "scores" / "round_1.jsonl"
    ).read_text()
