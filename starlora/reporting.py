"""`starlora report`: tables (Markdown, CSV) and plots over finished runs, one row per comparable group x strategy.

Runs are compared only within a group: the same resolved configuration (config.json) apart from strategy and seed.
Each strategy is measured against the random runs of its own group: RIPL against their mean AUC, and ΔAUC seed by seed
(a strategy's run with seed s starts from the same initial labeled set as the random run with seed s), with the paired
t-test (Holm-adjusted over the strategies of a group), a sign test, what the seeds can detect (minimum detectable
ΔAUC at 80% power, seeds needed for a named ΔAUC) and the same paired difference round by round. Every row names the
code revisions and machines its runs came from (provenance.py, hardware.machine); a group mixing revisions is
flagged, one mixing machines noted. Runs of the official code's gold-reading uncertainty (--target reference) are
marked as the oracle they are."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np

from . import metrics
from .config import LEGACY, variant
from .errors import StarloraError, StarloraWarning
from .files import read_json, read_rounds, write_atomic
from .provenance import ORACLE_NOTE, UNRECORDED, revision_label
from .strategies import BASELINE

# what may differ inside a group (a row is a config.variant: strategy with its selection options); everything else in
# config.json must agree (target: an oracle row, star-me+oracle-reference, compares with the random runs it pairs with)
VARIED = ("strategy", "seed", "diversity", "diversity_beta", "cold_start", "target")
NO_RANDOM = "n/a (no random runs)"
TARGET_DELTAS = (1.0, 2.0)  # ΔAUC the report sizes the study for unless --target-delta names others
POWER, ALPHA = 0.8, 0.05
ORACLE_MARK = " †"
ORACLE_FOOTNOTE = (
    f"† oracle (--target reference): {ORACLE_NOTE}. Its uncertainty scores "
    "the gold answer of every pool example, as callanwu/STAR's code does: a diagnostic of what reading "
    "the labels is worth, never a result for the method."
)


def find_runs(paths) -> list[Path]:
    """Run folders (holding summary.json) under the given paths."""
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise StarloraError(f"{p}: no such run folder")
        runs += sorted(
            s.parent for s in ([p / "summary.json"] if (p / "summary.json").exists() else p.rglob("summary.json"))
        )
    if not runs:
        raise StarloraError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}")
    return runs


def load_runs(paths) -> list[dict]:
    runs = []
    for folder in find_runs(paths):
        summary = read_json(
            folder / "summary.json",
            {
                "task": str,
                "strategy": str,
                "seed": int,
                "auc": (int, float),
                "final_accuracy": (int, float),
                "curve": list,
            },
        )
        config = folder / "config.json"
        stored = read_json(config, {"config": dict}) if config.exists() else {}
        cfg = stored.get("config")
        recorded = stored.get("versions") if isinstance(stored.get("versions"), dict) else {}
        runs.append(
            {
                **summary,
                "folder": folder,
                "rounds": read_rounds(folder),
                "config": cfg,
                "strategy": variant(cfg) if cfg else summary["strategy"],
                "revision": run_revision(recorded.get("revision"), summary.get("revision")),
                "machine": run_machine(recorded.get("machine"), summary.get("machine")),
                "oracle": bool(summary.get("oracle")) or (cfg or {}).get("target") == "reference",
            }
        )
    return runs


def run_revision(started, finished) -> str:
    """A run's code revision as revision_label writes it (config.json: the code that started it; summary.json: the
    code that finished it); 'A→B' when a resume changed the code; 'unrecorded' for runs made before it was recorded."""
    return _span(*(revision_label(r) if r else None for r in (started, finished)))


def run_machine(started, finished) -> str:
    """The machine a run was made on (hardware.machine, in config.json and summary.json), 'A→B' when a resume moved
    it, 'unrecorded' for runs made before it was recorded."""
    return _span(*(m if isinstance(m, str) and m else None for m in (started, finished)))


def _span(first: str | None, last: str | None) -> str:
    if first and last and first != last:
        return f"{first}→{last}"
    return first or last or UNRECORDED


def group_key(run) -> dict:
    """What must agree for two runs to be compared; runs without config.json (older versions) say task and model."""
    if run["config"] is None:
        return {"task": run["task"], "model": run.get("model"), "config.json": False}
    config = {**LEGACY, **run["config"]}  # an option added later has its old meaning in folders made before it
    return {k: v for k, v in config.items() if k not in VARIED}


def group_runs(runs) -> list[dict]:
    """Runs split into comparable groups, each with a label (the configuration values that differ between the groups
    present; task has its own column) and a slug for file names. Sorted by task, then label."""
    by_key = {}
    for r in runs:
        key = group_key(r)
        by_key.setdefault(json.dumps(key, sort_keys=True), (key, []))[1].append(r)
    keys = [key for key, _ in by_key.values()]
    labels = _labels(keys, short=True)
    if len({(k["task"], label) for k, label in zip(keys, labels)}) < len(keys):  # shortened paths collided
        labels = _labels(keys, short=False)
    groups = []
    for (text, (key, rs)), label in zip(by_key.items(), labels):
        slug = re.sub(r"[^\w.-]+", "-", key["task"] + (f"_{label}" if label else "")).strip("-")
        if len(slug) > 80 or slug in {g["slug"] for g in groups}:  # keep file names short and unique
            slug = f"{slug[:60]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
        groups.append({"task": key["task"], "label": label, "slug": slug, "runs": rs})
    return sorted(groups, key=lambda g: (g["task"], g["label"]))


def _labels(keys, short: bool) -> list[str]:
    full = [k for k in keys if k.get("config.json", True)]
    differ = sorted(
        {name for k in full for name in k if name != "task" and len({json.dumps(f.get(name)) for f in full}) > 1}
    )
    old = len(full) < len(keys)

    def show(value):
        if isinstance(value, list):
            return ",".join(map(str, value))
        return Path(value).name if short and isinstance(value, str) and "/" in value else str(value)

    return [
        ", ".join(f"{name}={show(k.get(name))}" for name in differ) or ("with config.json" if old else "")
        if k.get("config.json", True)
        else f"model={k['model']}, no config.json"
        for k in keys
    ]


def table(runs, target_deltas=TARGET_DELTAS) -> list[dict]:
    """One row per group x strategy: final accuracy, AUC, RIPL (mean, std, 95% CI over seeds) and ΔAUC against the
    random run of the same seed in the same group (mean, paired 95% CI, wins), with its tests and what the seeds can
    detect (paired_tests), the paired difference per round (per_round), the runs' code revisions and whether they
    are the oracle (--target reference). Random rows first in each group."""
    rows = []
    for g in group_runs(runs):
        baseline = [r for r in g["runs"] if r["strategy"] == BASELINE]
        random_auc = np.mean([r["auc"] for r in baseline]) if baseline else None
        for strategy in sorted({r["strategy"] for r in g["runs"]}, key=lambda s: (s != BASELINE, s)):
            rs = [r for r in g["runs"] if r["strategy"] == strategy]
            row = {
                "task": g["task"],
                "group": g["label"],
                "slug": g["slug"],
                "strategy": strategy,
                "seeds": len(rs),
                "metric": metric_of(rs),
                "final_accuracy": metrics.mean_std_ci([r["final_accuracy"] for r in rs]),
                "auc": metrics.mean_std_ci([r["auc"] for r in rs]),
                "ripl": None,
                "delta_auc": None,
            }
            if baseline:
                row["ripl"] = metrics.mean_std_ci([metrics.ripl(r["auc"], random_auc) for r in rs])
            if baseline and strategy != BASELINE:
                mine, theirs = _auc_by_seed(rs), _auc_by_seed(baseline)
                seeds = sorted(mine.keys() & theirs.keys())
                row["delta_auc"] = metrics.paired_delta([mine[s] for s in seeds], [theirs[s] for s in seeds])
                row["tests"] = paired_tests(row["delta_auc"]["deltas"], target_deltas)
                row["per_round"] = per_round(rs, baseline)
            row["revisions"], row["machines"] = (
                {label: sum(r[key] == label for r in rs) for label in sorted({r[key] for r in rs})}
                for key in ("revision", "machine")
            )
            row["oracle"] = any(r["oracle"] for r in rs)
            rows.append(row)
        group = [r for r in rows if r["slug"] == g["slug"]]
        adjust_holm([r for r in group if not r["oracle"]])  # the methods, one family;
        adjust_holm([r for r in group if r["oracle"]])  # label-reading oracles, a family of their own
    return rows


def paired_tests(deltas, target_deltas=TARGET_DELTAS) -> dict:
    """The paired ΔAUC of one strategy against random: paired t p-value (p_holm filled in by adjust_holm), sign test,
    the differences' sample std, the minimum detectable ΔAUC at 80% power with these seeds and the seeds needed
    for each of target_deltas (metrics.py)."""
    d = np.asarray(deltas, dtype=np.float64)
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    return {
        "sd": sd,
        "p_t": metrics.paired_t_p(d),
        "p_holm": float("nan"),
        "p_sign": metrics.sign_test_p(d),
        "mde": metrics.min_detectable_delta(sd, d.size, POWER, ALPHA),
        "seeds_needed": {float(x): metrics.seeds_needed(x, sd, POWER, ALPHA) for x in target_deltas},
    }


def _curve_by_seed(runs) -> dict[int, np.ndarray]:
    """The curve per seed; the same seed twice counts once, as the mean (over the rounds both have)."""
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append(r["curve"])
    return {s: np.mean([c[: min(map(len, cs))] for c in cs], axis=0) for s, cs in by_seed.items()}


def per_round(runs, baseline) -> list[dict]:
    """Round by round, the strategy's curve minus random's of the same seed: mean, paired 95% interval, pairs, wins
    and the paired t p-value (p_holm filled in by adjust_holm), over the seeds both have that round."""
    mine, theirs = _curve_by_seed(runs), _curve_by_seed(baseline)
    seeds = sorted(mine.keys() & theirs.keys())
    labeled = max((r.get("n_labeled") or [] for r in runs), key=len)
    out = []
    for t in range(max((len(mine[s]) for s in seeds), default=0)):
        both = [s for s in seeds if t < len(mine[s]) and t < len(theirs[s])]
        if both:
            d = metrics.paired_delta([mine[s][t] for s in both], [theirs[s][t] for s in both])
            out.append(
                {
                    "round": t,
                    "n_labeled": labeled[t] if t < len(labeled) else None,
                    **d,
                    "p_t": metrics.paired_t_p(d["deltas"]),
                    "p_holm": float("nan"),
                }
            )
    return out


def adjust_holm(rows) -> None:
    """Holm-adjust the paired t p-values over the strategies compared with random in one group (the methods, or
    the oracles): the ΔAUC tests together, and each round's tests together."""
    tested = [r for r in rows if r.get("tests")]
    for r, p in zip(tested, metrics.holm([r["tests"]["p_t"] for r in tested])):
        r["tests"]["p_holm"] = p
    for t in sorted({x["round"] for r in tested for x in r["per_round"]}):
        cells = [x for r in tested for x in r["per_round"] if x["round"] == t]
        for x, p in zip(cells, metrics.holm([x["p_t"] for x in cells])):
            x["p_holm"] = p


def metric_of(runs) -> str:
    """What the runs' curves and AUC measure (summary.json "metric"; accuracy before the option existed). A group
    agrees on it (it is part of the configuration)."""
    return runs[0].get("metric", "accuracy") if runs else "accuracy"


def _auc_by_seed(runs) -> dict[int, float]:
    """AUC per seed; the same seed twice (a copied run folder) counts once, as the mean."""
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append(r["auc"])
    return {s: float(np.mean(v)) for s, v in by_seed.items()}


def _fmt(stat) -> str:
    if stat is None:
        return NO_RANDOM
    ci = "" if np.isnan(stat["ci95"]) else f" [±{stat['ci95']:.2f}]"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}{ci}"


def _fmt_delta(row) -> tuple[str, str]:
    """(ΔAUC mean [95% CI], wins) cells of a row."""
    d = row["delta_auc"]
    if row["strategy"] == BASELINE:
        return "—", "—"
    if d is None:
        return NO_RANDOM, "—"
    if d["n"] == 0:
        return "n/a (no seed shared with random)", "—"
    ci = "" if np.isnan(d["low"]) else f" [{d['low']:+.2f}, {d['high']:+.2f}]"
    return f"{d['mean']:+.2f}{ci}", f"{d['wins']}/{d['n']}"


STOP_RULES = ("kappa:0.99:2", "kappa:0.95:2", "uncertainty:0.01:2")  # what the report asks of runs with a stop set


def early_rounds(run) -> list[dict]:
    """The rounds after which stopping ends a run early: all but the last planned one (which ends it anyway)."""
    planned = run["config"]["rounds"] if run["config"] else len(run["rounds"])
    return [x for x in run["rounds"] if x["round"] < planned - 1]


def stopping_lines(runs) -> list[str]:
    """For runs that recorded a stop set: per group x strategy and rule, at which round the rule would have stopped
    the run and the accuracy that stopping there leaves on the table (final accuracy minus the stopping round's)."""
    from .stopping import parse_stop_rule

    lines = []
    for g in group_runs(runs):
        for strategy in sorted({r["strategy"] for r in g["runs"]}):
            rs = [r for r in g["runs"] if r["strategy"] == strategy and any("stop_kappa" in x for x in r["rounds"])]
            for text in STOP_RULES if rs else ():
                rule = parse_stop_rule(text)
                stops = [rule.first_round(early_rounds(r)) for r in rs]
                hit = [(t, r) for t, r in zip(stops, rs) if t is not None]
                left = [r["final_accuracy"] - r["rounds"][t]["accuracy"] for t, r in hit]
                lines.append(
                    f"| {g['task']} | {strategy} | `{text}` | {len(hit)}/{len(rs)} | "
                    f"{'—' if not hit else format(np.mean([t for t, _ in hit]), '.1f')} | "
                    f"{'—' if not left else format(np.mean(left), '+.1f')} |"
                )
    if not lines:
        return []
    return [
        "",
        "## Stopping criteria",
        "",
        "| task | strategy | rule | runs it stopped | mean stopping round | accuracy left (points) |",
        "|---|---|---|---|---|---|",
        *lines,
        "",
        "A rule stops a run after the first round where it holds (stopping.py) before the last planned one; "
        "accuracy left = the run's final accuracy minus its accuracy at that round, over the runs it stopped "
        "(negative: stopping was better).",
    ]


def write_tables(rows, out: Path, extra: list[str] = ()) -> None:
    grouped = any(r["group"] for r in rows)  # a group column only where some task has runs of several groups
    measured = sorted({r.get("metric", "accuracy") for r in rows})  # what AUC is the area of: named unless accuracy
    auc = (
        "AUC"
        if measured in ([], ["accuracy"])
        else f"AUC ({measured[0]})"
        if len(measured) == 1
        else "AUC (metric of the group)"
    )
    head = (
        ["task"]
        + ["group"] * grouped
        + ["strategy", "seeds", "final accuracy (%)", auc, "RIPL (%)", "ΔAUC vs random [95% CI]", "wins"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (
            [r["task"]]
            + [r["group"]] * grouped
            + [_name(r), str(r["seeds"]), _fmt(r["final_accuracy"]), _fmt(r["auc"]), _fmt(r["ripl"]), *_fmt_delta(r)]
        )
        lines.append("| " + " | ".join(cells) + " |")
    groups = (
        "Runs are compared only within a group: the same task and configuration (config.json) apart from "
        "strategy and seed; runs without config.json are grouped by task and model."
        + (" The group column shows the configuration values that differ between the groups." if grouped else "")
    )
    baseline = (
        "RIPL = (AUC − AUC_random) / (100 − AUC_random) × 100 against the mean AUC of the random runs of the "
        "same group. ΔAUC = AUC − AUC_random of the same seed in the same group (same initial labeled set): "
        "mean [paired 95% t-interval] over the seeds both have (no interval with one pair); wins = seeds where "
        f"the strategy's AUC is higher / seeds paired. {NO_RANDOM}: the group has no random runs to compare "
        "with."
    )
    note = f"\nValues are mean ± std over seeds, [± half-width of the 95% t-interval]. {groups}\n\n{baseline}\n"
    note += f"\n{ORACLE_FOOTNOTE}\n" if any(r.get("oracle") for r in rows) else ""
    write_atomic(
        out / "report.md",
        "# starlora report\n\n" + "\n".join(lines) + "\n" + note + "".join(line + "\n" for line in extra),
    )
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols, delta = ["final_accuracy", "auc", "ripl"], ["mean", "low", "high", "n", "wins"]
        w.writerow(
            ["task", "strategy", "seeds"]
            + [f"{c}_{s}" for c in cols for s in ("mean", "std", "ci95")]
            + ["delta_auc_mean", "delta_auc_low", "delta_auc_high", "pairs", "wins", "group", "metric"]
        )
        for r in rows:
            w.writerow(
                [r["task"], r["strategy"], r["seeds"]]
                + [("" if r[c] is None else r[c][s]) for c in cols for s in ("mean", "std", "ci95")]
                + [("" if r["delta_auc"] is None else r["delta_auc"][s]) for s in delta]
                + [r["group"], r.get("metric", "accuracy")]
            )


def _name(row) -> str:
    """A row's strategy, marked † when its runs are the oracle (--target reference)."""
    return row["strategy"] + (ORACLE_MARK if row.get("oracle") else "")


def _p(p) -> str:
    return "—" if p is None or np.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _seeds(n, sd) -> str:
    return "n/a" if not np.isfinite(sd) or sd == 0 else f"> {10_000:,}" if n is None else str(n)


def _cells(row, grouped) -> list[str]:
    return [row["task"]] + [row["group"]] * grouped + [_name(row)]


def test_lines(rows, target_deltas=TARGET_DELTAS) -> list[str]:
    """report.md: per strategy with paired random runs, the paired tests and what its seeds can detect."""
    tested = [r for r in rows if r.get("tests")]
    if not tested:
        return []
    grouped = any(r["group"] for r in rows)
    head = (
        ["task"]
        + ["group"] * grouped
        + [
            "strategy",
            "pairs",
            "ΔAUC vs random [95% CI]",
            "p (t)",
            "p (t, Holm)",
            "p (sign)",
            "sd of Δ",
            "MDE (80% power)",
            *(f"seeds for ΔAUC {x:g}" for x in target_deltas),
        ]
    )
    lines = [
        "",
        "## Paired tests and what the seeds can detect",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in tested:
        t = r["tests"]
        lines.append(
            "| "
            + " | ".join(
                _cells(r, grouped)
                + [
                    str(r["delta_auc"]["n"]),
                    _fmt_delta(r)[0],
                    _p(t["p_t"]),
                    _p(t["p_holm"]),
                    _p(t["p_sign"]),
                    "n/a" if np.isnan(t["sd"]) else f"{t['sd']:.2f}",
                    "n/a" if np.isnan(t["mde"]) else f"{t['mde']:.2f}",
                    *(_seeds(t["seeds_needed"][float(x)], t["sd"]) for x in target_deltas),
                ]
            )
            + " |"
        )
    return lines + [
        "",
        "Paired over seeds with the random runs of the same group: p (t) = two-sided paired t-test of "
        "mean ΔAUC = 0; p (t, Holm) = the same adjusted by Holm's step-down method over the strategies "
        "compared with random in the group (family-wise error rate; oracles † are a family of their own); "
        "p (sign) = two-sided exact sign "
        "test of the seeds' ΔAUC signs (ties dropped). sd of Δ = standard deviation of the paired "
        "differences. MDE = the smallest true ΔAUC these pairs detect with 80% power (paired t, two-sided "
        "α 0.05, noncentral t) if the true sd is the observed one; seeds for ΔAUC x = the fewest seeds "
        "that detect a true ΔAUC of x at 80% power under the same assumption (`--target-delta` names x). "
        "Both are plans from an estimate: with few seeds the observed sd is itself uncertain. n/a: fewer "
        "than two pairs, no spread to plan from.",
    ]


def per_round_lines(rows) -> list[str]:
    """report.md: each strategy's curve minus random's of the same seed, round by round."""
    tested = [r for r in rows if r.get("per_round")]
    if not tested:
        return []
    grouped = any(r["group"] for r in rows)
    head = (
        ["task"]
        + ["group"] * grouped
        + ["strategy", "round", "labeled", "Δ vs random [95% CI]", "p (t)", "p (t, Holm)", "wins"]
    )
    lines = ["", "## Per-round paired differences", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in tested:
        for x in r["per_round"]:
            ci = "" if np.isnan(x["low"]) else f" [{x['low']:+.2f}, {x['high']:+.2f}]"
            lines.append(
                "| "
                + " | ".join(
                    _cells(r, grouped)
                    + [
                        str(x["round"]),
                        "" if x["n_labeled"] is None else str(x["n_labeled"]),
                        f"{x['mean']:+.2f}{ci}",
                        _p(x["p_t"]),
                        _p(x["p_holm"]),
                        f"{x['wins']}/{x['n']}",
                    ]
                )
                + " |"
            )
    return lines + [
        "",
        "The strategy's test metric after each round minus random's of the same seed after the same "
        "round (points): mean [paired 95% t-interval], where in the curve a strategy gains or loses "
        "(plot: per_round_delta_*.png). p (t, Holm): adjusted over the strategies of the group at that "
        "round (oracles † apart); not also over rounds, so read single rounds as exploratory.",
    ]


def revision_warnings(rows) -> list[str]:
    """One line per group whose compared runs come from more than one code revision (or a run resumed on other
    code); 'unrecorded' counts as one revision of its own."""
    return [
        f"{where}: the compared runs come from {len(counts)} code revisions ({_counted(counts)}): a difference "
        "between strategies may be a difference between code"
        for where, counts in _group_counts(rows, "revisions")
        if len(counts) > 1 or any("→" in label for label in counts)
    ]


def machine_notes(rows) -> list[str]:
    """One line per group whose compared runs ran on more than one recorded machine (a resumed run counts both of
    its machines; unrecorded runs none): not a warning, since the same code gives close numbers on another CPU kind,
    but not the identical ones a rerun on one machine gives."""
    lines = []
    for where, counts in _group_counts(rows, "machines"):
        machines = {m for label in counts if label != UNRECORDED for m in label.split("→")}
        if len(machines) > 1:
            lines.append(
                f"{where}: the compared runs ran on {len(machines)} machines ({_counted(counts)}): bf16 arithmetic "
                "differs between CPU kinds, so their numbers are close, not identical"
            )
    return lines


def _group_counts(rows, key: str):
    """(where, {label: runs}) per group, summed over its rows' `key` counts."""
    for slug in dict.fromkeys(r["slug"] for r in rows):
        group = [r for r in rows if r["slug"] == slug]
        counts = {}
        for r in group:
            for label, n in r[key].items():
                counts[label] = counts.get(label, 0) + n
        yield group[0]["task"] + (f" ({group[0]['group']})" if group[0]["group"] else ""), counts


def _counted(counts: dict) -> str:
    return ", ".join(
        f"{label}: {n} run{'s' * (n != 1)}" for label, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))
    )


def revision_lines(rows) -> list[str]:
    """report.md: the code revisions and machines of each row's runs, a warning per group that mixes revisions and a
    note per group that mixes machines."""
    grouped = any(r["group"] for r in rows)
    head = ["task"] + ["group"] * grouped + ["strategy", "code revisions (runs)", "machines (runs)"]
    lines = ["", "## Code revisions and machines", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        counts = [", ".join(f"{label} ({n})" for label, n in r[key].items()) for key in ("revisions", "machines")]
        lines.append("| " + " | ".join(_cells(r, grouped) + counts) + " |")
    lines += [
        "",
        "The code that made each run (config.json and summary.json): a git commit, +dirty:HASH with "
        "uncommitted changes to the package (hash of its source), VERSION+src:HASH outside a git checkout. "
        "The machine: the CPU's model with the instruction sets torch's kernels use, or the GPU's name. "
        f"A→B: started on A, resumed on B; {UNRECORDED}: made before starlora recorded it.",
    ]
    return (
        lines
        + [f"\n**Warning:** {w}." for w in revision_warnings(rows)]
        + [f"\n**Note:** {n}." for n in machine_notes(rows)]
    )


def write_test_csvs(rows, out: Path, target_deltas=TARGET_DELTAS) -> None:
    """tests.csv (one line per strategy row: the paired tests, what the seeds detect, revisions, machines) and
    per_round.csv."""
    with open(out / "tests.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "task",
                "group",
                "strategy",
                "oracle",
                "pairs",
                "delta_auc_mean",
                "delta_auc_low",
                "delta_auc_high",
                "p_t",
                "p_holm",
                "p_sign",
                "sd_delta",
                "mde_80",
                *(f"seeds_for_{x:g}" for x in target_deltas),
                "revisions",
                "machines",
            ]
        )
        for r in rows:
            d, t = r["delta_auc"] or {}, r.get("tests") or {}
            w.writerow(
                [
                    r["task"],
                    r["group"],
                    r["strategy"],
                    r.get("oracle", False),
                    d.get("n", ""),
                    *(d.get(k, "") for k in ("mean", "low", "high")),
                    *(t.get(k, "") for k in ("p_t", "p_holm", "p_sign", "sd", "mde")),
                    *((t["seeds_needed"][float(x)] or "") if t else "" for x in target_deltas),
                    *("; ".join(f"{label}: {n}" for label, n in r[key].items()) for key in ("revisions", "machines")),
                ]
            )
    with open(out / "per_round.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "task",
                "group",
                "strategy",
                "oracle",
                "round",
                "n_labeled",
                "delta_mean",
                "delta_low",
                "delta_high",
                "pairs",
                "wins",
                "p_t",
                "p_holm",
            ]
        )
        for r in rows:
            for x in r.get("per_round") or ():
                w.writerow(
                    [
                        r["task"],
                        r["group"],
                        r["strategy"],
                        r.get("oracle", False),
                        x["round"],
                        x["n_labeled"],
                        x["mean"],
                        x["low"],
                        x["high"],
                        x["n"],
                        x["wins"],
                        x["p_t"],
                        x["p_holm"],
                    ]
                )


def plot(runs, rows, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for g in group_runs(runs):
        title = g["task"] + (f" ({g['label']})" if g["label"] else "")
        written.append(_learning_curves(plt, g["runs"], title, out / f"learning_curves_{g['slug']}.png"))
        written += _wrong_confidence(plt, g["runs"], title, out / f"wrong_confidence_{g['slug']}.png")
        written += _delta_auc(
            plt,
            [r for r in rows if r["slug"] == g["slug"] and r["delta_auc"] and r["delta_auc"]["n"]],
            title,
            out / f"delta_auc_{g['slug']}.png",
        )
        written += _per_round(
            plt,
            [r for r in rows if r["slug"] == g["slug"] and r.get("per_round")],
            title,
            out / f"per_round_delta_{g['slug']}.png",
        )
        for r in g["runs"]:
            written += _probe_plots(plt, r, f"{g['slug']}_{r['strategy']}_seed{r['seed']}", out)
    return written


def _learning_curves(plt, runs, title, path) -> Path:
    strategies = sorted({r["strategy"] for r in runs})
    fig, ax = plt.subplots(figsize=(6 + 2 * (len(strategies) > 4), 4))  # room for a legend beside many curves
    for strategy in strategies:
        rs = [r for r in runs if r["strategy"] == strategy]
        n = min(len(r["curve"]) for r in rs)
        curves = np.array([r["curve"][:n] for r in rs])
        x = rs[0]["n_labeled"][:n]
        (line,) = ax.plot(x, curves.mean(0), marker="o", label=f"{strategy} (n={len(rs)})")
        if len(rs) > 1:  # the band in its line's colour
            ax.fill_between(
                x, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), alpha=0.12, color=line.get_color()
            )
    ax.set(xlabel="labeled examples", ylabel=f"test {metric_of(runs)} (%)")
    ax.set_title(f"{title}: learning curves (mean ± std)", fontsize=9)
    ax.grid(alpha=0.3)
    if len(strategies) > 4:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.legend()
    return _save(fig, path)


def _wrong_confidence(plt, runs, title, path) -> list[Path]:
    confidences = {}
    for r in runs:
        if r["rounds"] and "wrong_confidence" in r["rounds"][-1]:
            confidences.setdefault(f"{r['strategy']} (fine-tuned)", []).extend(r["rounds"][-1]["wrong_confidence"])
    few = [c for r in runs if "fewshot" in r for c in r["fewshot"]["wrong_confidence"]]
    if few:
        confidences["base model, few-shot"] = few
    if not confidences:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    for name, values in sorted(confidences.items()):
        if values:
            ax.hist(values, bins=bins, density=True, histtype="step", linewidth=2, label=f"{name}, n={len(values)}")
    ax.set(xlabel="confidence of wrong predictions", ylabel="density")
    ax.set_title(f"{title}: confidence when wrong (final round)", fontsize=9)
    ax.legend()
    return [_save(fig, path)]


def _delta_auc(plt, rows, title, path) -> list[Path]:
    """ΔAUC against random per strategy: the mean with its paired 95% interval, and each seed's difference as a dot."""
    if not rows:
        return []
    per_row = max(1.2, 0.085 * max(len(r["strategy"]) for r in rows))  # inches: long names must not overlap
    fig, ax = plt.subplots(figsize=(max(4, per_row * len(rows) + 2), 4))
    for x, r in enumerate(rows):
        d = r["delta_auc"]
        ax.scatter([x - 0.15] * d["n"], d["deltas"], s=12, color="grey", alpha=0.6, zorder=2)
        err = None if np.isnan(d["low"]) else [[d["mean"] - d["low"]], [d["high"] - d["mean"]]]
        ax.errorbar([x], [d["mean"]], yerr=err, fmt="o", capsize=5, color="C0", zorder=3)
    ax.axhline(0, color="black", linewidth=1)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xticks(
        range(len(rows)), [f"{r['strategy']}\n{r['delta_auc']['wins']}/{r['delta_auc']['n']} wins" for r in rows]
    )
    ax.set(ylabel="ΔAUC vs random (AUC points)")
    ax.set_title(f"{title}: ΔAUC vs random, same seed (mean, 95% CI)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return [_save(fig, path)]


def _per_round(plt, rows, title, path) -> list[Path]:
    """Per strategy (one panel each, shared axes): its curve minus random's of the same seed per round, the mean with
    its paired 95% interval as a band, and each seed's difference as a dot."""
    if not rows:
        return []
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.2 * cols, 2.6 * nrows + 0.4), sharex=True, sharey=True, squeeze=False
    )
    for ax, r in zip(axes.flat, rows):
        x = [p["n_labeled"] if p["n_labeled"] is not None else p["round"] for p in r["per_round"]]
        mean = np.array([p["mean"] for p in r["per_round"]])
        low, high = (np.array([p[k] for p in r["per_round"]]) for k in ("low", "high"))
        for xi, p in zip(x, r["per_round"]):
            ax.scatter([xi] * p["n"], p["deltas"], s=8, color="grey", alpha=0.5, zorder=2)
        ax.plot(x, mean, marker="o", color="C0", zorder=3)
        if np.isfinite(low).any():
            ax.fill_between(x, low, high, alpha=0.2, color="C0")
        ax.axhline(0, color="black", linewidth=1)
        ax.set_title(_name(r), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("labeled examples", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("Δ vs random (points)", fontsize=8)
    # on two lines where the panels are too narrow for one (a single strategy's panel cut it off)
    sep = " " if cols >= 3 else "\n"
    fig.suptitle(f"{title}: per-round difference vs random,{sep}same seed (mean, 95% CI)", fontsize=9)
    return [_save(fig, path)]


def _probe_plots(plt, run, label, out: Path) -> list[Path]:
    """The uncertainty-gap probe (paper Fig. 3): correlations between rounds as JSON and a heatmap, and a scatter."""
    probe = _probe(run["folder"])
    if len(probe) < 2:
        return []
    names = list(probe)
    ids = list(probe["base"])
    matrix = np.array([[probe[a][i] for i in ids] for a in names])
    corr = metrics.correlations(matrix)
    # NaN is not valid JSON: an undefined correlation (a constant uncertainty vector) is written as null
    write_atomic(
        out / f"probe_correlations_{label}.json",
        json.dumps(
            {
                "rounds": names,
                **{
                    k: [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in m]
                    for k, m in corr.items()
                },
                "null": "undefined: one of the two uncertainty vectors is constant",
            },
            indent=1,
        ),
    )
    fig, ax = plt.subplots(figsize=(5, 4))
    im = heatmap(ax, names, corr["spearman"])
    fig.colorbar(im, ax=ax, label="Spearman correlation")
    ax.set_title(f"uncertainty gap ({run.get('probe_measure', '')}): {label}", fontsize=9)
    written = [_save(fig, out / f"probe_heatmap_{label}.png")]
    fig, ax = plt.subplots(figsize=(5, 4))
    for name in names[1:]:
        ax.scatter(matrix[0], matrix[names.index(name)], s=10, alpha=0.6, label=name)
    ax.set(xlabel="base model uncertainty", ylabel="LoRA model uncertainty", title=f"base vs rounds: {label}")
    ax.legend(fontsize=7)
    return written + [_save(fig, out / f"probe_scatter_{label}.png")]


def heatmap(ax, names, values):
    """A correlation matrix with its values written in; undefined (NaN) cells are hatched and left without a number."""
    from matplotlib.patches import Rectangle

    im = ax.imshow(np.ma.masked_invalid(values), vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(names)), names, rotation=45)
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isnan(values[i, j]):
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="grey", linewidth=0)
                )
            else:
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7)
    if np.isnan(values).any():
        ax.set_xlabel("hatched: undefined (constant uncertainty)", fontsize=7)
    return im


def _probe(folder: Path) -> dict[str, dict[str, float]]:
    probe_dir = folder / "probe"
    if not (probe_dir / "base.json").exists():
        return {}
    probe = {"base": read_json(probe_dir / "base.json")}
    t = 0
    while (probe_dir / f"round_{t}.json").exists():
        probe[f"round {t}"] = read_json(probe_dir / f"round_{t}.json")
        t += 1
    return probe


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def report(paths, out, target_deltas=None) -> list[dict]:
    """Tables and plots of the runs under `paths` into `out`, as `starlora report` does.

    Every strategy is paired with random of the same seed: ΔAUC with a paired t interval, Holm-adjusted p-values and
    a sign test, the smallest effect its seed count detects at 80% power, and per-round paired differences. A group
    that mixes code revisions is warned about (StarloraWarning).

    Args:
        paths: run or sweep folders (searched for summary.json).
        out: the folder for report.md, the CSV/JSON tables and the plots.
        target_deltas: the ΔAUC values to give the seeds needed for (default TARGET_DELTAS).

    Returns:
        One dict per row of the main table (strategy, group, AUC, ΔAUC and its statistics).
    """
    target_deltas = tuple(float(x) for x in target_deltas or TARGET_DELTAS)
    if not all(np.isfinite(x) and x > 0 for x in target_deltas):
        raise StarloraError(f"--target-delta must be positive AUC points (got {' '.join(map(str, target_deltas))})")
    runs = load_runs(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table(runs, target_deltas)
    write_tables(
        rows,
        out,
        [*test_lines(rows, target_deltas), *per_round_lines(rows), *revision_lines(rows), *stopping_lines(runs)],
    )
    write_test_csvs(rows, out, target_deltas)
    plot(runs, rows, out)
    for line in revision_warnings(rows):
        warnings.warn(line, StarloraWarning, stacklevel=2)
    return rows
