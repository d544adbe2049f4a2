"""Text to token ids: prompts (left-truncated), answers joined to their prompt by one space, batches of similar length.
Shared by scoring and training, so both read exactly the same tokens."""

from __future__ import annotations


def answer_prefix(prompt: str) -> str:
    """What joins a prompt to its answer: one space, or nothing after a line break. Trailing spaces of the prompt
    are dropped first (encode_prompt), so "The correct answer is " + "B" reads "...is B", never "...is  B"."""
    stripped = prompt.rstrip(" \t")
    return "" if not stripped or stripped.endswith("\n") else " "


def join(prompt: str, answer: str) -> str:
    """The text a prompt and its answer make together (few-shot demonstrations)."""
    return prompt.rstrip(" \t") + answer_prefix(prompt) + answer


def encode_prompt(tokenizer, prompt: str, limit: int) -> list[int]:
    """The prompt's tokens, at most `limit`: a long prompt keeps its end (the question and "Answer:" sit there; a long
    passage loses its start) and the BOS token its tokenizer puts first (LLaMA's), which the model always saw."""
    ids = tokenizer(prompt.rstrip(" \t"))["input_ids"]
    if len(ids) <= limit:
        return ids
    bos = ids[:1] if ids[0] == getattr(tokenizer, "bos_token_id", None) and limit > 1 else []
    return bos + ids[len(ids) - limit + len(bos) :]


def encode_answer(tokenizer, answer: str, limit: int, eos: bool = False, prefix: str = " ") -> list[int]:
    """Answer tokens as they follow the prompt; `prefix` is answer_prefix(prompt)."""
    ids = tokenizer(prefix + answer, add_special_tokens=False)["input_ids"][:limit]
    return ids + [tokenizer.eos_token_id] if eos else ids


def length_sorted_batches(lengths, batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding to each batch's longest is cheap."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
