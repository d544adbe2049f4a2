"""`starlora report`: tables (Markdown, CSV) and plots over finished runs, grouped by task x strategy."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import metrics
from .errors import StarloraError
from .files import read_jsonl, write_atomic


def find_runs(paths) -> list[Path]:
    """Run folders (holding summary.json) under the given paths."""
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise StarloraError(f"{p}: no such run folder")
        runs += sorted(s.parent for s in ([p / "summary.json"] if (p / "summary.json").exists()
                                          else p.rglob("summary.json")))
    if not runs:
        raise StarloraError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}")
    return runs


def load_runs(paths) -> list[dict]:
    runs = []
    for folder in find_runs(paths):
        summary = json.loads((folder / "summary.json").read_text())
        runs.append({**summary, "folder": folder, "rounds": read_jsonl(folder / "rounds.jsonl")})
    return runs


def table(runs) -> list[dict]:
    """One row per task x strategy: final accuracy, AUC, RIPL (mean, std, 95% CI over seeds)."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["strategy"])].append(r)
    random_auc = {task: np.mean([r["auc"] for r in rs]) for (task, s), rs in groups.items() if s == "random"}
    rows = []
    for (task, strategy), rs in sorted(groups.items()):
        row = {"task": task, "strategy": strategy, "seeds": len(rs),
               "final_accuracy": metrics.mean_std_ci([r["final_accuracy"] for r in rs]),
               "auc": metrics.mean_std_ci([r["auc"] for r in rs])}
        row["ripl"] = (metrics.mean_std_ci([metrics.ripl(r["auc"], random_auc[task]) for r in rs])
                       if task in random_auc else None)
        rows.append(row)
    return rows


def _fmt(stat) -> str:
    if stat is None:
        return "n/a (no random runs)"
    ci = "" if np.isnan(stat["ci95"]) else f" [±{stat['ci95']:.2f}]"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}{ci}"


def write_tables(rows, out: Path) -> None:
    lines = ["| task | strategy | seeds | final accuracy (%) | AUC | RIPL (%) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['strategy']} | {r['seeds']} | {_fmt(r['final_accuracy'])} | {_fmt(r['auc'])} | "
              f"{_fmt(r['ripl'])} |" for r in rows]
    note = ("\nValues are mean ± std over seeds, [± half-width of the 95% t-interval]. RIPL = (AUC − AUC_random) / "
            "(100 − AUC_random) × 100 against the random runs of the same task.\n")
    write_atomic(out / "report.md", "# starlora report\n\n" + "\n".join(lines) + "\n" + note)
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols = ["final_accuracy", "auc", "ripl"]
        w.writerow(["task", "strategy", "seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "std", "ci95")])
        for r in rows:
            w.writerow([r["task"], r["strategy"], r["seeds"]] +
                       [("" if r[c] is None else r[c][s]) for c in cols for s in ("mean", "std", "ci95")])


def plot(runs, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import pearsonr, spearmanr

    written = []
    for task in sorted({r["task"] for r in runs}):
        task_runs = [r for r in runs if r["task"] == task]
        fig, ax = plt.subplots(figsize=(6, 4))
        for strategy in sorted({r["strategy"] for r in task_runs}):
            rs = [r for r in task_runs if r["strategy"] == strategy]
            n = min(len(r["curve"]) for r in rs)
            curves = np.array([r["curve"][:n] for r in rs])
            x = rs[0]["n_labeled"][:n]
            ax.plot(x, curves.mean(0), marker="o", label=f"{strategy} (n={len(rs)})")
            if len(rs) > 1:
                ax.fill_between(x, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), alpha=0.2)
        ax.set(xlabel="labeled examples", ylabel="test accuracy (%)", title=f"{task}: learning curves (mean ± std)")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out / f"learning_curves_{task}.png"))

        confidences = {f"{r['strategy']} (fine-tuned)": [] for r in task_runs if r["rounds"] and
                       "wrong_confidence" in r["rounds"][-1]}
        for r in task_runs:
            if r["rounds"] and "wrong_confidence" in r["rounds"][-1]:
                confidences[f"{r['strategy']} (fine-tuned)"] += r["rounds"][-1]["wrong_confidence"]
        few = [c for r in task_runs if "fewshot" in r for c in r["fewshot"]["wrong_confidence"]]
        if few:
            confidences["base model, few-shot"] = few
        if confidences:
            fig, ax = plt.subplots(figsize=(6, 4))
            bins = np.linspace(0, 1, 21)
            for name, values in confidences.items():
                if values:
                    ax.hist(values, bins=bins, density=True, histtype="step", linewidth=2, label=f"{name}, n={len(values)}")
            ax.set(xlabel="confidence of wrong predictions", ylabel="density",
                   title=f"{task}: confidence when wrong (final round)")
            ax.legend()
            written.append(_save(fig, out / f"wrong_confidence_{task}.png"))

    for r in runs:  # the uncertainty-gap probe, one heatmap and one scatter per run
        probe = _probe(r["folder"])
        if len(probe) < 2:
            continue
        names = list(probe)
        ids = list(probe["base"])
        matrix = np.array([[probe[a][i] for i in ids] for a in names])
        label = f"{r['task']}_{r['strategy']}_seed{r['seed']}"
        corr = {"pearson": np.ones((len(names), len(names))), "spearman": np.ones((len(names), len(names)))}
        for i in range(len(names)):
            for j in range(len(names)):
                if i != j and np.std(matrix[i]) > 0 and np.std(matrix[j]) > 0:
                    corr["pearson"][i, j] = pearsonr(matrix[i], matrix[j])[0]
                    corr["spearman"][i, j] = spearmanr(matrix[i], matrix[j])[0]
        write_atomic(out / f"probe_correlations_{label}.json",
                     json.dumps({"rounds": names, **{k: v.round(4).tolist() for k, v in corr.items()}}, indent=1))
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(corr["spearman"], vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_xticks(range(len(names)), names, rotation=45)
        ax.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{corr['spearman'][i, j]:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="Spearman correlation")
        ax.set_title(f"uncertainty gap ({r.get('probe_measure', '')}): {label}", fontsize=9)
        written.append(_save(fig, out / f"probe_heatmap_{label}.png"))
        fig, ax = plt.subplots(figsize=(5, 4))
        for name in names[1:]:
            ax.scatter(matrix[0], matrix[names.index(name)], s=10, alpha=0.6, label=name)
        ax.set(xlabel="base model uncertainty", ylabel="LoRA model uncertainty", title=f"base vs rounds: {label}")
        ax.legend(fontsize=7)
        written.append(_save(fig, out / f"probe_scatter_{label}.png"))
    return written


def _probe(folder: Path) -> dict[str, dict[str, float]]:
    probe_dir = folder / "probe"
    if not (probe_dir / "base.json").exists():
        return {}
    probe = {"base": json.loads((probe_dir / "base.json").read_text())}
    t = 0
    while (probe_dir / f"round_{t}.json").exists():
        probe[f"round {t}"] = json.loads((probe_dir / f"round_{t}.json").read_text())
        t += 1
    return probe


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def report(paths, out) -> list[dict]:
    runs = load_runs(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table(runs)
    write_tables(rows, out)
    plot(runs, out)
    return rows
