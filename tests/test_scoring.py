"""Scoring details a reviewer found wrong: one MC sample per example for multi-token candidates, and the join of a
prompt with its answer."""

import numpy as np
import torch
from helpers import lora_model

from starlora import uncertainty as U
from starlora.data import Example
from starlora.experiment import fewshot_examples
from starlora.masks import GroupDropout, group_seed, lora_sampling, swap_lora_dropout
from starlora.models import tiny_random
from starlora.scoring import ScoringSettings, score
from starlora.tasks import get_task
from starlora.tokens import encode_answer, encode_prompt
from starlora.training import TrainSettings, encode_examples

WORDS = get_task("closed", ["yes", "no", "maybe"], "{question}")  # byte-level tokenizer: 2-5 tokens each
EXAMPLES = [Example(f"e{i}", f"Is {'x' * i} short?", "yes", "yes") for i in range(1, 6)]


@torch.no_grad()
def explicit_pass(model, tok, prompt, candidates, seed):
    """Each candidate run alone, right-padded to the example's longest candidate, under one mask draw from `seed`:
    the network of one MC pass, spelled out. Returns the candidates' sequence log-likelihoods."""
    p = encode_prompt(tok, prompt, 128)
    answers = [encode_answer(tok, c, 128) for c in candidates]
    width = len(p) + max(map(len, answers))
    out = []
    for a in answers:
        ids = torch.zeros(1, width, dtype=torch.long)
        ids[0, : len(p) + len(a)] = torch.tensor(p + a)
        mask = (torch.arange(width) < len(p) + len(a)).long()[None]
        with lora_sampling(model, True), swap_lora_dropout(model, GroupDropout) as drops:
            for d in drops:
                d.groups, d.widths = torch.tensor([0]), [width]
                d.generators = [torch.Generator().manual_seed(seed)]
            logits = model(input_ids=ids, attention_mask=mask).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        out.append(sum(logp[len(p) - 1 + t, tok_id].item() for t, tok_id in enumerate(a)))
    return np.array(out)


def test_one_mc_pass_is_one_network_for_all_candidates_of_an_example():
    model, tok = lora_model(dropout=0.3)
    assert any(len(encode_answer(tok, c, 128)) > 1 for c in WORDS.candidates)  # the pair path, not the one-token one
    k, seed = 3, 7
    got = score(
        model, tok, WORDS, EXAMPLES, passes=k, mc_dropout=True, seed=seed, settings=ScoringSettings(batch_size=4)
    )
    assert got.pass_probs.shape == (len(EXAMPLES), k, 3)
    for i, ex in enumerate(EXAMPLES):
        for m in range(k):
            expected = U.label_distribution(
                explicit_pass(model, tok, ex.prompt, WORDS.candidates, group_seed(seed, i, m))
            )
            np.testing.assert_allclose(got.pass_probs[i, m], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.measures["bald"], U.bald(got.pass_probs), rtol=1e-12)
    assert (got.measures["bald"] > 0).all()  # the passes differ: dropout is active
    # the masks belong to (example, pass), not to the batching: another batch size gives the same distributions
    other = score(
        model, tok, WORDS, EXAMPLES, passes=k, mc_dropout=True, seed=seed, settings=ScoringSettings(batch_size=7)
    )
    np.testing.assert_allclose(other.pass_probs, got.pass_probs, rtol=1e-5, atol=1e-7)


def test_a_prompt_ending_in_a_space_is_joined_with_exactly_one_space():
    base, tok = tiny_random()
    obqa = get_task("obqa", template="{question}")
    spaced = Example("s", "Which is hard? A. rock B. air\nThe correct answer is ", "A", "A")
    plain = Example("p", "Which is hard? A. rock B. air\nThe correct answer is", "A", "A")
    line = Example("n", "Which is hard?\nAnswer:\n", "A", "A")
    ((p, a),) = encode_examples(tok, [spaced], TrainSettings())
    assert tok.decode(p + a, skip_special_tokens=True) == "Which is hard? A. rock B. air\nThe correct answer is A"
    assert encode_examples(tok, [spaced], TrainSettings()) == encode_examples(tok, [plain], TrainSettings())
    ((p, a),) = encode_examples(tok, [line], TrainSettings())
    assert tok.decode(p + a, skip_special_tokens=True) == "Which is hard?\nAnswer:\nA"  # a line break joins alone
    # scoring reads the same tokens as training: both prompts get the same label distribution
    s = score(base, tok, obqa, [spaced, plain], settings=ScoringSettings())
    np.testing.assert_allclose(s.probs[0], s.probs[1], rtol=1e-6)
    # few-shot demonstrations too
    (shot,) = fewshot_examples([plain], [spaced])
    assert shot.prompt.startswith("Which is hard? A. rock B. air\nThe correct answer is A\n\n")
