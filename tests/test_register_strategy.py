"""A strategy of the user's own: the worked example of docs/architecture.md ("margin with a diversity filter"), taken
from the page as it stands, registered through STARLORA_PLUGINS and run end to end by `starlora run` on the tiny
model; then register_strategy's refusals."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import separated_inputs

from starlora import strategies
from starlora.cli import main
from starlora.errors import StarloraError
from starlora.files import read_jsonl

DOC = Path(__file__).parents[1] / "docs" / "architecture.md"


def example_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Adding a strategy") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def registry(monkeypatch):
    """A registry of this test's own: what it registers is gone afterwards."""
    monkeypatch.setattr(strategies, "STRATEGIES", dict(strategies.STRATEGIES))
    monkeypatch.setattr(strategies, "_imported", set())


def test_the_documented_strategy_runs_end_to_end(tmp_path, monkeypatch, capsys, registry):
    plugin = tmp_path / "margin_diverse.py"
    plugin.write_text(example_code())
    monkeypatch.setenv("STARLORA_PLUGINS", str(plugin))
    paths = separated_inputs(tmp_path, 40, 8)
    out = tmp_path / "run"
    main(
        [
            "run",
            "--task",
            "boolq",
            "--model",
            paths["model"],
            "--train-file",
            paths["train_file"],
            "--test-file",
            paths["test_file"],
            "--strategy",
            "margin-diverse",
            "--init-size",
            "6",
            "--query-size",
            "5",
            "--rounds",
            "3",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--lora-r",
            "4",
            "--probe-size",
            "4",
            "--fewshot",
            "0",
            "--precision",
            "fp32",
            "--out",
            str(out),
        ]
    )
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [len(r["selected"]) for r in rounds] == [5, 5, 0]
    labeled = [i for r in rounds for i in r["added"]]
    assert len(labeled) == len(set(labeled)) == 16
    assert json.loads((out / "summary.json").read_text())["strategy"] == "margin-diverse"
    assert read_jsonl(out / "embeddings.jsonl")  # the pick read the pool embeddings
    scores = {s["id"]: s["mu"] for s in read_jsonl(out / "scores" / "round_0.jsonl")}
    assert max(scores.values()) == pytest.approx(scores[rounds[0]["selected"][0]])  # the most uncertain goes first
    assert np.isnan(read_jsonl(out / "scores" / "round_0.jsonl")[0]["mu_b"] or np.nan)  # margin alone: no base model


def test_the_filter_skips_near_duplicates(registry):
    namespace = {}
    exec(compile(example_code(), "margin_diverse.py", "exec"), namespace)
    pick = namespace["DiversityFilter"]()

    class Embedded:
        def candidates(self):
            return np.array([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.7, 0.7]])

    # by score 0, 1, 2, 3; 1 is 0's near-duplicate, so it comes last
    assert pick.choose({"mu": np.array([4.0, 3.0, 2.0, 1.0])}, 3, 0, Embedded()) == [0, 2, 3]
    assert pick.choose({"mu": np.array([4.0, 3.0, 2.0, 1.0])}, 4, 0, Embedded()) == [0, 2, 3, 1]


def test_register_strategy_refuses_a_taken_name_and_non_strategies(registry):
    me = strategies.get_strategy("me")
    with pytest.raises(StarloraError, match="registered already"):
        strategies.register_strategy(strategies.Strategy("me", strategies.MEASURES["pe"]))
    assert strategies.register_strategy(me) is me  # the same strategy again: nothing changes
    mine = strategies.register_strategy(strategies.Strategy("me", strategies.MEASURES["pe"]), replace_existing=True)
    assert strategies.get_strategy("me") is mine
    with pytest.raises(StarloraError, match="takes a starlora Strategy"):
        strategies.register_strategy("me")
    with pytest.raises(StarloraError, match="name must be"):
        strategies.register_strategy(strategies.Strategy("a/b", None))


def test_a_plugin_that_cannot_be_imported_is_one_line(monkeypatch, registry):
    monkeypatch.setenv("STARLORA_PLUGINS", "no_such_module_here")
    with pytest.raises(StarloraError, match="STARLORA_PLUGINS: cannot import 'no_such_module_here'"):
        strategies.get_strategy("margin-diverse")
