"""pipeline.plan: one shard -> error rows, duplicates, batches (sampled apart, one per worker) -> the output table."""

from __future__ import annotations

import pyarrow as pa
from helpers import _write

from pipeline import PipelineConfig
from pipeline.config import OUTPUT_COLUMNS
from pipeline.plan import output_table, plan_shard
from pipeline.prompts import is_sampled
from pipeline.shards import discover_shards


def test_plan_shard_error_rows_and_duplicates(tmp_path, tiny_tokenizer):
    _write(tmp_path / "s.parquet", id=["a", "b", "a", None, "c", "d"], text=["ok", None, "dup", "x", "  ", "fine"])
    fs, shards = discover_shards(str(tmp_path))
    cfg = PipelineConfig(input=str(tmp_path), output="o", baseline_sample_rate=0.0)
    seen = {("str", "d")}  # "d" was written by an earlier shard
    work = plan_shard(0, fs, shards[0], cfg, tiny_tokenizer, seen)
    reasons = [r.get("error", "").split(":")[0] if r.get("status") == "error" else "ok" for r in work.results]
    assert reasons == ["ok", "null_text", "duplicate_id", "null_id", "empty_text", "duplicate_id"]
    assert work.remaining == 1 and [t.positions for t in work.tasks] == [[0]]


def test_plan_shard_splits_sampled_batches(tmp_path, tiny_tokenizer):
    ids = [f"id{i}" for i in range(40)]
    _write(tmp_path / "s.parquet", id=ids, text=["text " * (i % 7 + 1) for i in range(40)])
    fs, shards = discover_shards(str(tmp_path))
    cfg = PipelineConfig(input=str(tmp_path), output="o", baseline_sample_rate=0.3, max_batch_size=4)
    work = plan_shard(0, fs, shards[0], cfg, tiny_tokenizer, set())
    for task in work.tasks:
        assert {is_sampled(ids[p], 0.3) for p in task.positions} == {task.sampled}
    assert sorted(p for t in work.tasks for p in t.positions) == list(range(40))


def test_plan_shard_qa_task_and_empty_shard(tmp_path, tiny_tokenizer):
    _write(tmp_path / "a.parquet", id=["q1", "q2"], text=["doc one", "doc two"], question=["who?", None])
    _write(tmp_path / "b.parquet", id=pa.array([], pa.string()), text=pa.array([], pa.string()),
           question=pa.array([], pa.string()))
    fs, shards = discover_shards(str(tmp_path))
    cfg = PipelineConfig(input=str(tmp_path), output="o", task="qa", baseline_sample_rate=0.0)
    work = plan_shard(0, fs, shards[0], cfg, tiny_tokenizer, set())
    assert work.results[1]["error"].startswith("null_question:") and work.remaining == 1
    assert "Question: who?" in tiny_tokenizer.decode(work.tasks[0].input_ids[0])
    empty = plan_shard(1, fs, shards[1], cfg, tiny_tokenizer, set())
    assert empty.results == [] and empty.tasks == [] and empty.remaining == 0
    table = output_table(empty, "m", "h")
    assert table.num_rows == 0 and table.column_names == ["id", *OUTPUT_COLUMNS[1:]]


def test_plan_shard_gives_every_worker_a_batch(tmp_path, tiny_tokenizer, tiny_model_dir):
    """A shard too small to fill a batch per worker is split into one batch per worker; a big one is not."""
    _write(tmp_path / "a.parquet", id=[f"r{i}" for i in range(6)], text=[f"document number {i}" for i in range(6)])
    fs, shards = discover_shards(str(tmp_path))
    cfg = PipelineConfig(input=str(tmp_path), output="o", model=str(tiny_model_dir), baseline_sample_rate=0.0,
                         max_batch_size=8)
    sizes = {w: [len(t.positions) for t in plan_shard(0, fs, shards[0], cfg, tiny_tokenizer, set(), w).tasks]
             for w in (1, 2, 4, 16)}
    assert sizes == {1: [6], 2: [3, 3], 4: [2, 2, 2], 16: [1] * 6}
