"""pipeline.report: the run report's arithmetic (percentiles, reasons, speedups, agreement, empty outputs)."""

from __future__ import annotations

import pytest

from pipeline.report import Aggregator, RunReport, percentile


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
