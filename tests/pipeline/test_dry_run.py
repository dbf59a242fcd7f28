"""pipeline.dry_run: shards, rows, invalid rows, batches and tokens counted without Ray and without writing."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import base_config, make_corpus

from pipeline import dry_run


def test_dry_run_counts_without_ray_work(tiny_model_dir, tmp_path):
    make_corpus(tmp_path / "in", shards=2, rows=5)
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["", "ok text"], "title": ["a", "b"]}),
                   tmp_path / "in" / "part-00009.parquet")
    uri = f"file://{tmp_path / 'in'}"  # any pyarrow filesystem URI works like a local path
    cfg = base_config(tiny_model_dir, tmp_path, baseline_sample_rate=0.0, input=uri)
    result = dry_run({**cfg, "batching": "static"})
    assert (result.shards_total, result.shards_todo, result.rows, result.rows_invalid) == (3, 3, 12, 1)
    assert result.invalid_by_reason == {"empty_text": 1} and result.batches >= 4 and result.prompt_tokens > 0
    streams = dry_run(cfg)  # continuous batching (the default): one stream per shard here (5, 5 and 1 rows)
    assert streams.batches == 3 and streams.rows == result.rows
    assert result.max_new_tokens_total == 11 * 4 and not (tmp_path / "out").exists()
