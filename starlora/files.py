"""Run-folder I/O: atomic writes (temporary file, flush, fsync, rename) and append-only JSON lines."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
