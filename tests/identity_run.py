"""The fixed tiny-model run behind tests/test_identity.py: `python tests/identity_run.py OUT` writes the run folder.
Its data keep uncertainties well apart (helpers.separated_inputs): selections do not hinge on float rounding, so they
can be compared exactly."""

import sys
from pathlib import Path

from helpers import separated_inputs
from starlora.experiment import resolve, run


def make_inputs(folder: Path) -> dict:
    return dict(**separated_inputs(folder, 60, 16), task="boolq", strategy="star-me", init_size=8, query_size=8,
                rounds=3, epochs=2, lr=1e-3, lora_r=4, probe_size=8, fewshot=2, candidate_subsample=24,
                score_batch_size=8, precision="fp32")


def main(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    run(resolve("paper", **make_inputs(out)), out / "run")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
