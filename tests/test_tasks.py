import pytest

from starlora.errors import StarloraError
from starlora.tasks import extract_number, get_task, numbers_equal


def test_boolq_prompt_and_gold_from_star_format():
    task = get_task("boolq")
    assert task.prompt({"question": "is the sky blue"}) == "Question: is the sky blue?\nAnswer:"
    assert task.gold("the correct answer is true") == "true"
    assert task.gold("The correct answer is False.") == "false"
    assert task.gold(True) == "true" and task.gold("no") == "false"
    assert task.target("the correct answer is true") == "true"
    assert task.correct("true", "true") and not task.correct("false", "true")


def test_boolq_passage_prompt():
    task = get_task("boolq-passage")
    assert task.prompt({"question": "q", "passage": "P."}) == "P.\nQuestion: q?\nAnswer:"


def test_obqa_letters():
    task = get_task("obqa")
    assert task.candidates == ("A", "B", "C", "D")
    assert task.gold("B") == "B" and task.gold(" c ") == "C"
    assert task.gold("the correct answer is D") == "D"
    assert task.gold("Answer: (A)") == "A"
    with pytest.raises(ValueError):
        task.gold("A person walks")  # an article, not an answer
    with pytest.raises(ValueError):
        task.gold("E")


@pytest.mark.parametrize(
    "text,number",
    [
        ("Janet sells 9 eggs.\n#### 18", "18"),
        ("So the answer is 5. The final answer is 1,234", "1234"),
        ("The final answer is -3.5.", "-3.5"),
        ("it costs $1,000 and then 7 more", "7"),
        ("#### $2,125.50", "2125.50"),
        ("no digits here", None),
    ],
)
def test_extract_number(text, number):
    assert extract_number(text) == number


@pytest.mark.parametrize(
    "text,number",
    [
        ("She has 8 - 5", "5"),  # a cut-off "8 - 5 = 3": the last number is 5, never -5
        ("10-3", "3"),
        ("10 -3", "3"),
        ("(2 + 6) - 5", "5"),
        ("[4] - 1", "1"),
        ("8 - $5", "5"),
        ("The final answer is -5", "-5"),
        ("#### -5", "-5"),
        ("3 + 4 = 8 - 5\nThe final answer is -5.", "-5"),
        ("so the change in price is -3.", "-3"),
        ("-4 degrees", "-4"),
        ("it fell by -$4", "-4"),
        ("3 - -5", "-5"),  # a sign after a binary minus
    ],
)
def test_last_number_minus_is_a_sign_only_when_not_a_subtraction(text, number):
    assert extract_number(text) == number


def test_gsm8k_numeric_comparison_and_target():
    task = get_task("gsm8k")
    solution = "She has 16 - 3 = <<16-3=13>>13 eggs.\n#### 13"
    assert task.gold(solution) == "13"
    assert task.target(solution) == "She has 16 - 3 = 13 eggs.\nThe final answer is 13"
    assert task.correct(task.predict_text("so 13.0 in total. The final answer is 13.00"), "13")
    assert not task.correct(task.predict_text("The final answer is 12"), "13")
    assert not task.correct(None, "13")
    assert numbers_equal("1000", "1000.0") and not numbers_equal("abc", "1")


def test_generic_closed_and_open():
    task = get_task("closed", ["yes", "no", "maybe"])
    assert task.gold("Maybe.") == "maybe" and task.gold("the answer is no") == "no"
    with pytest.raises(ValueError):
        task.gold("perhaps")
    open_task = get_task("open")
    assert open_task.prompt({"question": "Translate: chat"}) == "Translate: chat"
    assert open_task.correct(open_task.predict_text(" Cat.\nmore text"), "cat")


def test_unknown_task_and_missing_candidates():
    with pytest.raises(StarloraError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(StarloraError, match="--candidates"):
        get_task("closed")
