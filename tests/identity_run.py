"""The fixed tiny-model run behind tests/test_identity.py: `python tests/identity_run.py OUT` writes the run folder;
`python tests/identity_run.py --record` re-records tests/data/identity_run.json after a deliberate change of the
numbers (say which in the commit).
Its data keep uncertainties well apart (helpers.separated_inputs): selections do not hinge on float rounding, so they
can be compared exactly."""

import json
import sys
import tempfile
from pathlib import Path

from helpers import separated_inputs

from starlora.experiment import resolve, run


def make_inputs(folder: Path) -> dict:
    return dict(
        **separated_inputs(folder, 60, 16),
        task="boolq",
        strategy="star-me",
        init_size=8,
        query_size=8,
        rounds=3,
        epochs=2,
        lr=1e-3,
        lora_r=4,
        probe_size=8,
        fewshot=2,
        candidate_subsample=24,
        score_batch_size=8,
        precision="fp32",
    )


def main(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    run(resolve("paper", **make_inputs(out)), out / "run")


def recorded(folder: Path) -> dict:
    """The run's rounds (timings dropped) and summary (the temporary model path dropped)."""
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("model")
    return {"rounds": [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rounds], "summary": summary}


if __name__ == "__main__":
    if sys.argv[1] == "--record":
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
            golden = Path(__file__).parent / "data" / "identity_run.json"
            golden.write_text(json.dumps(recorded(Path(tmp) / "run"), indent=1) + "\n")
    else:
        main(Path(sys.argv[1]))
