"""Restructuring changes no result: a fixed tiny-model run equals the one recorded before the refactor
(tests/data/identity_run.json, made by tests/identity_run.py). Ids, selections and accuracies exactly (the data keep
uncertainties well apart, see identity_run.py); losses, calibration and curves to 1e-5 relative (float rounding of
another machine of the same kind)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import identity_run  # noqa: E402  (tests/ is on the path for helpers too)

# keys a record gained after the recording (new information, no changed value)
ADDED_SINCE = {"train_steps", "macro_f1", "balanced_accuracy", "labeled_classes", "metric", "revision", "machine"}


def close(a, b, where):
    if isinstance(a, dict):
        a = {k: v for k, v in a.items() if k not in ADDED_SINCE or k in b}
        assert a.keys() == b.keys(), where
        for k in a:
            close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-9), where
    else:
        assert a == b, where


def test_a_fixed_run_equals_the_one_recorded_before_the_refactor(tmp_path):
    identity_run.main(tmp_path)
    golden = json.loads((Path(__file__).parent / "data" / "identity_run.json").read_text())
    run = identity_run.recorded(tmp_path / "run")
    rounds, summary = run["rounds"], run["summary"]
    for r, g in zip(rounds, golden["rounds"]):
        assert (r["added"], r["selected"], r["accuracy"]) == (g["added"], g["selected"], g["accuracy"])
    close(rounds, golden["rounds"], "rounds")
    close(summary, golden["summary"], "summary")
