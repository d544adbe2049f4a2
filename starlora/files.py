"""Run-folder I/O: atomic writes (temporary file, flush, fsync, rename) and JSON lines.

Under `accelerate launch` every process computes the same state and only the main process writes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import parallel
from .errors import StarloraError


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` in one rename: a reader (or a resumed run) sees the old file or the new, never half.
    On failure (a full disk) the temporary file is removed and the old file stays as it was."""
    if not parallel.is_main():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder: say which file, keep the old one
        tmp.unlink(missing_ok=True)
        raise StarloraError(f"{path}: cannot write ({e.strerror or e}); the previous state is kept") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_jsonl(path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (killed mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def write_jsonl(path, records) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
