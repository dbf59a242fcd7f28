"""RunReport: what a run did, aggregated over the rows it wrote, saved as ``_run_report.json`` (+ a speedup plot)."""

from __future__ import annotations

import importlib.util
import json
import math
import posixpath
from collections import Counter
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, Field

from pipeline.shards import write_bytes_atomic

REPORT_NAME = "_run_report.json"
PLOT_NAME = "_speedup_hist.png"


class FailedShard(BaseModel):
    shard: str = Field(description="Input shard path.")
    reason: str = Field(description="Why the shard produced no output (e.g. unreadable Parquet).")


class RunReport(BaseModel):
    """Counts cover the shards processed by this run; ``shards_skipped`` were already finished (resume)."""

    output: str = Field(description="Output directory.")
    config_hash: str = Field(description="PipelineConfig.config_hash.")
    shards_total: int = Field(0, description="Input shards found.")
    shards_done: int = Field(0, description="Shards written by this run.")
    shards_skipped: int = Field(0, description="Shards already finished with the same config hash.")
    shards_failed: list[FailedShard] = Field(default_factory=list, description="Shards with no output, and why.")
    rows_in: int = Field(0, description="Rows read from the shards this run processed.")
    rows_ok: int = Field(0, description="Rows with status ok.")
    rows_failed: int = Field(0, description="Rows with status error.")
    failures_by_reason: dict[str, int] = Field(default_factory=dict, description="Error rows per reason code.")
    empty_generations: int = Field(0, description="Ok rows whose generation is empty or whitespace only.")
    fallbacks: int = Field(0, description="Ok rows whose pruned output was empty and that carry the full model's "
                           "output instead (column fallback).")
    pruning_losses: int = Field(0, description="Rows whose pruned output was empty where the full model's is not "
                                "(warning pruning_lost_output), among the rows the full model also ran.")
    unpruned_items: int = Field(0, description="Ok rows computed in full (prompt under the schedule's "
                                "min_prompt_tokens, or pruning off).")
    sampled_items: int = Field(0, description="Rows also run through the full model (baseline sample).")
    compared_items: int = Field(0, description="Rows whose first token was compared with the full model's: the "
                                "baseline sample and every fallback rerun.")
    median_speedup: float | None = Field(None, description="Median measured TTFT speedup over sampled rows.")
    p10_speedup: float | None = Field(None, description="10th percentile of measured speedup.")
    p90_speedup: float | None = Field(None, description="90th percentile of measured speedup.")
    median_est_speedup: float | None = Field(None, description="Median FLOP-model speedup over ok rows.")
    first_token_agreement: float | None = Field(
        None, description="Share of compared rows (the baseline sample and the fallback reruns) whose pruned output's "
        "first token is the full model's; what the job's --min-agreement guard checks.")
    mean_rouge_l_vs_baseline: float | None = Field(None, description="Mean ROUGE-L F of lazy vs full, sampled rows.")
    mean_computed_token_fraction: float | None = Field(None, description="Mean computed-token fraction, ok rows.")
    workers: int = Field(0, description="Workers (Ray actors, one model each) that ran.")
    threads_per_worker: int | None = Field(None, description="Torch CPU threads of each worker.")
    device: str | None = Field(None, description="The workers' device (cpu, cuda:N).")
    dtype: str | None = Field(None, description="The workers' model dtype (what dtype='auto' chose).")
    slots: int | None = Field(None, description="Items a worker decodes at once (max_batch_size, or what GPU workers "
                              "planned from their memory).")
    slots_reason: str | None = Field(None, description="Why the workers run that many slots (lazy_core.slots).")
    quantize: str | None = Field(None, description="The workers' weight quantization, as they loaded it (what "
                                 "quantize='auto' chose: 'none', or the scheme, kernels and layers).")
    wall_s: float = Field(0.0, description="Driver wall time of the run.")
    startup_s: float = Field(0.0, description="Part of wall_s spent before the workers had loaded the model.")
    rows_per_s: float = Field(0.0, description="Rows written per second of wall time.")
    tokens_per_s: float = Field(0.0, description="(prompt tokens used + new tokens) per second of wall time.")
    padding_waste: float = Field(0.0, description="Share of padded prompt tokens that were padding (continuous "
                                 "batching: estimated as consecutive groups of max_batch_size).")
    batching: str | None = Field(None, description="'continuous' or 'static' (PipelineConfig.batching).")
    decode_slot_idle: float | None = Field(
        None, description="Share of the pruned runs' decode slot-steps in which no item decoded: finished rows fed a "
        "pad in static batches, empty slots in continuous streams (ok rows that are not fallbacks).")
    batches: int = Field(0, description="Batches run (continuous batching: streams; retries not counted).")
    batch_retries: int = Field(0, description="Batches resubmitted after a worker died or hung.")
    worker_restarts: int = Field(0, description="Actor deaths or hang kills seen by the driver.")

    @property
    def ok(self) -> bool:
        """Every shard finished (this run or before) and none failed."""
        return not self.shards_failed and self.shards_done + self.shards_skipped == self.shards_total


class Aggregator:
    """Accumulates per-row results shard by shard, never holding more than numbers."""

    def __init__(self) -> None:
        self.rows = 0
        self.ok = 0
        self.reasons: Counter[str] = Counter()
        self.speedups: list[float] = []
        self.est_speedups: list[float] = []
        self.fractions: list[float] = []
        self.agrees: list[bool] = []
        self.rouges: list[float] = []
        self.tokens = 0
        self.empty = 0
        self.fallbacks = 0
        self.losses = 0
        self.unpruned = 0
        self.slot_steps = 0.0  # decode slot-steps of the pruned runs
        self.busy_slot_steps = 0  # of which decoded an item

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.rows += 1
            if row["status"] != "ok":
                self.reasons[str(row["error"]).split(":", 1)[0]] += 1
                continue
            self.ok += 1
            self.tokens += (row["prompt_tokens_used"] or 0) + (row["new_tokens"] or 0)
            self.est_speedups.append(row["est_speedup"])
            self.fractions.append(row["computed_token_fraction"])
            self.empty += not (row["generation"] or "").strip()
            self.fallbacks += bool(row.get("fallback"))
            self.losses += row.get("warning") == "pruning_lost_output"
            self.unpruned += row.get("pruned") is False
            if row.get("decode_slot_steps") is not None and not row.get("fallback"):
                self.slot_steps += row["decode_slot_steps"]
                self.busy_slot_steps += max(0, (row["new_tokens"] or 1) - 1)
            if row["first_token_agrees"] is not None:
                self.agrees.append(bool(row["first_token_agrees"]))
            if row["measured_speedup"] is not None:
                self.speedups.append(row["measured_speedup"])
                self.rouges.append(row["rouge_l_vs_baseline"])

    def fill(self, report: RunReport) -> RunReport:
        report.rows_in = self.rows
        report.rows_ok = self.ok
        report.rows_failed = self.rows - self.ok
        report.failures_by_reason = dict(sorted(self.reasons.items()))
        report.empty_generations = self.empty
        report.fallbacks = self.fallbacks
        report.pruning_losses = self.losses
        report.unpruned_items = self.unpruned
        report.sampled_items = len(self.speedups)
        report.compared_items = len(self.agrees)
        report.median_speedup = percentile(self.speedups, 50)
        report.p10_speedup = percentile(self.speedups, 10)
        report.p90_speedup = percentile(self.speedups, 90)
        report.median_est_speedup = percentile(self.est_speedups, 50)
        report.first_token_agreement = sum(self.agrees) / len(self.agrees) if self.agrees else None
        report.mean_rouge_l_vs_baseline = sum(self.rouges) / len(self.rouges) if self.rouges else None
        report.mean_computed_token_fraction = sum(self.fractions) / len(self.fractions) if self.fractions else None
        if self.slot_steps > 0:
            report.decode_slot_idle = max(0.0, 1.0 - self.busy_slot_steps / self.slot_steps)
        if report.wall_s > 0:
            report.rows_per_s = self.rows / report.wall_s
            report.tokens_per_s = self.tokens / report.wall_s
        return report


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def save_report(fs: pafs.FileSystem, out_dir: str, report: RunReport, speedups: list[float]) -> None:
    """``_run_report.json`` and, when matplotlib is installed and rows were sampled, the speedup histogram."""
    write_bytes_atomic(fs, json.dumps(report.model_dump(), indent=1).encode(), posixpath.join(out_dir, REPORT_NAME))
    if speedups and importlib.util.find_spec("matplotlib") is not None:
        write_bytes_atomic(fs, _plot(speedups), posixpath.join(out_dir, PLOT_NAME))


def _plot(speedups: list[float]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(speedups, bins=min(30, max(5, len(speedups))))
    med = percentile(speedups, 50)
    ax.axvline(med, color="k", linestyle="--", label=f"median {med:.2f}x")
    ax.set_xlabel("measured TTFT speedup (full / lazy)")
    ax.set_ylabel("items")
    ax.set_title(f"Per-item speedup, {len(speedups)} sampled items")
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
