"""The output row is written once (workers/schema.py): the worker, the planner and the docs follow it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from lazy_core import DecodingOptions, LazyConfig
from pipeline.plan import ShardWork, error_result, output_table
from pipeline.shards import Shard
from workers import WorkerSpec
from workers.actor import LazyWorker
from workers.schema import (
    OUTPUT_COLUMNS,
    RESULT_SCHEMA,
    WORKER_COLUMNS,
    error_row,
    markdown_table,
    result_row,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"


def test_the_worker_emits_exactly_the_schemas_columns(tiny_model_dir):
    lazy = LazyConfig(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=2, keep_tail=1)
    worker = LazyWorker(WorkerSpec(model=str(tiny_model_dir), lazy=lazy, decoding=DecodingOptions(max_new_tokens=3)))
    good = [[5 + i for i in range(20)], [7 + i for i in range(12)]]
    rows = worker.run_batch(good, sampled=True, seed=0)  # sampled: the baseline columns are filled too
    too_long = worker.run_batch([[5] * 100_000], sampled=False, seed=0)  # the engine raises: an error row
    assert [r["status"] for r in rows] == ["ok", "ok"] and too_long[0]["status"] == "error"
    for row in [*rows, *too_long]:
        assert tuple(row) == WORKER_COLUMNS
    assert too_long[0]["error"].startswith("engine_error: ValueError: prompt of 100000 tokens")
    assert all(rows[0][c] is not None for c in ("generation", "ttft_s", "baseline_ttft_s", "rouge_l_vs_baseline"))


def test_rows_cannot_carry_a_column_the_schema_lacks():
    with pytest.raises(KeyError, match=r"\['batch_s'\] are not columns a worker writes"):
        result_row("ok", batch_s=1.0)
    work = ShardWork(index=0, shard=Shard(path="p", name="part-0.parquet"), base=pa.table({"id": [1]}),
                     results=[None], remaining=1)
    with pytest.raises(KeyError, match=r"keys \['batch_s'\] that are not output columns"):
        work.apply([0], [{**result_row("ok", generation="x"), "batch_s": 1.0}])
    assert error_row("engine_error: boom", "w")["error"] == "engine_error: boom"
    assert error_result("null_text: x", 3)["prompt_tokens"] == 3


def test_the_output_table_follows_the_schema():
    work = ShardWork(index=0, shard=Shard(path="p", name="part-0.parquet"), base=pa.table({"id": ["a", "b"]}),
                     results=[result_row("ok", generation="x", new_tokens=2), error_result("empty_text: blank", 0)],
                     remaining=0)
    table = output_table(work, "m", "h")
    assert tuple(table.column_names) == OUTPUT_COLUMNS
    assert table.schema.remove(0) == RESULT_SCHEMA
    assert table.column("model").to_pylist() == ["m", "m"] and table.column("prompt_tokens").to_pylist() == [None, 0]


def test_the_docs_table_is_the_schema():
    assert markdown_table() in DOCS.read_text(), "docs/pipeline.md 'Output schema' is workers.schema.markdown_table()"
