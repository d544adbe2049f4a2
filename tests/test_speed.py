"""The fast paths compute what the slow ones do: batching, one-token candidates, length-grouped batches, batch-wide
dropout masks, bf16 autocast, 2 processes; and `starlora bench` reports every figure."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import separated_inputs
from safetensors.torch import load_file

from starlora import bench as B
from starlora.data import Example
from starlora.errors import StarloraError
from starlora.files import read_jsonl
from starlora.hardware import resolve_precision
from starlora.masks import BatchDropout
from starlora.models import tiny_random
from starlora.scoring import ScoringSettings, answer_stats, score
from starlora.tasks import get_task
from starlora.tokens import encode_answer, encode_prompt
from starlora.training import TrainSettings, attach_lora, batch_order

BOOLQ = get_task("boolq", template="{question}")
EXAMPLES = [
    Example(f"e{i}", f"Question: is {i} odd?" + " really" * (i % 3) + "\nAnswer:", t, t)
    for i, t in enumerate(["true", "false"] * 4)
]


@pytest.fixture(scope="module")
def lora():
    base, tok = tiny_random()
    model = attach_lora(base, TrainSettings(lora_r=4, lora_alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model, tok


def test_batched_scoring_equals_the_official_one_at_a_time_full_logit_way(lora):
    model, tok = lora
    fast = score(model, tok, BOOLQ, EXAMPLES, settings=ScoringSettings(batch_size=16))
    pairs = [
        (encode_prompt(tok, ex.prompt, 128), encode_answer(tok, c, 256)) for ex in EXAMPLES for c in ("true", "false")
    ]
    naive = B.naive_answer_stats(model, pairs).reshape(len(EXAMPLES), 2, 2)  # [example, candidate, (logp, entropy)]
    y_hat = naive[:, :, 0].argmax(1)
    assert [fast_p == ["true", "false"][j] for fast_p, j in zip(fast.predictions, y_hat)] == [True] * len(EXAMPLES)
    rows = np.arange(len(EXAMPLES))
    np.testing.assert_allclose(fast.measures["pe"], -naive[rows, y_hat, 0], rtol=1e-5)
    np.testing.assert_allclose(fast.measures["me"], naive[rows, y_hat, 1], rtol=1e-5)


def test_one_token_candidates_take_one_forward_and_match_the_pair_path(lora):
    model, tok = lora
    prompts = [encode_prompt(tok, ex.prompt, 128) for ex in EXAMPLES]
    choices = [70, 71, 72]
    joint, joint_ent, _ = answer_stats(model, [(p, [choices[0]]) for p in prompts], 3, choices=choices)
    pairs, pair_ent, _ = answer_stats(model, [(p, [c]) for p in prompts for c in choices], 5)
    np.testing.assert_allclose(joint, pairs.reshape(-1, 3), rtol=1e-5)
    np.testing.assert_allclose(joint_ent, pair_ent.reshape(-1, 3)[:, 0], rtol=1e-5)
    assert np.allclose(np.exp(joint).sum(1) < 1, True)  # three of 259 tokens: a part of the distribution


def test_length_grouped_batches_cover_every_example_once_and_pad_little():
    lengths = [5, 50, 6, 51, 7, 52, 8, 53, 9, 54]
    g = torch.Generator().manual_seed(0)
    grouped = batch_order(lengths, 2, g, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(10))
    # one run of 50 batches' worth sorted by length, longest first, then cut into pairs
    assert sorted(tuple(lengths[i] for i in b) for b in grouped) == [(6, 5), (8, 7), (50, 9), (52, 51), (54, 53)]
    again = batch_order(lengths, 2, torch.Generator().manual_seed(0), group_by_length=True)
    assert grouped == again
    plain = batch_order(lengths, 2, torch.Generator().manual_seed(0), group_by_length=False)
    assert [i for b in plain for i in b] == torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()


def test_batch_dropout_masks_do_not_depend_on_the_row_split():
    x = torch.ones(4, 3, 5)

    def masks(split):
        drop = BatchDropout(0.5, torch.Generator().manual_seed(3)).train()
        out = []
        for rows in split:
            drop.generator.manual_seed(3)  # every process starts from the same seed and draws the whole batch
            drop.step(4, 3)
            drop.rows = rows
            out.append(drop(x[rows]))
        return torch.cat(out)

    whole, halves = masks([slice(0, 4)]), masks([slice(0, 2), slice(2, 4)])
    assert torch.equal(whole, halves)
    assert set(whole.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept values scaled by 1 / (1 - p)


def test_bf16_autocast_is_close_to_fp32_but_not_the_same_numbers(lora):
    model, tok = lora
    fp32 = score(model, tok, BOOLQ, EXAMPLES, settings=ScoringSettings(batch_size=4))
    bf16 = score(model, tok, BOOLQ, EXAMPLES, settings=ScoringSettings(batch_size=4, precision="bf16"))
    for k in ("pe", "me"):
        assert not np.array_equal(bf16.measures[k], fp32.measures[k])  # the matmuls really ran in bf16
        # bf16 keeps 8 mantissa bits (2^-9 ~ 0.2% per rounding); a sum of five answer tokens' terms stays within 2%
        # (measured: 0.4% for PE, 0.001% for ME, which sits near 5 log V)
        np.testing.assert_allclose(bf16.measures[k], fp32.measures[k], rtol=2e-2)


def test_unknown_precision_is_refused_naming_it():
    with pytest.raises(StarloraError, match="'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))
    from starlora.experiment import resolve

    with pytest.raises(StarloraError, match="--precision 'fp16'"):
        resolve(precision="fp16")


def test_bench_reports_every_figure_on_the_tiny_model(write):
    rows = "".join(json.dumps({"question": ex.prompt, "answer": ex.target}) + "\n" for ex in EXAMPLES)
    result = B.bench("tiny-random", "boolq", write("pool.jsonl", rows), n=8, k=2, naive_n=4, batch_size=4)
    for key in (
        "scoring_examples_per_s",
        "naive_scoring_examples_per_s",
        "scoring_speedup",
        "training_examples_per_s",
        "naive_training_examples_per_s",
        "training_speedup",
        "matmul_gflops",
        "scoring_roofline_fraction",
        "peak_rss_mb",
    ):
        assert result[key] > 0, key
    assert result["n"] == 8 and result["naive_n"] == 4 and result["precision"] in ("fp32", "bf16")
    assert result["naive_vs_fast_max_abs_diff"] < 1e-4


def test_bench_pool_sizes_reports_time_and_memory_per_size(write, capsys):
    from starlora.cli import main

    rows = "".join(json.dumps({"question": ex.prompt, "answer": ex.target}) + "\n" for ex in EXAMPLES)
    pool = str(write("pool.jsonl", rows))
    assert (
        main(
            [
                "bench",
                "--model",
                "tiny-random",
                "--train-file",
                pool,
                "--pool-sizes",
                "20,40",
                "--k",
                "2",
                "--score-batch-size",
                "8",
                "--precision",
                "fp32",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["strategy"] == "star-me" and result["k"] == 2 and result["examples_repeated"] == len(EXAMPLES)
    assert [r["n"] for r in result["pool_sizes"]] == [20, 40]
    for r in result["pool_sizes"]:
        assert r["seconds"] > 0 and r["ms_per_example"] > 0 and r["rss_before_mb"] > 0
        assert {"select_write_ms", "peak_rss_growth_mb", "rss_peak"} <= set(r)
    table = B.pool_table(result)
    assert "pool size" in table and "ms/example" in table and len(table.splitlines()) == 5


def test_synthetic_pool_repeats_the_examples_under_new_ids():
    pool = B.synthetic_pool(EXAMPLES, 20)
    assert len(pool) == 20 and len({ex.id for ex in pool}) == 20
    assert [ex.prompt for ex in pool[8:16]] == [ex.prompt for ex in EXAMPLES]


ARGS = [
    "run",
    "--task",
    "boolq",
    "--strategy",
    "star-me",
    "--init-size",
    "8",
    "--query-size",
    "8",
    "--rounds",
    "3",
    "--epochs",
    "2",
    "--lora-r",
    "4",
    "--probe-size",
    "12",
    "--score-batch-size",
    "16",
    "--lr",
    "1e-2",
    "--batch-size",
    "3",
    "--precision",
    "fp32",
]
# Scores of the two runs agree to about 1e-6 (fp32 weights equal to ~1e-7, summed in another order by DDP); these
# tolerances leave an order of magnitude or more on each side.
SCORE_RTOL, MU_TOL, LOSS_RTOL, ADAPTER_ATOL, BRIER_TOL = 1e-5, 1e-4, 1e-5, 1e-6, 1e-5
N_TEST = 12


def separated_data(tmp_path):
    paths = separated_inputs(tmp_path, 48, N_TEST)
    return ["--model", paths["model"], "--train-file", paths["train_file"], "--test-file", paths["test_file"]]


FSDP_CONFIG = Path(__file__).parent.parent / "configs" / "accelerate" / "fsdp.yaml"
LAUNCH = {
    "ddp": [
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
    "fsdp": ["--config_file", str(FSDP_CONFIG)],
}  # the shipped file: 2 processes, FSDP2


@pytest.mark.parametrize("how", ["ddp", "fsdp"])
def test_two_processes_select_what_one_process_selects(tmp_path, how):
    """Same seed, 1 vs 2 processes (DDP, or FSDP sharding the weights, over 2 CPU processes): the same scores,
    selections, losses and adapter, up to the rounding of gradients summed in another order. fp32 is forced: under
    bf16 autocast (--precision auto on a CPU with AVX512-BF16) each process's smaller batches round differently at the
    1e-3 level."""
    data = separated_data(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "starlora", *ARGS, *data, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert one.returncode == 0, one.stderr
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    two = subprocess.run(
        [launcher, "launch", *LAUNCH[how], "-m", "starlora", *ARGS, *data, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    held = re.search(r"FSDP over 2 processes: this one holds ([\d,]+) of ([\d,]+) parameters", two.stdout)
    assert (held is not None) == (how == "fsdp")
    if held:  # the main process holds about half of every weight (shards of dim 0, rounded up)
        mine, total = (int(g.replace(",", "")) for g in held.groups())
        assert 0.45 * total <= mine <= 0.55 * total
    rounds = {d: read_jsonl(tmp_path / d / "rounds.jsonl") for d in ("one", "two")}
    assert len(rounds["one"]) == len(rounds["two"]) == 3
    same_data = True  # both runs trained on the same labeled list so far
    for t, (x, y) in enumerate(zip(rounds["one"], rounds["two"])):
        assert x["added"] == y["added"]
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=LOSS_RTOL)
        # one test prediction whose two candidates' log-likelihoods sit within rounding of each other may flip;
        # the Brier score is continuous in the probabilities, so it agrees whatever flips
        assert abs(x["accuracy"] - y["accuracy"]) <= 100 / N_TEST + 1e-9
        assert x["brier"] == pytest.approx(y["brier"], abs=BRIER_TOL)
        if t == len(rounds["one"]) - 1:
            break
        a, b = ({r["id"]: r for r in read_jsonl(tmp_path / d / "scores" / f"round_{t}.jsonl")} for d in ("one", "two"))
        assert a.keys() == b.keys()
        mu_f = np.array([a[i]["mu_f"] for i in a])
        assert np.ptp(mu_f) > 1.0  # the data does what it is for: scores several nats apart, not within rounding
        for i in a:
            assert a[i]["mu_b"] == pytest.approx(b[i]["mu_b"], rel=SCORE_RTOL)
            assert a[i]["mu_f"] == pytest.approx(b[i]["mu_f"], rel=SCORE_RTOL)
            assert a[i]["mu"] == pytest.approx(b[i]["mu"], abs=MU_TOL)
        # the selections, in order, are equal up to near-ties: at every rank both picks score within rounding
        for u, v in zip(x["selected"], y["selected"]):
            assert abs(a[u]["mu"] - a[v]["mu"]) <= 2 * MU_TOL, (t, u, v)
        if x["selected"] != y["selected"]:  # a near-tie swapped: later rounds train on other lists, not comparable
            same_data = False
            break
    if same_data:
        w1, w2 = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "two"))
        assert w1.keys() == w2.keys()
        for k in w1:
            torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=ADAPTER_ATOL)
    versions = json.loads((tmp_path / "two" / "config.json").read_text())["versions"]
    assert versions["processes"] == 2 and versions["sharded"] == (how == "fsdp")
    assert two.stdout.count("round 2:") == 1 and two.stdout.count("AUC") == 1  # only the main process reports


def test_sharded_generation_and_accumulation_match_one_process(tmp_path):
    """An open task under FSDP: generate() runs in lockstep over the processes (one finishing early keeps stepping,
    and spare batches even out the counts), with 2 micro-batches per optimiser step; the same selections, losses and
    scores as 1 process."""
    model = separated_inputs(tmp_path, 4, 4)["model"]
    args = [
        "run",
        "--task",
        "gsm8k",
        "--strategy",
        "star-me",
        "--init-size",
        "4",
        "--query-size",
        "4",
        "--rounds",
        "2",
        "--epochs",
        "1",
        "--lora-r",
        "4",
        "--probe-size",
        "4",
        "--test-size",
        "6",
        "--score-batch-size",
        "4",
        "--batch-size",
        "2",
        "--gradient-accumulation-steps",
        "2",
        "--precision",
        "fp32",
        "--model",
        model,
        "--candidate-subsample",
        "11",
        "--max-new-tokens",
        "8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "starlora", *args, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert one.returncode == 0, one.stderr
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    two = subprocess.run(
        [launcher, "launch", *LAUNCH["fsdp"], "-m", "starlora", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    x, y = (read_jsonl(tmp_path / d / "rounds.jsonl") for d in ("one", "two"))
    assert [r["added"] for r in x] == [r["added"] for r in y] and len(x) == 2
    assert [r["train_loss"] for r in x] == pytest.approx([r["train_loss"] for r in y], rel=LOSS_RTOL)
    a, b = ({r["id"]: r for r in read_jsonl(tmp_path / d / "scores" / "round_0.jsonl")} for d in ("one", "two"))
    assert a.keys() == b.keys() and len(a) == 11  # 11 candidates in batches of 4: 3 batches, one spare on process 1
    for i in a:
        assert a[i]["mu"] == pytest.approx(b[i]["mu"], abs=MU_TOL)


def test_round_bench_times_each_phase_of_a_protocol_round(capsys):
    small = dict(
        init_size=4, query_size=4, rounds=3, candidate_subsample=8, test_size=6, epochs=1, lora_r=2, precision="fp32"
    )
    result = B.round_bench("sst2", ("random", "star-me"), "tiny-random", **small)
    assert (result["labeled"], result["candidates"], result["test"], result["round"]) == (4 + 4 * 2, 8, 6, 1)
    random_, star = result["strategies"]["random"], result["strategies"]["star-me"]
    assert "base" not in random_ and "base" in star  # only a strategy that mixes in the base model pays for it
    for phases in (random_, star):
        assert phases["round_s"] == pytest.approx(
            sum(phases[p]["seconds"] for p in ("train", "evaluate", "score")), abs=1e-3
        )
        for name in ("train", "evaluate", "score"):
            p = phases[name]
            assert p["seconds"] > 0 and p["examples_per_s"] == pytest.approx(p["examples"] / p["seconds"], rel=1e-2)
            assert p["matmul_fraction"] == pytest.approx(p["gflops"] / result["matmul_gflops"], rel=1e-2, abs=1e-4)
    assert random_["score"]["gflops"] == 0 and star["score"]["gflops"] > 0  # random runs no model to choose
    table = B.round_table(result)
    assert "of matmul rate" in table and len(table.splitlines()) == 3 + 4 + 5 + 1
