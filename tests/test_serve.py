"""`starlora serve` through its HTTP API (tiny model): a whole round, every refusal, two labelers at once, the token,
and a server killed mid-training. The browser drives the same API in test_serve_browser.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from starlora import project as P  # noqa: E402
from starlora.cli import main  # noqa: E402
from starlora.serve import create_app, serve  # noqa: E402
from starlora.uncertainty import mixing_weight  # noqa: E402

GOLD = {f"q{i}": ("true" if i % 3 else "false") for i in range(30)}


def make_project(folder, *extra):
    """A BoolQ-style project on the tiny model: 30 pool questions (GOLD), 6 held-out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pool.jsonl").write_text(
        "".join(json.dumps({"id": i, "question": f"Is item {i[1:]} blue?\nAnswer:"}) + "\n" for i in GOLD)
    )
    (folder / "test.jsonl").write_text(
        "".join(
            json.dumps({"id": f"t{i}", "question": f"Is thing {i} blue?\nAnswer:", "answer": "true"}) + "\n"
            for i in range(6)
        )
    )
    assert (
        main(
            [
                "init",
                str(folder / "proj"),
                "--task",
                "boolq",
                "--pool",
                str(folder / "pool.jsonl"),
                "--test",
                str(folder / "test.jsonl"),
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
            ]
        )
        == 0
    )
    return folder / "proj"


def wait_for_job(client, timeout=120):
    """Poll the state until the background job has finished; return that state."""
    end = time.time() + timeout
    while time.time() < end:
        state = client.get("/api/state").json()
        if state["job"] is None or not state["job"]["running"]:
            return state
        time.sleep(0.05)
    raise AssertionError("the job did not finish")


@pytest.fixture
def proj(tmp_path):
    return make_project(tmp_path)


@pytest.fixture
def client(proj):
    return TestClient(create_app(proj), base_url="http://127.0.0.1")


def queried(client, n=4):
    assert client.post("/api/query", json={"n": n}).status_code == 202
    state = wait_for_job(client)
    assert state["job"]["error"] is None, state["job"]
    return [it["id"] for it in client.get("/api/query").json()["items"]]


def test_a_whole_round_through_the_api(client, proj, capsys):
    state = client.get("/api/state").json()
    assert state["query"] is None and state["can_query"] and not state["can_train"]
    assert client.get("/").text.startswith("<!doctype html>")
    ids = queried(client)
    items = client.get("/api/query").json()["items"]
    assert len(ids) == 4 and all(it["answer"] is None and "Answer:" in it["prompt"] for it in items)
    # the first query ranks by the base model's ME: the model's guess and the score that chose it are kept
    assert all(it["guess"] in ("true", "false") and it["score"] is not None for it in items)
    for k, i in enumerate(ids):
        r = client.post("/api/label", json={"id": i, "answer": GOLD[i]})
        assert r.status_code == 200 and r.json()["labeled"] == k + 1 and r.json()["new"]
    assert [(r["id"], r["answer"], r["round"]) for r in P.open_project(proj).labels()] == [(i, GOLD[i], 0) for i in ids]
    assert client.post("/api/train").status_code == 202
    state = wait_for_job(client)
    assert state["job"]["error"] is None and "adapter trained on 4 labels" in state["job"]["message"]
    assert state["rounds"][0]["trained_on"] == 4 and 0 <= state["rounds"][0]["accuracy"] <= 100
    assert json.loads((proj / "adapters" / "round_0" / "train.json").read_text())["n_labels"] == 4
    assert state["next_lambda"] == pytest.approx(mixing_weight(0, 3))  # round 1 mixes with lambda(0) = 1 - 1/3
    assert sum(state["answers"].values()) == 4
    second = queried(client)
    assert not set(second) & set(ids)
    assert client.get("/api/state").json()["query"]["lambda"] == pytest.approx(2 / 3)
    # the commands take over where the page left off
    (proj.parent / "answers.jsonl").write_text("".join(json.dumps({"id": i, "answer": GOLD[i]}) + "\n" for i in second))
    assert main(["label", str(proj), str(proj.parent / "answers.jsonl")]) == 0
    assert main(["status", str(proj)]) == 0
    assert "labeled 8, asked 8, awaiting labels 0" in capsys.readouterr().out
    assert client.get("/api/state").json()["can_train"]


def test_every_refusal_names_the_problem(client, proj):
    assert "no labels yet" in client.post("/api/train").json()["detail"]
    assert "nothing has been queried" in client.post("/api/label", json={"id": "q1", "answer": "true"}).json()["detail"]
    ids = queried(client)
    other = next(i for i in GOLD if i not in ids)

    def refusal(id_, answer):
        r = client.post("/api/label", json={"id": id_, "answer": answer})
        assert r.status_code == 400
        return r.json()["detail"]

    assert "not one of ['true', 'false']" in refusal(ids[0], "maybe")
    assert "empty answer" in refusal(ids[0], "  ")
    assert "was not in the last query" in refusal(other, "true")
    assert "unknown id 'nope'" in refusal("nope", "true")
    assert client.post("/api/label", json={"id": ids[0]}).status_code == 422  # no answer at all
    assert client.post("/api/label", json={"id": ids[0], "answer": "true"}).json()["new"]
    assert "already labeled 'true'" in refusal(ids[0], "false")
    assert client.post("/api/label", json={"id": ids[0], "answer": "True"}).json()["new"] is False  # the same answer
    assert "have no label yet" in client.post("/api/query", json={"n": 2}).json()["detail"]
    assert client.post("/api/query", json={"n": 0}).status_code == 422
    assert "has no label to undo" in client.post("/api/undo", json={"id": ids[1]}).json()["detail"]
    assert client.post("/api/undo", json={"id": ids[0]}).status_code == 200  # undo, then label it otherwise
    assert client.post("/api/label", json={"id": ids[0], "answer": "false"}).json()["new"]
    for i in ids[1:]:
        client.post("/api/label", json={"id": i, "answer": "true"})
    assert client.post("/api/train").status_code == 202
    assert "training is already running" in client.post("/api/train").json()["detail"]  # a second click
    assert client.post("/api/train").status_code == 409
    assert "running" in client.post("/api/label", json={"id": ids[1], "answer": "true"}).json()["detail"]
    assert "running" in client.post("/api/undo", json={"id": ids[0]}).json()["detail"]
    wait_for_job(client)
    assert "trained already" in client.post("/api/undo", json={"id": ids[0]}).json()["detail"]
    assert "no new labels since round 0" in client.post("/api/train").json()["detail"]
    labels = P.open_project(proj).labels()
    assert len(labels) == 4 and {r["id"]: r["answer"] for r in labels}[ids[0]] == "false"


def test_two_labelers_at_once_never_lose_or_double_a_label(client, proj):
    ids = queried(client, 12)
    tabs = [TestClient(create_app(proj), base_url="http://127.0.0.1") for _ in range(2)]
    # tab 0 answers every id "true"; tab 1 answers the even positions "true" too and the odd ones "false"
    answers = [{i: "true" for i in ids}, {i: ("true" if k % 2 == 0 else "false") for k, i in enumerate(ids)}]
    outcome = [{}, {}]
    start = threading.Barrier(2)

    def label(tab):
        start.wait()
        for i in ids:
            r = tabs[tab].post("/api/label", json={"id": i, "answer": answers[tab][i]})
            outcome[tab][i] = (r.status_code, r.json().get("new"), r.json().get("detail", ""))

    threads = [threading.Thread(target=label, args=(tab,)) for tab in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = P.open_project(proj).labels()
    assert sorted(r["id"] for r in labels) == sorted(ids)  # every id once: nothing lost, nothing doubled
    final = {r["id"]: r["answer"] for r in labels}
    for i in ids:
        codes = {outcome[0][i][0], outcome[1][i][0]}
        new = [outcome[tab][i][1] for tab in (0, 1) if outcome[tab][i][0] == 200]
        if answers[0][i] == answers[1][i]:  # the same answer from both: both accepted, written once
            assert codes == {200} and sorted(new) == [False, True]
        else:  # different answers: the first one wins, the other is refused
            assert codes == {200, 400}
            loser = 0 if outcome[0][i][0] == 400 else 1
            assert "already labeled" in outcome[loser][i][2] and final[i] == answers[1 - loser][i]


def test_another_address_needs_the_token(proj, monkeypatch):
    app = create_app(proj, token="s3cret", local=False)
    anyone = TestClient(app, base_url="http://192.0.2.7")
    for path in ("/", "/api/state", "/api/query"):
        r = anyone.get(path)
        assert r.status_code == 403 and "token" in r.text
    assert anyone.post("/api/query", json={"n": 2}).status_code == 403
    assert not (proj / "queries").exists()  # nothing was done
    assert anyone.get("/api/state", headers={"X-Starlora-Token": "wrong"}).status_code == 403
    assert anyone.get("/api/state", headers={"X-Starlora-Token": "s3cret"}).status_code == 200
    page = anyone.get("/?token=s3cret")  # the printed URL: the token then travels as a cookie
    assert page.status_code == 200 and anyone.cookies.get("starlora_token") == "s3cret"
    assert anyone.get("/api/state").status_code == 200
    # bound to localhost, a request addressed to another host name (DNS rebinding) is not served
    local = create_app(proj)
    assert TestClient(local, base_url="http://evil.example").get("/api/state").status_code == 403
    assert TestClient(local, base_url="http://localhost").get("/api/state").status_code == 200
    # serve() makes the token for any other address and prints the URL that carries it
    seen = {}
    monkeypatch.setattr(
        "starlora.serve.run_server",
        lambda app, sock: seen.update(app=app, host=sock.getsockname()[0], port=sock.getsockname()[1]),
    )
    logs = []
    monkeypatch.setattr("starlora.serve.logger.info", logs.append)
    serve(proj, host="0.0.0.0", port=0)  # 0: any free port, the one printed
    token = logs[0].split("?token=")[1].split()[0]
    assert seen["host"] == "0.0.0.0" and f":{seen['port']}/" in logs[0] and len(token) >= 16
    guarded = TestClient(seen["app"], base_url="http://192.0.2.7")
    assert guarded.get("/api/state").status_code == 403
    assert guarded.get(f"/api/state?token={token}").status_code == 200
    logs.clear()
    serve(proj, host="127.0.0.1", port=0)
    assert "token" not in logs[0]


def test_another_site_cannot_make_changes(client, proj):
    # a page elsewhere can make the user's browser POST to localhost (CSRF); browsers name the sending site
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
    ):
        r = client.post("/api/query", json={"n": 2}, headers=headers)
        assert r.status_code == 403 and "its own page" in r.text
    assert client.get("/api/state", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # reading is fine
    assert not (proj / "queries").exists()  # nothing was done
    # the page itself: Sec-Fetch-Site same-origin, or an Origin naming the host it asks
    assert client.post("/api/query", json={"n": 2}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 202
    wait_for_job(client)
    first = client.get("/api/query").json()["items"][0]["id"]
    r = client.post("/api/label", json={"id": first, "answer": GOLD[first]}, headers={"Origin": "http://127.0.0.1"})
    assert r.status_code == 200 and r.json()["new"]


def test_labels_undone_while_training_keep_the_adapter_out(proj, monkeypatch):
    P.query(proj, 4)
    ids = P.open_project(proj).queries()[0]["ids"]
    for i in ids:
        P.label_one(proj, i, GOLD[i])
    from starlora import rounds

    real = rounds.train  # what Round.train calls, in both loops

    def undo_meanwhile(*args, **kwargs):  # another process undoes a label this round is training on
        P.unlabel(proj, ids[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(rounds, "train", undo_meanwhile)
    with pytest.raises(P.StarloraError, match="undone or changed while round 0 trained; nothing saved"):
        P.train(proj)
    assert not (proj / "adapters" / "round_0").exists() and P.open_project(proj).adapters() == []
    monkeypatch.setattr(rounds, "train", real)
    P.label_one(proj, ids[0], GOLD[ids[0]])
    assert P.train(proj).name == "round_0"


def test_not_a_project_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) != 0
    assert "is not a starlora project" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killing_the_server_mid_training_leaves_the_folder_as_the_commands_would(proj):
    import httpx

    P.query(proj, 4)
    ids = P.open_project(proj).queries()[0]["ids"]
    for i in ids:
        P.label_one(proj, i, GOLD[i])
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "starlora", "serve", str(proj), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(url + "/api/state", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.post(url + "/api/train", timeout=10).status_code == 202
        for _ in range(600):  # kill it while the adapter is being trained
            job = httpx.get(url + "/api/state", timeout=5).json()["job"]
            if "training" in job["step"] or not job["running"]:
                break
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)
    finally:
        server.kill()
        server.wait()
    project = P.open_project(proj)
    assert len(project.labels()) == 4 and len(project.adapters()) in (0, 1)  # no half-written round counts
    if not project.adapters():
        assert main(["train", str(proj)]) == 0
    assert json.loads((proj / "adapters" / "round_0" / "train.json").read_text())["n_labels"] == 4
    assert main(["query", str(proj), "-n", "2"]) == 0


def test_an_open_task_takes_free_text_and_keeps_no_guess(tmp_path):
    (tmp_path / "pool.jsonl").write_text(
        "".join(json.dumps({"id": f"m{i}", "question": f"What is {i} plus {i}?\nAnswer:"}) + "\n" for i in range(8))
    )
    assert (
        main(
            [
                "init",
                str(tmp_path / "proj"),
                "--task",
                "open",
                "--pool",
                str(tmp_path / "pool.jsonl"),
                "--model",
                "tiny-random",
                "--epochs",
                "1",
                "--lora-r",
                "4",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    client = TestClient(create_app(tmp_path / "proj"), base_url="http://127.0.0.1")
    assert not client.get("/api/state").json()["project"]["closed"]
    ids = queried(client, 2)
    items = client.get("/api/query").json()["items"]
    assert all(it["guess"] is None and isinstance(it["score"], float) for it in items)
    assert client.post("/api/label", json={"id": ids[0], "answer": "  "}).status_code == 400
    assert client.post("/api/label", json={"id": ids[0], "answer": "the answer is 12"}).json()["new"]
    assert P.open_project(tmp_path / "proj").labels()[0]["answer"] == "the answer is 12"


def test_predict_the_unlabeled_pool_from_the_page(client, proj):
    r = client.post("/api/predict")
    assert r.status_code == 400 and "no adapter trained yet" in r.json()["detail"]
    ids = queried(client)
    for i in ids:
        assert client.post("/api/label", json={"id": i, "answer": GOLD[i]}).status_code == 200
    assert client.post("/api/train", json={}).status_code == 202
    busy = client.post("/api/predict")  # one job at a time, as training and querying
    assert busy.status_code == 409 and "training is already running" in busy.json()["detail"]
    assert wait_for_job(client)["job"]["error"] is None
    assert client.get("/api/predictions.csv").json()["detail"] == "no predictions yet: run Predict first"
    assert client.post("/api/predict", headers={"sec-fetch-site": "cross-site"}).status_code == 403
    assert client.post("/api/predict").status_code == 202
    state = wait_for_job(client)
    assert state["job"]["error"] is None and state["job"]["kind"] == "predict"
    assert state["predictions"] == {"round": 0, "adapter": "adapters/round_0", "rows": 26}
    unlabeled = [i for i in GOLD if i not in ids]  # pool order, the labeled four left out
    jsonl = client.get("/api/predictions.jsonl")
    assert jsonl.status_code == 200 and "round0-predictions.jsonl" in jsonl.headers["content-disposition"]
    records = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [r["id"] for r in records] == unlabeled
    lines = client.get("/api/predictions.csv").text.splitlines()
    assert lines[0] == "id,prediction,confidence,uncertainty,measure,p_true,p_false" and len(lines) == 27
    assert [line.split(",")[0] for line in lines[1:]] == unlabeled
    assert all(r["prediction"] in ("true", "false") and 0.5 <= r["confidence"] <= 1 for r in records)
    assert client.get("/api/predictions.txt").status_code == 400
