"""The human loop end to end on the tiny model (init -> query -> label -> train, three rounds) and every rejection."""

import csv
import json

import pytest
from peft import PeftModel

from starlora import project as P
from starlora.cli import main
from starlora.errors import StarloraError
from starlora.models import tiny_random

GOLD = {f"q{i}": ("true" if i % 3 else "false") for i in range(30)}


def write_project_files(folder):
    """The pool (GOLD's examples, unlabeled) and test files a project is made from; returns the folder."""
    pool = "".join(
        json.dumps({"id": i, "question": f"Is item {i[1:]} blue?\nAnswer:", "topic": "colour"}) + "\n" for i in GOLD
    )
    test = "".join(
        json.dumps({"id": f"t{i}", "question": f"Is thing {i} blue?\nAnswer:", "answer": "true"}) + "\n"
        for i in range(6)
    )
    (folder / "pool.jsonl").write_text(pool)
    (folder / "test.jsonl").write_text(test)
    return folder


@pytest.fixture
def files(tmp_path):
    return write_project_files(tmp_path)


def cli(*args):
    return main([str(a) for a in args])


def init(files, *extra):
    assert (
        cli(
            "init",
            files / "proj",
            "--task",
            "boolq",
            "--pool",
            files / "pool.jsonl",
            "--test",
            files / "test.jsonl",
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
            *extra,
        )
        == 0
    )
    return files / "proj"


def answer_jsonl(query_file, out, gold=GOLD):
    """The person: fill the answer field of every row from the gold labels."""
    rows = [json.loads(line) for line in query_file.read_text().splitlines()]
    out.write_text("".join(json.dumps({**r, "answer": gold[r["id"]]}) + "\n" for r in rows))
    return [r["id"] for r in rows]


def test_three_rounds_end_to_end(files, capsys):
    proj = init(files)
    asked = []
    for t in range(3):
        assert cli("query", proj, "-n", "4") == 0
        query_file = proj / "queries" / f"round_{t}.jsonl"
        assert capsys.readouterr().out.strip().splitlines()[-1] == str(query_file)
        rows = [json.loads(line) for line in query_file.read_text().splitlines()]
        assert all(r["answer"] == "" and r["topic"] == "colour" and "Answer:" in r["prompt"] for r in rows)
        asked += answer_jsonl(query_file, files / f"answers{t}.jsonl")
        assert cli("label", proj, files / f"answers{t}.jsonl") == 0
        assert cli("train", proj) == 0
        info = json.loads((proj / "adapters" / f"round_{t}" / "train.json").read_text())
        assert info["n_labels"] == 4 * (t + 1) and 0 <= info["accuracy"] <= 100
    assert len(asked) == len(set(asked)) == 12  # nobody is asked twice
    labels = [json.loads(line) for line in (proj / "labels.jsonl").read_text().splitlines()]
    assert [r["round"] for r in labels] == [0] * 4 + [1] * 4 + [2] * 4
    assert {r["id"]: r["answer"] for r in labels} == {i: GOLD[i] for i in asked}
    queries = [json.loads(line) for line in (proj / "queries.jsonl").read_text().splitlines()]
    assert queries[0]["how"].startswith("base-model") and "round 1's adapter" in queries[2]["how"]
    base = (proj / "base_scores.jsonl").read_text().splitlines()
    assert len(base) == 30  # every pool example scored once by the base model, reused in later rounds
    cli("status", proj)
    out = capsys.readouterr().out
    assert "labeled 12, asked 12, awaiting labels 0, held-out 6" in out and "next: starlora query" in out
    # the adapter is plain PEFT
    base_model, _ = tiny_random()
    loaded = PeftModel.from_pretrained(base_model, str(proj / "adapters" / "round_2"))
    assert any("lora_B" in n for n, _ in loaded.named_parameters())


def test_csv_and_label_studio_round_trip(files):
    proj = init(files)
    out = P.query(proj, 3, "csv")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["answer"] for r in rows] == ["", "", ""] and set(rows[0]) == {
        "id",
        "question",
        "topic",
        "prompt",
        "answer",
    }
    with open(files / "filled.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "answer": GOLD[r["id"]]} for r in rows)
    assert P.label(proj, files / "filled.csv") == 3
    P.train(proj)
    out = P.query(proj, 2, "labelstudio")
    tasks = json.loads(out.read_text())
    assert [set(t) for t in tasks] == [{"data", "predictions"}] * 2 and "prompt" in tasks[0]["data"]
    # pre-annotations: the model's guess scored by its confidence; the score that chose the task a field of its own
    record = P.open_project(proj).queries()[-1]
    for t in tasks:
        i, (guess,) = t["data"]["starlora_id"], t["predictions"]
        assert t["data"]["starlora_uncertainty"] == record["scores"][i]
        assert guess["result"] == [
            {
                "from_name": "answer",
                "to_name": "prompt",
                "type": "choices",
                "value": {"choices": [record["guesses"][i]]},
            }
        ]
        assert 0.5 <= guess["score"] <= 1 and guess["model_version"] == record["how"]
    config = (out.parent / "labelstudio_config.xml").read_text()
    assert '<Choice value="true"/>' in config and 'value="$prompt"' in config
    export = [
        {
            "id": 100 + n,
            "data": t["data"],
            "annotations": [
                {
                    "was_cancelled": False,
                    "result": [{"type": "choices", "value": {"choices": [GOLD[t["data"]["starlora_id"]]]}}],
                }
            ],
        }
        for n, t in enumerate(tasks)
    ]
    (files / "export.json").write_text(json.dumps(export))
    assert P.label(proj, files / "export.json") == 2


def test_label_studio_flat_exports_json_min_and_csv(files):
    """The shapes Label Studio 1.23's JSON-MIN and CSV exports have (scripts/labelstudio_check.py checks them against
    a real Label Studio): JSON-MIN's "id" is Label Studio's task id, so our id comes from starlora_id; answers sit
    under the control's name, which is the answer field."""
    proj = init(files)
    tasks = json.loads(P.query(proj, 4, "labelstudio").read_text())
    ids = [t["data"]["starlora_id"] for t in tasks]
    assert all("id" not in t["data"] for t in tasks)
    config = (proj / "queries" / "labelstudio_config.xml").read_text()
    assert '<Choices name="answer" toName="prompt"' in config
    json_min = [
        {"id": n + 1, **tasks[n]["data"], "answer": GOLD[i], "annotator": 1, "annotation_id": n + 1, "lead_time": None}
        for n, i in enumerate(ids[:2])
    ]
    (files / "min.json").write_text(json.dumps(json_min))
    assert P.label(proj, files / "min.json") == 2
    with open(files / "ls.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["annotation_id", "annotator", "answer", "id", "prompt", "starlora_id"])
        w.writeheader()
        w.writerows(
            {"annotation_id": n, "annotator": 1, "answer": GOLD[i], "id": 50 + n, "prompt": "p", "starlora_id": i}
            for n, i in enumerate(ids[2:])
        )
    assert P.label(proj, files / "ls.csv") == 2
    labels = {r["id"]: r["answer"] for r in map(json.loads, (proj / "labels.jsonl").read_text().splitlines())}
    assert all(labels[i] == GOLD[i] for i in ids)


def bad_label(proj, path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = (proj / "labels.jsonl").read_bytes()
    with pytest.raises(StarloraError) as e:
        P.label(proj, path)
    assert (proj / "labels.jsonl").read_bytes() == before  # nothing imported
    return str(e.value)


def test_every_bad_label_row_is_listed_and_nothing_is_imported(files):
    proj = init(files)
    asked = [json.loads(line)["id"] for line in P.query(proj, 3).read_text().splitlines()]
    other = next(i for i in GOLD if i not in asked)
    message = bad_label(
        proj,
        files / "bad.jsonl",
        [
            {"id": asked[0], "answer": "true"},  # fine on its own
            {"id": "nope", "answer": "true"},
            {"id": other, "answer": "true"},
            {"id": asked[1], "answer": ""},
            {"id": asked[2], "answer": "maybe"},
            {"id": asked[0], "answer": "false"},
        ],
    )
    assert "5 bad row(s), nothing imported" in message
    assert "bad.jsonl:2: unknown id 'nope'" in message
    assert f"bad.jsonl:3: id '{other}' was not in the last query" in message
    assert f"bad.jsonl:4: empty answer for id '{asked[1]}'" in message
    assert "bad.jsonl:5:" in message and "maybe" in message
    assert f"bad.jsonl:6: duplicate id '{asked[0]}'" in message


def test_labels_already_imported_are_not_imported_twice(files):
    proj = init(files)
    query_file = P.query(proj, 3)
    answer_jsonl(query_file, files / "a.jsonl")
    assert P.label(proj, files / "a.jsonl") == 3
    assert P.label(proj, files / "a.jsonl") == 0  # re-run after a crash: a no-op
    rows = [json.loads(line) for line in (files / "a.jsonl").read_text().splitlines()]
    flipped = {**rows[0], "answer": "false" if rows[0]["answer"] == "true" else "true"}
    assert "is already labeled" in bad_label(proj, files / "flip.jsonl", [flipped])
    assert len((proj / "labels.jsonl").read_text().splitlines()) == 3


def test_order_of_the_loop_is_enforced(files):
    proj = init(files)
    with pytest.raises(StarloraError, match="no labels yet"):
        P.train(proj)
    query_file = P.query(proj, 2)
    with pytest.raises(StarloraError, match="have no label yet"):
        P.query(proj, 2)
    answer_jsonl(query_file, files / "a.jsonl")
    P.label(proj, files / "a.jsonl")
    with pytest.raises(StarloraError, match="not trained on yet"):
        P.query(proj, 2)
    P.train(proj)
    with pytest.raises(StarloraError, match="no new labels"):
        P.train(proj)


def test_query_larger_than_what_is_left_is_clamped_with_a_warning(files, capsys):
    proj = init(files, "--strategy", "random")
    out = P.query(proj, 100)
    assert len(out.read_text().splitlines()) == 30
    assert "only 30 unasked example(s) left" in capsys.readouterr().err
    answer_jsonl(out, files / "a.jsonl")
    P.label(proj, files / "a.jsonl")
    P.train(proj)
    with pytest.raises(StarloraError, match="nothing left to query"):
        P.query(proj, 1)


def test_init_refusals(files, capsys):
    init(files)
    assert cli("init", files / "proj", "--task", "boolq", "--pool", files / "pool.jsonl") == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    (files / "empty.jsonl").write_text("")
    assert cli("init", files / "p2", "--task", "boolq", "--pool", files / "empty.jsonl") == 2
    assert "no examples" in capsys.readouterr().err and not (files / "p2").exists()
    assert cli("query", files / "nowhere", "-n", "2") == 2
    assert "not a starlora project" in capsys.readouterr().err


def test_template_from_the_shell_turns_backslash_n_into_a_newline(files):
    (files / "raw.jsonl").write_text(json.dumps({"id": "a", "q": "is it"}) + "\n")
    assert (
        cli(
            "init",
            files / "p",
            "--task",
            "boolq",
            "--pool",
            files / "raw.jsonl",
            "--template",
            r"Question: {q}?\nAnswer:",
            "--model",
            "tiny-random",
        )
        == 0
    )
    assert json.loads((files / "p" / "pool.jsonl").read_text())["prompt"] == "Question: is it?\nAnswer:"


@pytest.mark.parametrize(
    "strategy, extra, rule, how",
    [
        ("star-me", [], "the base model's ME", "base-model me"),
        ("star-me", ["--random"], "the base model's ME", "random"),
        ("bald", [], "random in effect", "random"),
        ("random", [], "random", "random"),
    ],
)
def test_the_first_query_rule_is_stated_and_followed(files, strategy, extra, rule, how):
    proj = init(files, "--strategy", strategy)
    assert f"first query: {rule}" in P.status(proj)
    assert cli("query", proj, "-n", "4", *extra) == 0
    assert json.loads((proj / "queries.jsonl").read_text().splitlines()[0])["how"] == how
    assert f"round 0 query: {how}" in P.status(proj)


@pytest.mark.parametrize(
    "init_args, rule, how",
    [
        (
            ["--strategy", "random", "--diversity", "kmeans"],
            "random (the strategy is random), spread over k-means clusters of the best 3 x query size",
            "random, spread over k-means clusters (beta 3)",
        ),
        (["--strategy", "coreset"], "core-set from nothing", "coreset on the base model"),
        (["--strategy", "badge"], "BADGE on the base model", "badge on the base model"),
        (["--strategy", "me", "--cold-start", "kmeans"], "k-means over the pool embeddings", "k-means cold start"),
    ],
)
def test_batch_aware_first_queries_are_stated_and_followed(files, init_args, rule, how):
    proj = init(files, *init_args)
    assert f"first query: {rule}" in P.status(proj)
    assert cli("query", proj, "-n", "4") == 0
    first = json.loads((proj / "queries.jsonl").read_text().splitlines()[0])
    assert first["how"] == how and len(first["ids"]) == len(set(first["ids"])) == 4
