"""--target reference (the official STAR code's uncertainty, which scores each pool example's gold answer) is an oracle:
its runs are named, summarised and reported as one, the human loop refuses it, and the sweep folders of the committed
studies are unchanged by the naming."""

import dataclasses
import json
import random

import pytest
from test_report import fake_run, row

from starlora import sweep as S
from starlora.cli import main
from starlora.config import MethodConfig, resolve, variant
from starlora.errors import StarloraError
from starlora.experiment import folder_resumes, run
from starlora.hardware import machine
from starlora.project import init
from starlora.provenance import ORACLE_NOTE, code_revision
from starlora.reporting import report

pytestmark = pytest.mark.filterwarnings("ignore::starlora.errors.StarloraWarning")  # the oracle warns on purpose


def test_the_variant_names_the_oracle():
    assert variant({"strategy": "star-me", "target": "reference"}) == "star-me+oracle-reference"
    assert variant({"strategy": "star-me", "target": "own"}) == "star-me" == variant({"strategy": "star-me"})
    assert (
        variant({"strategy": "star-me", "diversity": "kmeans", "target": "reference"})
        == "star-me+kmeans+oracle-reference"
    )
    cfgs = [
        resolve("paper", task="boolq", strategy=s, target=t)
        for s, t in [("random", "own"), ("star-me", "own"), ("star-me", "reference")]
    ]
    assert S.folder_names(cfgs) == ["random", "star-me", "star-me+oracle-reference"]


@pytest.mark.parametrize("study", ["results/sst2", "results/sst2-fp32"])
def test_the_committed_studies_plan_to_their_existing_folders(study):
    """Every finished run of a committed study is planned by its grid into its own folder, as the same configuration
    (so `starlora sweep --grid` resumes it instead of refusing or rerunning it)."""
    from pathlib import Path

    top = Path(__file__).resolve().parent.parent / study
    planned = {job.folder.resolve(): job for job in S.plan(S.read_grid(top / "grid.yaml"), top)}
    existing = {p.parent.resolve() for p in (top / "sst2").rglob("summary.json")}
    assert existing and existing <= set(planned)
    for folder in existing:
        assert folder_resumes(folder, planned[folder].cfg) is True, folder


def test_study_ii_runs_share_the_frozen_commit_and_plan_to_their_folders():
    """Study II (results/PLAN.md): every finished run was made by the one commit results/run-study-ii checks out, from
    a clean tree, and its grid still plans it into its folder as the same configuration (so the driver resumes it)."""
    import re
    from pathlib import Path

    results = Path(__file__).resolve().parent.parent / "results"
    frozen = re.search(r"^COMMIT=([0-9a-f]{40})", (results / "run-study-ii").read_text(), re.M).group(1)
    revisions = []
    for grid in sorted(results.glob("ii-*/grid.yaml")):
        planned = {job.folder.resolve(): job for job in S.plan(S.read_grid(grid), grid.parent)}
        for summary in grid.parent.rglob("summary.json"):
            folder = summary.parent.resolve()
            revisions.append(json.loads(summary.read_text())["revision"])
            assert revisions[-1]["commit"] == frozen and revisions[-1]["dirty"] is False, folder
            assert folder in planned and folder_resumes(folder, planned[folder].cfg) is True, folder
    assert revisions  # the study has begun: its first runs are committed
    assert len({r["source_sha256"] for r in revisions}) == 1  # one source tree made them all


def test_report_marks_every_oracle_row_and_pairs_it_with_random(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path / f"random{seed}", "random", seed, [60.0, 70.0], target="own")
        fake_run(tmp_path / f"star{seed}", "star-me", seed, [60.0, 72.0 + seed], target="own")
        fake_run(tmp_path / f"oracle{seed}", "star-me", seed, [60.0, 75.0 + seed], target="reference")
    rows = report([tmp_path], tmp_path / "r")
    oracle = row(rows, "star-me+oracle-reference")
    assert oracle["oracle"] and not row(rows, "star-me")["oracle"] and oracle["group"] == ""  # one group
    assert oracle["delta_auc"]["deltas"] == pytest.approx([2.5, 3.0])
    # Holm: the method and the oracle are families of one each, so neither p is adjusted by the other
    for r in (oracle, row(rows, "star-me")):
        assert r["tests"]["p_holm"] == r["tests"]["p_t"] < 1
    md = (tmp_path / "r" / "report.md").read_text()
    marked = [line for line in md.splitlines() if "oracle-reference" in line and line.startswith("|")]
    assert len(marked) == 1 + 1 + 2 + 1  # main table, tests, two rounds, revisions: every row marked
    assert all("star-me+oracle-reference †" in line for line in marked)
    assert f"† oracle (--target reference): {ORACLE_NOTE}." in md
    plain = tmp_path / "plain"
    fake_run(plain / "random", "random", 0, [60.0, 70.0])
    report([plain], tmp_path / "r2")
    assert "†" not in (tmp_path / "r2" / "report.md").read_text()


def test_the_human_loop_refuses_the_oracle(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"question": "Is it red?\nAnswer:"}) + "\n")
    assert main(["init", str(tmp_path / "p"), "--task", "boolq", "--pool", str(pool), "--target", "reference"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("starlora: error: --target reference: a project cannot use it")
    assert "gold labels of the unlabeled pool" in err and not (tmp_path / "p").exists()
    cfg = resolve("paper", task="boolq", target="reference", model="tiny-random")
    with pytest.raises(StarloraError, match="--target reference: a project cannot use it"):
        init(tmp_path / "q", cfg, pool)  # a RunConfig through the API
    assert not (tmp_path / "q").exists()
    assert "target" not in {f.name for f in dataclasses.fields(MethodConfig)}  # nothing else can carry it


def test_a_run_records_its_revision_and_an_oracle_run_says_what_it_is(tmp_path):
    rng = random.Random(0)

    def rows(n, offset):
        return "".join(
            json.dumps(
                {
                    "question": f"Question: is item {i + offset} red?\nAnswer:",
                    "answer": f"the correct answer is {str(rng.random() < 0.5).lower()}",
                }
            )
            + "\n"
            for i in range(n)
        )

    (tmp_path / "train.jsonl").write_text(rows(24, 0))
    (tmp_path / "test.jsonl").write_text(rows(8, 100))
    base = dict(
        model="tiny-random",
        task="boolq",
        train_file=str(tmp_path / "train.jsonl"),
        test_file=str(tmp_path / "test.jsonl"),
        init_size=4,
        query_size=4,
        rounds=2,
        epochs=1,
        seed=0,
        probe_size=0,
        lora_r=2,
        score_batch_size=16,
        fewshot=0,
        k=2,
    )
    for name, target in [("own", "own"), ("oracle", "reference")]:
        run(resolve("paper", strategy="star-me", target=target, **base), tmp_path / name)
    for name in ("own", "oracle"):
        config = json.loads((tmp_path / name / "config.json").read_text())
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert config["versions"]["revision"] == summary["revision"] == code_revision()
        assert config["versions"]["machine"] == summary["machine"] == machine()  # and the machine that made it
    assert "oracle" not in json.loads((tmp_path / "own" / "summary.json").read_text())
    oracle = json.loads((tmp_path / "oracle" / "summary.json").read_text())
    assert oracle["oracle"] == ("reads gold labels of the unlabeled pool (official STAR code); not a label-free method")
    rows_ = report([tmp_path / "oracle"], tmp_path / "r")
    assert rows_[0]["strategy"] == "star-me+oracle-reference" and rows_[0]["oracle"]


def test_random_with_target_reference_is_refused_not_renamed():
    with pytest.raises(StarloraError, match="--target reference .* --strategy random reads none"):
        resolve("quick", strategy="random", target="reference")


def test_study_ii_the_me_oracle_picks_exactly_what_star_me_picks():
    """Study II, amendment 1 (results/PLAN.md): on SST-2's one-token answers the gold-reading ME is the label-free ME
    (tests/test_label_free.py), so every committed seed of D's registered row labeled the same examples, round for
    round, as star-me of that seed, and reached the same AUC."""
    from pathlib import Path

    runs = Path(__file__).resolve().parent.parent / "results" / "ii-sst2" / "sst2"
    pairs = [
        (runs / "star-me" / seed.name, seed)
        for seed in sorted((runs / "star-me+oracle-reference").glob("seed*"))
        if (seed / "summary.json").exists() and (runs / "star-me" / seed.name / "summary.json").exists()
    ]
    assert pairs
    for own, oracle in pairs:
        rounds = [
            [json.loads(line)["selected"] for line in (f / "rounds.jsonl").read_text().splitlines()]
            for f in (own, oracle)
        ]
        assert rounds[0] == rounds[1] and len(rounds[0]) == 6, oracle
        summaries = [json.loads((f / "summary.json").read_text()) for f in (own, oracle)]
        assert summaries[0]["auc"] == summaries[1]["auc"], oracle
