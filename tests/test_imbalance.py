"""Class imbalance as a protocol option: --pool-class-ratio draws the pool, --metric picks what the curve measures."""

import dataclasses
import json

import numpy as np
import pytest

from starlora import metrics
from starlora.data import Example, imbalanced_pool, load_data
from starlora.errors import StarloraError
from starlora.experiment import folder_resumes, resolve, run
from starlora.files import read_jsonl
from starlora.reporting import load_runs, table, write_tables
from starlora.tasks import get_task


def test_macro_f1_and_balanced_accuracy_by_hand():
    gold, predicted = list("aabbbc"), list("abbbcc")
    # a: P 1/1, R 1/2 -> F1 2/3; b: P 2/3, R 2/3 -> 2/3; c: P 1/2, R 1/1 -> 2/3; d, never gold nor predicted, is
    # left out (it would score 0 and cap the average at 3/4)
    assert metrics.macro_f1(gold, predicted, "abc") == pytest.approx(100 * 2 / 3)
    assert metrics.macro_f1(gold, predicted, "abcd") == pytest.approx(100 * 2 / 3)
    # predicted but never gold: it counts, with F1 0 (precision 0)
    assert metrics.macro_f1(list("aab"), list("adb"), "abcd") == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    # recall per gold class: a 1/2, b 2/3, c 1/1; d is never gold, so it is not averaged
    assert metrics.balanced_accuracy(gold, predicted, "abcd") == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    # an imbalanced test set where accuracy flatters a model that always answers the majority class
    gold, always = ["neg"] * 9 + ["pos"], ["neg"] * 10
    assert metrics.accuracy([g == p for g, p in zip(gold, always)]) == 90.0
    assert metrics.balanced_accuracy(gold, always, ["neg", "pos"]) == 50.0
    assert metrics.macro_f1(gold, always, ["neg", "pos"]) == pytest.approx(100 * (2 * 0.9 / 1.9) / 2)
    assert metrics.class_counts(["neg", "neg", "pos"], ["pos", "neg", "maybe"]) == {"pos": 1, "neg": 2, "maybe": 0}


def pool_of(negatives, positives):
    labels = ["negative"] * negatives + ["positive"] * positives
    order = np.random.default_rng(123).permutation(len(labels))
    return [Example(f"e{i}", f"p{i}", labels[j], labels[j]) for i, j in enumerate(order)]


def test_the_imbalanced_pool_has_the_ratio_and_is_drawn_per_seed():
    pool = pool_of(90, 40)
    drawn = imbalanced_pool(pool, "positive", 0.1, seed=0)
    assert metrics.class_counts([ex.gold for ex in drawn], ["negative", "positive"]) == {"negative": 90, "positive": 10}
    assert [ex.id for ex in drawn] == [ex.id for ex in pool if ex in drawn]  # the pool's order is kept
    again, other = imbalanced_pool(pool, "positive", 0.1, seed=0), imbalanced_pool(pool, "positive", 0.1, seed=1)
    assert again == drawn
    assert {ex.id for ex in other} != {ex.id for ex in drawn}
    # the named class made the majority: all 40 positives stay and 10 negatives are drawn
    major = imbalanced_pool(pool, "positive", 0.8, seed=0)
    assert metrics.class_counts([ex.gold for ex in major], ["negative", "positive"]) == {"negative": 10, "positive": 40}
    # as large as the exact ratio allows: 100 is the largest pool with 10% positives from 90 negatives and 40 positives
    sizes = [a + b for a in range(41) for b in range(91) if a + b and a * 10 == a + b]
    assert len(drawn) == max(sizes)
    with pytest.raises(StarloraError, match="--pool-class-ratio positive=0.01: .* leaves no example"):
        imbalanced_pool(pool_of(20, 5), "positive", 0.01, seed=0)
    with pytest.raises(StarloraError, match="holds 0 'positive'"):
        imbalanced_pool(pool_of(20, 0), "positive", 0.5, seed=0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(task="gsm8k", metric="macro_f1"), "--metric macro_f1 needs a closed task"),
        (dict(task="open", metric="balanced_accuracy"), "--metric balanced_accuracy needs a closed task"),
        (dict(task="gsm8k", pool_class_ratio="positive=0.1"), "--pool-class-ratio positive=0.1 needs a closed task"),
        (
            dict(task="sst2", pool_class_ratio="neutral=0.1"),
            "'neutral' is not a class of task sst2: choose negative or",
        ),
        (dict(task="sst2", pool_class_ratio="positive=0"), r"must be in \(0, 1\)"),
        (dict(task="sst2", pool_class_ratio="positive=1"), r"must be in \(0, 1\)"),
        (dict(task="sst2", pool_class_ratio="positive"), "--pool-class-ratio must be CLASS=RATIO"),
        (dict(task="sst2", metric="f1"), "unknown --metric 'f1'"),
    ],
)
def test_bad_imbalance_options_are_refused_naming_the_option(bad, message):
    with pytest.raises(StarloraError, match=message) as e:
        resolve("quick", model="tiny-random", **bad)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imbalance")

    def rows(labels, offset):
        return "".join(
            json.dumps(
                {
                    "question": f"Question: is item {i + offset} {'red' if y else 'blue'}?\nAnswer:",
                    "answer": str(y).lower(),
                }
            )
            + "\n"
            for i, y in enumerate(labels)
        )

    labels = [True] * 20 + [False] * 32  # 8 of the 20 true answers are kept: 8 / (8 + 32) = 20%
    np.random.default_rng(0).shuffle(labels)
    (d / "train.jsonl").write_text(rows(labels, 0))
    (d / "test.jsonl").write_text(rows([True, False] * 6, 1000))
    return d / "train.jsonl", d / "test.jsonl"


def test_an_imbalanced_macro_f1_run_records_classes_and_its_metric(files, tmp_path):
    train, test = files
    cfg = resolve(
        "paper",
        model="tiny-random",
        task="boolq",
        train_file=str(train),
        test_file=str(test),
        strategy="me",
        init_size=4,
        query_size=4,
        rounds=3,
        epochs=1,
        lora_r=4,
        probe_size=4,
        fewshot=0,
        score_batch_size=16,
        metric="macro_f1",
        pool_class_ratio="true=0.2",
    )
    summary = run(cfg, tmp_path / "run")
    rounds = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    task = get_task("boolq", user_files=True)
    pool = {ex.id: ex.gold for ex in imbalanced_pool(load_data(task, "embedded", train, test).pool, "true", 0.2, 0)}
    assert summary["pool_classes"] == {"true": 8, "false": 32}
    labeled = []
    for r in rounds:
        labeled += r["added"]
        assert set(labeled) <= set(pool)  # the initial set and every query come from the imbalanced pool
        assert r["labeled_classes"] == metrics.class_counts([pool[i] for i in labeled], ["true", "false"])
        assert sum(r["labeled_classes"].values()) == r["n_labeled"]
        assert {"accuracy", "macro_f1", "balanced_accuracy"} <= set(r)
    curve = [r["macro_f1"] for r in rounds]
    assert summary["metric"] == "macro_f1" and summary["curve"] == curve
    assert summary["auc"] == pytest.approx(np.trapezoid(curve) / (len(curve) - 1))
    assert summary["final_accuracy"] == rounds[-1]["accuracy"]  # accuracy keeps its meaning
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (stored["metric"], stored["pool_class_ratio"]) == ("macro_f1", "true=0.2")
    # a resume cannot switch the metric or the pool
    for change in (dict(metric="accuracy"), dict(pool_class_ratio="true=0.3")):
        with pytest.raises(StarloraError, match="another configuration"):
            folder_resumes(tmp_path / "run", dataclasses.replace(cfg, **change))
    # a run from before the options: its config.json lacks them and means accuracy on the whole pool
    old = {k: v for k, v in stored.items() if k not in ("metric", "pool_class_ratio")}
    (tmp_path / "run" / "config.json").write_text(json.dumps({"config": old}))
    assert folder_resumes(tmp_path / "run", dataclasses.replace(cfg, metric="accuracy", pool_class_ratio=None))
    (tmp_path / "run" / "config.json").write_text(json.dumps({"config": stored}))
    # the report names the metric its AUC is the area of
    rows = table(load_runs([tmp_path / "run"]))
    assert rows[0]["metric"] == "macro_f1" and rows[0]["auc"]["mean"] == pytest.approx(summary["auc"])
    (tmp_path / "report").mkdir()
    write_tables(rows, tmp_path / "report")
    assert "| AUC (macro_f1) |" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "report.csv").read_text().splitlines()[1].endswith(",macro_f1")
