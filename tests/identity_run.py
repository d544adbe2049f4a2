"""The fixed tiny-model run behind tests/test_identity.py: `python tests/identity_run.py OUT` writes the run folder.
Its data are chosen so uncertainties are well separated (an output layer scaled up, prompts of very different
lengths and alphabets): selections do not hinge on float rounding, so they can be compared exactly."""

import json
import random
import sys
from pathlib import Path

import torch

from starlora.experiment import resolve, run
from starlora.models import tiny_random


def make_inputs(folder: Path) -> dict:
    model, tok = tiny_random()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    rng = random.Random(0)
    alphabets = ["abcdefghij", "0123456789", "XYZ!?.,;", "thequickbrownfox", "a\n\tb "]
    for name, n in (("train", 60), ("test", 16)):
        rows = []
        for i in range(n):
            alphabet = rng.choice(alphabets)
            text = "Q" + "".join(rng.choice(alphabet) for _ in range(rng.choice([3, 8, 20, 45, 90])))
            rows.append({"id": f"{name}{i}", "question": text, "answer": rng.choice(["true", "false"])})
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dict(model=str(folder / "model"), task="boolq", train_file=str(folder / "train.jsonl"),
                test_file=str(folder / "test.jsonl"), strategy="star-me", init_size=8, query_size=8, rounds=3,
                epochs=2, lr=1e-3, lora_r=4, probe_size=8, fewshot=2, candidate_subsample=24, score_batch_size=8,
                precision="fp32")


def main(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    run(resolve("paper", **make_inputs(out)), out / "run")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
