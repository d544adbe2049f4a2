"""GSM8K generation: the final-answer stop rule, its stopping criterion in generate(), and the truncation count."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from starlora.data import Example, load_data
from starlora.evaluation import evaluate
from starlora.models import tiny_random, tiny_tokenizer
from starlora.scoring import ScoringSettings, TextStop, greedy_answers, score
from starlora.tasks import extract_number, final_answer_complete, get_task

GSM8K = get_task("gsm8k")


@pytest.mark.parametrize(
    "text,finished",
    [
        ("She has 13 eggs.\nThe final answer is 13\n", True),
        ("The final answer is 13 ", True),
        ("The final answer is 13.\n", True),
        ("The final answer is 1,234 dollars", True),
        ("the final answer is: -5\n", True),
        ("The final answer is 13", False),  # may go on to 130
        ("The final answer is 13.", False),  # may go on to 13.5
        ("The final answer is 1,", False),  # may go on to 1,234
        ("The final answer is -", False),
        ("The final answer is $", False),
        ("The final answer is \n", False),
        ("She has 13 eggs.\n", False),
        ("#### 13\n", False),  # the training targets end on the phrase, not on '####'
    ],
)
def test_final_answer_complete(text, finished):
    assert final_answer_complete(text) is finished
    assert GSM8K.stop is final_answer_complete and get_task("boolq").stop is None and get_task("open").stop is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789 .,-$ab\n", max_size=12), st.text(alphabet="0123456789 .,-$ab\n", max_size=12))
def test_stopping_never_changes_the_extracted_number(answer, rest):
    """Wherever the rule stops a generation, the text up to there reads as the whole text would (no later phrase)."""
    text = f"12 - 5 = 7 eggs.\nThe final answer is {answer}{rest}"
    for end in range(len(text) + 1):
        if final_answer_complete(text[:end]):
            assert extract_number(text[:end]) == extract_number(text)
            assert all(final_answer_complete(text[:longer]) for longer in range(end, len(text) + 1))  # monotone
            break


def test_every_embedded_target_ends_on_the_stop_phrase():
    data = load_data(GSM8K)
    for ex in data.pool + data.test:
        assert not final_answer_complete(ex.target)  # the last digits could still grow...
        assert final_answer_complete(ex.target + "\n")  # ...until a non-number character follows
        assert extract_number(ex.target + "\n") == ex.gold


def test_text_stop_on_token_sequences():
    tok = tiny_tokenizer()
    prompt = tok("Question: 2 + 2?\nAnswer:")["input_ids"]
    texts = [" 2 + 2 = 4\nThe final answer is 42.\nmore", " The final answer is 4"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    stop = TextStop(tok, final_answer_complete, start=len(prompt))
    width = max(map(len, rows))
    for n in range(1, width + 1):
        ids = torch.tensor([prompt + (r + [tok.pad_token_id] * width)[:n] for r in rows])
        done = stop(ids, None).tolist()
        generated = tok.decode(rows[0][:n])
        assert done[0] == final_answer_complete(generated) and done[1] is False
    assert tok.decode(rows[0][: stop.lengths[0]]) == " 2 + 2 = 4\nThe final answer is 42.\n"  # stops on the newline
    assert 1 not in stop.lengths


def scripted(model, tokenizer, texts):
    """Make generate() write texts[r] in batch row r (its last token repeated after it): a hook on the LM head.

    Teacher-forced scoring (answer_stats) runs the head on flat [M, H] positions and is left alone."""
    scripts = [tokenizer(t, add_special_tokens=False)["input_ids"] if isinstance(t, str) else t for t in texts]
    step = [0]

    def force(module, inputs, logits):
        if logits.dim() != 3:
            return logits
        wanted = torch.tensor([s[min(step[0], len(s) - 1)] for s in scripts])
        step[0] += 1
        logits = logits.clone()
        logits[torch.arange(len(scripts)), -1, wanted] += 1e4
        return logits

    return model.get_output_embeddings().register_forward_hook(force)


@pytest.mark.parametrize("pad_is_eos", [False, True])  # SmolLM2 pads with its EOS id
def test_greedy_answers_stop_eos_and_truncation(pad_is_eos):
    model, tok = tiny_random()
    if pad_is_eos:
        tok.pad_token = tok.eos_token
    eos = tok.eos_token_id
    texts = [
        "3 + 4 = 7\nThe final answer is 7\nand then 99 more",  # stops on the newline after 7
        "adding 4 apples " * 5,  # runs into max_new_tokens: the last number is read
        tok("The final answer is 8", add_special_tokens=False)["input_ids"] + [eos],  # the trained ending: EOS
    ]
    prompts = [tok("Question: q?\nAnswer:")["input_ids"]] * 3
    hook = scripted(model, tok, texts)
    try:
        answers, truncated = greedy_answers(
            model, tok, prompts, max_new_tokens=40, batch_size=3, stop=final_answer_complete
        )
    finally:
        hook.remove()
    assert tok.decode(answers[0]) == "3 + 4 = 7\nThe final answer is 7\n"  # no padding, nothing after the stop
    assert len(answers[1]) == 40 and eos not in answers[1]
    assert answers[2][-1] == eos and tok.decode(answers[2], skip_special_tokens=True) == "The final answer is 8"
    assert truncated.tolist() == [False, True, False]
    assert [extract_number(tok.decode(a, skip_special_tokens=True)) for a in answers] == ["7", "4", "8"]


def examples(n):
    return [
        Example(f"q{i}", "Question: what is 3 + 4?\nAnswer:", "3 + 4 = 7\nThe final answer is 7", "7") for i in range(n)
    ]


def test_evaluate_reports_the_truncation_rate():
    model, tok = tiny_random()
    texts = ["The final answer is 7.\n", "3 + 4 = 8 " * 20, "The final answer is 7\n", "The final answer is 9\n"]
    hook = scripted(model, tok, texts)
    try:
        result = evaluate(model, tok, GSM8K, examples(4), ScoringSettings(batch_size=4, max_new_tokens=32))
    finally:
        hook.remove()
    assert result["truncated"] == 25.0 and result["accuracy"] == 50.0


def test_a_model_that_never_finishes_is_all_truncated():
    model, tok = tiny_random()
    no_eos = model.get_output_embeddings().register_forward_hook(
        lambda m, i, logits: (
            logits.index_fill(-1, torch.tensor([tok.eos_token_id]), float("-inf")) if logits.dim() == 3 else logits
        )
    )
    try:
        scores = score(model, tok, GSM8K, examples(5), settings=ScoringSettings(batch_size=2, max_new_tokens=4))
    finally:
        no_eos.remove()
    assert scores.truncated.tolist() == [True] * 5  # 4 tokens cannot hold "The final answer is N" + one more
    assert score(model, tok, get_task("boolq"), examples(2)).truncated is None  # closed-set: nothing generated
    assert score(model, tok, GSM8K, examples(2), reference=True).truncated is None  # gold answers: nothing generated
