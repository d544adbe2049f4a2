"""Stopping criteria: kappa and uncertainty change by hand, rules, and a run that stops early and resumes."""

import json

import pytest
from helpers import separated_inputs, separated_run

from starlora.config import resolve
from starlora.errors import StarloraError
from starlora.experiment import run
from starlora.files import read_jsonl
from starlora.stopping import StopRule, cohen_kappa, parse_stop_rule, stop_figures
from starlora.strategies import get_strategy, one_pass_measure


def test_cohen_kappa_by_hand():
    # 4 items, agreement 3/4 = 0.75; marginals: a = (yes 2, no 2), b = (yes 3, no 1) -> chance 0.5*0.75 + 0.5*0.25
    # = 0.5; kappa = (0.75 - 0.5) / (1 - 0.5) = 0.5
    assert cohen_kappa(["yes", "yes", "no", "no"], ["yes", "yes", "yes", "no"]) == pytest.approx(0.5)
    assert cohen_kappa(["yes"] * 4, ["yes"] * 4) == 1.0  # all one label: 0/0 by the formula, identical by sense
    figures = stop_figures({"predictions": ["a", "b"], "mean": 0.5}, ["a", "b"], [0.2, 0.4])
    assert figures == {
        "stop_kappa": 1.0,
        "stop_uncertainty": pytest.approx(0.3),
        "stop_uncertainty_change": pytest.approx(-0.2),
    }
    assert stop_figures(None, ["a"], [1.0])["stop_kappa"] is None
    # predictions are compared as the labels scikit-learn sees (None is ""): no 0/0 NaN for "different" constants
    assert cohen_kappa([None] * 3, [""] * 3) == 1.0
    assert cohen_kappa(["yes"] * 3, ["no"] * 3) == 0.0  # constant but different: no agreement beyond chance


def test_one_pass_uncertainty_is_the_strategys_own_or_me():
    assert one_pass_measure(get_strategy("star-pe", True), False) == "pe"
    assert one_pass_measure(get_strategy("star-pe", True), True) == "pe_norm"
    assert one_pass_measure(get_strategy("badge", True), False) == "margin"  # what its deterministic pass reads
    for name in ("random", "coreset", "bald"):  # none of their own; BALD is 0 in one deterministic pass
        assert one_pass_measure(get_strategy(name, True), False) == "me"
    assert one_pass_measure(get_strategy("bald", True), True) == "me_norm"


def test_rules():
    rule = parse_stop_rule("kappa:0.9:2")
    assert rule == StopRule("kappa", 0.9, 2) and str(rule) == "kappa:0.9:2"
    rounds = [
        {"round": 0, "stop_kappa": None},
        {"round": 1, "stop_kappa": 0.95},
        {"round": 2, "stop_kappa": 0.8},
        {"round": 3, "stop_kappa": 0.91},
        {"round": 4, "stop_kappa": 0.99},
    ]
    assert [rule.holds(rounds[: i + 1]) for i in range(5)] == [False, False, False, False, True]
    assert rule.first_round(rounds) == 4
    change = parse_stop_rule("uncertainty:0.01:1")
    assert change.holds([{"stop_uncertainty_change": -0.005}]) and not change.holds([{"stop_uncertainty_change": 0.02}])
    assert not change.holds([{"stop_uncertainty_change": None}])  # round 0 has no change
    three = parse_stop_rule("kappa:0.9:3")
    assert not three.holds(rounds[3:])  # fewer rounds than the patience
    kappas = [None, 0.95, 0.92, 0.91, 0.5, 0.99, 0.99, 0.99]
    assert three.first_round([{"round": t, "stop_kappa": k} for t, k in enumerate(kappas)]) == 3
    for bad in ("kappa", "kappa:x:2", "kappa:0.9:0", "entropy:0.1:2", "kappa:0.9:2:1"):
        with pytest.raises(StarloraError, match="--stop-when"):
            parse_stop_rule(bad)
    with pytest.raises(StarloraError, match="give --stop-set-size"):
        resolve("paper", stop_when="kappa:0.99:2")


def test_a_run_records_the_criteria_stops_early_and_stays_stopped(tmp_path):
    base = separated_run(tmp_path, 48, 8, init_size=4, query_size=4, rounds=5, stop_set_size=10)
    out = tmp_path / "run"
    run(resolve("paper", **base, stop_when="kappa:0:1"), out)  # kappa >= 0 from round 1 on: stops after round 1
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1] and rounds[-1]["stopped"] and rounds[-1]["selected"] == []
    assert rounds[0]["stop_kappa"] is None and rounds[1]["stop_kappa"] is not None
    stop = json.loads((out / "stop" / "round_1.json").read_text())
    assert len(stop["predictions"]) == 10 and stop["mean"] == pytest.approx(rounds[1]["stop_uncertainty"])
    assert json.loads((out / "summary.json").read_text())["stopped_at"] == 1
    assert (out / "adapter" / "adapter_model.safetensors").exists()  # the stopping round's adapter is the result
    run(resolve("paper", **base, stop_when="kappa:0:1"), out)  # re-running a stopped run: nothing more
    assert len(read_jsonl(out / "rounds.jsonl")) == 2
    (out / "summary.json").unlink()  # a crash after the stopping round landed, before its summary
    run(resolve("paper", **base, stop_when="kappa:0:1"), out)
    assert read_jsonl(out / "rounds.jsonl") == rounds  # no round trained after the stop; the summary is written
    assert json.loads((out / "summary.json").read_text())["stopped_at"] == 1
    # a rule that first holds in the last planned round ends nothing early
    last = tmp_path / "last"
    run(resolve("paper", **{**base, "rounds": 2}, stop_when="kappa:0:1"), last)
    assert "stopped" not in read_jsonl(last / "rounds.jsonl")[-1]
    assert "stopped_at" not in json.loads((last / "summary.json").read_text())
    # without a rule the same stop set is recorded every round, apart from the probe, never a candidate or labeled
    full = tmp_path / "full"
    run(resolve("paper", **base), full)
    rounds = read_jsonl(full / "rounds.jsonl")
    assert len(rounds) == 5 and all("stop_kappa" in r for r in rounds)
    stop_ids = {i for t in range(5) for i in json.loads((full / "stop" / f"round_{t}.json").read_text())["ids"]}
    assert len(stop_ids) == 10
    for t in range(1, 5):  # each round's kappa is that of its stop-set predictions against the previous round's
        before, now = (json.loads((full / "stop" / f"round_{u}.json").read_text()) for u in (t - 1, t))
        assert before["ids"] == now["ids"]
        assert rounds[t]["stop_kappa"] == pytest.approx(cohen_kappa(before["predictions"], now["predictions"]))
    labeled = {i for r in rounds for i in r["added"]}
    scored = {r["id"] for t in range(4) for r in read_jsonl(full / "scores" / f"round_{t}.jsonl")}
    probe = set(json.loads((full / "probe" / "base.json").read_text()))
    assert scored and not stop_ids & (labeled | scored | probe)


def test_report_says_where_each_rule_would_have_stopped(tmp_path):
    from starlora.reporting import report

    paths = separated_inputs(tmp_path, 48, 8)
    for strategy in ("random", "me"):
        run(
            resolve(
                "paper",
                model=paths["model"],
                task="boolq",
                train_file=paths["train_file"],
                test_file=paths["test_file"],
                strategy=strategy,
                init_size=4,
                query_size=4,
                rounds=4,
                epochs=1,
                batch_size=4,
                seed=0,
                probe_size=0,
                lora_r=4,
                score_batch_size=16,
                precision="fp32",
                stop_set_size=8,
                fewshot=0,
            ),
            tmp_path / strategy,
        )
    # known criteria and accuracies, written into the records: me's kappa:0.95:2 first holds after round 2 (rounds 1
    # and 2 >= 0.95), leaving 75 - 70 = 5 points; random's would hold only after round 3, the last planned round,
    # which ends the run anyway; no uncertainty change is <= 0.01 twice in a row
    for strategy, kappas in (("me", [None, 0.96, 0.97, 0.2]), ("random", [None, 0.5, 0.99, 0.99])):
        rounds = read_jsonl(tmp_path / strategy / "rounds.jsonl")
        for r, kappa, accuracy, change in zip(rounds, kappas, [50.0, 60.0, 70.0, 75.0], [None, 0.3, -0.2, 0.005]):
            r.update(stop_kappa=kappa, accuracy=accuracy, stop_uncertainty_change=change)
        (tmp_path / strategy / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
        summary = json.loads((tmp_path / strategy / "summary.json").read_text())
        (tmp_path / strategy / "summary.json").write_text(json.dumps({**summary, "final_accuracy": 75.0}))
    report([tmp_path / "random", tmp_path / "me"], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Stopping criteria" in text
    assert "| boolq | me | `kappa:0.95:2` | 1/1 | 2.0 | +5.0 |" in text
    assert "| boolq | random | `kappa:0.95:2` | 0/1 | — | — |" in text
    assert "| boolq | me | `uncertainty:0.01:2` | 0/1 | — | — |" in text


def test_human_loop_status_says_when_you_can_stop(tmp_path):
    from starlora import project as P

    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": f"Is {i} big?", "passage": "p"}) + "\n" for i in range(14))
    )
    cfg = resolve(
        "paper",
        P.MethodConfig,
        model="tiny-random",
        task="boolq",
        strategy="random",
        epochs=1,
        batch_size=2,
        lora_r=2,
        stop_set_size=4,
        stop_when="kappa:0:1",
    )
    with pytest.raises(StarloraError, match="--stop-set-size 14 leaves nothing to label"):
        P.init(
            tmp_path / "whole",
            resolve("paper", P.MethodConfig, model="tiny-random", task="boolq", stop_set_size=14),
            pool,
        )
    assert not (tmp_path / "whole").exists()
    proj = P.init(tmp_path / "proj", cfg, pool).folder
    stop = set(P.stop_set(P.open_project(proj)))
    assert len(stop) == 4
    for t in range(2):
        rows = read_jsonl(P.query(proj, 5, "jsonl"))
        assert not stop & {r["id"] for r in rows}  # the stop set is never asked
        (tmp_path / "l.jsonl").write_text("".join(json.dumps({"id": r["id"], "answer": "yes"}) + "\n" for r in rows))
        P.label(proj, tmp_path / "l.jsonl")
        P.train(proj)
        text = P.status(proj)
        assert ("you can stop: kappa:0:1 holds" in text) == (t == 1)  # round 0 has no previous round to agree with
    assert "stopping (4-example stop set): kappa with the previous round" in text
    assert json.loads((proj / "adapters" / "round_1" / "train.json").read_text())["stop_kappa"] is not None
