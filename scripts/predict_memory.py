"""Peak memory of `starlora predict` against the input's size: a project on the tiny model with a random adapter,
generated inputs of 10,000 and 100,000 rows (JSON lines), each predicted in a fresh process whose peak RSS
(getrusage of the child) is printed. Flat memory: the two peaks differ by the id set, not by the rows.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/predict_memory.py        # a few minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


MEASURED = (
    "import atexit, resource, sys\n"  # the command line, saying its own peak RSS (KiB on Linux) at exit
    "atexit.register(lambda: print('peak-rss-kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
    "file=sys.stderr))\n"
    "from starlora.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def main(sizes=(10_000, 100_000)) -> None:
    from helpers import lora_model

    from starlora.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pool = work / "pool.jsonl"
        pool.write_text(
            "".join(json.dumps({"id": f"p{i}", "question": f"Is item {i} red?\nAnswer:"}) + "\n" for i in range(20))
        )
        assert (
            cli(
                [
                    "init",
                    str(work / "proj"),
                    "--task",
                    "boolq",
                    "--pool",
                    str(pool),
                    "--model",
                    "tiny-random",
                    "--lora-r",
                    "4",
                    "--precision",
                    "fp32",
                ]
            )
            == 0
        )
        model, _ = lora_model()
        model.save_pretrained(work / "proj" / "adapters" / "round_0")
        (work / "proj" / "adapters" / "round_0" / "train.json").write_text('{"round": 0, "n_labels": 0}')
        for n in sizes:
            rows = work / f"rows{n}.jsonl"
            with open(rows, "w") as f:
                for i in range(n):
                    f.write(
                        json.dumps(
                            {
                                "id": f"r{i}",
                                "question": f"Is item number {i} of the list red or blue, as the text says?\nAnswer:",
                            }
                        )
                        + "\n"
                    )
            start = time.time()
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    MEASURED,
                    "predict",
                    str(work / "proj"),
                    "--input",
                    str(rows),
                    "--out",
                    str(work / f"out{n}.csv"),
                ],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "STARLORA_NO_PROGRESS": "1"},
            )
            peak = int(done.stderr.rsplit("peak-rss-kib ", 1)[1].split()[0]) / 1024
            lines = sum(1 for _ in open(work / f"out{n}.csv")) - 1
            print(
                f"{n:>7} rows ({rows.stat().st_size / 2**20:.1f} MiB input): {lines} predictions in "
                f"{time.time() - start:.0f} s, peak RSS {peak:.0f} MiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
