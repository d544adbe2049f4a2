"""Study II's write-up numbers that `starlora report` does not give (results/PLAN.md, "Metric and tests"): B's
learning-rate choice on random runs and its interaction (ΔAUC with full fine-tuning against ΔAUC with LoRA, paired by
seed), D's oracles (star-me's as registered, star-pe's from the plan's amendment 1) against random and against
their label-free twin (one Holm family of two each; for D′ also star-pe against random, and, descriptive, the queries
that asked for one class only and whether that was the class the model recalled less), and C's rare class (seeds
that start without one, rare examples labeled per round). The same functions as the report: metrics.paired_delta,
paired_t_p, sign_test_p, holm. Written before B, C and D had runs; a question without runs yet says so.

    .venv/bin/python results/study_ii.py              # writes results/study-ii-analysis.md
    .venv/bin/python results/study_ii.py --full-grid  # writes results/ii-full/grid.yaml once B's lr is chosen
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import yaml

from starlora import metrics
from starlora.data import load_data
from starlora.reporting import load_runs, paired_tests
from starlora.tasks import get_task

RESULTS = Path(__file__).resolve().parent
RARE = "positive"  # question C makes positives 10% of the pool
CHANCE = 50.0  # balanced accuracy of a two-class model that answers one class whatever the example
SEEDS = 10  # every row of the study (results/PLAN.md)
LRS, LR_SEEDS = (1e-5, 3e-5, 1e-4), (0, 1, 2)  # B's learning-rate choice (results/ii-full-lr/grid.yaml)


def runs_under(folder: Path) -> list[dict]:
    """The finished runs under a study folder (none when it has no finished run yet)."""
    return load_runs([folder]) if any(folder.rglob("summary.json")) else []


def by_seed(runs, strategy: str, **config) -> dict[int, float]:
    """AUC per seed of one strategy (the report's variant name) whose configuration has the given values."""
    out = {}
    for r in runs:
        if r["strategy"] == strategy and all(r["config"].get(k) == v for k, v in config.items()):
            if r["seed"] in out:
                raise ValueError(f"{r['folder']}: seed {r['seed']} of {strategy} {config} twice")
            out[r["seed"]] = r["auc"]
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """a − b over the seeds both have: mean, 95% interval, pairs, wins, paired t and sign-test p (both 1 when the
    differences are all exactly 0, as D's oracle against star-me, so the comparison stays in its Holm family)."""
    seeds = sorted(a.keys() & b.keys())
    d = metrics.paired_delta([a[s] for s in seeds], [b[s] for s in seeds])
    return {**d, "seeds": seeds, "p_t": metrics.paired_t_p(d["deltas"]), "p_sign": metrics.sign_test_p(d["deltas"])}


def lr_choice(runs, lrs=LRS, seeds=LR_SEEDS) -> tuple[list[dict], float | None]:
    """B's learning rate: mean AUC of the random full fine-tuning runs per lr; the highest mean wins (None until
    every planned lr has every planned seed)."""
    aucs = {lr: by_seed(runs, "random", lr=lr) for lr in lrs}
    rows = [{"lr": lr, **metrics.mean_std_ci(list(aucs[lr].values()))} for lr in lrs]
    complete = all(set(aucs[lr]) >= set(seeds) for lr in lrs)
    return [r for r in rows if r["n"]], (max(rows, key=lambda row: row["mean"])["lr"] if complete else None)


def full_grid(rows: list[dict], chosen: float) -> str:
    """results/ii-full/grid.yaml: random and me with full fine-tuning at the chosen lr, seeds 0-9, one block per seed
    (the frozen commit's sweep runs blocks in file order), the choice and its AUCs in the header."""
    header = [
        "# Question B (results/PLAN.md): random and me with full fine-tuning, seeds 0-9, against results/ii-sst2's",
        f"# LoRA runs. lr {chosen:g}, chosen on random runs only (results/ii-full-lr, seeds "
        f"{', '.join(map(str, LR_SEEDS))}; highest mean AUC),",
        "# written by results/study_ii.py --full-grid when the choice was complete:",
        *[f"#   lr {r['lr']:g}: AUC {r['mean']:.2f} ± {r['std']:.2f} over {r['n']} seeds" for r in rows],
        "# Study II, run from one frozen commit by results/run-study-ii; bf16 autocast as in every study II grid.",
    ]
    lr = yaml.safe_dump(chosen).split("\n")[0]  # YAML's float spelling (3.0e-05; PyYAML reads 3e-05 as a string)
    block = "- tasks: [sst2]\n  protocol: sst2\n  config: {{precision: bf16, mode: full, lr: {lr}}}\n"
    block += "  strategies: [random, me]\n  seeds: [{seed}]\n"
    return "\n".join(header) + "\n" + "".join(block.format(lr=lr, seed=s) for s in range(10))


def interaction(full, lora, strategy: str = "me") -> dict:
    """B's own question: per seed, ΔAUC(strategy − random) with full fine-tuning minus the same with LoRA."""
    mine = {"full": by_seed(full, strategy, mode="full"), "lora": by_seed(lora, strategy, mode="lora")}
    random = {"full": by_seed(full, "random", mode="full"), "lora": by_seed(lora, "random", mode="lora")}
    delta = {
        mode: {s: mine[mode][s] - random[mode][s] for s in mine[mode].keys() & random[mode].keys()} for mode in mine
    }
    return {
        **{mode: paired(mine[mode], random[mode]) for mode in mine},
        "interaction": paired(delta["full"], delta["lora"]),
        "random_full_vs_lora": paired(random["full"], random["lora"]),  # what full fine-tuning itself buys
    }


def oracle(runs, strategy: str = "star-me") -> dict:
    """D (strategy star-me) and D′ (star-pe, amendment 1): the oracle `STRATEGY+oracle-reference` against random and
    against its label-free twin, Holm-adjusted as one family of two."""
    name = f"{strategy}+oracle-reference"
    tests = {
        "vs random": paired(by_seed(runs, name), by_seed(runs, "random")),
        f"vs {strategy}": paired(by_seed(runs, name), by_seed(runs, strategy)),
    }
    for test, p in zip(tests.values(), metrics.holm([t["p_t"] for t in tests.values()])):
        test["p_holm"] = p
    return tests


def same_picks(runs, strategy: str = "star-me") -> tuple[int, int]:
    """(seeds whose oracle run labeled exactly what the label-free run labeled, round for round; seeds of both)."""
    picks = {
        (r["strategy"], r["seed"]): [rnd["selected"] for rnd in r["rounds"]]
        for r in runs
        if r["strategy"] in (strategy, f"{strategy}+oracle-reference")
    }
    seeds = {s for name, s in picks if name == strategy} & {s for name, s in picks if name != strategy}
    same = sum(picks[(strategy, s)] == picks[(f"{strategy}+oracle-reference", s)] for s in seeds)
    return same, len(seeds)


def rare_class(runs, rare: str = RARE) -> list[dict]:
    """C, per strategy: seeds whose initial labeled set holds no rare example, the mean rare examples labeled after
    each round (rounds.jsonl's labeled_classes), and the seeds whose model is at or near chance after each round:
    balanced accuracy at most 51, against the 50 of a model answering one class for every test example (a count
    added after the runs, not in the plan)."""
    out = []
    for strategy in sorted({r["strategy"] for r in runs}):
        mine = sorted((r for r in runs if r["strategy"] == strategy), key=lambda r: r["seed"])
        counts = [[rnd["labeled_classes"][rare] for rnd in r["rounds"]] for r in mine]
        rounds = min(map(len, counts))
        out.append(
            {
                "strategy": strategy,
                "seeds": len(mine),
                "none_at_start": sum(c[0] == 0 for c in counts),
                "rare_per_round": [sum(c[t] for c in counts) / len(counts) for t in range(rounds)],
                "at_chance_per_round": [
                    sum(r["rounds"][t]["balanced_accuracy"] <= CHANCE + 1 for r in mine) for t in range(rounds)
                ],
            }
        )
    return out


def queries(runs, strategy: str):
    """(the round that chose the query, {class: examples the query added}) for every query of a strategy's runs, read
    off the labeled set's class counts before and after it (rounds.jsonl's labeled_classes); a query that added
    nothing (none happen in the study) is left out."""
    for r in runs:
        if r["strategy"] == strategy:
            for before, after in zip(r["rounds"], r["rounds"][1:]):
                counts = before["labeled_classes"]
                added = {c: n - counts.get(c, 0) for c, n in after["labeled_classes"].items()}
                if sum(added.values()) > 0:
                    yield before, added


def _one_class(added: dict[str, int]) -> str | None:
    """The class a query asked for when every pick was of it."""
    (asked, n), *_ = sorted(added.items(), key=lambda item: -item[1])
    return asked if n == sum(added.values()) else None


def one_class_queries(runs, strategy: str) -> tuple[int, int]:
    """(queries whose every pick was of one class, queries) over a strategy's runs. Descriptive, added after D′'s first
    runs showed the oracle asking for one class at a time, not in the plan."""
    asked = [_one_class(added) is not None for _, added in queries(runs, strategy)]
    return sum(asked), len(asked)


def class_recalls(accuracy: float, balanced: float, test_counts: dict[str, int]) -> dict[str, float]:
    """Each class's test recall (%) of a two-class model, solved from its accuracy and balanced accuracy: accuracy is
    the recalls weighted by the classes' test counts, balanced accuracy their plain mean, so two equations fix the two
    recalls when the counts differ. The error of the inputs grows by (n_a + n_b) / |n_a − n_b| (34 on SST-2's 140
    and 132), so recalls that are not whole examples of those counts mean the counts are not the run's test set."""
    (a, n_a), (b, n_b) = test_counts.items()
    if n_a == n_b:
        raise ValueError("a test set with equal class counts does not tell the recalls apart")
    recall_a = (accuracy * (n_a + n_b) - 2 * balanced * n_b) / (n_a - n_b)
    recalls = {a: recall_a, b: 2 * balanced - recall_a}
    for c, n in test_counts.items():
        correct = recalls[c] * n / 100
        if not -1e-6 <= correct <= n + 1e-6 or abs(correct - round(correct)) > 1e-3:
            raise ValueError(f"recall {recalls[c]:.4f} of {c} is not a whole number of its {n} test examples")
    return recalls


def weaker_class_asked(runs, strategy: str, test_counts: dict[str, int]) -> tuple[int, int]:
    """(one-class queries asking for the class the choosing round's model recalled less on the test set, one-class
    queries whose model recalled the two classes differently): whether a one-class query chases the model's lean.
    Descriptive, not in the plan."""
    weaker = unequal = 0
    for chooser, added in queries(runs, strategy):
        if (asked := _one_class(added)) is not None:
            recalls = class_recalls(chooser["accuracy"], chooser["balanced_accuracy"], test_counts)
            if len(set(recalls.values())) > 1:  # a tie has no weaker class
                unequal += 1
                weaker += asked == min(recalls, key=recalls.get)
    return weaker, unequal


def lora_random(runs) -> list[dict]:
    """A's random runs: D′ pairs with them by seed (the same protocol, seed and initial set)."""
    return [r for r in runs if r["strategy"] == "random"]


def _p(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.3f}"


def _delta(t: dict) -> str:
    interval = "" if math.isnan(t["low"]) else f" [{t['low']:+.2f}, {t['high']:+.2f}]"
    return f"{t['mean']:+.2f}{interval}"


def _spread(t: dict) -> str:
    """sd of the paired differences, the smallest true Δ they detect and the seeds a Δ of 1 needs (report's plan)."""
    plan = paired_tests(t["deltas"], (1.0,))
    need = plan["seeds_needed"][1.0]
    return f"{plan['sd']:.2f}, detects {plan['mde']:.2f}, Δ 1 needs {need or 'over 10000'} seeds"


def _test_row(name: str, t: dict) -> str:
    holm = f" | {_p(t['p_holm'])}" if "p_holm" in t else ""
    if not t["n"]:  # runs of one side only so far
        return f"| {name} | 0 | no pair yet | —{' | —' if holm else ''} | — | — |"
    return f"| {name} | {t['n']} | {_delta(t)} | {_p(t['p_t'])}{holm} | {_p(t['p_sign'])} | {t['wins']}/{t['n']} |"


def _secondary_lines(runs, strategy: str, family: dict, test_counts: dict[str, int]) -> list[str]:
    """D′'s lines beside its Holm family (`family`, from oracle()): the label-free strategy against random (secondary,
    unadjusted, amendment 1), each comparison's spread, and how often each row asked for one class only
    (descriptive)."""
    tests = dict(family)
    plain = tests[f"{strategy} − random"] = paired(by_seed(runs, strategy), by_seed(runs, "random"))
    lines = []
    if plain["n"]:
        lines += [
            "",
            f"Secondary, unadjusted: {strategy} − random {_delta(plain)} ({plain['n']} pairs; p (t) "
            f"{_p(plain['p_t'])}, p (sign) {_p(plain['p_sign'])}, wins {plain['wins']}/{plain['n']}).",
        ]
    spread = [f"{name} sd {_spread(t)}" for name, t in tests.items() if t["n"] > 1]
    if spread:
        lines += ["", "Spread (paired t, α 0.05, 80% power, from the observed sd): " + "; ".join(spread) + "."]
    rows = ("random", strategy, f"{strategy}+oracle-reference")
    seeds = set(by_seed(runs, rows[-1]))  # every row over the oracle's seeds, so the counts compare
    runs = [r for r in runs if r["seed"] in seeds]
    one = "; ".join("{} {} of {}".format(name, *one_class_queries(runs, name)) for name in rows)
    weaker = "; ".join("{} {} of {}".format(name, *weaker_class_asked(runs, name, test_counts)) for name in rows)
    return lines + [
        "",
        f"Not registered, descriptive, over the oracle's seeds: queries whose picks were all of one class: {one}. "
        "Of those, the ones asking for the class the choosing round's model recalled less on the test set (recalls "
        f"solved from its accuracy and balanced accuracy; ties left out): {weaker}.",
    ]


def classes_of_test_set(task: str = "sst2") -> dict[str, int]:
    """Test examples per class of a built-in task's embedded test set (the study's)."""
    return dict(Counter(example.target for example in load_data(get_task(task)).test))


def markdown(results: Path = RESULTS) -> str:
    lines = [
        "# Study II: the numbers `starlora report` does not give",
        "",
        "Written by `results/study_ii.py` from the finished runs; ΔAUC in AUC points, mean [95% paired "
        "t-interval]; p (t) two-sided paired t, p (sign) exact sign test; wins = seeds with a positive "
        "difference.",
        "",
    ]
    lr_rows, chosen = lr_choice(runs_under(results / "ii-full-lr"))
    lines += ["## B: full fine-tuning's learning rate (random runs only)", ""]
    if lr_rows:
        lines += ["| lr | seeds | AUC mean ± sd |", "|---|---|---|"]
        lines += [f"| {r['lr']:g} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} |" for r in lr_rows]
        lines += ["", f"Chosen: lr {chosen:g} (highest mean AUC)." if chosen else "Not chosen yet: seeds missing."]
    else:
        lines += ["No run yet."]
    full, lora = runs_under(results / "ii-full"), runs_under(results / "ii-sst2")
    lines += ["", "## B: does me gain more over random with full fine-tuning than with LoRA?", ""]
    b = interaction(full, lora) if full and lora else None
    if b and b["interaction"]["n"] < SEEDS:  # the plan tests B at ten seeds: no interim test
        lines += [f"{b['interaction']['n']} of {SEEDS} seeds paired so far; B is tested at ten, as registered."]
    elif b:
        gain = b["random_full_vs_lora"]
        lines += [
            "| comparison | pairs | Δ [95% CI] | p (t) | p (sign) | wins |",
            "|---|---|---|---|---|---|",
            _test_row("ΔAUC me − random, full", b["full"]),
            _test_row("ΔAUC me − random, LoRA", b["lora"]),
            _test_row("interaction: full − LoRA", b["interaction"]),
            "",
            "Spread (paired t, α 0.05, 80% power, from the observed sd): "
            + "; ".join(
                f"{name} sd {_spread(b[key])}"
                for name, key in (("full", "full"), ("LoRA", "lora"), ("interaction", "interaction"))
            )
            + ".",
            "",
            "Not registered, descriptive: random's AUC, full − LoRA by seed: "
            f"{_delta(gain)}, higher in {gain['wins']} of {gain['n']} seeds.",
        ]
    else:
        lines += ["No full fine-tuning run of the 10-seed grid yet."]
    lines += ["", "## D: the official code's gold-reading uncertainty (an oracle)", ""]
    for title, strategy, runs, secondary in [
        ("D (registered): star-me", "star-me", lora, False),  # star-me against random is A's own comparison
        ("D′ (amendment 1): star-pe", "star-pe", lora_random(lora) + runs_under(results / "ii-leak"), True),
    ]:
        lines += [f"### {title}", ""]
        if not by_seed(runs, f"{strategy}+oracle-reference"):
            lines += ["No oracle run yet.", ""]
            continue
        same, both = same_picks(runs, strategy)
        family = oracle(runs, strategy)
        lines += [
            f"| {strategy}+oracle-reference | pairs | ΔAUC [95% CI] | p (t) | p (t, Holm) | p (sign) | wins |",
            "|---|---|---|---|---|---|---|",
        ] + [_test_row(k, t) for k, t in family.items()]
        lines += ["", f"Seeds whose oracle labeled exactly what {strategy} labeled, round for round: {same} of {both}."]
        if secondary:
            lines += _secondary_lines(runs, strategy, family, classes_of_test_set())
        lines += [""]
    lines += ["", f"## C: the rare class ({RARE}, 10% of the pool)", ""]
    imbalance = runs_under(results / "ii-imbalance")
    if imbalance:
        lines += [
            "| strategy | seeds | seeds starting without one | mean labeled after each round "
            "| seeds at chance after each round |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['strategy']} | {r['seeds']} | {r['none_at_start']} | "
            f"{', '.join(f'{x:.1f}' for x in r['rare_per_round'])} | "
            f"{', '.join(map(str, r['at_chance_per_round']))} |"
            for r in rare_class(imbalance)
        ]
        lines += [
            "",
            f"At chance: balanced accuracy at most {CHANCE + 1:g}, against the {CHANCE:g} of a model answering one "
            "class for every test example (macro-F1 about 34 on this test set); a count added after the runs, not "
            "in the plan.",
        ]
    else:
        lines += ["No run yet."]
    return "\n".join(lines) + "\n"


def write_full_grid(results: Path = RESULTS) -> Path | None:
    """Write B's 10-seed grid once the lr choice is complete (the driver calls this after results/ii-full-lr); an
    existing grid is kept, so the choice is made once."""
    out = results / "ii-full" / "grid.yaml"
    rows, chosen = lr_choice(runs_under(results / "ii-full-lr"))
    if out.exists() or chosen is None:
        return None
    out.parent.mkdir(exist_ok=True)
    out.write_text(full_grid(rows, chosen))
    return out


if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["--full-grid"]):
        sys.exit(f"usage: {sys.argv[0]} [--full-grid]")
    if sys.argv[1:] == ["--full-grid"]:
        written = write_full_grid()
        print(f"written {written}" if written else "results/ii-full/grid.yaml: kept, or the lr choice is not complete")
    else:
        out = RESULTS / "study-ii-analysis.md"
        out.write_text(markdown())
        print(f"written {out}")
