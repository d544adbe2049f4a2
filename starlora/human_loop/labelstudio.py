"""The files a person labels and the files read back: JSON lines, CSV, and Label Studio's formats (the tasks and
their labeling interface going out; JSON, JSON-MIN and CSV exports coming back). Our id travels as starlora_id in
Label Studio, whose own task id takes "id"."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..data import read_rows
from ..errors import StarloraError

FORMATS = {"jsonl": ".jsonl", "csv": ".csv", "labelstudio": ".json"}


def export(
    task, rows: list[dict], fmt: str, answer_field: str, shown: dict | None = None, model_version: str = "starlora"
) -> str:
    """The file a person fills in: id, the row's own fields, the prompt, and an empty answer. For Label Studio,
    `shown` (project.guesses: the score that chose each row, the model's guess and its confidence) adds the score as
    the task field starlora_uncertainty and the guess as a pre-annotation whose score is its confidence."""
    records = [{"id": r["id"], **r["fields"], "prompt": r["prompt"], answer_field: ""} for r in rows]
    if fmt == "jsonl":
        return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    if fmt == "csv":
        buf = io.StringIO()
        columns = list(dict.fromkeys(k for rec in records for k in rec))
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(
            {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in rec.items()} for rec in records
        )
        return buf.getvalue()
    # Label Studio: a list of tasks, each with a "data" object; the labeling config names $prompt. Our id goes in as
    # LS_ID: Label Studio's JSON-MIN export puts its own task id in "id".
    return (
        json.dumps(
            [labelstudio_task(task, rec, answer_field, shown or {}, model_version) for rec in records],
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )


LS_UNCERTAINTY = "starlora_uncertainty"


def labelstudio_task(task, record: dict, answer_field: str, shown: dict, model_version: str) -> dict:
    """One Label Studio task: the row as its data (our id as starlora_id, the score that chose it as
    starlora_uncertainty: a field of its own, not the prediction's score) and the model's guess as a prediction,
    scored by its confidence, which Label Studio shows as a pre-annotation."""
    id_ = record["id"]
    data = {LS_ID if k == "id" else k: v for k, v in record.items() if k != answer_field}
    if id_ in shown.get("scores", {}):
        data[LS_UNCERTAINTY] = shown["scores"][id_]
    item = {"data": data}
    guess = shown.get("guesses", {}).get(id_)
    if guess is not None and task.closed:
        item["predictions"] = [
            {
                "model_version": model_version,
                "score": shown.get("confidence", {}).get(id_),
                "result": [
                    {"from_name": answer_field, "to_name": "prompt", "type": "choices", "value": {"choices": [guess]}}
                ],
            }
        ]
    return item


LS_ID = "starlora_id"


def labelstudio_config(task, answer_field: str = "answer") -> str:
    """The labeling interface that goes with the exported tasks: choices for closed-set tasks, a text box otherwise.
    The control is named after the answer field, which is the column Label Studio's flat exports (JSON-MIN, CSV)
    give the answer."""
    if task.closed:
        choices = "".join(f'\n    <Choice value="{c}"/>' for c in task.candidates)
        answer = (
            f'  <Choices name="{answer_field}" toName="prompt" choice="single" required="true">{choices}\n  </Choices>'
        )
    else:
        answer = f'  <TextArea name="{answer_field}" toName="prompt" maxSubmissions="1" required="true"/>'
    return f'<View>\n  <Text name="prompt" value="$prompt"/>\n{answer}\n</View>\n'


def read_answers(path, answer_field: str) -> list[tuple[str, str | None, str | None]]:
    """(where, id, answer) from JSON lines, CSV, or a Label Studio export: JSON (tasks with annotations), JSON-MIN (a
    JSON list of flat rows) or CSV. Label Studio rows carry our id as starlora_id (its own id is the task's)."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return [
            (where, cleaned(row.get(LS_ID, row.get("id"))), cleaned(_first(row.get(answer_field))))
            for where, row in read_rows(path, (LS_ID, "id"))
        ]
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StarloraError(f"{path}: not a readable Label Studio JSON export ({e})") from None
    if not isinstance(tasks, list):
        raise StarloraError(f"{path}: a Label Studio export is a JSON list of tasks")
    out = []
    for n, item in enumerate(tasks, 1):
        where = f"{path}: task {n}"
        item = item if isinstance(item, dict) else {}
        if "data" not in item:  # JSON-MIN: the task's data and each control's answer in one flat row
            out.append((where, cleaned(item.get(LS_ID, item.get("id"))), cleaned(_first(item.get(answer_field)))))
            continue
        answer = None
        for annotation in item.get("annotations", []):
            if annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result", []):
                value = result.get("value", {})
                found = value.get("choices") or value.get("text")
                if found:
                    answer = found[0]
        data = item["data"] if isinstance(item["data"], dict) else {}
        out.append((where, cleaned(data.get(LS_ID, data.get("id"))), answer))
    return out


def _first(value):
    """A Label Studio answer may come as a list (choices, text areas): its first entry."""
    return value[0] if isinstance(value, list) and value else value


def cleaned(value) -> str | None:
    return None if value is None else str(value).strip()
