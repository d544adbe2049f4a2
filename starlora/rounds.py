"""One active-learning round, the same in both loops: train a fresh adapter on the labeled set, evaluate it, record
the stop set, and score and select the next query. The simulation (experiment.py) runs the four steps of round t
in one go; the human loop (human_loop/) trains in `starlora train` and queries in `starlora query`, with the labeling
in between. The loops differ only in where the labels come from and where the files go: each passes in its model,
examples and the previous round's stop-set record, and writes what comes back where it keeps things.

`method_settings` turns a configuration into the scoring and training settings both loops use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import parallel
from .acquisition import Acquisition
from .config import MethodConfig
from .data import Example
from .evaluation import evaluate
from .hardware import bf16_frozen_linears, device, resolve_precision
from .scoring import ScoringSettings, score
from .stopping import stop_figures
from .tasks import Task
from .training import TrainSettings, attach_lora, train


def method_settings(cfg: MethodConfig, strategy) -> tuple[ScoringSettings, TrainSettings]:
    """Scoring and training settings of a configuration (shared by `run` and the human-loop project)."""
    precision = resolve_precision(cfg.precision, device())
    decay = (strategy.b_decay or cfg.force_b_decay) and cfg.mode == "lora"
    scoring = ScoringSettings(
        batch_size=cfg.score_batch_size,
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_answer_tokens=cfg.max_answer_tokens,
        max_new_tokens=cfg.max_new_tokens,
        precision=precision,
    )
    training = TrainSettings(
        mode=cfg.mode,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        lr=cfg.lr,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        b_decay=cfg.b_decay if decay else 0.0,
        seed=cfg.seed,
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_answer_tokens=cfg.max_answer_tokens,
        group_by_length=cfg.group_by_length,
        precision=precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    return scoring, training


def fresh_adapter(model, training: TrainSettings, quantization: str = "none", init: dict | None = None):
    """A fresh adapter on the frozen base, drawn from training.seed (or set to `init`, the initial weights an earlier
    round drew). Under bf16 autocast on one process the frozen linear weights are kept in bf16 from then on
    (hardware.bf16_frozen_linears: the same numbers as autocast's casts, made once)."""
    current = attach_lora(model, training)
    if init is not None:
        current.load_state_dict(init, strict=False)
    if not parallel.distributed() and quantization == "none":
        bf16_frozen_linears(current, training.precision)
    return current


@dataclass
class Round:
    """Round t: what it trains with, how it scores, and the acquisition that picks its query (a run's or a
    project's: its strategy, configuration and caches)."""

    t: int
    task: Task
    tokenizer: object
    acquisition: Acquisition
    training: TrainSettings

    @property
    def settings(self) -> ScoringSettings:
        return self.acquisition.settings

    @property
    def measure(self) -> str:
        """What one deterministic pass records (the probe, the stop set)."""
        return self.acquisition.strategy.one_pass_measure(self.acquisition.cfg.length_norm)

    def train(self, model, labeled: list[Example]) -> dict:
        """Train `model` (a fresh adapter, or full weights) on the labeled examples: training.train's statistics."""
        return train(model, self.tokenizer, labeled, self.training, desc=f"round {self.t} training")

    def evaluate(self, model, test: list[Example]) -> dict:
        """The trained model on the held-out examples (evaluation.evaluate)."""
        return evaluate(model, self.tokenizer, self.task, test, self.settings, desc=f"round {self.t} evaluating")

    def stop_set(self, model, stop: list[Example], previous: dict | None) -> tuple[dict, dict]:
        """The stopping figures (stopping.stop_figures) from the model's predictions on the stop set, against the
        previous round's kept record (None in the first round); and this round's record to keep for the next:
        {"ids", "predictions", "mean"}."""
        scores = score(model, self.tokenizer, self.task, stop, settings=self.settings, desc=f"round {self.t} stop set")
        figures = stop_figures(previous, scores.predictions, scores.measures[self.measure])
        return figures, {
            "ids": [ex.id for ex in stop],
            "predictions": scores.predictions,
            "mean": figures["stop_uncertainty"],
        }

    def query(
        self, model, candidates: list[Example], labeled: list[Example], n: int, pick_round: int | None = None
    ) -> tuple[list[str], dict[str, np.ndarray], float | None]:
        """The next query: n ids from the candidates (none of them labeled) scored with round t's model, the
        scores to record and lambda(t) where the strategy mixes. The picks are seeded by `pick_round` (default t:
        the human loop numbers its queries from the first, made before any round, so query t+1 follows round t)."""
        acquisition, cfg = self.acquisition, self.acquisition.cfg
        mu = acquisition.scores(model, self.tokenizer, self.task, candidates, self.t)
        selected = acquisition.pick(
            model, self.tokenizer, candidates, labeled, mu, n, self.t if pick_round is None else pick_round
        )
        return selected, mu, acquisition.strategy.combine.weight(self.t, cfg.rounds, cfg.schedule)
