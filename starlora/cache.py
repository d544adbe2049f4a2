"""Per-example caches on disk: what the frozen base model gives an example is computed once per pool and kept in the
run or project folder (acquisition.BaseScoreCache: its uncertainties; embeddings.EmbeddingCache: its prompt
embedding)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .files import append_jsonl, read_jsonl
from .masks import adapter_disabled


class ExampleCache:
    """Values per example, on disk in the run or project folder, computed with the adapter switched off (the base
    model is frozen, so each example is computed once per pool). An entry's key covers everything that changes it
    (`identity`, and the example's own part in `key`); `computed` counts examples actually computed (for tests and
    logs). A subclass says what an entry is: `identity`, `compute` and `combine`.

    The file is JSON lines, one {"key", values...} per example, appended every CHUNK examples as the work proceeds:
    a round writes only its new examples, never the whole cache again, and an interrupted run keeps what it computed
    (a torn last line is ignored). A path ending in .json means its .jsonl sibling; the old format in that .json
    file (one JSON object, key -> values) is still read, never written."""

    CHUNK = 4096  # examples per compute() call and append. Batches differ across a chunk boundary, so on pools larger
    # than this a value can differ in the last float digits from one unchunked call (as with another batch size).

    def __init__(self, path: str | os.PathLike | None, model_name: str, task, settings):
        self.path = Path(path) if path else None
        if self.path and self.path.suffix == ".json":
            self.path = self.path.with_suffix(".jsonl")
        self.task, self.settings = task, settings
        self.prefix = digest(json.dumps(self.identity(model_name))) + "|"
        self.values: dict[str, dict] = {}
        if self.path:
            legacy = self.path.with_suffix(".json")
            if self.path.suffix == ".jsonl" and legacy.exists():
                self.values = json.loads(legacy.read_text())
            self.values |= {r.pop("key"): r for r in read_jsonl(self.path, appended=True) if "key" in r}
        self.computed = 0

    def identity(self, model_name: str) -> list:
        """Everything besides the example that changes an entry."""
        raise NotImplementedError

    def key(self, ex) -> str:
        return f"{self.prefix}{ex.id}|{digest(ex.prompt)}"

    def get(self, model, tokenizer, examples):
        keys = [self.key(ex) for ex in examples]
        missing = [(k, ex) for k, ex in zip(keys, examples) if k not in self.values]
        for start in range(0, len(missing), self.CHUNK):
            part = missing[start : start + self.CHUNK]
            part_of = f" ({start + len(part)} of {len(missing)})" if len(missing) > self.CHUNK else ""
            with adapter_disabled(model):
                new = list(zip([k for k, _ in part], self.compute(model, tokenizer, [ex for _, ex in part], part_of)))
            self.values.update(new)
            self.computed += len(part)
            if self.path:
                append_jsonl(self.path, ({"key": k, **entry} for k, entry in new))
        return self.combine([self.values[k] for k in keys])

    def compute(self, model, tokenizer, examples, part_of: str) -> list[dict]:
        """One JSON-able entry per example, computed with the adapter switched off."""
        raise NotImplementedError

    def combine(self, rows: list[dict]):
        """The entries of the examples asked for, as arrays."""
        raise NotImplementedError


def digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]
