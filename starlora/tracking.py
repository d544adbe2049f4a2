"""Experiment trackers (`--report-to tensorboard,mlflow,wandb`) through accelerate's tracker classes, which drive each
tracker's own library. One tracker run per starlora run, named task/strategy/seed, with the resolved configuration as
its parameters; the training loss per optimiser step, each round's figures at its round, the summary's AUC at the end.
Only the main process logs. Trackers are optional extras: a missing one is a one-line error naming the extra."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from . import parallel
from .errors import StarloraError

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # name -> the module it needs
ROUND_FIGURES = (
    "accuracy",
    "ece",
    "brier",
    "lambda",
    "n_labeled",
    "n_labels",
    "train_loss",
    "train_s",
    "eval_s",
    "score_s",
)


def parse_report_to(text: str | None) -> tuple[str, ...]:
    """'tensorboard,mlflow' -> ('tensorboard', 'mlflow'); 'none' or nothing -> ()."""
    names = [n.strip() for n in (text or "none").split(",") if n.strip()]
    if names == ["none"]:
        return ()
    for name in names:
        if name not in TRACKERS:
            raise StarloraError(f"--report-to: unknown tracker {name!r} (choose from {', '.join(TRACKERS)} or none)")
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise StarloraError(f"--report-to {name} needs the {name} package: pip install 'starlora[{name}]'")
    return tuple(dict.fromkeys(names))


class Tracking:
    """The trackers of one run. `folder`: where file-based trackers write (TensorBoard's event files, W&B's offline
    run), unless the tracker's own environment variables say otherwise."""

    def __init__(self, names, run_name: str, folder: Path, config: dict):
        self.trackers = [] if not parallel.is_main() else [_make(name, run_name, Path(folder)) for name in names]
        for tracker in self.trackers:
            tracker.start()
            tracker.store_init_configuration(_flat(config))
        self.step = 0  # optimiser steps so far, over all rounds

    def training_step(self, loss: float) -> None:
        self.step += 1
        self._log({"train/loss": loss}, self.step, "optimizer_step")

    def round(self, record: dict) -> None:
        figures = {f"round/{k}": float(record[k]) for k in ROUND_FIGURES if record.get(k) is not None}
        self._log(figures, record["round"], "round")

    def summary(self, summary: dict) -> None:
        self._log(
            {f"summary/{k}": float(summary[k]) for k in ("auc", "final_accuracy") if k in summary},
            len(summary.get("curve", [])) - 1,
            "round",
        )

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []

    def _log(self, values: dict, step: int, axis: str) -> None:
        for tracker in self.trackers:
            if tracker.name == "wandb":  # W&B's own step only grows: the axis is logged as a value instead
                tracker.log({**values, axis: step})
            else:
                tracker.log(values, step=step)


def _make(name: str, run_name: str, folder: Path):
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    if name == "tensorboard":
        return TensorBoardTracker(run_name, folder / "tensorboard")
    if name == "mlflow":
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # MLflow's classic default, ./mlruns, a file store
            os.environ["MLFLOW_TRACKING_URI"] = Path("mlruns").absolute().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores but warns off them
        return MLflowTracker(os.environ.get("MLFLOW_EXPERIMENT_NAME", "starlora"), run_name=run_name)
    folder.mkdir(parents=True, exist_ok=True)
    return WandBTracker(os.environ.get("WANDB_PROJECT", "starlora"), name=run_name, dir=str(folder))


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested configuration -> flat {name: scalar} (trackers take scalars; lists and None as text)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def run_name(task: str, strategy: str, seed: int) -> str:
    return f"{task}/{strategy}/seed{seed}"
