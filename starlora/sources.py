"""What a trained model is, from the folder a person names: a project (its latest adapter), a run (its final
adapter), an adapter folder (plain PEFT) or a model folder (a merged export, any causal LM). `predict` and `export`
read it the same way: the base model to load, the adapter on top, and the configuration that made it (its task,
template, strategy and scoring settings), where one is known.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from .config import MethodConfig, stored_config
from .errors import StarloraError
from .files import read_json

logger = logging.getLogger(__name__)
CONFIG_FILE = "starlora_config.json"  # what `export --merged` writes beside the model: the configuration behind it


@dataclass
class Source:
    path: Path
    kind: str  # project, run, adapter or model
    model: str  # what models.load_model loads: the base's name, or the model folder
    adapter: Path | None
    cfg: MethodConfig | None  # None: a bare adapter or model folder (the task comes from --task)
    user_files: bool = True  # the task's default template: '{question}' verbatim (files) or the built-in one
    curve: list[dict] = dataclasses.field(default_factory=list)  # round, labeled, accuracy: for model cards

    def task(self, task: str | None = None, candidates: list[str] | None = None, template: str | None = None):
        """The task the model was trained for; --task and --candidates only where the source does not say, and
        --template over the source's (a new file may name its fields differently)."""
        from .tasks import get_task

        if self.cfg is None:
            if not task:
                raise StarloraError(
                    f"{self.path}: a bare {self.kind} folder does not say its task: give --task "
                    "(and --candidates for --task closed)"
                )
            return get_task(task, candidates, template, user_files=True)
        if task and task != self.cfg.task or candidates and list(candidates) != list(self.cfg.candidates or []):
            raise StarloraError(
                f"{self.path}: was trained for task {self.cfg.task!r}"
                + (f" with candidates {self.cfg.candidates}" if self.cfg.candidates else "")
                + "; leave out --task and --candidates (they come from the source)"
            )
        return get_task(self.cfg.task, self.cfg.candidates, template or self.cfg.template, user_files=self.user_files)

    def load(self, dtype: str | None = None):
        """(model, tokenizer) in eval mode: the base (as the configuration loaded it) with the adapter on top."""
        from .models import load_model

        cfg = self.cfg
        quantization = cfg.quantization if cfg else "none"
        model, tokenizer = load_model(
            self.model, dtype=dtype or (cfg.dtype if cfg else "auto"), quantization=quantization
        )
        if self.adapter is not None:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, str(self.adapter)).eval()
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                raise StarloraError(
                    f"{self.adapter}: cannot load this adapter onto {self.model} ({str(e).splitlines()[0][:200]})"
                ) from None
        return model, tokenizer


def open_source(path) -> Source:
    """The Source a folder holds (see the module docstring); anything else is one line saying what was expected."""
    path = Path(path)
    if not path.is_dir():
        raise StarloraError(f"{path}: no such folder (give a project, a run, an adapter or a model folder)")
    if (path / "project.json").exists():
        return _project(path)
    if (path / "adapter_config.json").exists():
        return _adapter(path)
    if (path / "config.json").exists():
        stored = read_json(path / "config.json")
        if "config" in stored:  # a run folder
            return _run(path, stored)
        owner = read_json(path / CONFIG_FILE, {"config": dict}) if (path / CONFIG_FILE).exists() else None
        return Source(
            path,
            "model",
            str(path),
            None,
            stored_config(owner["config"]) if owner else None,
            owner.get("user_files", True) if owner else True,
            owner.get("curve", []) if owner else [],
        )
    seeds = sorted(p.name for p in path.glob("seed*") if (p / "config.json").exists())
    if seeds:
        raise StarloraError(f"{path}: holds one run per seed ({', '.join(seeds)}); name one, e.g. {path / seeds[0]}")
    raise StarloraError(
        f"{path}: not a project (project.json), run (config.json), adapter (adapter_config.json) or model folder"
    )


def _project(path: Path) -> Source:
    from .human_loop.project import open_project

    project = open_project(path)
    adapters = project.adapters()
    if not adapters:
        raise StarloraError(f"{path}: no adapter trained yet: starlora train {path} first")
    return _with_curve(Source(path, "project", project.cfg.model, adapters[-1], project.cfg), project, adapters)


def _with_curve(source: Source, project, adapters: list[Path]) -> Source:
    records = [project.trained(a) for a in adapters]
    source.curve = [{"round": r["round"], "labeled": r["n_labels"], "accuracy": r.get("accuracy")} for r in records]
    return source


def _run(path: Path, stored: dict) -> Source:
    from .files import read_rounds

    if not isinstance(stored["config"], dict):
        raise StarloraError(f"{path / 'config.json'}: not a starlora configuration")
    cfg = stored_config(stored["config"])
    adapter = path / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise StarloraError(
            f"{path}: holds no adapter yet (the run saves it after its last round; a --mode full run keeps none)"
        )
    curve = [{"round": r["round"], "labeled": r["n_labeled"], "accuracy": r["accuracy"]} for r in read_rounds(path)]
    return Source(path, "run", cfg.model, adapter, cfg, bool(stored["config"].get("train_file")), curve)


def _adapter(path: Path) -> Source:
    """An adapter folder: a project's adapters/round_T or a run's adapter take their owner's configuration."""
    project, run = path.parent.parent, path.parent
    if path.parent.name == "adapters" and (project / "project.json").exists():
        from .human_loop.project import open_project

        owner = open_project(project)
        rounds = owner.adapters()
        source = Source(path, "adapter", owner.cfg.model, path, owner.cfg)
        return _with_curve(source, owner, rounds[: rounds.index(path) + 1] if path in rounds else [])
    if path.name == "adapter" and (run / "config.json").exists() and "config" in read_json(run / "config.json"):
        source = _run(run, read_json(run / "config.json"))
        source.path, source.kind = path, "adapter"
        return source
    config = read_json(path / "adapter_config.json")
    base = config.get("base_model_name_or_path")
    if not base:
        raise StarloraError(f"{path / 'adapter_config.json'}: names no base model (base_model_name_or_path)")
    return Source(path, "adapter", str(base), path, None)
