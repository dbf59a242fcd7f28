"""The output row, written once: every column of an output shard (name, type, meaning, in order) and the builders of
a result row, ok or error.

A worker fills the generation columns (:data:`WORKER_COLUMNS`), the planner adds the prompt lengths, the driver and
the Ray Data stage add ``model`` and ``config_hash``. It lives in ``workers`` because the worker builds rows from it
and imports point one way (``pipeline -> workers``). The table in docs/pipeline.md ("Output schema") is
:func:`markdown_table`; a test keeps them equal.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

# (name, type, meaning) of each result column, in output order; the output shard starts with the id and the
# passthrough columns (see :func:`markdown_table`)
_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("generation", pa.string(), "the generated text (special tokens removed); null on error"),
    ("status", pa.string(), "`ok` or `error`"),
    ("error", pa.string(), "`<reason>: <detail>`; reasons: `null_id`, `duplicate_id`, `bad_id`, `null_text`, "
     "`empty_text`, `non_string_text`, `huge_text`, `over_length`, `prompt_error` (and the same for the question "
     "column), `engine_error`, `worker_died`, `worker_hung`"),
    ("warning", pa.string(), "null, or on an `ok` row: `empty_generation` (the row's generation is empty or "
     "whitespace only) or `pruning_lost_output` (the pruned output was empty where the full model's is not; see "
     "\"Empty outputs\")"),
    ("prompt_tokens", pa.int64(), "prompt length in tokens (chat template included), before truncation"),
    ("prompt_tokens_used", pa.int64(), "after truncation (what the model saw)"),
    ("new_tokens", pa.int64(), "tokens generated"),
    ("ttft_s", pa.float64(), "prefill + first token of the item's batch (items of a batch share one prefill; "
     "continuous batching: the items prefilled together)"),
    ("decode_s", pa.float64(), "the remaining decode steps of the batch (continuous batching: from the item's first "
     "token to its last, steps shared with the other running items and newcomers' prefills included)"),
    ("decode_slot_steps", pa.float64(), "decode slot-steps of the item's batch (max_batch_size x its steps) or stream "
     "(continuous batching: its slots x its steps), shared equally by its items; `new_tokens - 1` of them decoded "
     "the item, the rest idled (the run report's `decode_slot_idle`)"),
    ("pruned", pa.bool_(), "the pruned run dropped any token of this prompt in prefill (false: under the schedule's "
     "`min_prompt_tokens`, too short for its budgets, or pruning off)"),
    ("fallback", pa.bool_(), "the pruned output was empty and this row carries the full model's output instead "
     "(`fallback_on_empty`)"),
    ("computed_token_fraction", pa.float64(), "Σ_l tokens computed at layer l ÷ (L · prompt tokens), prefill "
     "(fallback rows: the pruned attempt's plus 1, the rerun's)"),
    ("computed_token_fraction_total", pa.float64(), "the same over the whole generation: every token fed to the "
     "model, Aux Cache revivals included"),
    ("revived_tokens", pa.int64(), "Aux Cache revivals of the item: (token, pruning layer) pairs brought back while "
     "decoding"),
    ("est_speedup", pa.float64(), "FLOP-model prefill speedup bound (fallback rows: full prefill ÷ both prefills, "
     "below 1)"),
    ("baseline_ttft_s", pa.float64(), "TTFT of the full model (`LazyConfig.off()`) on the same batch; sampled rows "
     "only"),
    ("measured_speedup", pa.float64(), "`baseline_ttft_s / ttft_s`; sampled rows only"),
    ("first_token_agrees", pa.bool_(), "the pruned output's first token equal to the full model's; sampled rows and "
     "fallback rows"),
    ("rouge_l_vs_baseline", pa.float64(), "ROUGE-L F of the lazy vs. the full generation (tokens); sampled rows only"),
    ("worker", pa.string(), "`host:pid` of the actor"),
    ("model", pa.string(), "`PipelineConfig.model`"),
    ("config_hash", pa.string(), "`PipelineConfig.config_hash`"),
)

RESULT_SCHEMA = pa.schema([(name, typ) for name, typ, _ in _COLUMNS])
"""The result columns of an output shard, after its id and passthrough columns."""
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)
OUTPUT_COLUMNS: tuple[str, ...] = ("id", *RESULT_COLUMNS)
"""An output shard's columns, the passthrough columns (if any) going between ``id`` and the rest."""
# what the planner fills before a worker runs, and what the run adds to every row
PLANNER_COLUMNS = ("prompt_tokens", "prompt_tokens_used")
RUN_COLUMNS = ("model", "config_hash")
WORKER_COLUMNS: tuple[str, ...] = tuple(c for c in RESULT_COLUMNS if c not in PLANNER_COLUMNS + RUN_COLUMNS)
"""The columns of a worker's row (:func:`result_row`, :func:`error_row`)."""


def result_row(status: str, **values: Any) -> dict[str, Any]:
    """A worker's row: every one of :data:`WORKER_COLUMNS`, None where ``values`` does not set it. Raises KeyError
    for a name the schema lacks, so a new value cannot be dropped on the way to the output shard."""
    unknown = sorted(set(values) - set(WORKER_COLUMNS))
    if unknown:
        raise KeyError(f"{unknown} are not columns a worker writes; add them to workers/schema.py first")
    return {**dict.fromkeys(WORKER_COLUMNS), "status": status, **values}


def error_row(reason: str, worker: str | None = None) -> dict[str, Any]:
    """The row of an item that failed: ``reason`` is ``<reason>: <detail>`` (the error column's reasons)."""
    return result_row("error", error=reason[:2000], worker=worker)


def check_result(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (any subset of the result columns) unchanged, or KeyError naming the keys the schema lacks."""
    unknown = sorted(set(row) - set(RESULT_COLUMNS))
    if unknown:
        raise KeyError(f"result row has keys {unknown} that are not output columns (workers/schema.py)")
    return row


def result_arrays(rows: list[dict[str, Any]], model: str, config_hash: str) -> dict[str, pa.Array]:
    """The result columns of these rows, typed (a value a row lacks is null), ``model`` and ``config_hash`` on
    every row."""
    filled = [{**r, "model": model, "config_hash": config_hash} for r in rows]
    return {f.name: pa.array([r.get(f.name) for r in filled], type=f.type) for f in RESULT_SCHEMA}


def markdown_table() -> str:
    """The "Output schema" table of docs/pipeline.md."""
    lines = [
        "| column | type | meaning |",
        "|---|---|---|",
        "| `id` | input's type | the row's `id_column` value |",
        "| *passthrough columns* | input's types | `passthrough_columns`, copied unchanged |",
    ]
    for name, typ, meaning in _COLUMNS:
        lines.append(f"| `{name}` | {'float64' if typ == pa.float64() else typ} | {meaning} |")
    return "\n".join(lines)
