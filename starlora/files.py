"""Run-folder I/O: atomic writes (temporary file, flush, fsync, rename), JSON lines, and appends for files that grow
as work proceeds (the base-score cache).

Under `accelerate launch` every process computes the same state and only the main process writes it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from . import parallel
from .errors import StarloraError


def write_atomic(path: str | os.PathLike, text: str | Iterable[str]) -> None:
    """Replace `path` with `text` in one rename: a reader (or a resumed run) sees the old file or the new, never half.
    `text` may be an iterable of pieces, written as they come (a large file is never one string in memory).
    On failure (a full disk) the temporary file is removed and the old file stays as it was."""
    if not parallel.is_main():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if isinstance(text, str):
                f.write(text)
            else:
                f.writelines(text)
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
    write_atomic(path, (json.dumps(r) + "\n" for r in records))


def append_jsonl(path, records) -> None:
    """Append records as JSON lines, flushed and fsynced; lines already there are never rewritten. A line torn by a
    kill mid-append (read_jsonl ignores it) is cut off first, so it cannot glue onto the next record."""
    if not parallel.is_main():
        return
    path = Path(path)
    try:
        with open(path, "ab+") as f:
            _cut_torn_tail(f)
            f.writelines((json.dumps(r) + "\n").encode() for r in records)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise StarloraError(f"{path}: cannot write ({e.strerror or e}); the lines written before are kept") from None


def _cut_torn_tail(f) -> None:
    """Truncate an append-mode file after its last newline (nothing to do when it ends with one, or is empty)."""
    end = pos = f.seek(0, os.SEEK_END)
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        block = f.read(step)
        if pos == end and block.endswith(b"\n"):
            return
        if (i := block.rfind(b"\n")) >= 0:
            f.truncate(pos - step + i + 1)
            return
        pos -= step
    f.truncate(0)
