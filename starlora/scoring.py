"""Model passes: answer-token statistics under teacher forcing, greedy answers, and MC dropout on the LoRA path.

`score` is the one entry point: it fixes each example's own answer y_hat once (deterministic pass), then runs the
stochastic passes and returns every uncertainty measure (uncertainty.py) averaged over them. Evaluation uses the same
function, so the prediction that is scored for accuracy is the y_hat whose uncertainty is measured.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import uncertainty as U
from .errors import StarloraError
from .tasks import Task


@dataclass(frozen=True)
class ScoringSettings:
    batch_size: int = 16
    max_prompt_tokens: int = 128
    max_answer_tokens: int = 256
    max_new_tokens: int = 256


@dataclass
class Scores:
    ids: list[str]
    predictions: list[str | None]  # closed-set: the candidate; open: the answer extracted from the generation
    measures: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N], mean over the passes
    probs: np.ndarray | None = None  # closed-set: label distribution of the deterministic pass [N, C]


def progress(iterable=None, **kwargs):
    return tqdm(iterable, disable=bool(os.environ.get("STARLORA_NO_PROGRESS")), dynamic_ncols=True, **kwargs)


# ---------------------------------------------------------------- dropout and adapters


@contextlib.contextmanager
def lora_dropout(model, active: bool):
    """Everything in eval mode; with active=True only PEFT's lora_dropout modules sample masks."""
    was_training = model.training
    model.eval()
    if active:
        for name, module in model.named_modules():
            if name.split(".")[-1] == "lora_dropout" or ".lora_dropout." in name + ".":
                module.train()
    try:
        yield
    finally:
        model.train(was_training)


def has_lora_dropout(model) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for n, m in model.named_modules() if "lora_dropout" in n)


def base_model(model):
    """Context in which `model` behaves as the frozen base model (PEFT's disable_adapter); a no-op for plain models."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


# ---------------------------------------------------------------- tokens


def encode_prompt(tokenizer, prompt: str, limit: int) -> list[int]:
    ids = tokenizer(prompt)["input_ids"]
    return ids[-limit:]  # keep the end: the question and "Answer:" sit there, a long passage loses its start


def encode_answer(tokenizer, answer: str, limit: int, eos: bool = False) -> list[int]:
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"][:limit]
    return ids + [tokenizer.eos_token_id] if eos else ids


@torch.no_grad()
def answer_stats(model, sequences, batch_size: int, desc: str | None = None):
    """For (prompt_ids, answer_ids) pairs: (sum log p(answer), sum of token entropies, answer length) per pair.

    Batches hold similar lengths (sorted) and pad to their own longest; the LM head runs only on answer positions.
    """
    n = len(sequences)
    logp_sum, ent_sum = np.zeros(n), np.zeros(n)
    lengths = np.array([len(a) for _, a in sequences])
    order = sorted(range(n), key=lambda i: -(len(sequences[i][0]) + len(sequences[i][1])))
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    bar = progress(total=n, desc=desc, leave=False) if desc else None
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        width = max(len(sequences[i][0]) + len(sequences[i][1]) for i in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        positions, targets, owner = [], [], []
        for r, i in enumerate(rows):
            prompt, answer = sequences[i]
            seq = prompt + answer
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
            positions += [(r, len(prompt) - 1 + j) for j in range(len(answer))]  # logits at p predict token p+1
            targets += answer
            owner += [i] * len(answer)
        hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        if positions:
            rr, pp = zip(*positions)
            logits = head(hidden[list(rr), list(pp)])
            check_finite(logits, set(owner))
            logp, ent = U.token_logprobs_and_entropies(logits, torch.tensor(targets, device=device))
            owner_t = torch.tensor(owner)
            logp_sum += np.bincount(owner_t, logp.double().cpu(), minlength=n)
            ent_sum += np.bincount(owner_t, ent.double().cpu(), minlength=n)
        if bar:
            bar.update(len(rows))
    if bar:
        bar.close()
    return logp_sum, ent_sum, lengths


def check_finite(logits: torch.Tensor, rows) -> None:
    if not torch.isfinite(logits).all():
        raise StarloraError(f"the model produced non-finite logits (sequence indices {sorted(rows)[:10]})")


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int, desc=None):
    """Greedy generations (token ids, ending with EOS when the model stopped) for left-padded prompt batches."""
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out: list[list[int]] = [None] * len(prompts)  # type: ignore[list-item]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in progress(range(0, len(prompts), batch_size), desc=desc, leave=False):
        rows = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad, eos_token_id=eos,
        )[:, width:].tolist()
        for r, i in enumerate(rows):
            tokens = generated[r]
            out[i] = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
    return out


# ---------------------------------------------------------------- the entry point


def score(model, tokenizer, task: Task, examples, *, passes: int = 1, mc_dropout: bool = False,
          reference: bool = False, settings: ScoringSettings = ScoringSettings(), desc: str = "scoring") -> Scores:
    """Fix y_hat per example with dropout off, then average every measure over `passes` passes.

    With mc_dropout the passes sample masks in the LoRA dropout only; without it (or with passes=1) the deterministic
    pass is the only one needed. reference=True scores the gold answer instead of y_hat (reads labels: simulation
    of the official code only).
    """
    prompts = [encode_prompt(tokenizer, ex.prompt, settings.max_prompt_tokens) for ex in examples]
    stochastic = mc_dropout and passes > 1
    k = passes if stochastic else 1
    if task.closed:
        cands = [encode_answer(tokenizer, c, settings.max_answer_tokens) for c in task.candidates]
        pairs = [(p, c) for p in prompts for c in cands]
        n, c = len(examples), len(cands)
        with lora_dropout(model, False):
            logp, ent, length = answer_stats(model, pairs, settings.batch_size, desc=f"{desc} (answers)")
        logp, ent, length = logp.reshape(n, 1, c), ent.reshape(n, 1, c), length.reshape(n, c)
        y_hat = logp[:, 0].argmax(-1)
        if reference:
            y_hat = np.array([task.candidates.index(ex.gold) for ex in examples])
        probs = U.label_distribution(logp[:, 0])
        if stochastic:
            with lora_dropout(model, True):
                lp, en, _ = answer_stats(model, [pair for pair in pairs for _ in range(k)], settings.batch_size,
                                         desc=f"{desc} ({k} MC passes)")
            logp, ent = lp.reshape(n, c, k).transpose(0, 2, 1), en.reshape(n, c, k).transpose(0, 2, 1)
        rows = np.arange(n)
        y_logp, y_ent, y_len = logp[rows, :, y_hat], ent[rows, :, y_hat], length[rows, y_hat][:, None]
        p_passes = U.label_distribution(logp)  # [N, K, C]
        measures = {
            "lc": U.least_confidence(p_passes).mean(1), "margin": U.margin(p_passes).mean(1),
            "entropy": U.entropy(p_passes).mean(1), "bald": U.bald(p_passes),
        }
        predictions = [task.candidates[j] for j in y_hat]
    else:
        if reference:
            answers = [encode_answer(tokenizer, ex.target, settings.max_answer_tokens, eos=True) for ex in examples]
        else:
            with lora_dropout(model, False):
                answers = greedy_answers(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size,
                                         desc=f"{desc} (generating)")
        pairs = [(p, a) for p, a in zip(prompts, answers)]
        with lora_dropout(model, stochastic):
            lp, en, ln = answer_stats(model, [pair for pair in pairs for _ in range(k)], settings.batch_size,
                                      desc=f"{desc} ({k} pass{'es' if k > 1 else ''})")
        y_logp, y_ent, y_len = lp.reshape(-1, k), en.reshape(-1, k), ln.reshape(-1, k)
        measures, probs = {}, None
        predictions = [task.predict_text(tokenizer.decode(a, skip_special_tokens=True)) for a in answers]
    measures |= {
        "pe": U.predictive_entropy(y_logp).mean(1), "pe_norm": U.predictive_entropy(y_logp, y_len).mean(1),
        "me": U.mean_entropy(y_ent).mean(1), "me_norm": U.mean_entropy(y_ent, y_len).mean(1),
    }
    return Scores([ex.id for ex in examples], predictions, measures, probs)
