"""The Ray Data door: LazyPredictor in-process, lazy_map_batches on a local Ray (tiny model, then the real one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import RayDataConfig, lazy_map_batches, run_pipeline
from pipeline.config import OUTPUT_COLUMNS
from pipeline.ray_data import RESULT_COLUMNS, LazyPredictor, stage_options
from pipeline.resources import DEFAULT_THREADS_PER_CPU_WORKER as K
from pipeline.resources import model_weight_bytes
from workers.schema import RESULT_SCHEMA

LAZY = dict(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=4, keep_tail=2)


def _texts(n: int) -> list[str]:
    return [f"Document {i}. " + "the quick brown fox jumps over the lazy dog " * (1 + (i * 5) % 7) for i in range(n)]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    # float32: a row alone equals the same row in a batch (bf16 does not promise that)
    return LazyPredictor({"model": str(tiny_model_dir), "max_new_tokens": 4, "lazy": LAZY, "max_batch_size": 2,
                          "dtype": "float32"})


def test_predictor_keeps_rows_and_columns_and_turns_bad_rows_into_error_rows(predictor):
    texts = [*_texts(4), None, "   "]
    table = pa.table({"id": list(range(6)), "text": texts, "user_col": [f"u{i}" for i in range(6)]})
    out = predictor(table)
    assert out.num_rows == 6 and out.column_names == ["id", "text", "user_col", *RESULT_COLUMNS]
    assert out.column("id").to_pylist() == list(range(6)) and out.column("user_col").to_pylist()[3] == "u3"
    for field in RESULT_SCHEMA:
        assert out.schema.field(field.name).type == field.type
    rows = out.to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"] * 2
    assert rows[4]["error"].startswith("null_text") and rows[5]["error"].startswith("empty_text")
    assert all(r["generation"] and r["new_tokens"] >= 1 and r["model"] for r in rows[:4])
    alone = predictor(table.slice(2, 1)).to_pylist()[0]  # bucketing inside the call changes nothing
    assert alone["generation"] == rows[2]["generation"]


def test_predictor_takes_numpy_batches_and_reports_missing_columns(predictor):
    batch = {"id": np.array([1, 2]), "text": np.array(_texts(2), dtype=object)}
    out = predictor(batch)
    assert isinstance(out, dict) and list(out["id"]) == [1, 2] and list(out["status"]) == ["ok", "ok"]
    missing = predictor(pa.table({"body": ["a text"]})).to_pylist()[0]
    assert missing["status"] == "error" and missing["error"].startswith("missing_column: column(s) ['text'] not found")
    with pytest.raises(ValueError, match=r"already has column\(s\) \['generation'\]"):
        predictor(pa.table({"text": ["a"], "generation": ["b"]}))


def test_stage_options_follow_the_drivers_rule(tiny_model_dir):
    cfg = RayDataConfig(model=str(tiny_model_dir), cpus_per_worker=2, batch_size=5)
    cpu = stage_options(cfg, cluster_gpus=0.0)
    assert (cpu["num_gpus"], cpu["num_cpus"], cpu["batch_size"], cpu["compute"].min_size) == (0, 2, 5, 1)
    assert cpu["fn_constructor_kwargs"]["cpus_per_worker"] == 2
    # by default the driver's rule over the CPUs of the nodes, less one for the dataset's own tasks
    auto = stage_options(RayDataConfig(model=str(tiny_model_dir)), cluster_gpus=0.0, node_cpus=[9.0])
    assert (auto["num_cpus"], auto["compute"].min_size, auto["compute"].max_size) == (K, 8 // K, 8 // K)
    auto = stage_options(RayDataConfig(model=str(tiny_model_dir)), cluster_gpus=0.0, node_cpus=[2.0, 4.0])
    assert (auto["num_cpus"], auto["compute"].max_size) == (K, 1 // K + 4 // K)
    weights = model_weight_bytes(cfg)  # and the nodes' memory: room for 3 workers' copies -> 3 workers
    tight = stage_options(RayDataConfig(model=str(tiny_model_dir)), 0.0, [9.0], [3 * 2 * weights / 0.5])
    assert (tight["compute"].max_size, tight["num_cpus"]) == (3, 8 // 3)
    gpu = stage_options(cfg, cluster_gpus=4.0)
    assert (gpu["num_gpus"], gpu["num_cpus"], gpu["compute"].max_size) == (1, 1, 4)
    assert gpu["fn_constructor_kwargs"]["use_gpu"] is True and gpu["batch_format"] == "pyarrow"
    assert RayDataConfig.from_any({"model": "m", "num_workers": 3}).task == "summarize"
    with pytest.raises(ValueError, match="max_new_tokens"):
        RayDataConfig(max_new_tokens=0)


def _corpus(root: Path, n: int) -> None:
    root.mkdir(parents=True)
    texts = _texts(n)
    for s in range(2):
        rows = range(s * n // 2, (s + 1) * n // 2)
        pq.write_table(pa.table({"id": [f"d{i}" for i in rows], "text": [texts[i] for i in rows],
                                 "keep": [i % 4 != 3 for i in rows]}), root / f"part-{s:05d}.parquet")


def test_lazy_map_batches_matches_run_pipeline_and_composes(local_ray, tiny_model_dir, tmp_path):
    import ray

    _corpus(tmp_path / "in", 12)
    config = {"model": str(tiny_model_dir), "text_column": "text", "max_new_tokens": 5, "lazy": LAZY, "num_workers": 1,
              "dtype": "float32"}  # the stage's batches and the pipeline's differ: equal rows hold in fp32
    ds = ray.data.read_parquet(str(tmp_path / "in"))
    ds = ds.filter(lambda row: row["keep"]).map(lambda row: {**row, "title": row["id"].upper()})
    out = lazy_map_batches(ds, {**config, "batch_size": 4}).take_all()
    kept = sorted(f"d{i}" for i in range(12) if i % 4 != 3)
    assert sorted(r["id"] for r in out) == kept  # rows in == rows out (after the user's filter)
    assert all(r["title"] == r["id"].upper() and r["status"] == "ok" for r in out)
    report = run_pipeline({**config, "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                           "progress": False})
    assert report.rows_ok == 12
    ref = {r["id"]: r for f in sorted((tmp_path / "out").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    for row in out:
        for name in ("generation", "new_tokens", "prompt_tokens", "computed_token_fraction", "first_token_agrees",
                     "config_hash"):
            assert row[name] == ref[row["id"]][name], (row["id"], name)
    assert set(OUTPUT_COLUMNS[1:]) <= set(out[0])

    written = tmp_path / "written"
    lazy_map_batches(ray.data.read_parquet(str(tmp_path / "in")), config).write_parquet(str(written))
    assert pq.read_table(written).num_rows == 12
    with pytest.raises(ValueError, match="already has column"):
        lazy_map_batches(ray.data.from_items([{"text": "a", "status": "x"}]), config)


def test_lazy_map_batches_with_the_real_default_model(local_ray):
    import ray

    from benchmarks.data import load_essays

    essays = [e[:6000] for e in load_essays()[:3]]  # ~1.3K tokens: over the default min_prompt_tokens
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(essays)])
    out = lazy_map_batches(ds, {"max_new_tokens": 12, "num_workers": 1, "baseline_sample_rate": 1.0}).take_all()
    assert sorted(r["id"] for r in out) == [0, 1, 2]
    for r in out:
        assert r["status"] == "ok" and len(r["generation"].split()) >= 3 and r["model"] == "smollm2-135m-instruct"
        assert r["prompt_tokens"] > 1000 and r["pruned"] is True and r["baseline_ttft_s"] > 0
