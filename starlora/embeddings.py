"""Pool embeddings for the diversity strategies: the frozen base model's last hidden state averaged over each prompt's
tokens. Computed once per example and kept on disk like mu_b (EmbeddingCache is a cache.ExampleCache: keyed by model,
token limit, precision, id and prompt; appended as computed; an interrupted run keeps what it embedded)."""

from __future__ import annotations

import base64

import numpy as np
import torch

from . import parallel
from .cache import ExampleCache
from .hardware import autocast
from .progress import progress
from .tokens import encode_prompt, length_sorted_batches


def _last_hidden(lm, ids, mask):
    return lm.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


@torch.no_grad()
def embed(
    model,
    tokenizer,
    examples,
    batch_size: int = 32,
    max_prompt_tokens: int = 128,
    precision: str = "fp32",
    desc: str | None = "embedding",
) -> np.ndarray:
    """[N, hidden] float32: the mean of the last hidden state over each prompt's tokens (padding excluded), with
    `model` as it is (callers switch the adapter off). Batches of similar length; under `accelerate launch` each
    process embeds every world-th batch."""
    prompts = [encode_prompt(tokenizer, ex.prompt, max_prompt_tokens) for ex in examples]
    device = next(model.parameters()).device
    width = model.get_input_embeddings().weight.shape[-1]
    out = np.zeros((len(prompts), width), dtype=np.float64)
    batches = length_sorted_batches([len(p) for p in prompts], batch_size)
    bar = progress(total=len(prompts), desc=desc, leave=False, disable=not (desc and parallel.is_main()))
    for _, rows, spare in parallel.my_batches(batches):  # spare: sharded, a throw-away forward
        longest = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(prompts[i])] = torch.tensor(prompts[i])
            mask[r, : len(prompts[i])] = 1
        with autocast(device, precision):
            hidden = parallel.as_forward(model, _last_hidden, ids.to(device), mask.to(device))
        keep = mask.to(device).unsqueeze(-1).float()  # fp32 even with bf16 weights: bf16 counts 301 tokens as 300
        mean = (hidden.float() * keep).sum(1) / keep.sum(1)
        if not spare:
            out[rows] = mean.double().cpu().numpy()
            bar.update(len(rows) * parallel.world()[1])
    bar.close()
    return parallel.sum_across(out)[0].astype(np.float32)


class EmbeddingCache(ExampleCache):
    """Prompt embeddings per example, on disk (embeddings.jsonl: {"key", "embedding": base64 float32})."""

    def identity(self, model_name: str) -> list:
        return [model_name, "embedding", self.settings.max_prompt_tokens, self.settings.precision]

    def compute(self, model, tokenizer, examples, part_of: str) -> list[dict]:
        vectors = embed(
            model,
            tokenizer,
            examples,
            self.settings.batch_size,
            self.settings.max_prompt_tokens,
            self.settings.precision,
            desc="embedding the pool" + part_of,
        )
        return [{"embedding": base64.b64encode(v.tobytes()).decode()} for v in vectors]

    def combine(self, rows: list[dict]) -> np.ndarray:
        return (
            np.stack([np.frombuffer(base64.b64decode(r["embedding"]), dtype=np.float32) for r in rows])
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
