"""test_ray_sweep.py in a child pytest. Once in CI the whole suite ended at that module's first test with exit code 1
and no report, most likely Ray ending its driver process (it does so when a daemon of its local instance dies); in a
child, such an end fails these tests with the child's output instead of ending the suite unreported. A child that
ended without pytest's summary line is run once more and the first attempt's output kept as a warning; a test that
fails, fails. One parent test per marker of the module (none, slow, ci), so that `-m` selects the same tests as it
would in the module itself."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

MODULE = Path(__file__).with_name("test_ray_sweep.py")
SUMMARY = re.compile(r"^=* ?(\d+ \w+|no tests ran)\b.* in [\d.]+s\b", re.M)  # pytest's last line


def run_module(request, markexpr: str) -> None:
    pytest.importorskip("ray")
    parent = request.config.getoption("markexpr")
    selected = f"({parent}) and {markexpr}" if parent else markexpr
    # --capture=sys: what Ray's C++ core writes to fd 2 reaches the child's stderr even when the process dies mid-test
    command = [sys.executable, "-m", "pytest", "-q", "--color=no", "--capture=sys", "-m", selected, str(MODULE)]
    env = {**os.environ, "STARLORA_RAY_CHILD": "1"}
    tails = []
    for _ in range(2):
        child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        output = child.stdout + child.stderr
        if SUMMARY.search(output):
            earlier = f"\n\nan earlier attempt:\n{tails[0]}" if tails else ""
            assert child.returncode in (0, 5), output[-6000:] + earlier  # 5: the marker selected no test
            if tails:
                warnings.warn(f"the Ray child process ended unreported once; its output:\n{tails[0]}", stacklevel=1)
            return
        tails.append(f"exit code {child.returncode}\n{output[-3000:]}")
    pytest.fail("the Ray child process ended twice without pytest's report:\n" + "\n\n".join(tails))


def test_ray_sweeps(request):
    run_module(request, "not slow and not ci")


@pytest.mark.slow
def test_ray_sweeps_slow(request):
    run_module(request, "slow and not ci")


@pytest.mark.ci
def test_ray_killed_sweep(request):
    run_module(request, "ci")
