"""Model cards on every saved adapter, and --push-to-hub against a stand-in for the Hub API."""

import json

import pytest
from helpers import separated_inputs
from huggingface_hub import ModelCard

from starlora import card, cli
from starlora.files import read_jsonl


class FakeHub:
    """Records what would go to the Hub; `fail` raises as an unreachable Hub does."""

    def __init__(self, fail: bool = False):
        self.fail, self.repos, self.uploads = fail, [], []

    def create_repo(self, repo_id, repo_type, exist_ok):
        if self.fail:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        self.repos.append((repo_id, repo_type, exist_ok))

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        from pathlib import Path

        self.uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: fake)
    return fake


def run_args(tmp_path):
    paths = separated_inputs(tmp_path, 30, 6)
    return [
        "run",
        "--model",
        paths["model"],
        "--task",
        "boolq",
        "--train-file",
        paths["train_file"],
        "--test-file",
        paths["test_file"],
        "--strategy",
        "star-me",
        "--init-size",
        "4",
        "--query-size",
        "4",
        "--rounds",
        "2",
        "--epochs",
        "1",
        "--lora-r",
        "2",
        "--probe-size",
        "0",
        "--out",
        str(tmp_path / "run"),
    ]


def test_a_run_writes_a_model_card_and_pushes_adapter_and_card(tmp_path, hub):
    args = run_args(tmp_path)
    assert cli.main([*args, "--push-to-hub", "me/boolq-star"]) == 0
    adapter = tmp_path / "run" / "adapter"
    loaded = ModelCard.load(adapter / "README.md")  # the Hub's own parser reads it
    meta = loaded.data.to_dict()
    assert meta["library_name"] == "peft" and meta["tags"] == [
        "starlora",
        "lora",
        "active-learning",
        "star-me",
        "boolq",
    ]
    assert "base_model" not in meta and "datasets" not in meta  # a local model folder and user files: not on the Hub
    rounds = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    for r in rounds:  # the learning curve, one row per round
        assert f"| {r['round']} | {r['n_labeled']} | {r['accuracy']:.1f} |" in loaded.text
    assert "starlora run --model" in loaded.text and "--push-to-hub me/boolq-star" in loaded.text
    assert hub.repos == [("me/boolq-star", "model", True)]
    assert hub.uploads == [("me/boolq-star", ["README.md", "adapter_config.json", "adapter_model.safetensors"])]


def test_no_network_is_one_warning_and_nothing_local_is_lost(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: FakeHub(fail=True))
    assert cli.main([*run_args(tmp_path), "--push-to-hub", "me/x"]) == 0
    err = capsys.readouterr().err
    assert "starlora: warning: --push-to-hub me/x: upload failed (Failed to resolve 'huggingface.co')" in err
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "run" / "adapter" / "README.md").exists()


def test_builtin_task_cards_name_the_hub_base_model_and_dataset(tmp_path):
    from starlora.config import resolve

    cfg = resolve("paper", model="smollm2", task="gsm8k", strategy="me")
    card.write_card(tmp_path, cfg, [{"round": 0, "labeled": 500, "accuracy": 31.0}], None, "gsm8k")
    meta = ModelCard.load(tmp_path / "README.md").data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["datasets"] == ["openai/gsm8k"]
    assert card.hub_dataset("closed", "hf:me/data:cfg@train") == "me/data"


def test_human_loop_train_cards_every_round_and_pushes(tmp_path, hub):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q{i}?", "passage": "p"}) + "\n" for i in range(8)))
    proj = tmp_path / "proj"
    assert (
        cli.main(["init", str(proj), "--task", "boolq", "--pool", str(pool), "--model", "tiny-random", "--epochs", "1"])
        == 0
    )
    assert cli.main(["query", str(proj), "-n", "2", "--random"]) == 0
    asked = read_jsonl(proj / "queries" / "round_0.jsonl")
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"id": r["id"], "answer": "yes"}) + "\n" for r in asked))
    assert cli.main(["label", str(proj), str(tmp_path / "l.jsonl")]) == 0
    assert cli.main(["train", str(proj), "--push-to-hub", "me/proj"]) == 0
    text = (proj / "adapters" / "round_0" / "README.md").read_text()
    assert "| 0 | 2 | – |" in text and "starlora train" in text  # no held-out set: no accuracy
    assert hub.uploads[0][0] == "me/proj" and "train.json" in hub.uploads[0][1]
