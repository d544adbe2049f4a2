"""Every run records the code revision that made it (provenance.py): git commit and dirty flag (changes under the
package and its pins only), or the version with a hash of the source; a sweep resuming on other code says so."""

import hashlib
import json
import logging
import subprocess

import pytest

from starlora import __version__
from starlora import sweep as S
from starlora.config import resolve
from starlora.provenance import code_revision, revision_label, source_sha256


def git(top, *args):
    subprocess.run(
        ["git", "-C", str(top), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


@pytest.fixture
def checkout(tmp_path):
    """A git checkout holding a package `pkg`, its pyproject and a study folder, all committed."""
    top = tmp_path / "repo"
    (top / "pkg" / "web").mkdir(parents=True)
    (top / "pkg" / "__init__.py").write_text("x = 1\n")
    (top / "pkg" / "web" / "index.html").write_text("<p>\n")
    (top / "pyproject.toml").write_text("[project]\n")
    (top / "results").mkdir()
    (top / "results" / "a.json").write_text("{}")
    git(top, "init", "-q")
    git(top, "add", ".")
    git(top, "commit", "-qm", "first")
    code_revision.cache_clear()
    yield top
    code_revision.cache_clear()


def head(top):
    return subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_a_checkout_records_its_commit_and_only_code_changes_make_it_dirty(checkout):
    clean = code_revision(checkout / "pkg")
    assert clean == {"commit": head(checkout), "dirty": False, "source_sha256": source_sha256(checkout / "pkg")}
    # a study committing results, an untracked result, an edited README: not the code
    (checkout / "results" / "b.json").write_text("{}")
    (checkout / "README.md").write_text("notes\n")
    (checkout / "results" / "a.json").write_text('{"finished": true}')
    (checkout / "pkg" / "__pycache__").mkdir()
    (checkout / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"\0")  # ignored by hash (git would list it here)
    code_revision.cache_clear()
    assert code_revision(checkout / "pkg")["dirty"] is True  # ... but an untracked file in the package is code
    (checkout / ".gitignore").write_text("__pycache__/\n")
    code_revision.cache_clear()
    assert code_revision(checkout / "pkg") == clean
    for path, text in [
        ("pkg/__init__.py", "x = 2\n"),
        ("pyproject.toml", "[project]\nname = 'p'\n"),
        ("constraints.txt", "torch==2\n"),
    ]:
        (checkout / path).write_text(text)
        code_revision.cache_clear()
        dirty = code_revision(checkout / "pkg")
        assert dirty["dirty"] is True and dirty["commit"] == clean["commit"], path
        assert revision_label(dirty) == clean["commit"][:7] + "+dirty:" + dirty["source_sha256"][:8]
        git(checkout, "checkout", "-q", "--", ".")
        (checkout / "constraints.txt").unlink(missing_ok=True)
    code_revision.cache_clear()
    assert code_revision(checkout / "pkg") == clean and revision_label(clean) == clean["commit"][:7]


def test_outside_a_checkout_the_version_and_a_hash_of_the_source(tmp_path):
    pkg = tmp_path / "site" / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("a\n")
    (pkg / "sub" / "b.py").write_text("b\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.pyc").write_bytes(b"cache")
    # by hand: relative path, NUL, bytes, NUL, in path order; caches left out
    expected = hashlib.sha256(b"a.py\0a\n\0" + b"sub/b.py\0b\n\0").hexdigest()
    revision = code_revision(pkg)
    assert revision == {"version": __version__, "source_sha256": expected}
    assert revision_label(revision) == f"{__version__}+src:{expected[:8]}"
    (pkg / "a.py").write_text("changed\n")
    assert source_sha256(pkg) != expected
    assert revision_label(None) == "unrecorded" and revision_label({}) == "unrecorded"


def test_this_checkout_and_versions_record_the_revision():
    from starlora.provenance import versions

    revision = code_revision()
    assert set(revision) in ({"commit", "dirty", "source_sha256"}, {"version", "source_sha256"})
    assert versions()["revision"] == revision


def test_the_machine_names_the_cpu_and_the_kernels_torch_uses_on_it(monkeypatch, tmp_path):
    import torch

    from starlora import hardware

    cpuinfo = tmp_path / "cpuinfo"
    one = "processor\t: {n}\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Test CPU\nstepping\t: {s}\n"
    cpuinfo.write_text(one.format(n=0, s=2) + "\n" + one.format(n=1, s=9))  # the first processor's entry counts
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for bf16, amx, kernels in [
        (False, False, "AVX512"),
        (True, False, "AVX512, AVX512-BF16"),
        (True, True, "AVX512, AVX512-BF16, AMX"),
    ]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda bf16=bf16: bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        label = hardware.machine(torch.device("cpu"), cpuinfo)
        assert label == f"Test CPU, family 6 model 207 stepping 2 ({kernels})"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a private check gone from torch: no AMX, no crash
    assert hardware.machine(torch.device("cpu"), cpuinfo).endswith("(AVX512, AVX512-BF16)")
    monkeypatch.setattr(hardware.platform, "processor", lambda: "arm")
    assert hardware.machine(torch.device("cpu"), tmp_path / "missing") == "arm (AVX512, AVX512-BF16)"  # not Linux
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev: f"GPU {dev.index}")
    assert hardware.machine(torch.device("cuda", 1)) == "GPU 1"


def test_versions_record_this_machine():
    from starlora import hardware
    from starlora.provenance import versions

    assert versions()["machine"] == hardware.machine() and hardware.machine().endswith(")")


def test_a_sweep_resuming_on_other_code_says_so(tmp_path, caplog, monkeypatch):
    cfg = resolve("paper", task="boolq", strategy="random", rounds=3)
    jobs = {}
    for name, stored, rounds, finished in [
        ("old", {"commit": "a" * 40, "dirty": False}, 1, False),
        ("same", code_revision(), 1, False),
        ("unrecorded", None, 2, False),
        ("finished", {"commit": "b" * 40, "dirty": False}, 3, True),
        ("fresh", {"commit": "c" * 40, "dirty": False}, 0, False),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        versions = {"starlora": "x", **({"revision": stored} if stored else {})}
        (folder / "config.json").write_text(json.dumps({"config": {}, "versions": versions}))
        (folder / "rounds.jsonl").write_text("".join(json.dumps({"round": t}) + "\n" for t in range(rounds)))
        if finished:
            (folder / "summary.json").write_text("{}")
        jobs[name] = S.Job(cfg, folder)
    ran = []
    monkeypatch.setattr(S, "run", lambda cfg, folder, **kw: ran.append(folder))
    with caplog.at_level(logging.WARNING, logger="starlora.sweep"):
        S.sweep(list(jobs.values()))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    current = revision_label(code_revision())
    assert warned == [
        f"{jobs['old'].folder}: resuming on code revision {current}; its finished rounds were made by "
        "aaaaaaa (the report will flag the mix)",
        f"{jobs['unrecorded'].folder}: resuming on code revision {current}; its finished rounds were "
        "made by unrecorded (the report will flag the mix)",
    ]
    assert len(ran) == 5  # warned, not refused


def test_a_project_records_the_revision(tmp_path):
    from starlora.config import MethodConfig
    from starlora.project import init

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Is {i} red?"}) + "\n" for i in range(3)))
    init(tmp_path / "p", resolve("paper", MethodConfig, task="boolq", model="tiny-random"), pool)
    stored = json.loads((tmp_path / "p" / "project.json").read_text())
    assert stored["versions"]["revision"] == code_revision()


def test_a_resume_keeps_the_revision_that_started_the_run_unless_nothing_ran(tmp_path):
    from starlora.experiment import open_folder

    cfg = resolve("paper", task="boolq", strategy="random", rounds=3)
    old = {"config": {}, "versions": {"revision": {"commit": "a" * 40, "dirty": False}}}
    for name, rounds in [("ran", True), ("nothing", False)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(old))
        if rounds:
            record = {"round": 0, "n_labeled": 4, "accuracy": 50.0, "added": [], "selected": []}
            (tmp_path / name / "rounds.jsonl").write_text(json.dumps(record) + "\n")
        open_folder(tmp_path / name, cfg, resume=True)
    assert json.loads((tmp_path / "ran" / "config.json").read_text()) == old  # its rounds ran on that code
    assert json.loads((tmp_path / "nothing" / "config.json").read_text())["versions"]["revision"] == code_revision()
