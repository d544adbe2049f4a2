"""Tasks: how a row becomes a prompt, what its gold answer is, and how a prediction is scored.

A closed-set task has a finite candidate list: the prediction is the most likely candidate. An open task generates
its answer and an extractor turns the text into something comparable with the gold answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import StarloraError

_NUMBER = r"-?\$? ?\d[\d,]*(?:\.\d+)?|-?\.\d+"  # "$ 5": a plain space only (\s would take control characters)
_FINAL = r"the final answer is\s*:?\s*"  # the phrase GSM8K targets end with (Task.target)
_BINARY_MINUS = re.compile(r"[\d)\]}] *$")  # what stands before the '-' of "8 - 5", "10-3", "(2+6) - 5"


def extract_number(text: str) -> str | None:
    """The number after 'The final answer is' or '####', else the last number; commas and '$' removed.

    In the last-number fallback a '-' after a digit or a closing bracket is a subtraction, not a sign:
    "8 - 5" gives 5 (its result is not written), never -5."""
    for marker in (_FINAL, r"####\s*:?\s*"):
        found = re.findall(rf"{marker}({_NUMBER})", text, flags=re.IGNORECASE)
        if found:
            return _clean_number(found[-1])
    last = None
    for last in re.finditer(_NUMBER, text):
        pass
    if last is None:
        return None
    number = _clean_number(last.group())
    binary = number.startswith("-") and _BINARY_MINUS.search(text, 0, last.start())
    return number[1:] if binary else number


def final_answer_complete(text: str) -> bool:
    """Whether a generation holds a finished final-answer line, "The final answer is N" followed by a character
    that cannot extend N: more text could not change the number extract_number reads, so generation may stop.

    "... is 18" may go on to 185 and "... is 18." to 18.5: neither is finished; "... is 18.\n" and "... is 18 " are.
    """
    for found in re.finditer(rf"{_FINAL}(?:{_NUMBER})", text, flags=re.IGNORECASE):
        rest = text[found.end() :]  # the greedy match already took every digit, ',' and '.d' that belong to N
        if rest and rest != ".":
            return True
    return False


def _clean_number(raw: str) -> str:
    cleaned = raw.replace(",", "").replace("$", "").replace(" ", "")
    return cleaned.rstrip(".")


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def normalise_text(text: str) -> str:
    """How answers are compared: spaces collapsed, a final '.' dropped, case folded."""
    return " ".join(text.strip().rstrip(".").split()).casefold()


@dataclass(frozen=True)
class Task:
    """name; prompt template over a row's fields; candidates for closed-set tasks (None: open task)."""

    name: str
    template: str
    candidates: tuple[str, ...] | None = None
    numeric: bool = False  # open task compared by the extracted number (GSM8K)

    @property
    def closed(self) -> bool:
        return self.candidates is not None

    def prompt(self, row: dict) -> str:
        try:
            return self.template.format(**row)
        except KeyError as e:
            raise StarloraError(f"prompt template {self.template!r} needs field {e.args[0]!r}") from None
        except (IndexError, ValueError, AttributeError, TypeError) as e:  # get_task refuses these up front
            raise StarloraError(f"prompt template {self.template!r} cannot be filled: {e}") from None

    def gold(self, answer: str) -> str:
        """The canonical gold label of an answer text ('the correct answer is true' -> 'true'); ValueError if none."""
        if self.closed:
            return self._parse_candidate(answer)
        if self.numeric:
            number = extract_number(answer)
            if number is None:
                raise ValueError(f"no number in answer {answer[:60]!r}")
            return number
        if not answer.strip():
            raise ValueError("empty answer")
        return answer.strip()

    def target(self, answer: str) -> str:
        """The text the model is trained to continue the prompt with (without the leading space)."""
        if self.closed:
            return self.gold(answer)
        if self.numeric:  # GSM8K: drop calculator annotations <<a*b=c>>, end on the canonical final-answer phrase
            text = re.sub(r"<<[^>]*>>", "", answer).strip()
            text = re.sub(r"\s*####\s*(.*)$", r"\nThe final answer is \1", text)
            return text
        return answer.strip()

    @property
    def stop(self):
        """Open tasks: the rule (text -> bool) that ends a generation before EOS, or None (EOS and max_new_tokens)."""
        return final_answer_complete if self.numeric else None

    def predict_text(self, generated: str) -> str | None:
        """Open tasks: the comparable answer inside a generation."""
        if self.numeric:
            return extract_number(generated)
        return generated.strip().split("\n")[0].strip()

    def correct(self, prediction: str | None, gold: str) -> bool:
        if prediction is None:
            return False
        if self.numeric:
            return numbers_equal(prediction, gold)
        return normalise_text(prediction) == normalise_text(gold)

    def label(self, answer: str) -> str:
        """The gold label of a person's answer (the human loop), matched exactly: a closed-set answer is one of the
        candidates after trimming and case-folding (or yes/no for true/false); a numeric answer is a number, or a
        worked solution ending in "#### N" / "The final answer is N". Anything else is refused (ValueError naming
        what is allowed): a label is never guessed from the words around it."""
        text = str(answer).strip()
        if self.closed:
            found = self._aliases().get(text.casefold())
            if found is None:
                raise ValueError(f"answer {text[:60]!r} is not one of {list(self.candidates)} (exactly, up to case)")
            return found
        if self.numeric:
            marked = re.search(rf"(?:{_FINAL}|####\s*:?\s*)({_NUMBER})\s*\.?\s*$", text, flags=re.IGNORECASE)
            if not (re.fullmatch(_NUMBER, text) or marked):
                raise ValueError(f"answer {text[:60]!r} is not a number, nor a solution ending in '#### N'")
        return self.gold(text)

    def _aliases(self) -> dict[str, str]:
        """Case-folded candidate -> candidate, plus yes/no for a true/false task: the only answers a label may be."""
        by_key = {c.strip().casefold(): c for c in self.candidates}
        if set(by_key) == {"true", "false"}:
            by_key |= {"yes": by_key["true"], "no": by_key["false"]}
        return by_key

    def _parse_candidate(self, answer) -> str:
        """A data file's answer: a candidate (or yes/no for true/false), or the official STAR format "the correct
        answer is true" / "Answer: (B)" whose tail is exactly a candidate. Never a candidate found among other words
        ("not positive" is refused, not read as positive)."""
        if isinstance(answer, bool):
            answer = "true" if answer else "false"
        text = normalise_text(str(answer))
        by_key = {normalise_text(k): c for k, c in self._aliases().items()}
        if text in by_key:
            return by_key[text]
        tail = re.search(r"answer\s*(?:is|:)\s*\(?(.+?)\)?$", text)
        if tail and tail.group(1) in by_key:
            return by_key[tail.group(1)]
        raise ValueError(f"answer {str(answer)[:60]!r} is not one of {list(self.candidates)}")


BUILTIN = {
    "boolq": Task("boolq", "Question: {question}?\nAnswer:", ("true", "false")),
    "boolq-passage": Task("boolq-passage", "{passage}\nQuestion: {question}?\nAnswer:", ("true", "false")),
    "obqa": Task("obqa", "Question: {question}\nAnswer:", ("A", "B", "C", "D")),
    "gsm8k": Task("gsm8k", "Question: {question}\nAnswer:", numeric=True),
    # Not a paper task: the one the embedded 135M model learns within a few rounds on a CPU (README, Data)
    "sst2": Task("sst2", "Review: {sentence}\nSentiment:", ("negative", "positive")),
}
GENERIC = ("closed", "open")


def check_template(template: str) -> None:
    """Refuse, naming --template, a prompt template that str.format cannot fill from named fields: a brace left open,
    a positional field ({0}, {}), an unknown conversion (!z) or a format spec no string or number takes (:zz)."""

    class AnyField(dict):
        def __missing__(self, key):
            return value

    error = None
    for value in ("x", 0, 0.0):  # a field's value may be a string or a number (JSON); one must fit every field
        try:
            template.format_map(AnyField())
            return
        except (IndexError, ValueError, AttributeError, TypeError) as e:
            error = error or e
    if "positional" in str(error):
        error = "positional fields such as {0} or {} are not allowed"
    raise StarloraError(
        f"--template {template!r}: {error}; name the file's fields, e.g. '{{question}}', "
        f"and write a literal brace as '{{{{' or '}}}}'"
    )


def get_task(
    name: str, candidates: list[str] | None = None, template: str | None = None, user_files: bool = False
) -> Task:
    """A built-in task, or the generic 'closed' (needs candidates) / 'open' task for user data. With user_files the
    default template is '{question}' used verbatim (the official STAR file format: the field holds the whole prompt)."""
    template = template or ("{question}" if user_files else None)
    if template is not None:
        check_template(template)
    if name in BUILTIN:
        task = BUILTIN[name]
        return Task(task.name, template, task.candidates, task.numeric) if template else task
    if name == "closed":
        if not candidates or len(candidates) < 2:
            raise StarloraError("task 'closed' needs at least two --candidates, e.g. --candidates yes,no,maybe")
        return Task("closed", template or "{question}", tuple(candidates))
    if name == "open":
        return Task("open", template or "{question}")
    raise StarloraError(f"unknown task {name!r}: choose one of {', '.join([*BUILTIN, *GENERIC])}")
