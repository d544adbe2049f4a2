"""results/study_ii.py, the study II write-up's own numbers (B's lr choice and interaction, D's oracle family, C's rare
class), on hand-made run folders with hand-computed answers."""

import importlib.util
import json
from pathlib import Path

import pytest
from test_report import fake_run

spec = importlib.util.spec_from_file_location(
    "study_ii", Path(__file__).resolve().parent.parent / "results" / "study_ii.py"
)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def runs(top, rows, **settings):
    """rows: (folder name, strategy, seed, flat AUC, extra settings); a flat curve has AUC equal to its value."""
    for name, strategy, seed, auc, extra in rows:
        fake_run(top / name / f"seed{seed}", strategy, seed, [auc, auc], **{**settings, **extra})
    return study.runs_under(top)


def test_b_chooses_the_lr_with_the_highest_mean_auc_once_every_lr_has_its_seeds(tmp_path):
    aucs = {1e-5: [60, 62, 64], 3e-5: [70, 71, 72], 1e-4: [50, 50, 53]}
    rows = [
        (f"random-{lr}", "random", s, a, {"lr": lr, "mode": "full"}) for lr, v in aucs.items() for s, a in enumerate(v)
    ]
    table, chosen = study.lr_choice(runs(tmp_path / "all", rows))
    assert chosen == 3e-5
    assert [(r["lr"], r["n"], r["mean"]) for r in table] == [(1e-5, 3, 62.0), (3e-5, 3, 71.0), (1e-4, 3, 51.0)]
    assert study.lr_choice(runs(tmp_path / "part", rows[:-1]))[1] is None  # lr 1e-4 lacks seed 2
    first = [r for r in rows if r[2] == 0]  # every lr at seed 0 only: not yet a choice
    assert study.lr_choice(runs(tmp_path / "first", first))[1] is None


def test_b_writes_its_ten_seed_grid_once_the_choice_is_complete_and_keeps_it(tmp_path):
    from starlora import sweep as S

    aucs = {1e-5: [60, 62, 64], 3e-5: [70, 71, 72], 1e-4: [50, 50, 53]}
    rows = [
        (f"random-{lr}", "random", s, a, {"lr": lr, "mode": "full"}) for lr, v in aucs.items() for s, a in enumerate(v)
    ]
    runs(tmp_path / "ii-full-lr", rows[:-1])
    assert study.write_full_grid(tmp_path) is None and not (tmp_path / "ii-full").exists()
    runs(tmp_path / "ii-full-lr", rows[-1:])
    grid = study.write_full_grid(tmp_path)
    text = grid.read_text()
    assert "lr 3e-05, chosen on random runs only" in text and "#   lr 3e-05: AUC 71.00 ± 1.00 over 3 seeds" in text
    jobs = S.plan(S.read_grid(grid), tmp_path / "ii-full")
    assert [(j.cfg.strategy, j.cfg.seed, j.cfg.lr, j.cfg.mode, j.cfg.precision) for j in jobs[:2]] == [
        ("random", 0, 3e-5, "full", "bf16"),
        ("me", 0, 3e-5, "full", "bf16"),
    ]
    assert len(jobs) == 20 and {j.cfg.seed for j in jobs} == set(range(10))
    assert {j.folder.relative_to(tmp_path / "ii-full").parts[:2] for j in jobs} == {("sst2", "random"), ("sst2", "me")}
    grid.write_text(text + "# edited\n")
    assert study.write_full_grid(tmp_path) is None and grid.read_text().endswith("# edited\n")  # made once


def test_b_interaction_pairs_the_two_deltas_by_seed(tmp_path):
    full = runs(
        tmp_path / "full",
        [("random", "random", s, 60, {"mode": "full"}) for s in range(3)]
        + [("me", "me", s, a, {"mode": "full"}) for s, a in enumerate([65, 63, 64])],
    )
    lora = runs(
        tmp_path / "lora",
        [("random", "random", s, 70, {"mode": "lora"}) for s in range(3)]
        + [("me", "me", s, a, {"mode": "lora"}) for s, a in enumerate([71, 70, 69])],
    )
    b = study.interaction(full, lora)
    assert b["full"]["deltas"] == pytest.approx([5, 3, 4]) and b["lora"]["deltas"] == pytest.approx([1, 0, -1])
    inter = b["interaction"]  # [4, 3, 5]: mean 4, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321
    assert inter["deltas"] == pytest.approx([4, 3, 5]) and inter["mean"] == pytest.approx(4.0)
    assert (inter["low"], inter["high"]) == pytest.approx((4 - 2.4841, 4 + 2.4841), abs=1e-4)
    assert inter["wins"] == 3 and inter["p_sign"] == pytest.approx(0.25)
    assert inter["p_t"] == pytest.approx(0.0202, abs=1e-4)  # t = 4 / (1 / sqrt 3) = 6.93 with 2 degrees of freedom
    gain = b["random_full_vs_lora"]  # what full fine-tuning itself buys random: 60 − 70 at every seed
    assert gain["deltas"] == pytest.approx([-10, -10, -10]) and gain["wins"] == 0
    # sd 1 over 3 pairs: noncentral-t power (test_report_power) gives MDE 3.26; an effect of one sd takes 10 seeds
    # (the normal approximation (1.96 + 0.84)² = 7.8, plus t's heavier tails)
    assert study._spread(inter) == "1.00, detects 3.26, Δ 1 needs 10 seeds"
    huge = study.paired({s: 1000.0 * s for s in range(3)}, {s: 0.0 for s in range(3)})  # sd 1000
    assert study._spread(huge).endswith("Δ 1 needs over 10000 seeds")


def test_b_is_tested_only_at_ten_seeds_and_a_row_without_pairs_says_so(tmp_path):
    runs(tmp_path / "ii-full", [("random", "random", s, 60, {"mode": "full"}) for s in range(10)])
    runs(tmp_path / "ii-full", [("me", "me", s, 61, {"mode": "full"}) for s in range(9)])
    lora = [(name, name, s, a, {"mode": "lora"}) for s in range(10) for name, a in [("random", 70), ("me", 71)]]
    runs(tmp_path / "ii-sst2", lora)
    assert "9 of 10 seeds paired so far; B is tested at ten, as registered." in study.markdown(tmp_path)
    runs(tmp_path / "ii-full", [("me", "me", 9, 61, {"mode": "full"})])
    assert "| interaction: full − LoRA | 10 | +0.00 [+0.00, +0.00] | 1.000 |" in study.markdown(tmp_path)
    no_pairs = study._test_row("ΔAUC me − random, full", study.paired({0: 61.0}, {}))
    assert no_pairs == "| ΔAUC me − random, full | 0 | no pair yet | — | — | — |"


def test_d_tests_the_oracle_against_random_and_star_me_as_one_holm_family(tmp_path):
    rows = [("random", "random", s, 70, {}) for s in range(3)]
    rows += [("star-me", "star-me", s, a, {}) for s, a in enumerate([71, 72, 70])]
    rows += [("oracle", "star-me", s, a, {"target": "reference"}) for s, a in enumerate([75, 74, 76])]
    d = study.oracle(runs(tmp_path, rows))
    assert d["vs random"]["deltas"] == pytest.approx([5, 4, 6]) and d["vs star-me"]["deltas"] == pytest.approx(
        [4, 2, 6]
    )
    p = sorted([d["vs random"]["p_t"], d["vs star-me"]["p_t"]])
    assert sorted([d["vs random"]["p_holm"], d["vs star-me"]["p_holm"]]) == pytest.approx(
        [2 * p[0], max(2 * p[0], p[1])]
    )
    md = study.markdown(tmp_path / "none")
    assert "No oracle run yet." in md and "No run yet." in md


def test_c_counts_seeds_starting_without_the_rare_class_and_rare_labels_per_round(tmp_path):
    rare = {0: [0, 1, 1], 1: [2, 2, 3]}
    balanced = {0: [50.0, 51.0, 62.5], 1: [50.0, 51.2, 49.0]}  # at or near chance: at most 51
    for seed, counts in rare.items():
        folder = fake_run(tmp_path / "random" / f"seed{seed}", "random", seed, [50.0, 55.0, 60.0])
        rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
        for r, n, b in zip(rounds, counts, balanced[seed]):
            r["labeled_classes"] = {"negative": r["n_labeled"] - n, "positive": n}
            r["balanced_accuracy"] = b
        (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (row,) = study.rare_class(study.runs_under(tmp_path))
    assert row == {
        "strategy": "random",
        "seeds": 2,
        "none_at_start": 1,
        "rare_per_round": [1.0, 1.5, 2.0],
        "at_chance_per_round": [2, 1, 1],
    }


def test_d_prime_pairs_the_star_pe_oracle_with_a_random_runs_and_counts_seeds_with_the_same_picks(tmp_path):
    """Amendment 1: D′ (results/ii-leak, star-pe with and without --target reference) pairs with A's random runs
    (results/ii-sst2) by seed; D's section counts the seeds whose oracle labeled exactly what star-me labeled."""
    runs(tmp_path / "ii-sst2", [("random", "random", s, 70, {}) for s in range(3)])
    runs(tmp_path / "ii-sst2", [("star-me", "star-me", s, 72, {}) for s in range(3)])
    runs(tmp_path / "ii-sst2", [("oracle", "star-me", s, 72, {"target": "reference"}) for s in range(3)])
    runs(tmp_path / "ii-leak", [("star-pe", "star-pe", s, a, {}) for s, a in enumerate([71, 70, 69])])
    runs(
        tmp_path / "ii-leak", [("oracle", "star-pe", s, a, {"target": "reference"}) for s, a in enumerate([74, 76, 75])]
    )
    # every run labels "a" then "b", except star-me's oracle at seed 2 ("a" then "c"); its query of four adds two of
    # each class, except star-pe's oracle, which asks for four negatives (four positives at seed 2). Every round-0
    # model recalls 90% of the embedded SST-2 test set's 140 negatives and 50% of its 132 positives: accuracy
    # (126 + 66) / 272, balanced accuracy 70.
    for s in range(3):
        for top, name in [
            ("ii-sst2", "random"),
            ("ii-sst2", "star-me"),
            ("ii-sst2", "oracle"),
            ("ii-leak", "star-pe"),
            ("ii-leak", "oracle"),
        ]:
            path = tmp_path / top / name / f"seed{s}" / "rounds.jsonl"
            rounds = [json.loads(line) for line in path.read_text().splitlines()]
            after = {"negative": 4, "positive": 4}
            if (top, name) == ("ii-leak", "oracle"):
                after = {"negative": 2, "positive": 6} if s == 2 else {"negative": 6, "positive": 2}
            for r, pick, classes in zip(
                rounds,
                ["a", "c" if (top, name, s) == ("ii-sst2", "oracle", 2) else "b"],
                [{"negative": 2, "positive": 2}, after],
            ):
                r["selected"], r["labeled_classes"] = [pick], classes
            rounds[0]["accuracy"], rounds[0]["balanced_accuracy"] = 192 / 272 * 100, 70.0
            path.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    lora, leak = study.runs_under(tmp_path / "ii-sst2"), study.runs_under(tmp_path / "ii-leak")
    assert study.same_picks(lora) == (2, 3) and study.same_picks(study.lora_random(lora) + leak, "star-pe") == (3, 3)
    registered = study.oracle(lora)  # the oracle's AUCs equal star-me's: p 1, kept in the family of two
    assert registered["vs star-me"]["p_t"] == 1.0 and registered["vs star-me"]["p_holm"] == 1.0
    d = study.oracle(study.lora_random(lora) + leak, "star-pe")
    assert d["vs random"]["deltas"] == pytest.approx([4, 6, 5]) and d["vs star-pe"]["deltas"] == pytest.approx(
        [3, 6, 6]
    )
    md = study.markdown(tmp_path)
    assert "labeled exactly what star-me labeled, round for round: 2 of 3." in md
    # star-pe − random: 71 − 70, 70 − 70, 69 − 70
    assert (
        "Secondary, unadjusted: star-pe − random +0.00 [-2.48, +2.48] (3 pairs; p (t) 1.000, p (sign) 1.000, wins 1/3)."
        in md
    )
    assert (
        "vs random sd 1.00, detects" in md and "vs star-pe sd 1.73, detects" in md and "star-pe − random sd 1.00" in md
    )
    assert "all of one class: random 0 of 3; star-pe 0 of 3; star-pe+oracle-reference 3 of 3." in md
    assert "ties left out): random 0 of 0; star-pe 0 of 0; star-pe+oracle-reference 1 of 3." in md
    assert "Secondary, unadjusted: star-me" not in md  # A's own comparison is not D's


def test_one_class_queries_reads_the_classes_each_query_added(tmp_path):
    """A query that adds only positives counts, even when the labeled set held none before; a mixed one does not."""
    folder = fake_run(tmp_path / "oracle" / "seed0", "star-pe", 0, [50.0, 55.0, 60.0], target="reference")
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    for r, classes in zip(rounds, [{"negative": 4}, {"negative": 4, "positive": 4}, {"negative": 7, "positive": 5}]):
        r["labeled_classes"] = classes
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    runs_ = study.runs_under(tmp_path)
    assert study.one_class_queries(runs_, "star-pe+oracle-reference") == (1, 2)
    rounds[2]["labeled_classes"] = rounds[1]["labeled_classes"]  # a query that added nothing is not a query
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    assert study.one_class_queries(study.runs_under(tmp_path), "star-pe+oracle-reference") == (1, 1)
    assert study.one_class_queries(runs_, "random") == (0, 0)


def test_class_recalls_are_solved_from_accuracy_and_balanced_accuracy():
    """Recalls 90% of 140 negatives and 50% of 132 positives: accuracy (126 + 66) / 272, balanced accuracy 70."""
    recalls = study.class_recalls(192 / 272 * 100, 70.0, {"negative": 140, "positive": 132})
    assert recalls == pytest.approx({"negative": 90.0, "positive": 50.0})
    with pytest.raises(ValueError, match="equal class counts"):
        study.class_recalls(70.0, 70.0, {"negative": 100, "positive": 100})
    # accuracy 70 and balanced accuracy 69 would need 103% of the negatives: not this test set
    with pytest.raises(ValueError, match="recall 103.0000 of negative is not a whole number of its 140"):
        study.class_recalls(70.0, 69.0, {"negative": 140, "positive": 132})


def test_a_one_class_query_counts_as_chasing_the_lean_when_it_asks_for_the_less_recalled_class(tmp_path):
    folder = fake_run(tmp_path / "oracle" / "seed0", "star-pe", 0, [50.0, 55.0, 60.0], target="reference")
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    counts = [{"negative": 2, "positive": 2}, {"negative": 2, "positive": 6}, {"negative": 6, "positive": 6}]
    # round 0's model recalls positives less (50 against 90) and round 1's negatives (50 against 90.9...); both
    # queries ask for the class the model recalls less
    recalls = [(192 / 272 * 100, 70.0), ((70 + 120) / 272 * 100, (50 + 120 / 132 * 100) / 2), (60.0, 60.0)]
    for r, classes, (accuracy, balanced) in zip(rounds, counts, recalls):
        r["labeled_classes"], r["accuracy"], r["balanced_accuracy"] = classes, accuracy, balanced
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    classes = {"negative": 140, "positive": 132}
    assert study.weaker_class_asked(study.runs_under(tmp_path), "star-pe+oracle-reference", classes) == (2, 2)
    # round 0's model recalling half of each class (70 of 140, 66 of 132) has no weaker class: its query is left out
    rounds[0]["accuracy"], rounds[0]["balanced_accuracy"] = 50.0, 50.0
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    assert study.weaker_class_asked(study.runs_under(tmp_path), "star-pe+oracle-reference", classes) == (1, 1)
