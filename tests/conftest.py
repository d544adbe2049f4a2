import os

import pytest
from hypothesis import settings

os.environ.setdefault("STARLORA_NO_PROGRESS", "1")
# The tiny model's matmuls are too small for threads to pay off, and on a busy 2-core machine two threads per process
# fight over the cores (10-100x slower); subprocesses the tests start inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test may need the hub: an unknown model name fails at once instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The same examples on every machine: a property test that fails in CI fails the same way here.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session")
def tiny():
    from starlora.models import tiny_random

    return tiny_random()


@pytest.fixture
def write(tmp_path):
    """write(name, text) -> path of a file in a fresh temporary folder."""

    def _write(name, text, mode="w"):
        path = tmp_path / name
        if mode == "wb":
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return _write


# test_ray_sweep.py drives Ray from the test process, and Ray ends that process (exit 1, no report) when a daemon of
# its local instance dies: most likely how CI once lost the whole suite. test_ray_in_a_child.py runs it in a child.
collect_ignore = [] if os.environ.get("STARLORA_RAY_CHILD") else ["test_ray_sweep.py"]
