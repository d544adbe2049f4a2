"""Which code made a run: the code revision recorded in config.json ("versions": {"revision": ...}), summary.json
("revision") and a project's project.json, read back by `report` and `sweep`.

In a git checkout of starlora the revision is the commit with a dirty flag; elsewhere (an installed package) it is
the package version. Both carry a sha256 over the package's source files, so two runs of the same code agree on it
whatever the install. Light on purpose: `report` imports it without loading torch."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# What "dirty" looks at, relative to the checkout's top: the package and what pins its dependencies. Only these:
# a study folder (results/) committing its finished runs, or an edited README or test, must not mark the runs that
# follow as made by changed code; everything that changes what a run computes is under these paths.
CODE_PATHS = ("starlora", "pyproject.toml", "constraints*.txt")
UNRECORDED = "unrecorded"  # runs made before the revision was recorded
ORACLE_NOTE = "reads gold labels of the unlabeled pool (official STAR code); not a label-free method"


def source_sha256(package: Path = PACKAGE) -> str:
    """sha256 over the package's files (relative path and bytes, in path order; caches left out)."""
    digest = hashlib.sha256()
    for path in sorted(
        p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    ):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _git(top: Path, *args) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(top), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def code_revision(package: Path = PACKAGE) -> dict:
    """{"commit", "dirty", "source_sha256"} when `package` sits at the top of a git checkout that tracks it;
    otherwise {"version", "source_sha256"}. Computed once per process (the code a process runs is what it
    imported). dirty: uncommitted changes (untracked files included) under CODE_PATHS only."""
    from . import __version__

    source = source_sha256(package)
    top = package.parent
    commit = _git(top, "rev-parse", "--verify", "HEAD")
    tracked = _git(top, "ls-files", "--", package.name)
    inside = _git(top, "rev-parse", "--show-toplevel")
    if commit and tracked and inside and Path(inside).resolve() == top.resolve():
        status = _git(
            top,
            "status",
            "--porcelain",
            "--untracked-files=normal",
            "--",
            *(package.name if p == "starlora" else p for p in CODE_PATHS),
        )
        if status is not None:
            return {"commit": commit, "dirty": bool(status), "source_sha256": source}
    return {"version": __version__, "source_sha256": source}


def revision_label(revision: dict | None) -> str:
    """Short and comparable: 4abb4cc (a clean commit), 4abb4cc+dirty:1a2b3c4d (uncommitted changes; the source
    hash tells two dirty trees apart), 0.1.0+src:1a2b3c4d (no git checkout), 'unrecorded' (no revision)."""
    if not isinstance(revision, dict):
        return UNRECORDED
    source = str(revision.get("source_sha256", ""))[:8]
    if revision.get("commit"):
        return str(revision["commit"])[:7] + (f"+dirty:{source}" if revision.get("dirty") else "")
    if revision.get("version"):
        return f"{revision['version']}+src:{source}"
    return UNRECORDED


def versions() -> dict:
    """What made a run or project (config.json and project.json "versions"): package versions, device, the machine
    (hardware.machine: CPU model and kernels, or GPU name), processes, and the code revision (git commit and dirty
    flag, or the version with a hash of the source; code_revision)."""
    import peft
    import torch
    import transformers

    from . import __version__, parallel
    from .hardware import device, machine

    return {
        "starlora": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": str(device()),
        "processes": parallel.world()[1],
        "sharded": parallel.sharded(),
        "machine": machine(),
        "revision": code_revision(),
    }
