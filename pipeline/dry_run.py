"""dry_run(): validate a config and its inputs and estimate the work, loading no model (only the tokenizer)."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from lazy_core import load_tokenizer
from pipeline.bucketing import padding_waste
from pipeline.config import PipelineConfig
from pipeline.driver import check_inputs
from pipeline.plan import plan_shard
from pipeline.prompts import check_chat_template, fit_to_context
from pipeline.report import FailedShard


class DryRunReport(BaseModel):
    """What a run of this config would do (resume taken into account)."""

    config_hash: str = Field(description="PipelineConfig.config_hash.")
    shards_total: int = Field(description="Input shards found.")
    shards_todo: int = Field(description="Shards a run would process.")
    shards_skipped: int = Field(description="Shards already finished with this config hash.")
    shards_failed: list[FailedShard] = Field(default_factory=list, description="Unreadable shards.")
    rows: int = Field(0, description="Rows in the to-do shards.")
    rows_invalid: int = Field(0, description="Rows that would become error rows before any model work.")
    rows_truncated: int = Field(0, description="Prompts over max_prompt_tokens cut in the middle.")
    rows_sampled: int = Field(0, description="Rows that would also run through the full model (baseline sample).")
    prompt_tokens: int = Field(0, description="Prompt tokens fed to the model (after truncation).")
    max_new_tokens_total: int = Field(0, description="Upper bound of generated tokens: valid rows x max_new_tokens.")
    batches: int = Field(0, description="Batches after length bucketing.")
    padding_waste: float = Field(0.0, description="Share of padded batch tokens that would be padding.")
    max_prompt_tokens: int | None = Field(None, description="Prompt limit used: config, capped by the model context.")
    invalid_by_reason: dict[str, int] = Field(default_factory=dict, description="Error rows per reason code.")


def dry_run(config: PipelineConfig | dict[str, Any] | str | os.PathLike[str]) -> DryRunReport:
    """Check config, shards and columns like run_pipeline, tokenize and bucket every to-do row, and count the work.
    Loads the tokenizer but no model weights; starts no Ray. Raises ValueError on missing columns or a config-hash
    mismatch with the output directory (the errors a real run would stop on)."""
    cfg = PipelineConfig.from_any(config)
    in_fs, shards, todo, skipped, unreadable = check_inputs(cfg)
    out = DryRunReport(
        config_hash=cfg.config_hash, shards_total=len(shards), shards_todo=len(todo), shards_skipped=len(skipped),
        shards_failed=list(unreadable),
    )
    if not todo:
        return out
    tokenizer = load_tokenizer(cfg.model)
    check_chat_template(tokenizer, cfg)
    plan_cfg = fit_to_context(cfg)
    seen: set[Any] = set()
    padded = real = 0
    for index, (shard, _) in enumerate(todo):
        try:
            work = plan_shard(index, in_fs, shard, plan_cfg, tokenizer, seen)
        except (OSError, pa.ArrowException) as exc:
            out.shards_failed.append(FailedShard(shard=shard.path, reason=f"unreadable_shard: {exc}"))
            continue
        out.rows += len(work.results)
        for result in work.results:
            if result is None:
                continue
            if result.get("status") == "error":
                reason = str(result["error"]).split(":", 1)[0]
                out.invalid_by_reason[reason] = out.invalid_by_reason.get(reason, 0) + 1
                out.rows_invalid += 1
            elif result["prompt_tokens_used"] < result["prompt_tokens"]:
                out.rows_truncated += 1
        out.batches += len(work.tasks)
        out.rows_sampled += sum(len(t.positions) for t in work.tasks if t.sampled)
        out.prompt_tokens += work.real_tokens
        padded += work.padded_tokens
        real += work.real_tokens
    out.max_new_tokens_total = (out.rows - out.rows_invalid) * cfg.max_new_tokens
    out.max_prompt_tokens = plan_cfg.max_prompt_tokens
    out.padding_waste = padding_waste(real, padded)
    return out
