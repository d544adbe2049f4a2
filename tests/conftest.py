import os

import pytest

os.environ.setdefault("STARLORA_NO_PROGRESS", "1")


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
