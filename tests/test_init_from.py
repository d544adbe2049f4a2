"""`init --labeled` and `init --adapter` on the tiny model: the labels given become round 0's, its adapter chooses
the first query with lambda(0); an existing adapter chooses it directly; every bad row or adapter is refused whole."""

import json

import pytest
import torch
from helpers import lora_model
from transformers import LlamaForCausalLM

from starlora import project as P
from starlora.cli import main
from starlora.models import tiny_config
from starlora.training import TrainSettings, attach_lora
from starlora.uncertainty import mixing_weight

GOLD = {f"q{i}": ("true" if i % 3 else "false") for i in range(20)}


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": f"Is item {i[1:]} blue?\nAnswer:"}) + "\n" for i in GOLD))
    return path


def init(tmp_path, pool, *extra):
    return main(
        [
            "init",
            str(tmp_path / "proj"),
            "--task",
            "boolq",
            "--pool",
            str(pool),
            "--model",
            "tiny-random",
            "--rounds",
            "3",
            "--epochs",
            "1",
            "--lora-r",
            "4",
            "--score-batch-size",
            "8",
            *map(str, extra),
        ]
    )


def labeled(tmp_path, records, name="labeled.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_labels_given_at_init_train_round_0_and_its_adapter_chooses_the_first_query(tmp_path, pool, capsys):
    given = labeled(
        tmp_path, [{"id": "q1", "answer": "yes"}, {"id": "q2", "answer": "true"}, {"id": "q3", "answer": "False"}]
    )
    assert init(tmp_path, pool, "--labeled", given, "--stop-set-size", "2") == 0
    project = P.open_project(tmp_path / "proj")
    assert [(r["id"], r["answer"], r["round"]) for r in project.labels()] == [
        ("q1", "yes", 0),
        ("q2", "true", 0),
        ("q3", "False", 0),
    ]
    assert project.queries()[0]["ids"] == ["q1", "q2", "q3"] and project.queries()[0]["initial"]
    assert not {"q1", "q2", "q3"} & set(P.stop_set(project))  # never drawn for the stop set
    assert "next: starlora train" in P.status(project.folder)
    with pytest.raises(Exception, match="not trained on yet"):
        P.query(project.folder, 4)
    P.train(project.folder)
    assert project.trained(project.adapters()[0])["n_labels"] == 3
    P.query(project.folder, 4)
    record = project.queries()[1]
    lam = mixing_weight(0, 3, "linear")  # round 0's adapter, lambda(0), as starlora run after its initial set
    assert record["round"] == 1 and f"round 0's adapter, lambda {lam:.3f}" in record["how"]
    assert not set(record["ids"]) & {"q1", "q2", "q3"}


def test_bad_labeled_rows_are_all_listed_and_no_project_is_made(tmp_path, pool, capsys):
    bad = labeled(
        tmp_path,
        [
            {"id": "q1", "answer": "true"},
            {"id": "zz", "answer": "true"},
            {"id": "q2", "answer": "perhaps"},
            {"id": "q1", "answer": "true"},
            {"id": "q4", "answer": ""},
        ],
    )
    assert init(tmp_path, pool, "--labeled", bad) == 2
    err = capsys.readouterr().err
    assert f"--labeled {bad}: 4 bad row(s), no project created" in err
    assert f"{bad}:2: unknown id 'zz' (not in the pool)" in err
    assert f"{bad}:3: answer 'perhaps' is not one of ['true', 'false']" in err
    assert f"{bad}:4: duplicate id 'q1'" in err and f"{bad}:5: empty answer for id 'q4'" in err
    assert not (tmp_path / "proj").exists()
    too_many = labeled(tmp_path, [{"id": i, "answer": a} for i, a in GOLD.items()][:19], "many.jsonl")
    assert init(tmp_path, pool, "--labeled", too_many, "--stop-set-size", "1") == 2
    assert "leaves nothing to label" in capsys.readouterr().err and not (tmp_path / "proj").exists()


def test_an_existing_adapter_chooses_the_first_query(tmp_path, pool):
    model, _ = lora_model()
    model.save_pretrained(tmp_path / "mine")
    assert init(tmp_path, pool, "--adapter", tmp_path / "mine") == 0
    project = P.open_project(tmp_path / "proj")
    assert [a.name for a in project.adapters()] == ["round_0"] and project.labels() == []
    assert project.trained(project.adapters()[0]) == {"round": 0, "n_labels": 0, "imported": str(tmp_path / "mine")}
    assert "next: starlora query" in P.status(project.folder)
    P.query(project.folder, 4)
    assert "round 0's adapter" in project.queries()[1]["how"]
    # its labels are round 1's; training makes round 1's adapter, a fresh one as every round
    answers = labeled(tmp_path, [{"id": i, "answer": GOLD[i]} for i in project.queries()[1]["ids"]], "a.jsonl")
    assert P.label(project.folder, answers) == 4
    P.train(project.folder)
    assert project.trained(project.adapters()[1])["n_labels"] == 4


def test_an_adapter_that_does_not_fit_is_refused(tmp_path, pool, capsys):
    config = tiny_config()
    config.hidden_size, config.intermediate_size = 64, 96  # another model's shapes
    with torch.random.fork_rng():
        other = attach_lora(LlamaForCausalLM(config), TrainSettings(lora_r=4, seed=0))
    other.save_pretrained(tmp_path / "other")
    assert init(tmp_path, pool, "--adapter", tmp_path / "other") == 2
    assert f"--adapter {tmp_path / 'other'}: does not load onto tiny-random" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert init(tmp_path, pool, "--adapter", tmp_path / "empty") == 2
    assert "not a PEFT adapter folder (no adapter_config.json)" in capsys.readouterr().err
    assert not (tmp_path / "proj").exists()
