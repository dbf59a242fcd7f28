"""One input shard turned into work: error rows for bad input, length-bucketed batches for the rest, and the
output table once every batch came back (rows in input order, rows out == rows in)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.batch_cost import item_cost
from pipeline.bucketing import bucket_by_length, padded_in_groups
from pipeline.config import GenerationSettings, PipelineConfig
from pipeline.prompts import is_sampled, prepare_row
from pipeline.scheduler import BatchTask
from pipeline.shards import Shard, read_shard
from workers.schema import RESULT_COLUMNS, check_result, error_row, result_arrays


@dataclass
class ShardWork:
    """The state of one shard in flight; ``results[i]`` is row i's result columns once known."""

    index: int
    shard: Shard
    base: pa.Table  # id (renamed "id") + passthrough columns, input order
    results: list[dict[str, Any] | None]
    tasks: list[BatchTask] = field(default_factory=list)
    remaining: int = 0  # rows still waiting for a worker
    real_tokens: int = 0
    padded_tokens: int = 0

    def apply(self, positions: list[int], rows: list[dict[str, Any]]) -> None:
        for pos, row in zip(positions, rows, strict=True):
            merged = dict(self.results[pos] or {})
            merged.update(check_result(row))
            self.results[pos] = merged
        self.remaining -= len(positions)

    def fail(self, positions: list[int], reason: str) -> None:
        self.apply(positions, [error_row(reason) for _ in positions])


def error_result(reason: str, prompt_tokens: int | None = None) -> dict[str, Any]:
    """The result of a row that never reached a worker (bad input) or whose worker failed."""
    return {**error_row(reason), "prompt_tokens": prompt_tokens}


def plan_shard(
    index: int,
    fs: pafs.FileSystem,
    shard: Shard,
    config: PipelineConfig,
    tokenizer: Any,
    seen_ids: set[Any],
    workers: int = 1,
) -> ShardWork:
    """Read one shard, validate and tokenize its rows, bucket the good ones into batches (at least ``workers`` of
    them when the shard has the rows, so a small shard keeps every worker busy). ``seen_ids`` holds the ids of earlier
    shards (duplicates become error rows) and is updated. Raises OSError/ArrowException on a corrupt file."""
    columns = list(dict.fromkeys(config.required_columns))
    table = read_shard(fs, shard, columns)
    base = pa.table(
        [table.column(config.id_column)] + [table.column(c) for c in config.passthrough_columns],
        names=["id", *config.passthrough_columns],
    )
    ids = table.column(config.id_column).to_pylist()
    texts = table.column(config.text_column).to_pylist()
    questions = table.column(config.question_column).to_pylist() if config.needs_question else [None] * len(ids)
    results: list[dict[str, Any] | None] = [None] * len(ids)
    live = []
    for pos, item_id in enumerate(ids):
        id_error = _check_id(item_id, config.id_column, seen_ids)
        if id_error is not None:
            results[pos] = error_result(id_error)
        else:
            live.append(pos)
    good = prepare_rows(tokenizer, config, live, texts, questions, results)
    work = ShardWork(index=index, shard=shard, base=base, results=results, remaining=len(good))
    for positions, input_ids, flag, bucket in bucket_rows(good, [ids[p] for p, _ in good], config, workers):
        seed = config.seed + zlib.crc32(shard.name.encode()) + len(work.tasks)  # stable across resumed runs
        work.tasks.append(BatchTask(shard=index, positions=positions, input_ids=input_ids, sampled=flag, seed=seed))
        work.real_tokens += bucket.real_tokens
        group = config.max_batch_size if config.batching == "continuous" else len(input_ids)
        work.padded_tokens += padded_in_groups([len(x) for x in input_ids], group)
    return work


def prepare_rows(
    tokenizer: Any, config: GenerationSettings, positions: list[int], texts: list[Any], questions: list[Any],
    results: list[dict[str, Any] | None],
) -> list[tuple[int, list[int]]]:
    """Validate, template, tokenize and truncate the rows at ``positions``: a bad row's error result goes into
    ``results``, a good row's prompt lengths too. Returns (position, prompt ids) of the good rows."""
    good = []
    for pos in positions:
        prepared = prepare_row(tokenizer, config, texts[pos], questions[pos])
        if prepared.error is not None or prepared.input_ids is None:
            results[pos] = error_result(str(prepared.error), prepared.prompt_tokens)
            continue
        results[pos] = {"prompt_tokens": prepared.prompt_tokens, "prompt_tokens_used": len(prepared.input_ids)}
        good.append((pos, prepared.input_ids))
    return good


def bucket_rows(good: list[tuple[int, list[int]]], keys: list[Any], config: GenerationSettings, workers: int = 1):
    """Length-bucketed batches of the good rows: yields (positions, prompt ids, sampled, bucket). The rows whose
    ``keys`` fall in the baseline sample batch together, so their full-model shadow run covers exactly the batch the
    lazy run saw. With several ``workers`` a group too small to fill one batch per worker is split into as many."""
    flags = [is_sampled(key, config.baseline_sample_rate) for key in keys]
    cost = item_cost(config)
    # continuous batching: a task is a stream of several batches' worth of prompts (the worker keeps its slots full)
    per_task = config.stream_batches if config.batching == "continuous" else 1
    for flag in (False, True):
        group = [g for g, f in zip(good, flags, strict=True) if f == flag]
        lengths = [len(g[1]) for g in group]
        size = max(1, min(config.max_batch_size * per_task, -(-len(group) // max(1, workers))))
        for bucket in bucket_by_length(lengths, config.max_batch_tokens * per_task, size, cost):
            yield [group[i][0] for i in bucket.indices], [group[i][1] for i in bucket.indices], flag, bucket


def _check_id(item_id: Any, column: str, seen_ids: set[Any]) -> str | None:
    if item_id is None:
        return f"null_id: column {column!r} is null"
    try:
        key = id_key(item_id)
        duplicate = key in seen_ids
    except TypeError:
        return f"bad_id: column {column!r} holds an unhashable {type(item_id).__name__}"
    if duplicate:
        return f"duplicate_id: id {item_id!r} appeared earlier in this corpus"
    seen_ids.add(key)
    return None


def id_key(item_id: Any) -> tuple[str, Any]:
    """How ``seen_ids`` stores an id (the type keeps 1 and '1' apart)."""
    return (type(item_id).__name__, item_id)


def output_table(work: ShardWork, model: str, config_hash: str) -> pa.Table:
    """The output shard: id, passthrough columns, then the result columns (schema in docs/pipeline.md)."""
    rows = work.results
    if any(r is None or "status" not in r for r in rows):
        raise RuntimeError(f"shard {work.shard.name}: some rows have no result; refusing to write a partial shard")
    columns = result_arrays([r for r in rows if r is not None], model, config_hash)
    table = work.base
    for name in RESULT_COLUMNS:
        table = table.append_column(name, columns[name])
    return table
