"""test_ray_sweep.py in a child pytest, so that Ray ending its driver process (when a daemon of the local instance
dies, Ray exits the driver with code 1 and no report) fails these tests with Ray's own output instead of ending the
whole suite unreported. A child that ended without pytest's summary line is run once more, and the first attempt's
output is kept as a warning; a test that fails, fails."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

MODULE = Path(__file__).with_name("test_ray_sweep.py")


def run_module(markexpr: str) -> None:
    pytest.importorskip("ray")
    command = [sys.executable, "-m", "pytest", "-q", "-m", markexpr, str(MODULE)]
    env = {**os.environ, "STARLORA_RAY_CHILD": "1"}
    tails = []
    for _ in range(2):
        child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        output = child.stdout + child.stderr
        if re.search(r"^=* ?(\d+ \w+|no tests ran)\b.* in [\d.]+s\b", output, re.M):  # pytest's summary line
            assert child.returncode in (0, 5), output[-6000:]  # 5: the marker selected no test
            if tails:
                warnings.warn(f"the Ray child process ended unreported once; its output:\n{tails[0]}", stacklevel=1)
            return
        tails.append(f"exit code {child.returncode}\n{output[-3000:]}")
    pytest.fail("the Ray child process ended twice without pytest's report:\n" + "\n\n".join(tails))


def test_ray_sweeps(request):
    parent = request.config.getoption("markexpr")
    run_module(f"({parent}) and not ci" if parent else "not ci")


@pytest.mark.ci
def test_ray_killed_sweep():
    run_module("ci")
