"""--report-to: each tracker's logged values read back with its own reader (TensorBoard's event accumulator, MLflow's
client on a local file store, W&B's offline run file) and compared with rounds.jsonl."""

import glob
import json
import struct

import pytest
from helpers import separated_run

from starlora import tracking
from starlora.config import resolve
from starlora.errors import StarloraError
from starlora.experiment import run
from starlora.files import read_jsonl

TOL = 1e-6  # TensorBoard stores float32


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def tiny_run(tmp_path, names):
    cfg = resolve("paper", **separated_run(tmp_path, 40, 8, strategy="star-me", query_size=6, epochs=2))
    out = tmp_path / "run"
    summary = run(cfg, out, report_to=tracking.parse_report_to(names))
    return out, read_jsonl(out / "rounds.jsonl"), summary


def wandb_records(path, block=32768):
    """The records of a W&B offline run file (LevelDB log format: 7-byte file header, then chunks of
    crc32 | length | type in 32 KiB blocks; each record a wandb Record protobuf)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_three_trackers_log_what_rounds_jsonl_holds(tmp_path, offline_trackers):
    out, rounds, summary = tiny_run(tmp_path, "tensorboard,mlflow,wandb")
    steps = sum(r["train_steps"] for r in rounds)
    assert steps == (2 + 3 + 5) * 2  # 6, 12, 18 labels in batches of 4 (the last one short), 2 epochs
    name = "boolq/star-me/seed0"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / name))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, steps + 1))
    for figure in ("accuracy", "brier", "train_loss", "n_labeled"):
        logged = events.Scalars(f"round/{figure}")
        assert [e.step for e in logged] == [0, 1, 2]
        assert [e.value for e in logged] == pytest.approx([r[figure] for r in rounds], rel=TOL)
    assert events.Scalars("summary/auc")[0].value == pytest.approx(summary["auc"], rel=TOL)
    # the last epoch's mean of the per-step losses is the round's train_loss
    last_epoch = [e.value for e in loss][steps - 5 :]  # round 2: 5 steps per epoch
    assert sum(last_epoch) / 5 == pytest.approx(rounds[2]["train_loss"], rel=1e-5)

    import mlflow

    client = mlflow.tracking.MlflowClient()
    (found,) = mlflow.search_runs(experiment_names=["starlora"], output_format="list")
    assert found.info.run_name == name
    assert found.data.params["strategy"] == "star-me" and found.data.params["lora_r"] == "4"
    history = client.get_metric_history(found.info.run_id, "round/accuracy")
    assert [(m.step, m.value) for m in history] == [(r["round"], pytest.approx(r["accuracy"])) for r in rounds]
    assert len(client.get_metric_history(found.info.run_id, "train/loss")) == steps
    assert found.data.metrics["summary/auc"] == pytest.approx(summary["auc"])

    (path,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = list(wandb_records(path))
    assert [r.run.display_name for r in records if r.WhichOneof("record_type") == "run"][0] == name
    config = {
        u.key: json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
    }
    assert config["strategy"] == "star-me" and config["query_size"] == 6
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]  # W&B stores "a/b" as the nested key [a, b]
    logged_rounds = [h for h in history if "round/accuracy" in h]
    assert [(h["round"], h["round/accuracy"]) for h in logged_rounds] == [(r["round"], r["accuracy"]) for r in rounds]
    assert [h["optimizer_step"] for h in history if "train/loss" in h] == list(range(1, steps + 1))


def test_report_to_checks_names_and_installed_packages(monkeypatch):
    assert tracking.parse_report_to("none") == () and tracking.parse_report_to(None) == ()
    assert tracking.parse_report_to("tensorboard,tensorboard") == ("tensorboard",)
    with pytest.raises(StarloraError, match="unknown tracker 'comet'"):
        tracking.parse_report_to("tensorboard,comet")
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StarloraError, match=r"needs the wandb package: pip install 'starlora\[wandb\]'"):
        tracking.parse_report_to("wandb")


def test_human_loop_train_logs_one_tracker_run_per_round(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from starlora import project as P

    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": f"Q{i}?", "passage": "p"}) + "\n" for i in range(12))
    )
    cfg = resolve(
        "paper", P.MethodConfig, model="tiny-random", task="boolq", strategy="random", epochs=1, batch_size=2, lora_r=4
    )
    proj = P.init(tmp_path / "proj", cfg, pool)
    asked = read_jsonl(P.query(proj.folder, 4, "jsonl", random=True))
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(json.dumps({"id": r["id"], "answer": ["no", "yes"][i % 2]}) + "\n" for i, r in enumerate(asked))
    )
    P.label(proj.folder, labels)
    P.train(proj.folder, report_to=("tensorboard",))
    events = EventAccumulator(str(proj.folder / "tensorboard" / "proj" / "round0"))
    events.Reload()
    record = json.loads((proj.folder / "adapters" / "round_0" / "train.json").read_text())
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]  # 4 labels in batches of 2, 1 epoch
    assert events.Scalars("round/train_loss")[0].value == pytest.approx(record["train_loss"], rel=TOL)
