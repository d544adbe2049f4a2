"""The documentation names the code as it is: every public name has its API entry, and every `starlora.x.y` the
pages or the README mention exists (a rename that forgets the docs fails here, not in a reader's hands)."""

import importlib
import re
from pathlib import Path

import starlora

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


def test_every_public_name_has_an_api_entry():
    api = (ROOT / "docs" / "api.md").read_text()
    entries = set(re.findall(r"^::: (starlora\.[\w.]+)$", api, flags=re.M))
    missing = [
        name
        for name in starlora.__all__
        if name != "__version__" and f"starlora.{starlora._EXPORTS[name]}.{name}" not in entries
    ]
    assert not missing, f"docs/api.md lacks ::: entries for {missing}"


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def test_every_code_name_in_the_docs_exists():
    named = {(page.name, m) for page in PAGES for m in re.findall(r"`(starlora(?:\.\w+)+)`", page.read_text())}
    assert named, "no code names found: the pattern is wrong"
    assert not sorted(ref for ref in named if not resolves(ref[1]))
