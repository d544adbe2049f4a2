"""A person's labels are never lost or silently changed: every project and run file is read strictly, answers match
candidates exactly, and the loop cannot get out of step (issue 24). Each refusal is one line with exit code 2 and
leaves every file byte-identical."""

import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_project import GOLD, answer_jsonl, cli, init, write_project_files

from starlora import files as F
from starlora import project as P
from starlora.errors import StarloraError


@pytest.fixture
def files(tmp_path):
    return write_project_files(tmp_path)


SST = {f"r{i}": ("positive" if i % 2 else "negative") for i in range(24)}


def snapshot(folder):
    """Every file of a folder, by relative path: bytes (to assert nothing was rewritten)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def labeled_project(files, n=20):
    """A project whose round 0 asked n examples, all labeled; returns (folder, labels.jsonl path)."""
    proj = init(files)
    assert cli("query", proj, "-n", n, "--random") == 0
    answer_jsonl(proj / "queries" / "round_0.jsonl", files / "answers.jsonl")
    assert cli("label", proj, files / "answers.jsonl") == 0
    return proj, proj / "labels.jsonl"


def break_line(path, number, how=lambda line: line[:1] + "'" + line[1:]):
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = how(lines[number - 1].rstrip("\n")) + "\n"
    path.write_text("".join(lines))


def refused(capsys, *args, name):
    """Run the CLI; assert exit 2 and one error line naming `name`; return the line."""
    assert cli(*args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("starlora: error: ") and name in err[0], err
    return err[0]


# ---------------------------------------------------------------- strict reading


def test_a_broken_line_in_labels_stops_every_command_and_changes_nothing(files, capsys):
    proj, labels = labeled_project(files)
    break_line(labels, 3)  # one stray quote in line 3 of 20
    before = snapshot(proj)
    assert "labels.jsonl:3: malformed JSON" in refused(capsys, "status", proj, name="labels.jsonl:3")
    refused(capsys, "label", proj, files / "answers.jsonl", name="labels.jsonl:3")
    refused(capsys, "query", proj, "-n", "2", "--random", name="labels.jsonl:3")
    refused(capsys, "train", proj, name="labels.jsonl:3")
    assert snapshot(proj) == before  # byte-identical: the 17 labels after line 3 are all still there


def test_a_broken_queries_line_stops_query_and_status(files, capsys):
    proj, _ = labeled_project(files, n=4)
    break_line(proj / "queries.jsonl", 1)
    before = snapshot(proj)
    refused(capsys, "status", proj, name="queries.jsonl:1")
    refused(capsys, "query", proj, "-n", "3", "--random", name="queries.jsonl:1")  # no one is asked twice
    refused(capsys, "query", proj, "-n", "3", name="queries.jsonl:1")  # no traceback either
    assert snapshot(proj) == before


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"id": "q1", "round": 0}', "field 'answer' is missing"),
        ('{"id": 5, "answer": "true", "round": 0}', "field 'id' is 5, expected text"),
        ('["q1", "true"]', "expected a JSON object"),
        ('{"id": "q1", "answer": "true", "round": true}', "field 'round' is True"),
    ],
)
def test_a_well_formed_line_without_its_fields_is_refused(files, capsys, line, why):
    proj, labels = labeled_project(files, n=4)
    break_line(labels, 2, how=lambda _: line)
    assert why in refused(capsys, "status", proj, name="labels.jsonl:2")


def test_a_label_twice_or_unreadable_is_refused(files, capsys):
    proj, labels = labeled_project(files, n=4)
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(rows + [rows[0]]) + "\n")
    assert "labeled twice" in refused(capsys, "status", proj, name="labels.jsonl")
    labels.write_text("\n".join(rows[:-1] + [json.dumps({**json.loads(rows[-1]), "answer": "not true"})]) + "\n")
    assert "label 4" in refused(capsys, "train", proj, name="labels.jsonl")


def test_a_torn_last_line_is_skipped_with_a_warning_and_removed_by_the_next_write(files, capsys):
    proj, labels = labeled_project(files, n=4)
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(rows[:3]) + "\n" + rows[3][:15])  # killed while appending the 4th label
    capsys.readouterr()
    assert cli("status", proj) == 0
    out = capsys.readouterr()
    assert "labels.jsonl:4: skipping a torn last line" in out.err and "labeled 3" in out.out
    assert cli("label", proj, files / "answers.jsonl") == 0  # imports the 4th again, and cuts the torn tail first
    assert [json.loads(r) for r in labels.read_text().splitlines()] == [json.loads(r) for r in rows]


def test_run_folder_files_are_read_strictly(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rounds = [
        {"round": t, "n_labeled": 8 * (t + 1), "accuracy": 50.0 + t, "added": [], "selected": []} for t in range(3)
    ]
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    summary = {
        "task": "sst2",
        "strategy": "random",
        "seed": 0,
        "model": "m",
        "auc": 51.0,
        "final_accuracy": 52.0,
        "curve": [50.0, 51.0, 52.0],
        "n_labeled": [8, 16, 24],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(json.dumps({"config": {"task": "sst2", "strategy": "random", "seed": 0}}))
    assert cli("report", run, "--out", tmp_path / "rep") == 0
    capsys.readouterr()
    break_line(run / "rounds.jsonl", 2)
    refused(capsys, "report", run, "--out", tmp_path / "rep2", name="rounds.jsonl:2")
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [rounds[0], rounds[2]]))
    assert "is round 2, expected 1" in refused(capsys, "report", run, "--out", tmp_path / "r3", name="rounds.jsonl")
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (run / "summary.json").write_text('{"task": "sst2", "auc": 51.0,\n "curve": [50.0, 51.0 52.0]}')
    refused(capsys, "report", run, "--out", tmp_path / "rep4", name="summary.json:2: malformed JSON")
    (run / "summary.json").write_text(json.dumps({**summary, "auc": "51"}))
    assert "field 'auc' is '51'" in refused(capsys, "report", run, "--out", tmp_path / "r5", name="summary.json")
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text('{"config": ')
    refused(capsys, "report", run, "--out", tmp_path / "rep5", name="config.json:1: malformed JSON")
    assert not (tmp_path / "rep5").exists() or not any((tmp_path / "rep5").iterdir())


def test_run_refuses_a_damaged_rounds_file_instead_of_redoing_rounds(tmp_path, capsys):
    from starlora.config import resolve
    from starlora.experiment import run

    cfg = resolve(
        "quick",
        task="sst2",
        model="tiny-random",
        strategy="random",
        rounds=2,
        epochs=1,
        lora_r=2,
        test_size=8,
        probe_size=0,
        candidate_subsample=16,
        precision="fp32",
    )
    run(cfg, tmp_path / "run")
    before = snapshot(tmp_path / "run")
    break_line(tmp_path / "run" / "rounds.jsonl", 1)
    with pytest.raises(StarloraError, match=r"rounds.jsonl:1: malformed JSON"):
        run(cfg, tmp_path / "run")
    after = snapshot(tmp_path / "run")
    assert {k for k in after if after[k] != before[k]} == {"rounds.jsonl"}  # only the file we broke differs


# ---------------------------------------------------------------- answers are candidates, exactly


@pytest.mark.parametrize(
    "answer",
    [
        "not positive",
        "positive, negative",
        "I would not say negative",
        "pos",
        "positive.",
        "the answer is positive maybe",
    ],
)
def test_an_answer_that_is_not_exactly_a_candidate_is_refused(tmp_path, capsys, answer):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": i, "text": f"review {i}"}) + "\n" for i in SST))
    proj = tmp_path / "proj"
    assert (
        cli(
            "init",
            proj,
            "--task",
            "closed",
            "--candidates",
            "negative,positive",
            "--template",
            "{text}",
            "--pool",
            pool,
            "--model",
            "tiny-random",
            "--lora-r",
            "2",
        )
        == 0
    )
    assert cli("query", proj, "-n", "2", "--random") == 0
    rows = [json.loads(line) for line in (proj / "queries" / "round_0.jsonl").read_text().splitlines()]
    (tmp_path / "a.jsonl").write_text(
        json.dumps({**rows[0], "answer": " Positive "}) + "\n" + json.dumps({**rows[1], "answer": answer}) + "\n"
    )
    capsys.readouterr()
    assert cli("label", proj, tmp_path / "a.jsonl") == 2
    assert capsys.readouterr().err == (
        f"starlora: error: {tmp_path / 'a.jsonl'}:2: answer {answer!r} is not one of "
        "['negative', 'positive'] (exactly, up to case); nothing imported\n"
    )
    assert (proj / "labels.jsonl").read_text() == ""
    with pytest.raises(StarloraError, match=r"not one of \['negative', 'positive'\]"):
        P.label_one(proj, rows[1]["id"], answer)
    assert P.label_one(proj, rows[0]["id"], " Positive ")  # case and spaces do not matter
    assert json.loads((proj / "labels.jsonl").read_text())["answer"] == "Positive"
    assert P.Project(proj, P.open_project(proj).cfg).task.label(" Positive ") == "positive"


def test_label_refusal_lists_the_candidates(tmp_path):
    from starlora.tasks import get_task

    with pytest.raises(ValueError, match=r"'not positive' is not one of \['negative', 'positive'\]"):
        get_task("sst2").label("not positive")
    assert get_task("boolq").label("Yes") == "true"  # the yes/no alias of true/false tasks
    gsm = get_task("gsm8k")
    assert gsm.label("1,200") == "1200" and gsm.label("6 * 3 = 18\n#### 18") == "18"
    with pytest.raises(ValueError, match="not a number"):
        gsm.label("I think 5 or 6")


def test_duplicate_candidates_are_refused_at_init(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": "a", "question": "q"}) + "\n" + json.dumps({"id": "b", "question": "r"}) + "\n")
    refused(
        capsys,
        "init",
        tmp_path / "p",
        "--task",
        "closed",
        "--candidates",
        "positive, Positive",
        "--pool",
        pool,
        "--model",
        "tiny-random",
        name="--candidates lists 'positive' more than once",
    )
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- the loop stays in step


def test_train_refuses_a_partly_labeled_query_unless_partial(files, capsys):
    proj = init(files)
    assert cli("query", proj, "-n", "4", "--random") == 0
    ids = answer_jsonl(proj / "queries" / "round_0.jsonl", files / "a.jsonl")
    rows = files.joinpath("a.jsonl").read_text().splitlines()
    files.joinpath("half.jsonl").write_text("\n".join(rows[:3]) + "\n")
    assert cli("label", proj, files / "half.jsonl") == 0
    before = snapshot(proj)
    line = refused(capsys, "train", proj, name="1 of the 4 examples of round 0's query have no label yet")
    assert "--partial" in line and snapshot(proj) == before
    assert cli("train", proj, "--partial") == 0
    info = json.loads((proj / "adapters" / "round_0" / "train.json").read_text())
    assert info["n_labels"] == 3 and info["partial"] == {"asked": 4, "unlabeled": 1}
    capsys.readouterr()
    assert cli("status", proj) == 0
    out = capsys.readouterr().out
    assert "awaiting labels 0" in out and "trained with 1 unlabeled, left out" in out and "next: starlora query" in out
    assert cli("label", proj, files / "a.jsonl") == 2
    assert "a.jsonl:4: round 0 is trained already (train --partial left" in capsys.readouterr().err
    assert cli("query", proj, "-n", "4", "--random") == 0  # the next round goes on; the left-out one is not re-asked
    second = [json.loads(r)["id"] for r in (proj / "queries" / "round_1.jsonl").read_text().splitlines()]
    assert not set(second) & set(ids)


def test_the_api_refuses_a_partly_labeled_train(files):
    from fastapi.testclient import TestClient

    from starlora.serve import create_app

    proj = init(files)
    assert cli("query", proj, "-n", "4", "--random") == 0
    ids = answer_jsonl(proj / "queries" / "round_0.jsonl", files / "a.jsonl")
    client = TestClient(create_app(proj), base_url="http://localhost")
    assert client.post("/api/label", json={"id": ids[0], "answer": GOLD[ids[0]]}).status_code == 200
    r = client.post("/api/train")
    assert r.status_code == 400 and "3 of the 4 examples" in r.json()["detail"]
    assert not (proj / "adapters").exists()


def test_query_files_are_stored_relative_to_the_project(files, capsys, monkeypatch):
    proj = init(files)
    assert cli("query", proj, "-n", "2", "--random") == 0
    assert json.loads((proj / "queries.jsonl").read_text())["file"] == os.path.join("queries", "round_0.jsonl")
    elsewhere = files / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli("status", proj) == 0
    named = capsys.readouterr().out.splitlines()[-1].split("label ")[-1].split()[1]
    assert os.path.exists(named)


def test_a_refused_label_leaves_no_new_file(files, capsys):
    proj = init(files)
    assert cli("query", proj, "-n", "2", "--random") == 0
    (files / "bad.jsonl").write_text(json.dumps({"id": "nope", "answer": "true"}) + "\n")
    before = snapshot(proj)
    refused(capsys, "label", proj, files / "bad.jsonl", name="bad.jsonl")
    assert snapshot(proj) == before


# ---------------------------------------------------------------- property: a corrupted line never loses a label


def corrupt(line: str, rng: random.Random) -> str:
    """A line as an editor or a bad disk leaves it: a stray character, a cut, or a field removed."""
    kind = rng.randrange(3)
    if kind == 0:
        i = rng.randrange(len(line) + 1)
        return line[:i] + rng.choice("'\"{}[],:x") + line[i:]
    if kind == 1:
        return line[: rng.randrange(1, len(line))]
    record = json.loads(line)
    record.pop(rng.choice(sorted(record)))
    return json.dumps(record)


@pytest.fixture(scope="module")
def base_project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prop")
    pool = "".join(json.dumps({"id": i, "question": f"Is item {i[1:]} blue?\nAnswer:"}) + "\n" for i in GOLD)
    (folder / "pool.jsonl").write_text(pool)
    proj = folder / "proj"
    assert cli("init", proj, "--task", "boolq", "--pool", folder / "pool.jsonl", "--model", "tiny-random") == 0
    for _ in range(2):  # two rounds asked and labeled, without training: the files are what matters here
        P.query(proj, 5, random=True)
        queries = P.open_project(proj).queries()
        answers = folder / "a.jsonl"
        answers.write_text("".join(json.dumps({"id": i, "answer": GOLD[i]}) + "\n" for i in queries[-1]["ids"]))
        P.label(proj, answers)
        (proj / "adapters" / f"round_{len(queries) - 1}").mkdir(parents=True)  # counted as trained
        (proj / "adapters" / f"round_{len(queries) - 1}" / "train.json").write_text(
            json.dumps({"round": len(queries) - 1, "n_labels": 5 * len(queries)})
        )
    return proj


@settings(max_examples=40, deadline=None)
@given(which=st.sampled_from(["labels.jsonl", "queries.jsonl"]), seed=st.integers(0, 10**6))
def test_a_random_corrupted_line_never_loses_a_label(base_project, tmp_path_factory, which, seed):
    import shutil

    rng = random.Random(seed)
    proj = tmp_path_factory.mktemp("case") / "proj"
    shutil.copytree(base_project, proj)
    path = proj / which
    lines = path.read_text().splitlines()
    number = rng.randrange(len(lines)) + 1
    break_line(path, number, how=lambda line: corrupt(line, rng))
    if number == len(lines) and rng.random() < 0.5:  # the damaged line is also the last, without its newline
        path.write_text(path.read_text().removesuffix("\n"))
    before = {name: (proj / name).read_bytes() for name in ("labels.jsonl", "queries.jsonl")}
    torn = which == "labels.jsonl" and not before[which].endswith(b"\n")
    if torn:  # the one allowed exception: an appended file's unreadable last line without newline, as a kill leaves
        before[which] = before[which][: before[which].rfind(b"\n") + 1]  # may be dropped; every other line stays
    answers = proj.parent / "more.jsonl"
    answers.write_text(json.dumps({"id": "q0", "answer": "false"}) + "\n")
    for step in (
        lambda: P.status(proj),
        lambda: P.label(proj, answers),
        lambda: P.query(proj, 3, random=True),
        lambda: P.label_one(proj, "q1", "true"),
        lambda: P.train(proj),
    ):
        try:
            step()
        except StarloraError:
            pass  # refused: one line, as it should be
        for name, old in before.items():  # a command either refused or appended: every line there is kept as it was
            assert (proj / name).read_bytes().startswith(old), f"{which}:{number} corrupted; {name} lost a line"


# ---------------------------------------------------------------- found in review


def test_a_last_label_without_its_newline_is_kept_by_the_next_append(files, capsys):
    proj, labels = labeled_project(files, n=4)
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(rows[:3]) + "\n" + rows[3])  # an editor that adds no final newline
    assert len(P.open_project(proj).labels()) == 4
    queries = P.open_project(proj).queries()
    assert P.label_one(proj, queries[0]["ids"][0], GOLD[queries[0]["ids"][0]]) is False  # already there: no write
    F.append_jsonl(labels, [])  # what any append does first
    assert labels.read_text().splitlines() == rows  # the 4th label is kept, now ended by a newline


def test_a_torn_last_line_is_an_error_in_a_file_only_ever_replaced_whole(files, capsys):
    proj, _ = labeled_project(files, n=4)
    path = proj / "queries.jsonl"
    path.write_text(path.read_text().rstrip("\n")[:-5])  # no kill can leave this: queries.jsonl is renamed whole
    before = snapshot(proj)
    refused(capsys, "status", proj, name="queries.jsonl:1: malformed JSON")
    refused(capsys, "query", proj, "-n", "2", "--random", name="queries.jsonl:1")
    assert snapshot(proj) == before


def test_labels_and_queries_must_name_pool_ids(files, capsys):
    proj, labels = labeled_project(files, n=4)
    break_line(labels, 2, how=lambda line: line.replace('"id": "', '"id": "x'))
    assert "is not in the project's pool" in refused(capsys, "train", proj, name="labels.jsonl: label 2")
    labels.write_text("")
    path = proj / "queries.jsonl"
    path.write_text(path.read_text().replace('"ids": ["', '"ids": ["x'))
    assert "every id must be a pool id" in refused(capsys, "status", proj, name="queries.jsonl: query 1")


def test_the_web_page_refuses_a_damaged_project_in_one_line(files):
    from fastapi.testclient import TestClient

    from starlora.serve import create_app

    proj, labels = labeled_project(files, n=4)
    good = labels.read_text()
    break_line(labels, 2)
    with pytest.raises(StarloraError, match="labels.jsonl:2"):
        create_app(proj)  # serve stops before anything is served
    labels.write_text(good)
    client = TestClient(create_app(proj), base_url="http://localhost")
    break_line(labels, 2)  # damaged while serving
    for r in (client.get("/api/state"), client.get("/api/query"), client.post("/api/train")):
        assert r.status_code == 400 and "labels.jsonl:2" in r.json()["detail"]


def test_candidates_equal_up_to_a_final_dot_are_refused(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": "a", "question": "q"}) + "\n" + json.dumps({"id": "b", "question": "r"}) + "\n")
    refused(
        capsys,
        "init",
        tmp_path / "p",
        "--task",
        "closed",
        "--candidates",
        "A,A.",
        "--pool",
        pool,
        "--model",
        "tiny-random",
        name="--candidates lists 'A' more than once",
    )
