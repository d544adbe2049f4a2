import json

import pytest

from starlora.data import content_id, hub_rows, load_data, load_files, make_examples
from starlora.errors import StarloraError
from starlora.tasks import get_task

STAR_BOOLQ = [
    {"question": "Question: is water wet?\nAnswer:", "answer": "the correct answer is true"},
    {"question": "Question: is fire cold?\nAnswer:", "answer": "the correct answer is false"},
]


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_star_jsonl_format_all_tasks(write):
    boolq = get_task("boolq", template="{question}")
    data = load_files(boolq, write("train.jsonl", jsonl(STAR_BOOLQ)), write("test.jsonl", jsonl(STAR_BOOLQ[:1])))
    assert [e.gold for e in data.test] == ["true"]
    assert [e.prompt for e in data.pool] == ["Question: is fire cold?\nAnswer:"]  # the overlap with test is dropped
    obqa = make_examples(
        [("x:1", {"question": "Q\nA. a\nB. b", "answer": "B"})], get_task("obqa", template="{question}"), "x"
    )
    assert obqa[0].gold == "B" and obqa[0].target == "B"
    gsm = make_examples(
        [("x:1", {"question": "2+2?", "answer": "2 + 2 = 4\n#### 4"})], get_task("gsm8k", template="{question}"), "x"
    )
    assert gsm[0].gold == "4" and gsm[0].target.endswith("The final answer is 4")


def test_csv_with_custom_fields(write):
    path = write("d.csv", "key,text,label\nr1,is it,yes\nr2,is it not,no\n")
    task = get_task("boolq", template="{text}")
    examples = make_examples(
        __import__("starlora.data", fromlist=["read_rows"]).read_rows(path),
        task,
        "d",
        id_field="key",
        answer_field="label",
    )
    assert [(e.id, e.prompt, e.gold) for e in examples] == [("r1", "is it", "true"), ("r2", "is it not", "false")]


def test_stable_ids_hash_content_and_own_id_wins():
    task = get_task("boolq", template="{question}")
    a = make_examples([("f:1", {"question": "q1", "answer": "true"})], task, "f")
    b = make_examples([("f:9", {"question": "q1", "answer": "true"})], task, "f")
    assert a[0].id == b[0].id == content_id("q1", "true")
    assert make_examples([("f:1", {"id": 7, "question": "q1", "answer": "true"})], task, "f")[0].id == "7"


def test_duplicates_dropped_and_reported(caplog):
    task = get_task("boolq", template="{question}")
    rows = [
        ("f:1", {"question": "q1", "answer": "true"}),
        ("f:2", {"question": "q1", "answer": "true"}),
        ("f:3", {"id": "z", "question": "q1", "answer": "true"}),
        ("f:4", {"question": "q2", "answer": "no"}),
    ]
    examples = make_examples(rows, task, "f")
    assert [e.prompt for e in examples] == ["q1", "q2"]
    assert "dropped 2 duplicate row(s)" in caplog.text


def test_same_id_different_content_is_an_error():
    task = get_task("boolq", template="{question}")
    rows = [
        ("f:1", {"id": "a", "question": "q1", "answer": "true"}),
        ("f:2", {"id": "a", "question": "q2", "answer": "true"}),
    ]
    with pytest.raises(StarloraError, match="f:2: id 'a' already used by a different row at f:1"):
        make_examples(rows, task, "f")


@pytest.mark.parametrize(
    "content,message",
    [
        (b'{"question": "q", "answer": "true"}\n{"question": \n', r"t.jsonl:2: malformed JSON"),
        (b'{"question": "q", "answer": "true"}\n\xff\xfe\n', r"t.jsonl:2: not valid UTF-8"),
        (b'{"question": "q"}\n', r"t.jsonl:1: missing field 'answer'"),
        (b"[1, 2]\n", r"t.jsonl:1: expected a JSON object"),
        (b"\n\n", r"no examples"),
        (b'{"question": "q", "answer": "maybe"}\n', r"t.jsonl:1: answer 'maybe' is not one of"),
        (b'{"text": "q", "answer": "true"}\n', r"t.jsonl:1: prompt template '\{question\}' needs field 'question'"),
    ],
)
def test_bad_files(write, content, message):
    path = write("t.jsonl", content, mode="wb")
    with pytest.raises(StarloraError, match=message):
        load_files(get_task("boolq", template="{question}"), None, path)


def test_missing_file_and_test_file_required(tmp_path):
    task = get_task("boolq", template="{question}")
    with pytest.raises(StarloraError, match="no such file"):
        load_files(task, None, tmp_path / "missing.jsonl")
    with pytest.raises(StarloraError, match="--train-file needs --test-file"):
        load_data(task, train_file=tmp_path / "x.jsonl")


def test_hub_mapping_offline():
    """The hub path maps each dataset's rows; load_dataset is replaced so no network is needed."""
    fake = {
        ("google/boolq", "train"): [{"question": "is a", "answer": True, "passage": "p"}],
        ("google/boolq", "validation"): [{"question": "is b", "answer": False, "passage": "p"}],
        ("allenai/openbookqa", "train"): [
            {
                "id": "7-1",
                "question_stem": "Stem",
                "answerKey": "C",
                "choices": {"label": ["A", "B", "C", "D"], "text": ["w", "x", "y", "z"]},
            }
        ],
    }
    pool, test = hub_rows("boolq", lambda name, config, split: fake[(name, split)])
    assert pool[0][1]["id"] == "boolq-train-00000" and test[0][1]["answer"] is False
    task = get_task("obqa")
    ex = make_examples(hub_rows("obqa", lambda n, c, split: fake[(n, "train")])[0], task, "hub")[0]
    assert ex.prompt == "Question: Stem\nA. w\nB. x\nC. y\nD. z\nAnswer:" and ex.gold == "C" and ex.id == "7-1"

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nmore")

    with pytest.raises(StarloraError, match=r"cannot load openai/gsm8k \(train\) from the hub: no network$"):
        hub_rows("gsm8k", offline)


def test_embedded_splits_are_deterministic_and_disjoint():
    for name, n_pool, n_test in [("boolq", 2270, 1000), ("obqa", 500, 500), ("gsm8k", 1000, 319)]:
        data = load_data(get_task(name))
        assert (len(data.pool), len(data.test)) == (n_pool, n_test)
        assert not {e.id for e in data.pool} & {e.id for e in data.test}
    again = load_data(get_task("boolq"))
    assert [e.id for e in again.test[:5]] == [e.id for e in load_data(get_task("boolq")).test[:5]]
    ex = again.pool[0]
    assert ex.prompt.startswith("Question: ") and ex.prompt.endswith("?\nAnswer:") and ex.gold in ("true", "false")


ROWS = [
    {"id": f"r{i}", "question": f"Question: is {i} even?\nAnswer:", "answer": ["false", "true"][i % 2 == 0]}
    for i in range(5)
]


def saved_formats(tmp_path):
    """The same rows as JSON lines, Parquet, a JSON list and a save_to_disk folder (and a DatasetDict folder)."""
    import datasets

    (tmp_path / "rows.jsonl").write_text(jsonl(ROWS))
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "rows.parquet"))
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:2])}
    ).save_to_disk(str(tmp_path / "dict"))
    return tmp_path


def test_every_format_reads_the_same_examples(tmp_path):
    from starlora.data import read_rows

    d = saved_formats(tmp_path)
    task = get_task("boolq", template="{question}", user_files=True)
    want = make_examples(read_rows(d / "rows.jsonl"), task, "jsonl")
    for source in ("rows.parquet", "rows.json", "saved", "dict/train"):
        got = make_examples(read_rows(d / source), task, source)
        assert [(e.id, e.prompt, e.target) for e in got] == [(e.id, e.prompt, e.target) for e in want], source
    assert [w for w, _ in read_rows(d / "rows.parquet")][1] == f"{d / 'rows.parquet'}: row 2"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.parquet", b"PAR1 not really", "not a readable Parquet file"),
        ("bad.json", b'{"id": 1}', "expected a JSON list of objects"),
        (
            "items.json",
            b'[{"id": "a", "question": "q", "answer": "true"}, 3]',
            "items.json: item 2: expected a JSON object",
        ),
        ("broken.json", b'[{"id": ', "malformed JSON"),
    ],
)
def test_bad_new_format_files(tmp_path, name, content, message):
    from starlora.data import read_rows

    (tmp_path / name).write_bytes(content)
    with pytest.raises(StarloraError, match=message):
        list(read_rows(tmp_path / name))


def test_dataset_folders_name_their_splits_and_bad_rows(tmp_path):
    from starlora.data import read_rows

    d = saved_formats(tmp_path)
    with pytest.raises(StarloraError, match=r"holds several splits \(train, test\); give one split's folder"):
        list(read_rows(d / "dict"))
    (d / "empty").mkdir()
    with pytest.raises(StarloraError, match="not a dataset folder written by save_to_disk"):
        list(read_rows(d / "empty"))
    import datasets

    datasets.Dataset.from_list([*ROWS[:2], {"id": "r9", "question": "Q?", "answer": "maybe"}]).to_parquet(
        str(d / "bad_answer.parquet")
    )
    task = get_task("boolq", template="{question}", user_files=True)
    with pytest.raises(StarloraError, match=r"bad_answer.parquet: row 3"):
        make_examples(read_rows(d / "bad_answer.parquet"), task, "x")


def test_dataset_option_loads_a_hub_dataset_through_datasets(tmp_path, monkeypatch):
    """--dataset NAME:CONFIG --train-split S: datasets.load_dataset(NAME, CONFIG, split=S), replaced here."""
    from starlora import cli, data

    calls = []

    def fake(name, config, split):
        calls.append((name, config, split))
        return (
            ROWS
            if split == "train"
            else [{**r, "id": f"t{i}", "question": f"Is {i} odd?"} for i, r in enumerate(ROWS[:3])]
        )

    monkeypatch.setattr(data, "HUB_LOADER", fake)
    out = tmp_path / "run"
    args = [
        "run",
        "--model",
        "tiny-random",
        "--task",
        "boolq",
        "--dataset",
        "me/yesno:small",
        "--test-split",
        "dev",
        "--init-size",
        "2",
        "--query-size",
        "1",
        "--rounds",
        "2",
        "--epochs",
        "1",
        "--probe-size",
        "0",
        "--lora-r",
        "2",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    assert set(calls) == {("me/yesno", "small", "dev"), ("me/yesno", "small", "train")}
    assert json.loads((out / "config.json").read_text())["config"]["train_file"] == "hf:me/yesno:small@train"
    assert cli.main([*args[:-2], "--train-file", "x.jsonl", "--out", str(tmp_path / "other")]) == 2
    assert not (tmp_path / "other").exists()


def test_human_loop_init_reads_a_parquet_pool(tmp_path):
    from starlora import cli
    from starlora.files import read_jsonl

    d = saved_formats(tmp_path)
    assert (
        cli.main(
            [
                "init",
                str(d / "proj"),
                "--task",
                "boolq",
                "--pool",
                str(d / "rows.parquet"),
                "--test",
                str(d / "dict" / "test"),
                "--model",
                "tiny-random",
            ]
        )
        == 0
    )
    assert cli.main(["query", str(d / "proj"), "-n", "2", "--random"]) == 0
    assert len(read_jsonl(d / "proj" / "queries" / "round_0.jsonl")) == 2


BOM = "\ufeff".encode()


def test_a_byte_order_mark_is_accepted_in_csv_json_lines_and_json(tmp_path):
    """Excel's "CSV UTF-8" and some editors start a file with a BOM: the first field is still 'id', the first line
    still JSON."""
    from starlora.data import read_rows
    from starlora.project import read_answers

    (tmp_path / "rows.csv").write_bytes(BOM + b"id,question,answer\r\nr0,Is 0 even?,true\r\nr1,Is 1 even?,false\r\n")
    (tmp_path / "rows.jsonl").write_bytes(BOM + jsonl(ROWS[:2]).encode())
    (tmp_path / "rows.json").write_bytes(BOM + json.dumps(ROWS[:2]).encode())
    for name in ("rows.csv", "rows.jsonl", "rows.json"):
        rows = [row for _, row in read_rows(tmp_path / name)]
        assert [r["id"] for r in rows] == ["r0", "r1"], name
        assert [i for _, i, _ in read_answers(tmp_path / name, "answer")] == ["r0", "r1"], name
    export = [
        {
            "id": 7,
            "data": {"starlora_id": "r0", "prompt": "p"},
            "annotations": [{"result": [{"value": {"choices": ["true"]}}]}],
        }
    ]
    (tmp_path / "export.json").write_bytes(BOM + json.dumps(export).encode())  # Label Studio's JSON
    assert read_answers(tmp_path / "export.json", "answer") == [(f"{tmp_path / 'export.json'}: task 1", "r0", "true")]

    from starlora import cli
    from starlora.files import read_jsonl

    assert (
        cli.main(
            [
                "init",
                str(tmp_path / "proj"),
                "--task",
                "boolq",
                "--pool",
                str(tmp_path / "rows.csv"),
                "--model",
                "tiny-random",
            ]
        )
        == 0
    )
    assert [r["id"] for r in read_jsonl(tmp_path / "proj" / "pool.jsonl")] == ["r0", "r1"]  # not content hashes


def test_csv_delimiters_are_sniffed_or_given(tmp_path, capsys):
    from starlora import cli
    from starlora.data import delimiter_option, read_rows
    from starlora.files import read_jsonl
    from starlora.project import read_answers

    want = [
        {"id": "r0", "question": "Is 0 even, really?", "answer": "true"},
        {"id": "r1", "question": "Is 1 even; really?", "answer": "false"},
    ]
    for name, sep in (("comma.csv", ","), ("semicolon.csv", ";"), ("tab.csv", "\t"), ("pipe.csv", "|")):
        text = (
            sep.join(want[0])
            + "\n"
            + "".join(sep.join(f'"{v}"' if sep in v else v for v in r.values()) + "\n" for r in want)
        )
        (tmp_path / name).write_text(text)
    for name in ("comma.csv", "semicolon.csv", "tab.csv"):
        assert [row for _, row in read_rows(tmp_path / name)] == want, name
    (tmp_path / "one.csv").write_text("question\nIs it?\n")  # one column: nothing to sniff, read as ','
    # the sniffer finds ',' in the text of a tab file whose header has no ',': the header's own tab wins
    (tmp_path / "tabtext.csv").write_text("id\tquestion\nr0\tIs 0 even, really, truly?\nr1\tIs 1, then, odd?\n")
    assert [row["question"] for _, row in read_rows(tmp_path / "tabtext.csv")] == [
        "Is 0 even, really, truly?",
        "Is 1, then, odd?",
    ]
    assert [row for _, row in read_rows(tmp_path / "one.csv")] == [{"question": "Is it?"}]
    with delimiter_option("|"):  # --delimiter
        assert [row for _, row in read_rows(tmp_path / "pipe.csv")] == want
    with delimiter_option("tab"):
        assert [row for _, row in read_rows(tmp_path / "tab.csv")] == want
    with pytest.raises(StarloraError, match="--delimiter 'ab': give one character"), delimiter_option("ab"):
        pass

    # rows without an id field: the message names the delimiter used and --delimiter
    (tmp_path / "answers.csv").write_text("key,answer\nr0,true\n")
    with pytest.raises(
        StarloraError,
        match=r"answers.csv:1: no id field 'starlora_id' or 'id' \(fields: key, "
        r"answer; read with delimiter ','; a ';' or tab file\? pass --delimiter\)",
    ):
        read_answers(tmp_path / "answers.csv", "answer")
    with (
        delimiter_option(","),
        pytest.raises(
            StarloraError,
            match=r"no id field .* \(fields: id;question;answer; "
            r"read with delimiter ','",
        ),
    ):
        read_answers(tmp_path / "semicolon.csv", "answer")

    # the command line: init and label take --delimiter; a wrong one is one line, exit 2
    proj = tmp_path / "proj"
    assert (
        cli.main(
            [
                "init",
                str(proj),
                "--task",
                "boolq",
                "--pool",
                str(tmp_path / "pipe.csv"),
                "--delimiter",
                "|",
                "--model",
                "tiny-random",
            ]
        )
        == 0
    )
    assert [r["id"] for r in read_jsonl(proj / "pool.jsonl")] == ["r0", "r1"]
    capsys.readouterr()
    assert (
        cli.main(
            [
                "init",
                str(tmp_path / "p2"),
                "--task",
                "boolq",
                "--pool",
                str(tmp_path / "pipe.csv"),
                "--model",
                "tiny-random",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pipe.csv:2: prompt template '{question}' needs field 'question'" in err
    assert "(read with delimiter ','; a ';' or tab file? pass --delimiter)" in err
    assert cli.main(["label", str(proj), str(tmp_path / "semicolon.csv"), "--delimiter", ","]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no id field 'starlora_id' or 'id'" in err and "pass --delimiter" in err
    assert read_jsonl(proj / "labels.jsonl") == []


def test_large_csv_cells_are_read_and_csv_errors_name_the_line(tmp_path, monkeypatch):
    import csv

    from starlora import data
    from starlora.data import read_rows

    passage = "word " * 60_000  # 300 KB in one cell: over csv's default 128 KiB limit
    (tmp_path / "big.csv").write_text(f"id,question,answer\nr0,short,true\nr1,{passage},false\n")
    rows = [row for _, row in read_rows(tmp_path / "big.csv")]
    assert len(rows[1]["question"]) == len(passage)
    assert csv.field_size_limit() == 131072  # the process-wide limit is left as it was
    monkeypatch.setattr(data, "CSV_FIELD_LIMIT", 1000)
    with pytest.raises(StarloraError, match=r"big.csv:3: malformed CSV \(field larger than field limit"):
        list(read_rows(tmp_path / "big.csv"))
    (tmp_path / "latin1.csv").write_bytes(b"id,question,answer\nr0,ok,true\nr1,caf\xe9,false\n")
    with pytest.raises(StarloraError, match=r"latin1.csv:3: not valid UTF-8"):
        list(read_rows(tmp_path / "latin1.csv"))
