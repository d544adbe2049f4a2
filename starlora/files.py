"""Run-folder I/O: atomic writes (temporary file, flush, fsync, rename), JSON lines, and appends for files that grow
as work proceeds (the base-score cache).

Under `accelerate launch` every process computes the same state and only the main process writes it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from . import parallel
from .errors import StarloraError

logger = logging.getLogger(__name__)


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


def check_out_folder(out) -> None:
    """--out must be a folder, or creatable as one: a file there (or above it) is refused before anything runs."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise StarloraError(f"--out {out}: is a file, not a folder")
    parent = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise StarloraError(f"--out {out}: cannot create a folder under {parent}")


def write_json(path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_jsonl(path, schema: dict | None = None, appended: bool = False) -> list[dict]:
    """Records of a JSON-lines file, read strictly: a line that is not a JSON object (or lacks a `schema` field, a
    name -> type mapping) stops with one line naming the file and line, so no command acts on, or rewrites, a file
    it could not read whole. The one exception, in a file that grows by appends (`appended`: labels, score caches),
    is a torn last line (no newline at its end) that a kill mid-append leaves: it is skipped with a warning, and the
    next append removes it. A file only ever replaced whole cannot be torn, so there it is an error too. Blank lines
    are skipped."""
    return list(iter_jsonl(path, schema, appended))


def iter_jsonl(path, schema: dict | None = None, appended: bool = False):
    """read_jsonl's records one at a time, the file read line by line: memory stays flat however long it is."""
    path = Path(path)
    if not path.exists():
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise StarloraError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        for number, line in enumerate(f, 1):
            last = not line.endswith(b"\n")  # text after the final newline: only a torn write leaves any
            if not line.strip():
                continue
            try:
                record = json.loads(
                    line.decode("utf-8").removeprefix("\ufeff") if number == 1 else line.decode("utf-8")
                )
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                if last and appended:
                    logger.warning(
                        f"{path}:{number}: skipping a torn last line (left by an interrupted write); the "
                        "next write to this file removes it"
                    )
                    break
                why = "not valid UTF-8" if isinstance(e, UnicodeDecodeError) else f"malformed JSON ({e.msg})"
                raise StarloraError(
                    f"{path}:{number}: {why}; nothing was changed: repair or remove that line"
                ) from None
            yield check_record(record, schema, f"{path}:{number}")


def check_record(record, schema: dict | None, where: str) -> dict:
    """The record, if it is a JSON object holding every `schema` field with its type; else one line naming `where`."""
    if not isinstance(record, dict):
        raise StarloraError(f"{where}: expected a JSON object, got {type(record).__name__}; nothing was changed")
    for name, kind in (schema or {}).items():
        value = record.get(name, _MISSING)
        if value is _MISSING or not isinstance(value, kind) or isinstance(value, bool) and bool not in _kinds(kind):
            got = "missing" if value is _MISSING else f"{value!r}"
            raise StarloraError(f"{where}: field {name!r} is {got}, expected {_type_words(kind)}; nothing was changed")
    return record


_MISSING = object()


def _kinds(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_words(kind) -> str:
    return " or ".join(
        {
            str: "text",
            int: "an integer",
            float: "a number",
            list: "a list",
            dict: "an object",
            type(None): "null",
            bool: "true or false",
        }[k]
        for k in _kinds(kind)
    )


def read_json(path, schema: dict | None = None) -> dict:
    """A JSON object file (config.json, summary.json, train.json, ...), read strictly: one line naming the file and
    the line where it breaks."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise StarloraError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StarloraError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise StarloraError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); nothing was changed") from None
    return check_record(value, schema, str(path))


def write_jsonl(path, records) -> None:
    write_atomic(path, (json.dumps(r) + "\n" for r in records))


def append_jsonl(path, records) -> None:
    """Append records as JSON lines, flushed and fsynced; lines already there are never rewritten. A line torn by a
    kill mid-append (read_jsonl skips it) is cut off first, and a whole last line without its newline is ended, so
    nothing glues onto the next record."""
    if not parallel.is_main():
        return
    path = Path(path)
    try:
        with open(path, "ab+") as f:
            _cut_torn_tail(f)
            size = f.seek(0, os.SEEK_END)
            try:
                f.write(b"".join((json.dumps(r) + "\n").encode() for r in records))
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                f.truncate(size)  # a full disk: none of these records, so a caller's all-or-nothing holds
                raise
    except OSError as e:
        raise StarloraError(f"{path}: cannot write ({e.strerror or e}); the lines written before are kept") from None


def _cut_torn_tail(f) -> None:
    """Make an append-mode file end with a newline before an append: a last line without one is ended when it is a
    whole JSON value (saved by an editor that adds no final newline: read_jsonl counted it), and cut when it is
    not (torn by a kill mid-append: read_jsonl skipped it). Nothing to do when the file ends with one, or is empty."""
    end = pos = f.seek(0, os.SEEK_END)
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        block = f.read(step)
        if pos == end and block.endswith(b"\n"):
            return
        if (i := block.rfind(b"\n")) >= 0:
            _end_or_cut(f, pos - step + i + 1, end)
            return
        pos -= step
    _end_or_cut(f, 0, end)


def _end_or_cut(f, start: int, end: int) -> None:
    f.seek(start)
    try:
        json.loads(f.read(end - start).decode("utf-8").removeprefix("\ufeff"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        f.truncate(start)
        return
    f.write(b"\n")


ROUND = {"round": int, "n_labeled": int, "accuracy": (int, float)}  # what a report reads
RESUMED_ROUND = {**ROUND, "added": list, "selected": list}  # what a resumed run reads too


def read_rounds(folder, schema: dict = ROUND) -> list[dict]:
    """A run's finished rounds (rounds.jsonl), read strictly: a damaged line stops `run`, `sweep` and `report` with
    its file and line instead of silently redoing or dropping that round."""
    path = Path(folder) / "rounds.jsonl"
    records = read_jsonl(path, schema)
    for t, r in enumerate(records):
        if r["round"] != t:
            raise StarloraError(f"{path}: line {t + 1} is round {r['round']}, expected {t}; nothing was changed")
    return records
