"""Pipeline pieces that need no Ray and no model: config, shards, prompts, bucketing, manifest, report math."""

from __future__ import annotations

import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from lazy_core import LazyConfig
from pipeline import PipelineConfig
from pipeline.bucketing import bucket_by_length, padding_waste
from pipeline.config import OUTPUT_COLUMNS
from pipeline.manifest import Manifest, load_manifest, open_for_run, record_shard, save_manifest
from pipeline.plan import output_table, plan_shard
from pipeline.prompts import build_prompt_ids, is_sampled, prepare_row, truncate_middle, validate_text
from pipeline.report import Aggregator, RunReport, percentile
from pipeline.shards import discover_shards, resolve_fs

# ---- config --------------------------------------------------------------------------------------------------------


def test_config_from_dict_yaml_and_object_agree(tmp_path):
    fields = {"input": "in/", "output": "out/", "task": "qa", "max_new_tokens": 8, "lazy": {"prune_layers": [1],
              "keep_ratios": [0.5]}, "passthrough_columns": ["title"]}
    yaml_path = tmp_path / "cfg.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump(fields))
    a = PipelineConfig.from_any(fields)
    b = PipelineConfig.from_any(str(yaml_path))
    c = PipelineConfig.from_any(a)
    assert a == b == c
    assert isinstance(a.lazy, LazyConfig) and a.lazy.prune_layers == [1]
    assert a.required_columns == ["id", "text", "question", "title"]
    assert PipelineConfig.from_yaml(yaml_path, max_new_tokens=3, model=None).max_new_tokens == 3


def test_config_hash_tracks_outputs_not_parallelism():
    base = PipelineConfig(input="a", output="b")
    assert base.config_hash == PipelineConfig(input="x", output="y", num_workers=4, max_batch_size=2).config_hash
    assert base.config_hash != PipelineConfig(input="a", output="b", max_new_tokens=65).config_hash
    assert base.config_hash != PipelineConfig(input="a", output="b", lazy="off").config_hash
    assert base.config_hash != PipelineConfig(input="a", output="b", task="Summarize: {text}").config_hash


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "translate"}, "template string containing '{text}'"),
        ({"task": "Use {text} and {title}"}, "unknown fields ['title']"),
        ({"truncate": "left"}, "truncate"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"baseline_sample_rate": 1.5}, "baseline_sample_rate"),
        ({"passthrough_columns": ["status"]}, "collide with output columns"),
        ({"lazy": {"prune_layers": [1], "keep_ratios": [2.0]}}, "keep_ratios must lie in (0, 1]"),
        ({"device": "tpu"}, "device must be"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_config_rejects_bad_fields(fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("{", r"\{").replace("}", r"\}")):
        PipelineConfig(input="a", output="b", **fields)


def test_config_missing_yaml_says_what():
    with pytest.raises(FileNotFoundError, match="not found"):
        PipelineConfig.from_any("/nonexistent/cfg.yaml")


# ---- shards --------------------------------------------------------------------------------------------------------


def _write(path, **columns):
    pq.write_table(pa.table(columns), path)


def test_discover_shards_sorted_deterministic_and_glob(tmp_path):
    for name in ["b.parquet", "a.parquet", "c.parquet", "_meta.parquet", ".hidden.parquet"]:
        _write(tmp_path / name, id=["x"], text=["t"])
    (tmp_path / "notes.txt").write_text("x")
    _, shards = discover_shards(str(tmp_path))
    assert [s.name for s in shards] == ["a.parquet", "b.parquet", "c.parquet"]
    _, globbed = discover_shards(str(tmp_path / "[ab].parquet"))
    assert [s.name for s in globbed] == ["a.parquet", "b.parquet"]
    _, uri = discover_shards(f"file://{tmp_path}")
    assert [s.name for s in uri] == ["a.parquet", "b.parquet", "c.parquet"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_shards(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        discover_shards(str(tmp_path / "*.json"))


# ---- prompts -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null_text"),
        ("", "empty_text"),
        ("  \n\t", "empty_text"),
        (7, "non_string_text"),
        ("x" * 11, "huge_text"),
    ],
)
def test_validate_text_reasons(value, reason):
    assert validate_text(value, "text", max_chars=10).startswith(reason + ":")


def test_validate_text_accepts_text():
    assert validate_text("fine", "text", max_chars=10) is None


def test_truncate_middle_keeps_both_ends():
    ids = list(range(10))
    assert truncate_middle(ids, 5) == [0, 1, 2, 8, 9]
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert truncate_middle(ids, 10) == ids


def test_prompt_goes_through_chat_template(tiny_tokenizer):
    cfg = PipelineConfig(input="a", output="b", task="qa", max_prompt_tokens=10_000)
    ids = build_prompt_ids(tiny_tokenizer, cfg, "the doc", "why?")
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<s>user\n") and text.endswith("<s>assistant\n")
    assert "the doc" in text and "Question: why?" in text
    raw = PipelineConfig(input="a", output="b", task="T: {text}", chat_template=False)
    assert tiny_tokenizer.decode(build_prompt_ids(tiny_tokenizer, raw, "abc", None)) == "T: abc"


def test_over_length_truncates_middle_or_errors(tiny_tokenizer):
    long_text = "word " * 200
    cut = PipelineConfig(input="a", output="b", max_prompt_tokens=64)
    prepared = prepare_row(tiny_tokenizer, cut, long_text, None)
    assert prepared.error is None and len(prepared.input_ids) == 64 and prepared.prompt_tokens > 1000
    full = build_prompt_ids(tiny_tokenizer, cut, long_text, None)
    assert prepared.input_ids == full[:32] + full[-32:]
    strict = PipelineConfig(input="a", output="b", max_prompt_tokens=64, truncate="error")
    refused = prepare_row(tiny_tokenizer, strict, long_text, None)
    assert refused.input_ids is None and refused.error.startswith("over_length:")


def test_baseline_sample_is_deterministic_and_near_rate():
    ids = [f"doc-{i}" for i in range(4000)]
    picked = [i for i in ids if is_sampled(i, 0.1)]
    assert picked == [i for i in ids if is_sampled(i, 0.1)]
    assert 0.08 < len(picked) / len(ids) < 0.12
    assert not any(is_sampled(i, 0.0) for i in ids[:50]) and all(is_sampled(i, 1.0) for i in ids[:50])


# ---- bucketing -----------------------------------------------------------------------------------------------------


def test_bucketing_groups_similar_lengths_within_budget():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(10, 20), rng.randint(500, 520)]) for _ in range(60)]
    buckets = bucket_by_length(lengths, max_batch_tokens=2000, max_batch_size=8)
    assert sorted(i for b in buckets for i in b.indices) == list(range(60))  # every item exactly once
    for b in buckets:
        assert len(b.indices) <= 8 and (b.padded_tokens <= 2000 or len(b.indices) == 1)
    straddling = [b for b in buckets if len({lengths[i] > 100 for i in b.indices}) > 1]
    assert len(straddling) <= 1  # short and long prompts meet in one batch at most, at the boundary
    in_order = [lengths[i : i + 8] for i in range(0, 60, 8)]  # batches of 8 in input order, no bucketing
    unbucketed_waste = 1 - sum(map(sum, in_order)) / sum(max(b) * len(b) for b in in_order)
    assert padding_waste(buckets) < 0.1 < unbucketed_waste


def test_bucketing_oversized_item_alone_and_deterministic():
    buckets = bucket_by_length([5, 300, 5, 5], max_batch_tokens=100, max_batch_size=8)
    assert buckets[0].indices == (1,)
    assert buckets[1].indices == (0, 2, 3)
    assert buckets == bucket_by_length([5, 300, 5, 5], max_batch_tokens=100, max_batch_size=8)


def test_padding_waste_math():
    buckets = bucket_by_length([10, 5], max_batch_tokens=100, max_batch_size=2)
    assert padding_waste(buckets) == pytest.approx(1 - 15 / 20)


# ---- plan ----------------------------------------------------------------------------------------------------------


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


# ---- manifest and report -------------------------------------------------------------------------------------------


def test_manifest_resume_and_hash_mismatch(tmp_path):
    fs, root = resolve_fs(str(tmp_path))
    manifest, fresh = open_for_run(fs, root, "aaaa", overwrite=False)
    assert fresh and manifest.shards == {}
    record_shard(manifest, "p.parquet", rows=3, rows_ok=2, input_path="/in/p.parquet")
    save_manifest(fs, root, manifest)
    again, fresh = open_for_run(fs, root, "aaaa", overwrite=False)
    assert not fresh and again.shards["p.parquet"].rows_failed == 1
    with pytest.raises(ValueError, match="config hash aaaa.*overwrite=True"):
        open_for_run(fs, root, "bbbb", overwrite=False)
    replaced, fresh = open_for_run(fs, root, "bbbb", overwrite=True)
    assert fresh and replaced.config_hash == "bbbb" and replaced.shards == {}
    assert load_manifest(fs, root) == Manifest.model_validate(json.loads((tmp_path / "_manifest.json").read_text()))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_percentile_matches_linear_interpolation():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 10) == pytest.approx(1.3)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([], 50) is None


def test_aggregator_counts_reasons_and_speedups():
    def row(status, error=None, speed=None, **extra):
        return {"status": status, "error": error, "generation": "text" if status == "ok" else None,
                "prompt_tokens_used": 10, "new_tokens": 2, "est_speedup": 2.0, "computed_token_fraction": 0.5,
                "measured_speedup": speed, "first_token_agrees": None if speed is None else speed > 1.5,
                "rouge_l_vs_baseline": 1.0 if speed else None, "pruned": True, "fallback": False, "warning": None,
                **extra}

    agg = Aggregator()
    agg.add_rows([row("ok", speed=2.0), row("ok", speed=1.0), row("ok"), row("error", "empty_text: x"),
                  row("error", "empty_text: y"), row("error", "worker_died: z")])
    report = agg.fill(RunReport(output="o", config_hash="h", wall_s=2.0))
    assert (report.rows_in, report.rows_ok, report.rows_failed) == (6, 3, 3)
    assert report.failures_by_reason == {"empty_text": 2, "worker_died": 1}
    assert report.median_speedup == 1.5 and report.sampled_items == 2
    assert report.first_token_agreement == 0.5 and report.compared_items == 2
    assert report.rows_per_s == 3.0 and report.tokens_per_s == 18.0
    assert (report.empty_generations, report.fallbacks, report.pruning_losses, report.unpruned_items) == (0, 0, 0, 0)

    # a fallback row is compared (its first token disagreed), an empty row and an unpruned one are counted
    agg.add_rows([row("ok", fallback=True, warning="pruning_lost_output", first_token_agrees=False),
                  row("ok", generation=" \n", warning="empty_generation"), row("ok", pruned=False)])
    report = agg.fill(RunReport(output="o", config_hash="h", wall_s=2.0))
    assert (report.empty_generations, report.fallbacks, report.pruning_losses, report.unpruned_items) == (1, 1, 1, 1)
    assert report.compared_items == 3 and report.sampled_items == 2
    assert report.first_token_agreement == pytest.approx(1 / 3)


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


def test_prompt_limit_fits_the_model_context(tiny_model_dir):
    from pipeline.tokenizer import context_length, effective_prompt_limit

    assert context_length(str(tiny_model_dir)) == 2048  # max_position_embeddings of the tiny Llama
    assert effective_prompt_limit(8192, 64, 2048) == 1984
    assert effective_prompt_limit(1000, 64, 2048) == 1000
    assert effective_prompt_limit(1000, 64, None) == 1000
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        effective_prompt_limit(1000, 2040, 2048)


def test_plan_workers_one_per_gpu_else_every_cpu():
    from pipeline.resources import DEFAULT_THREADS_PER_CPU_WORKER as K
    from pipeline.resources import WorkerPlan, plan_workers

    assert plan_workers("auto", 4.0, [16.0], None, None) == WorkerPlan(4, True, 1)
    assert plan_workers("auto", 4.0, [16.0], 2, None) == WorkerPlan(2, True, 1)
    assert plan_workers("cuda", 0.0, [2.0], 3, None) == WorkerPlan(3, True, 1)  # autoscaling: GPUs come when asked
    # without GPUs the workers together take every CPU: a worker per K CPUs on every node
    assert plan_workers("auto", 0.0, [2.0], None, None) == WorkerPlan(2 // K, False, K)
    assert plan_workers("cpu", 4.0, [2.0], None, None) == WorkerPlan(2 // K, False, K)
    assert plan_workers("auto", 0.0, [64.0, 8.0], None, None) == WorkerPlan(72 // K, False, K)
    assert plan_workers("auto", 0.0, [], None, None) == WorkerPlan(1, False, 1)  # no CPU reported: one worker
    # ... as many as the node's memory holds model copies (half of it, 2 bytes per weight byte), the CPUs split
    gib = float(1 << 30)
    assert plan_workers("auto", 0.0, [64.0], None, None, [256 * gib], 14 * gib) == WorkerPlan(4, False, 16)
    assert plan_workers("auto", 0.0, [64.0], None, None, [256 * gib], 0.27 * gib) == WorkerPlan(64 // K, False, K)
    assert plan_workers("auto", 0.0, [8.0], None, None, [16 * gib], 14 * gib) == WorkerPlan(1, False, 8)  # at least 1
    # a node without CPUs (a head node started with --num-cpus 0) is skipped with its memory
    assert plan_workers("auto", 0.0, [0.0, 64.0], None, None, [1e15, 256 * gib], 14 * gib) == WorkerPlan(4, False, 16)
    # explicit settings win: threads alone fill the nodes, workers alone split the CPUs, both are taken as given
    assert plan_workers("auto", 0.0, [8.0, 8.0], None, 2) == WorkerPlan(8, False, 2)
    assert plan_workers("auto", 0.0, [8.0], 2, None) == WorkerPlan(2, False, 4)
    assert plan_workers("auto", 0.0, [4.0, 4.0], 1, None) == WorkerPlan(1, False, 4)  # one worker lives on one node
    assert plan_workers("auto", 0.0, [2.0], 3, 1) == WorkerPlan(3, False, 1)


def test_model_weight_bytes_from_the_config(tiny_model_dir):
    """The memory rule's estimate of the weights, from the config alone, against the model's real parameters."""
    from transformers import AutoModelForCausalLM

    from pipeline.resources import model_weight_bytes

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        cfg = PipelineConfig(input="i", output="o", model=str(tiny_model_dir), dtype=dtype)
        assert model_weight_bytes(cfg) == pytest.approx(params * size, rel=0.05)  # norms are not counted


def test_bucketing_counts_what_a_batch_holds(tiny_model_dir):
    """With a cost per item (the tokens the schedule keeps), more pruned items fit the same budget than padded
    prompts would; the driver's cost follows the config's schedule and model depth."""
    from pipeline.batch_cost import item_cost

    lengths = [1000] * 8
    assert [len(b.indices) for b in bucket_by_length(lengths, 4000, 8)] == [4, 4]
    assert [len(b.indices) for b in bucket_by_length(lengths, 4000, 8, cost=lambda n: n // 2)] == [8]
    lazy = dict(prune_layers=[0], keep_ratios=[0.25], min_keep_tokens=1)  # tiny model: 4 layers, 1000 | 250 x 3
    cost = item_cost(PipelineConfig(input="i", output="o", model=str(tiny_model_dir), lazy=lazy, max_new_tokens=10))
    assert cost(1000) == -(-(1000 + 3 * 250) // 4) + 10
    off = item_cost(PipelineConfig(input="i", output="o", model=str(tiny_model_dir), lazy="off", max_new_tokens=10))
    assert off(1000) == 1010
