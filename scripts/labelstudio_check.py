"""The human loop's Label Studio round trip against a real Label Studio (PyPI `label-studio`, pinned below).

Installs Label Studio in its own environment (.labelstudio-venv, once), starts it on localhost with a throw-away data
folder, and for a closed-set task (BoolQ: choices) and an open one (GSM8K: a text box): `starlora init`, `starlora
query --format labelstudio` (the model's guesses as pre-annotations, the uncertainty that chose each task as its
starlora_uncertainty field, both checked as Label Studio holds them), a Label Studio project with the labeling config
starlora wrote, the query file imported through its API, one annotation per task submitted through its API as an
annotator would, the project exported as JSON, JSON-MIN and CSV, and each export fed to `starlora label` in a fresh
copy of the project, whose labels must be exactly the answers given. Exits non-zero on the first difference.

    .venv/bin/python scripts/labelstudio_check.py          # about 3 minutes once Label Studio is installed
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LABEL_STUDIO = "label-studio==1.23.2"
ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".labelstudio-venv"
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a local, throw-away instance's legacy API token
EXPORTS = {"JSON": ".json", "JSON_MIN": ".json", "CSV": ".csv"}
STARLORA = [sys.executable, "-m", "starlora"]


def install() -> Path:
    binary = VENV / "bin" / "label-studio"
    if not binary.exists():
        print(f"installing {LABEL_STUDIO} into {VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", LABEL_STUDIO], check=True)
    return binary


class LabelStudio:
    def __init__(self, binary: Path, data: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true"}
        self.log = open(data / "label-studio.log", "w")
        self.process = subprocess.Popen(
            [
                str(binary),
                "start",
                "--no-browser",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--username",
                "annotator@example.com",
                "--password",
                "starlora-check",
                "--user-token",
                TOKEN,
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                self.call("GET", "/api/projects/")
                return
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit(f"Label Studio exited; see {data / 'label-studio.log'}")
                time.sleep(2)
        raise SystemExit("Label Studio did not answer within 5 minutes")

    def call(self, method: str, path: str, body=None, raw: bool = False):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            content = response.read()
        return content if raw else json.loads(content or b"null")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def starlora(*args) -> str:
    done = subprocess.run([*STARLORA, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"starlora {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def round_trip(ls: LabelStudio, work: Path, task: str, pool_rows: list[dict], answer_of) -> None:
    pool = work / f"{task}-pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in pool_rows))
    project = work / f"{task}-project"
    starlora("init", str(project), "--task", task, "--pool", str(pool), "--model", "tiny-random")
    starlora("query", str(project), "-n", "4", "--format", "labelstudio")  # the base model's pick: pre-annotations
    tasks_file = project / "queries" / "round_0.json"
    config = (project / "queries" / "labelstudio_config.xml").read_text()
    created = ls.call("POST", "/api/projects/", {"title": f"starlora {task}", "label_config": config})
    ls.call("POST", f"/api/projects/{created['id']}/import", json.loads(tasks_file.read_text()))
    listed = ls.call("GET", f"/api/tasks/?project={created['id']}&page_size=100")
    tasks = listed["tasks"] if isinstance(listed, dict) and "tasks" in listed else listed
    given = {}
    chosen = json.loads((project / "queries.jsonl").read_text().splitlines()[-1])
    for item in tasks:
        ours = item["data"]["starlora_id"]
        # the uncertainty that chose the task is a field of its own; the model's guess a prediction scored by its
        # confidence (closed-set tasks: an open task keeps no guess)
        if item["data"].get("starlora_uncertainty") != chosen["scores"][ours]:
            raise SystemExit(
                f"{task}: Label Studio holds starlora_uncertainty "
                f"{item['data'].get('starlora_uncertainty')} for {ours}, starlora wrote "
                f"{chosen['scores'][ours]}"
            )
        predictions = ls.call("GET", f"/api/predictions/?task={item['id']}")
        if "<Choices" in config:
            (guess,) = predictions
            if (
                guess["result"][0]["value"]["choices"] != [chosen["guesses"][ours]]
                or abs(guess["score"] - chosen["confidence"][ours]) > 1e-6
            ):
                raise SystemExit(
                    f"{task}: Label Studio's prediction for {ours} is {guess}, starlora's guess "
                    f"{chosen['guesses'][ours]} with confidence {chosen['confidence'][ours]}"
                )
        elif predictions:
            raise SystemExit(f"{task}: an open task's query carries no guess, Label Studio holds {predictions}")
        answer = answer_of(ours)
        kind, value = ("choices", {"choices": [answer]}) if "<Choices" in config else ("textarea", {"text": [answer]})
        ls.call(
            "POST",
            f"/api/tasks/{item['id']}/annotations/",
            {"result": [{"from_name": "answer", "to_name": "prompt", "type": kind, "value": value}]},
        )
        given[ours] = answer
    assert len(given) == 4, f"{task}: Label Studio holds {len(given)} tasks, not 4"
    for fmt, suffix in EXPORTS.items():
        export = work / f"{task}-export-{fmt}{suffix}"
        export.write_bytes(ls.call("GET", f"/api/projects/{created['id']}/export?exportType={fmt}", raw=True))
        copy = work / f"{task}-project-{fmt}"
        shutil.copytree(project, copy)
        starlora("label", str(copy), str(export))
        labels = {
            json.loads(line)["id"]: json.loads(line)["answer"]
            for line in (copy / "labels.jsonl").read_text().splitlines()
        }
        if labels != given:
            raise SystemExit(f"{task} {fmt}: starlora label imported {labels}, Label Studio was given {given}")
        print(f"{task}: Label Studio {fmt} export -> starlora label: {len(labels)} labels, as given", flush=True)


def main() -> None:
    binary = install()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "ls-data").mkdir()
        ls = LabelStudio(binary, work / "ls-data")
        try:
            boolq = [{"id": f"b{i}", "question": f"is item {i} red", "passage": f"Item {i} is red."} for i in range(10)]
            round_trip(ls, work, "boolq", boolq, lambda i: ["yes", "no"][int(i[1:]) % 2])
            gsm8k = [{"id": f"g{i}", "question": f"What is {i} + {i}?"} for i in range(10)]
            round_trip(
                ls, work, "gsm8k", gsm8k, lambda i: f"{i[1:]} + {i[1:]} = {2 * int(i[1:])}\n#### {2 * int(i[1:])}"
            )
        finally:
            ls.stop()
    print(
        "Label Studio round trip: every export format imports as given; the pre-annotations and the uncertainty "
        "field arrive as written"
    )


if __name__ == "__main__":
    main()
