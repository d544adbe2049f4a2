"""Property tests (hypothesis): the loaders never crash on arbitrary bytes, answer extraction never raises and
round-trips numbers, the metrics and uncertainty formulas stay in their ranges and never return NaN."""

import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from starlora import metrics
from starlora import uncertainty as U
from starlora.data import make_examples, read_rows
from starlora.errors import StarloraError
from starlora.tasks import extract_number, get_task, numbers_equal

BOOLQ = get_task("boolq", template="{question}")
FAST = settings(max_examples=150, deadline=None)


def load(content: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"pool{suffix}"
        path.write_bytes(content)
        try:
            return make_examples(read_rows(path), BOOLQ, str(path))
        except StarloraError as e:
            message = str(e)
            assert "\n" not in message and str(path) in message  # one line naming the file
            return None


value = st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans(), st.sampled_from(["true", "false"]))
json_rows = st.lists(
    st.one_of(
        st.dictionaries(st.sampled_from(["id", "question", "answer", "x"]), value, max_size=4),
        st.fixed_dictionaries(
            {
                "question": st.text(min_size=1, max_size=12),
                "answer": st.sampled_from(["true", "false", "True", "the answer is false"]),
            },
            optional={"id": st.one_of(st.integers(0, 3), st.text(max_size=3))},
        ),
    ),
    max_size=5,
)


@FAST
@given(
    st.one_of(st.binary(max_size=200), json_rows.map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()))
)
def test_jsonl_loader_returns_examples_or_a_one_line_error(content):
    examples = load(content, ".jsonl")
    if examples is not None:
        assert examples and all(ex.gold in ("true", "false") for ex in examples)
        assert len({ex.id for ex in examples}) == len(examples)


@FAST
@given(st.binary(max_size=200))
def test_csv_loader_returns_examples_or_a_one_line_error(content):
    examples = load(b"id,question,answer\n" + content, ".csv")
    assert examples is None or all(ex.gold in ("true", "false") for ex in examples)


@FAST
@given(st.text(max_size=80))
def test_extract_number_never_raises_and_returns_a_number(text):
    found = extract_number(text)
    if found is not None:
        float(found)


@FAST
@given(st.integers(-(10**9), 10**9), st.text(alphabet="abc .\n", max_size=20))
def test_numbers_round_trip_through_the_final_answer_phrase(n, noise):
    assert extract_number(f"{noise} 7 apples. The final answer is {n:,}") == str(n)
    assert numbers_equal(f"{n}.0", str(n))


probabilities = arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(2, 5)), elements=st.floats(0, 1)).map(
    lambda a: (a + 1e-9) / (a + 1e-9).sum(1, keepdims=True)
)


@FAST
@given(probabilities, st.data())
def test_calibration_metrics_stay_in_range(probs, data):
    labels = np.array(data.draw(st.lists(st.integers(0, probs.shape[1] - 1), min_size=len(probs), max_size=len(probs))))
    assert 0 <= metrics.ece(probs, labels) <= 1
    assert 0 <= metrics.brier(probs, labels) <= 2
    assert ((metrics.wrong_confidence(probs, labels) >= 0) & (metrics.wrong_confidence(probs, labels) <= 1)).all()


@FAST
@given(st.lists(st.floats(0, 100), min_size=1, max_size=12), st.floats(0, 99))
def test_auc_is_between_the_worst_and_best_round_and_ripl_has_the_sign_of_the_gain(curve, random_auc):
    auc = metrics.auc(curve)
    assert min(curve) - 1e-9 <= auc <= max(curve) + 1e-9
    gain = metrics.ripl(auc, random_auc)
    if abs(auc - random_auc) > 1e-9:  # below that the gain may round to 0 (e.g. a subnormal AUC over 100)
        assert np.sign(gain) == np.sign(auc - random_auc)
    assert gain <= 100 + 1e-9  # 100: every possible point gained
    assert abs(metrics.ripl(100.0, random_auc) - 100.0) < 1e-9


logliks = arrays(
    np.float64,
    st.tuples(st.integers(1, 8), st.integers(1, 4), st.integers(2, 4)),
    elements=st.one_of(st.floats(-1e6, 0), st.just(-np.inf)),
)


@FAST
@given(logliks)
def test_label_measures_are_finite_and_in_range(ll):
    p = U.label_distribution(ll)
    assert np.isfinite(p).all() and np.allclose(p.sum(-1), 1)
    c = ll.shape[-1]
    for value, top in ((U.least_confidence(p), 1), (U.margin(p), 1), (U.entropy(p), np.log(c)), (U.bald(p), np.log(c))):
        assert np.isfinite(value).all() and (value >= -1e-12).all() and (value <= top + 1e-9).all()


@FAST
@given(
    arrays(np.float64, st.integers(0, 20), elements=st.floats(-1e12, 1e12)),
    st.sampled_from(["minmax", "rank"]),
    st.floats(0, 1),
)
def test_normalised_and_mixed_scores_are_finite_and_in_the_unit_interval(x, method, lam):
    for values in (U.normalise(x, method), U.star_mix(x, x[::-1], lam, method)):
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1 + 1e-12).all()


# ---------------------------------------------------------------- the run command's options

OPTIONS = [
    "--init-size",
    "--query-size",
    "--rounds",
    "--epochs",
    "--batch-size",
    "--lr",
    "--lora-r",
    "--lora-alpha",
    "--lora-dropout",
    "--b-decay",
    "--k",
    "--schedule",
    "--normalisation",
    "--max-new-tokens",
    "--max-prompt-tokens",
    "--candidate-subsample",
    "--probe-size",
    "--fewshot",
    "--test-size",
    "--precision",
    "--strategy",
    "--mode",
    "--target",
    "--seed",
    "--protocol",
]
option_value = st.one_of(
    st.integers(-3, 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "linear",
            "exp:2:0.5",
            "constant:1.5",
            "cosine",
            "rank",
            "bf16",
            "fp8",
            "bald",
            "star-me",
            "full",
            "reference",
            "quick",
            "cpu",
            "paper",
            "",
            "1e-3",
            "-0",
        ]
    ),
    st.text(max_size=6),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(OPTIONS), option_value), max_size=4), st.sampled_from(["new", "file", "proc"])
)
def test_run_options_exit_0_or_2_in_one_line_and_write_nothing(options, out_kind):
    """Arbitrary option values through the real parser, resolve and the dry run (data, model and folder checked):
    exit 0 or 2, a one-line message, never a traceback, and nothing written."""
    from starlora.cli import main

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rows = [{"question": f"Question: is {i} even?\nAnswer:", "answer": str(i % 2 == 0).lower()} for i in range(40)]
        (d / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
        (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[30:]))
        (d / "file").write_text("x")
        out = {"new": str(d / "out"), "file": str(d / "file"), "proc": "/proc/starlora-no-such/out"}[out_kind]
        before = sorted(p.name for p in d.iterdir())
        argv = [
            "run",
            "--model",
            "tiny-random",
            "--task",
            "boolq",
            "--train-file",
            str(d / "pool.jsonl"),
            "--test-file",
            str(d / "test.jsonl"),
            "--init-size",
            "4",
            "--query-size",
            "4",
            "--rounds",
            "2",
            "--probe-size",
            "4",
            "--dry-run",
            "--out",
            out,
        ]
        for flag, value in options:
            argv += [f"{flag}={value}"]  # '=' keeps values like '-3' from reading as flags
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: a value of the wrong type
                code = e.code
        err = err.getvalue()
        assert code in (0, 2), err
        assert "Traceback" not in err
        if code == 2:
            assert err.strip().splitlines()[-1].startswith(("starlora: error:", "usage:")) or "error:" in err
            assert len([line for line in err.splitlines() if "error" in line]) == 1
        assert sorted(p.name for p in d.iterdir()) == before  # a dry run, or a refusal, writes nothing
