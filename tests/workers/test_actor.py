"""The worker in-process (no Ray): rows in input order, batch == singles, shadow baseline fields, error capture, and
empty outputs (the fallback to the full model, the warning without it, the min_prompt_tokens guard)."""

from __future__ import annotations

import random

import pytest
import torch

from lazy_core import DecodingOptions, LazyConfig
from workers import WorkerSpec
from workers.actor import LazyWorker
from workers.schema import WORKER_COLUMNS, result_arrays

LAZY = LazyConfig(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=4, keep_tail=2).model_dump()


def _spec(**fields) -> WorkerSpec:
    """A worker in float32: these tests assert exact equality (a batch == its items alone, continuous == static,
    the tiny empty case found in fp32), which bf16 ("auto" on a bf16 CPU) does not promise (lazy_core.precision)."""
    return WorkerSpec(dtype="float32", **fields)


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    return LazyWorker(_spec(model=str(tiny_model_dir), lazy=LAZY, decoding=DecodingOptions(max_new_tokens=5)))


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
    off = LazyWorker(_spec(model=str(tiny_model_dir), lazy="off", decoding=DecodingOptions(max_new_tokens=5)))
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


# ---- empty outputs ---------------------------------------------------------------------------------------------------


def _empty_workers(case, **spec):
    from conftest import EMPTY_LAZY

    path = str(case["path"])
    six = DecodingOptions(max_new_tokens=6)
    lazy = LazyWorker(_spec(model=path, lazy=LazyConfig(**EMPTY_LAZY), decoding=six, **spec))
    full = LazyWorker(_spec(model=path, lazy="off", decoding=DecodingOptions(max_new_tokens=6)))
    return lazy, full


def test_empty_pruned_output_falls_back_to_the_full_model(empty_case):
    lazy, full = _empty_workers(empty_case)
    other = _prompts(1, seed=3)[0]
    rows = lazy.run_batch([empty_case["ids"], other], sampled=False, seed=0)
    ref = full.run_batch([empty_case["ids"]], sampled=False, seed=0)[0]
    row = rows[0]
    assert ref["generation"].strip() and row["generation"] == ref["generation"]
    assert row["status"] == "ok" and row["fallback"] is True and row["warning"] == "pruning_lost_output"
    assert row["pruned"] is True and row["first_token_agrees"] is False and row["baseline_ttft_s"] > 0
    assert row["measured_speedup"] is None  # not a baseline sample: no speedup claimed
    assert row["new_tokens"] == ref["new_tokens"] and 0 < row["est_speedup"] < 1
    assert 1 < row["computed_token_fraction"] < 2
    alone = lazy.run_batch([other], sampled=False, seed=0)[0]
    assert rows[1]["generation"] == alone["generation"] and rows[1]["fallback"] is False
    assert rows[1]["warning"] is None and rows[1]["first_token_agrees"] is None


def test_empty_output_is_flagged_when_the_fallback_is_off(empty_case):
    lazy, _ = _empty_workers(empty_case, fallback_on_empty=False)
    row = lazy.run_batch([empty_case["ids"]], sampled=False, seed=0)[0]
    assert row["status"] == "ok" and row["generation"] == "" and row["warning"] == "empty_generation"
    assert row["fallback"] is False and row["new_tokens"] == 1
    sampled = lazy.run_batch([empty_case["ids"]], sampled=True, seed=0)[0]  # the shadow run shows it is a loss
    assert sampled["generation"] == "" and sampled["warning"] == "pruning_lost_output"
    assert sampled["first_token_agrees"] is False and sampled["measured_speedup"] > 0


def test_sampled_empty_row_reuses_its_shadow_run(empty_case, monkeypatch):
    lazy, full = _empty_workers(empty_case)
    calls = []
    real = lazy._generate
    monkeypatch.setattr(lazy, "_generate", lambda engine, ids, seed: calls.append(engine) or real(engine, ids, seed))
    row = lazy.run_batch([empty_case["ids"]], sampled=True, seed=0)[0]
    assert calls == [lazy.lazy, lazy.full]  # no third run
    assert row["fallback"] is True and row["generation"] == full.run_batch([empty_case["ids"]], False, 0)[0][
        "generation"]


def test_prompt_under_min_prompt_tokens_is_not_pruned(empty_case):
    from conftest import EMPTY_LAZY

    path, ids = str(empty_case["path"]), empty_case["ids"]
    guarded = LazyConfig(**EMPTY_LAZY, min_prompt_tokens=len(ids) + 1).model_dump()
    worker = LazyWorker(_spec(model=path, lazy=guarded, decoding=DecodingOptions(max_new_tokens=6)))
    full = LazyWorker(_spec(model=path, lazy="off", decoding=DecodingOptions(max_new_tokens=6)))
    row = worker.run_batch([ids], sampled=False, seed=0)[0]
    assert row["pruned"] is False and row["fallback"] is False and row["warning"] is None
    assert row["generation"] == full.run_batch([ids], sampled=False, seed=0)[0]["generation"]
    assert row["computed_token_fraction"] == 1.0


# ---- continuous batching -------------------------------------------------------------------------------------------


def test_continuous_stream_equals_static_batches_and_counts_its_slots(tiny_model_dir, worker):
    """A worker with slots runs its task as a continuous stream: the same rows as static batches (each item equals
    its run alone), in input order, and its decode slot-steps (slots x steps) shared by the items."""
    spec = _spec(model=str(tiny_model_dir), lazy=LAZY, decoding=DecodingOptions(max_new_tokens=12),
                      batching="continuous", slots=2)
    stream = LazyWorker(spec)
    static = LazyWorker(_spec(model=str(tiny_model_dir), lazy=LAZY, decoding=DecodingOptions(max_new_tokens=12)))
    prompts = _prompts(7, seed=3)
    rows = stream.run_batch(prompts, sampled=True, seed=0)
    singles = [static.run_batch([p], sampled=True, seed=0)[0] for p in prompts]
    for key in ("generation", "new_tokens", "computed_token_fraction_total", "revived_tokens", "first_token_agrees",
                "rouge_l_vs_baseline"):
        assert [r[key] for r in rows] == [r[key] for r in singles], key
    rows = stream.run_batch(prompts, sampled=False, seed=0)
    total = sum(r["decode_slot_steps"] for r in rows)
    assert total == pytest.approx(stream.slot_steps) and stream.slot_steps % 2 == 0  # 2 slots x the stream's steps
    assert total >= sum(r["new_tokens"] - 1 for r in rows) and len({r["decode_slot_steps"] for r in rows}) == 1
    batch = static.run_batch(prompts[:3], sampled=False, seed=0)  # static: 4 slots (the default) x the batch's steps
    assert sum(r["decode_slot_steps"] for r in batch) == pytest.approx(4 * (max(r["new_tokens"] for r in batch) - 1))


def test_continuous_bad_item_becomes_error_row_others_complete(tiny_model_dir):
    spec = _spec(model=str(tiny_model_dir), lazy=LAZY, decoding=DecodingOptions(max_new_tokens=5),
                      batching="continuous", slots=2)
    stream = LazyWorker(spec)
    prompts = _prompts(3)
    rows = stream.run_batch([prompts[0], [], prompts[2]], sampled=False, seed=0)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"].startswith("engine_error: ") and "empty" in rows[1]["error"]


# ---- bf16, as dtype="auto" runs on a CPU with bf16 units -----------------------------------------------------------


@pytest.mark.parametrize("batching", ["static", "continuous"])
def test_bf16_rows_are_complete_and_well_formed(tiny_model_dir, batching):
    """A bf16 worker (what "auto" loads on AMX / AVX512-BF16 CPUs and GPUs) writes a full row for every item, in
    input order, with its shadow-run fields. Its tokens are not compared with runs alone: bf16 sums may change order
    with a batch's row count (docs/lazy_core.md, "What bf16 does not promise")."""
    worker = LazyWorker(WorkerSpec(model=str(tiny_model_dir), lazy=LAZY, decoding=DecodingOptions(max_new_tokens=6),
                                   dtype="bfloat16", quantize="int8", batching=batching, slots=2))
    info = worker.ready()
    assert info["dtype"] == "bfloat16" and worker.model.dtype == torch.bfloat16
    assert info["quantize"].startswith("int8 (int8pack: 29 int8 layers")  # the pipeline's default on bf16 CPUs
    prompts = _prompts(5, seed=4)
    rows = worker.run_batch(prompts, sampled=True, seed=0)
    assert len(rows) == len(prompts)
    for row in rows:
        assert set(row) == set(WORKER_COLUMNS) and row["status"] == "ok" and row["error"] is None
        assert isinstance(row["generation"], str) and 1 <= row["new_tokens"] <= 6
        assert row["ttft_s"] > 0 and row["decode_s"] >= 0 and row["baseline_ttft_s"] > 0
        assert 0 < row["computed_token_fraction"] <= 1 and row["est_speedup"] >= 1 and row["pruned"] is True
        assert isinstance(row["first_token_agrees"], bool) and 0.0 <= row["rouge_l_vs_baseline"] <= 1.0
    arrays = result_arrays([{**r, "prompt_tokens": 1, "prompt_tokens_used": 1} for r in rows], "m", "h")
    assert all(arrays[name].null_count == 0 for name in ("generation", "status", "new_tokens", "ttft_s", "worker"))
