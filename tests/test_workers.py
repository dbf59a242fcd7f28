"""The worker in-process (no Ray): rows in input order, batch == singles, shadow baseline fields, error capture."""

from __future__ import annotations

import random

import pytest

from lazy_core import LazyConfig
from workers import WorkerSpec, actor_options, rouge_l_f
from workers.actor import LazyWorker

LAZY = LazyConfig(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=4, keep_tail=2).model_dump()


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    return LazyWorker(WorkerSpec(model=str(tiny_model_dir), lazy=LAZY, max_new_tokens=5))


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(3, 200) for _ in range(rng.randint(8, 40))] for _ in range(n)]


def test_batch_equals_single_runs_in_input_order(worker):
    prompts = _prompts(4)
    batch = worker.run_batch(prompts, sampled=False, seed=0)
    singles = [worker.run_batch([p], sampled=False, seed=0)[0] for p in prompts]
    assert [r["generation"] for r in batch] == [r["generation"] for r in singles]
    assert all(r["status"] == "ok" and r["new_tokens"] >= 1 and r["baseline_ttft_s"] is None for r in batch)
    assert all(0 < r["computed_token_fraction"] <= 1 and r["est_speedup"] >= 1 for r in batch)


def test_shadow_baseline_fields(worker, tiny_model_dir):
    rows = worker.run_batch(_prompts(2, seed=1), sampled=True, seed=0)
    for r in rows:
        assert r["baseline_ttft_s"] > 0 and r["measured_speedup"] == pytest.approx(r["baseline_ttft_s"] / r["ttft_s"])
        assert isinstance(r["first_token_agrees"], bool) and 0.0 <= r["rouge_l_vs_baseline"] <= 1.0
    off = LazyWorker(WorkerSpec(model=str(tiny_model_dir), lazy="off", max_new_tokens=5))
    exact = off.run_batch(_prompts(3, seed=2), sampled=True, seed=0)
    assert all(r["first_token_agrees"] and r["rouge_l_vs_baseline"] == 1.0 for r in exact)  # off == full model


def test_bad_item_becomes_error_row_others_complete(worker):
    prompts = _prompts(3)
    rows = worker.run_batch([prompts[0], [], prompts[2]], sampled=False, seed=0)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"].startswith("engine_error: ") and rows[1]["generation"] is None
    assert rows[0]["generation"] == worker.run_batch([prompts[0]], sampled=False, seed=0)[0]["generation"]


def test_ready_reports_identity(worker):
    info = worker.ready()
    assert info["device"] == "cpu" and info["lazy"]["prune_layers"] == [1] and ":" in info["worker"]


def test_actor_options_gpu_or_cpu():
    assert actor_options(2.0, 4, 3) == {"max_restarts": 3, "max_task_retries": 0, "num_gpus": 1, "num_cpus": 1}
    assert actor_options(0.0, 4, 1) == {"max_restarts": 1, "max_task_retries": 0, "num_gpus": 0, "num_cpus": 4}


def test_rouge_l_matches_reference_implementation():
    from rouge_score import rouge_scorer  # the bench extra, installed by `make setup`

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(0)
    for _ in range(30):
        a = [rng.randint(0, 9) for _ in range(rng.randint(1, 15))]
        b = [rng.randint(0, 9) for _ in range(rng.randint(1, 15))]
        expected = scorer.score(" ".join(map(str, b)), " ".join(map(str, a)))["rougeL"].fmeasure
        assert rouge_l_f(a, b) == pytest.approx(expected)
    assert rouge_l_f([], []) == 1.0 and rouge_l_f([1], []) == 0.0 and rouge_l_f([1, 2, 3], [1, 2, 3]) == 1.0
