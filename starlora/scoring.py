"""Model passes: answer-token statistics under teacher forcing, greedy answers, and MC dropout on the LoRA path.

`score` is the one entry point: it fixes each example's own answer y_hat once (deterministic pass), then runs the
stochastic passes and returns every uncertainty measure (uncertainty.py) averaged over them. Evaluation uses the same
function, so the prediction that is scored for accuracy is the y_hat whose uncertainty is measured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from . import parallel
from . import uncertainty as U
from .errors import StarloraError
from .hardware import autocast
from .masks import GroupDropout, MaskDropout, group_seed, lora_sampling, swap_lora_dropout
from .progress import progress
from .tasks import Task
from .tokens import answer_prefix, encode_answer, encode_prompt, length_sorted_batches


@dataclass(frozen=True)
class ScoringSettings:
    batch_size: int = 16
    max_prompt_tokens: int = 128
    max_answer_tokens: int = 256
    max_new_tokens: int = 256
    precision: str = "fp32"  # or "bf16" (autocast); resolved by hardware.resolve_precision

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):  # "auto" must be resolved where it is stored, not read as fp32
            raise StarloraError(
                f"ScoringSettings.precision must be fp32 or bf16, got {self.precision!r} "
                "(resolve 'auto' with hardware.resolve_precision)"
            )


@dataclass
class Scores:
    ids: list[str]
    predictions: list[str | None]  # closed-set: the candidate; open: the answer extracted from the generation
    measures: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N], mean over the passes
    probs: np.ndarray | None = None  # closed-set: label distribution of the deterministic pass [N, C]
    pass_probs: np.ndarray | None = None  # closed-set: label distribution of each pass measured [N, K, C]
    truncated: np.ndarray | None = None  # open tasks: [N] bool, the generation hit max_new_tokens (greedy_answers)
    texts: list[str] | None = None  # open tasks: the answer text scored (the generation, or the reference)


@torch.no_grad()
def answer_stats(
    model,
    sequences,
    batch_size: int,
    desc: str | None = None,
    *,
    names=None,
    mask_seed=None,
    precision: str = "fp32",
    choices=None,
    groups: list[int] | None = None,
):
    """For (prompt_ids, answer_ids) pairs: (sum log p(answer), sum of token entropies, answer length) per pair.

    With `choices` (token ids: one list for all sequences, or one per sequence) every answer is one token and log p
    is returned for each choice: [N, C]. Batches hold similar lengths and pad to their own longest; the LM head runs
    only on answer positions. Under `accelerate launch` each process computes every world-th batch. With mask_seed,
    batch b draws its dropout masks from seed (mask_seed, b): the same masks whichever process computes it. With
    `groups` (a mask seed per sequence), sequences with one seed share one dropout mask and one batch, whatever the
    batching (masks.GroupDropout). `names` (one per sequence) label errors.
    """
    n = len(sequences)
    if choices and isinstance(choices[0], int):
        choices = [choices] * n
    logp_sum, ent_sum = np.zeros((n, len(choices[0]) if choices else 1)), np.zeros(n)
    lengths = [len(p) + len(a) for p, a in sequences]
    members = {}
    for i, g in enumerate(groups if groups is not None else range(n)):
        members.setdefault(g, []).append(i)
    units = list(members.values())  # batches are made of whole groups (one sequence each without groups)
    per_batch = max(1, batch_size // max(len(u) for u in units)) if units else 1
    batches = [
        [i for u in b for i in units[u]]
        for b in length_sorted_batches([max(lengths[i] for i in u) for u in units], per_batch)
    ]
    device = next(model.parameters()).device
    bar = progress(total=n, desc=desc, leave=False, disable=not (desc and parallel.is_main()))
    seeded = (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        if mask_seed is not None
        else contextlib.nullcontext()
    )  # per-batch seeds must not move the caller's random stream
    # every LoRA dropout draws keep_mask's masks: per group of rows (GroupDropout) or per row (MaskDropout)
    grouped = swap_lora_dropout(model, GroupDropout if groups is not None else MaskDropout)
    with seeded, grouped as dropouts:
        for b, rows, spare in parallel.my_batches(batches):  # spare: sharded, a throw-away forward
            if mask_seed is not None:
                torch.manual_seed(mask_seed * 1_000_003 + b)
            if groups is not None:
                seeds = list(dict.fromkeys(groups[i] for i in rows))
                for drop in dropouts:
                    drop.groups = torch.tensor([seeds.index(groups[i]) for i in rows], device=device)
                    drop.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
                    drop.widths = [max(lengths[i] for i in rows if groups[i] == s) for s in seeds]
            owner, logp, ent = _batch_stats(
                model, [sequences[i] for i in rows], device, precision, [choices[i] for i in rows] if choices else None
            )
            if owner and not spare:
                owner = [rows[r] for r in owner]
                check_finite(logp, ent, owner, names)
                np.add.at(logp_sum, owner, logp)
                np.add.at(ent_sum, owner, ent)
            bar.update(0 if spare else len(rows) * parallel.world()[1])
    bar.close()
    logp_sum, ent_sum = parallel.sum_across(logp_sum, ent_sum)
    return logp_sum if choices else logp_sum[:, 0], ent_sum, np.array([len(a) for _, a in sequences])


def _batch_stats(model, pairs, device, precision, choices=None):
    """One right-padded batch -> (row of each answer token, log p [M, C], entropy [M]) as flat arrays; `choices`
    holds each row's candidate token ids when answers are one token."""
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.zeros(len(pairs), width, dtype=torch.long)
    mask = torch.zeros(len(pairs), width, dtype=torch.long)
    rows, positions, targets = [], [], []
    for r, (prompt, answer) in enumerate(pairs):
        ids[r, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[r, : len(prompt) + len(answer)] = 1
        positions += range(len(prompt) - 1, len(prompt) - 1 + len(answer))  # logits at p predict token p+1
        rows += [r] * len(answer)
        targets += [choices[r]] * len(answer) if choices else [[t] for t in answer]
    if not rows:
        return [], None, None
    with autocast(device, precision):
        logits = parallel.as_forward(model, answer_logits, ids.to(device), mask.to(device), rows, positions)
    logp, ent = U.token_logprobs_and_entropies(logits, torch.tensor(targets, device=device))
    return rows, logp.double().cpu().numpy(), ent.double().cpu().numpy()


def answer_logits(lm, ids, mask, rows, positions):
    """The causal LM's logits at the given (row, position) pairs only: no [batch, length, vocabulary] tensor."""
    hidden = lm.get_decoder()(
        input_ids=ids, attention_mask=mask, use_cache=False
    ).last_hidden_state  # no KV cache: nothing is generated
    return lm.get_output_embeddings()(hidden[rows, positions])


def check_finite(logp: np.ndarray, ent: np.ndarray, owner: list[int], names=None) -> None:
    """Stop on NaN/inf (from non-finite logits), naming the examples whose answer tokens produced them."""
    bad = ~(np.isfinite(logp).all(-1) & np.isfinite(ent))
    if bad.any():
        found = sorted({owner[j] for j in np.flatnonzero(bad)})
        shown = list(dict.fromkeys(names[i] for i in found)) if names else found  # an example may own several rows
        more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
        raise StarloraError(
            f"the model produced non-finite logits for example(s) {', '.join(map(str, shown[:10]))}"
            f"{more}; check the model weights (trained ones: a lower --lr), or try --precision fp32"
        )


class TextStop(StoppingCriteria):
    """Ends a row of a generate() batch once rule(its generated text) holds; remembers its length at that token."""

    def __init__(self, tokenizer, rule, start: int):
        self.tokenizer, self.rule, self.start = tokenizer, rule, start  # start: the generated part's first column
        self.lengths: dict[int, int] = {}  # row -> number of generated tokens when the rule first held

    def __call__(self, input_ids, scores, **kwargs):
        for r, tokens in enumerate(input_ids[:, self.start :].tolist()):
            if r not in self.lengths and self.rule(self.tokenizer.decode(tokens, skip_special_tokens=True)):
                self.lengths[r] = len(tokens)
        return torch.tensor([r in self.lengths for r in range(len(input_ids))], device=input_ids.device)


@torch.no_grad()
def greedy_answers(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    desc=None,
    precision: str = "fp32",
    stop=None,
):
    """Greedy generations for left-padded prompt batches: (token ids per prompt, truncated flag per prompt).

    A generation ends with EOS (kept), or with `stop` (text -> bool, Task.stop) at the first token after which
    stop(its text) holds; the padding generate() puts after a stopped row is dropped, so the answer scored for
    uncertainty is exactly the text read for accuracy. Truncated: max_new_tokens reached without either ending.
    """
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    done = []
    batches = length_sorted_batches([len(p) for p in prompts], batch_size)
    for _, rows, spare in progress(
        parallel.my_batches(batches), desc=desc, leave=False, disable=not (desc and parallel.is_main())
    ):  # spare: sharded, a throw-away one
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        criteria = StoppingCriteriaList([TextStop(tokenizer, stop, width)] if stop else [])
        with autocast(device, precision):
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
                stopping_criteria=criteria,
                synced_gpus=parallel.sharded(),  # sharded: keep stepping until every process's batch is done
            )[:, width:].tolist()
        for r, i in enumerate([] if spare else rows):
            stopped_at = criteria[0].lengths.get(r) if stop else None
            tokens = generated[r][:stopped_at]  # cut before the padding (it may be the EOS id) after a stop
            ended = eos in tokens
            done.append((i, tokens[: tokens.index(eos) + 1] if ended else tokens, not ended and stopped_at is None))
    out: list[list[int]] = [None] * len(prompts)  # type: ignore[list-item]
    truncated = np.zeros(len(prompts), dtype=bool)
    for i, tokens, cut in parallel.gather(done):
        out[i], truncated[i] = tokens, cut
    return out, truncated


# ---------------------------------------------------------------- the entry point


def score(
    model,
    tokenizer,
    task: Task,
    examples,
    *,
    passes: int = 1,
    mc_dropout: bool = False,
    reference: bool = False,
    settings: ScoringSettings = ScoringSettings(),
    desc: str = "scoring",
    seed: int = 0,
) -> Scores:
    """Fix y_hat per example with dropout off, then average every measure over `passes` passes.

    With mc_dropout the passes sample masks in the LoRA dropout only; without it (or with passes=1) the deterministic
    pass is the only one needed; `seed` fixes the dropout masks. reference=True scores the gold answer instead of
    y_hat (reads labels: simulation of the official code only).
    """
    prompts = [encode_prompt(tokenizer, ex.prompt, settings.max_prompt_tokens) for ex in examples]
    stochastic = mc_dropout and passes > 1
    k = passes if stochastic else 1
    run = dict(batch_size=settings.batch_size, precision=settings.precision)
    truncated = texts = None  # set where answers are generated
    if task.closed:
        logp, ent, length = _candidate_passes(model, tokenizer, task, examples, prompts, k, seed, settings, desc)
        n = logp.shape[0]
        y_hat = logp[:, 0].argmax(-1)
        if reference:
            y_hat = np.array([task.candidates.index(ex.gold) for ex in examples])
        probs = U.label_distribution(logp[:, 0])
        if stochastic:
            logp, ent = logp[:, 1:], ent[:, 1:]  # the MC passes; the deterministic one only fixed y_hat
        rows = np.arange(n)
        y_logp, y_ent, y_len = logp[rows, :, y_hat], ent[rows, :, y_hat], length[rows, y_hat][:, None]
        p_passes = U.label_distribution(logp)  # [N, K, C]
        measures = {
            "lc": U.least_confidence(p_passes).mean(1),
            "margin": U.margin(p_passes).mean(1),
            "entropy": U.entropy(p_passes).mean(1),
            "bald": U.bald(p_passes),
        }
        predictions, pass_probs = [task.candidates[j] for j in y_hat], p_passes
    else:
        if reference:
            answers = [
                encode_answer(
                    tokenizer, ex.target, settings.max_answer_tokens, eos=True, prefix=answer_prefix(ex.prompt)
                )
                for ex in examples
            ]
        else:
            with lora_sampling(model, False):
                answers, truncated = greedy_answers(
                    model,
                    tokenizer,
                    prompts,
                    settings.max_new_tokens,
                    desc=f"{desc} (generating)",
                    stop=task.stop,
                    **run,
                )
        pairs = [(p, a) for p, a in zip(prompts, answers)]
        with lora_sampling(model, stochastic):
            lp, en, ln = answer_stats(
                model,
                [pair for pair in pairs for _ in range(k)],
                desc=f"{desc} ({k} pass{'es' if k > 1 else ''})",
                names=[ex.id for ex in examples for _ in range(k)],
                mask_seed=seed if stochastic else None,
                **run,
            )
        y_logp, y_ent, y_len = lp.reshape(-1, k), en.reshape(-1, k), ln.reshape(-1, k)
        measures, probs, pass_probs = {}, None, None
        texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
        predictions = [task.predict_text(text) for text in texts]
    measures |= {
        "pe": U.predictive_entropy(y_logp).mean(1),
        "pe_norm": U.predictive_entropy(y_logp, y_len).mean(1),
        "me": U.mean_entropy(y_ent).mean(1),
        "me_norm": U.mean_entropy(y_ent, y_len).mean(1),
    }
    return Scores(
        [ex.id for ex in examples],
        predictions,
        measures,
        probs,
        pass_probs=pass_probs,
        truncated=truncated,
        texts=texts,
    )


def _candidate_passes(model, tokenizer, task, examples, prompts, k, seed, settings, desc):
    """Closed-set tasks: log p, summed entropy [N, 1 + K, C] of every candidate under the deterministic pass and then
    the K MC passes (none when k == 1), and the candidates' lengths [N, C]. One MC pass is one sampled network for
    all candidates of an example, so the label distribution of a pass (and BALD over them) carries no mask noise
    between candidates."""
    n, c = len(examples), len(task.candidates)
    prefixes = [answer_prefix(ex.prompt) for ex in examples]
    encoded = {
        pre: [encode_answer(tokenizer, cand, settings.max_answer_tokens, prefix=pre) for cand in task.candidates]
        for pre in set(prefixes)
    }
    run = dict(batch_size=settings.batch_size, precision=settings.precision)
    ids = [ex.id for ex in examples]
    if all(len(a) == 1 for cands in encoded.values() for a in cands):
        # One-token candidates (true/false, A-D): one forward per prompt gives every candidate's log p at the last
        # prompt position, so one dropout sample is evaluated on all candidates alike.
        seqs = [(p, encoded[pre][0]) for p, pre in zip(prompts, prefixes)]
        choices = [[a[0] for a in encoded[pre]] for pre in prefixes]
        with lora_sampling(model, False):
            logp, ent, _ = answer_stats(model, seqs, desc=f"{desc} (answers)", names=ids, choices=choices, **run)
        logp, ent = logp[:, None], np.repeat(ent[:, None, None], c, 2)
        if k > 1:
            with lora_sampling(model, True):
                lp, en, _ = answer_stats(
                    model,
                    [s for s in seqs for _ in range(k)],
                    desc=f"{desc} ({k} MC passes)",
                    names=[x for x in ids for _ in range(k)],
                    mask_seed=seed,
                    choices=[x for x in choices for _ in range(k)],
                    **run,
                )
            logp = np.concatenate([logp, lp.reshape(n, k, c)], 1)
            ent = np.concatenate([ent, np.repeat(en.reshape(n, k, 1), c, 2)], 1)
        return logp, ent, np.ones((n, c), dtype=int)
    seqs = [(p, a) for p, pre in zip(prompts, prefixes) for a in encoded[pre]]  # rows (example, candidate)
    names = [x for x in ids for _ in range(c)]
    with lora_sampling(model, False):
        logp, ent, length = answer_stats(model, seqs, desc=f"{desc} (answers)", names=names, **run)
    logp, ent = logp.reshape(n, 1, c), ent.reshape(n, 1, c)
    if k > 1:  # rows (example, pass, candidate); the candidates of one (example, pass) share one mask group
        rows = [i * c + j for i in range(n) for _ in range(k) for j in range(c)]
        groups = [group_seed(seed, i, m) for i in range(n) for m in range(k) for _ in range(c)]
        with lora_sampling(model, True):
            lp, en, _ = answer_stats(
                model,
                [seqs[r] for r in rows],
                desc=f"{desc} ({k} MC passes)",
                names=[names[r] for r in rows],
                groups=groups,
                **run,
            )
        logp = np.concatenate([logp, lp.reshape(n, k, c)], 1)
        ent = np.concatenate([ent, en.reshape(n, k, c)], 1)
    return logp, ent, length.reshape(n, c)
