"""benchmarks.ttft's runner on a tiny model: full, off and pruned prefill timed per length, its markdown, the config
parser."""

from __future__ import annotations

import pytest

from lazy_core import LazyConfig


def test_ttft_runner_on_a_tiny_model(tiny_llama, tiny_tokenizer, tmp_path):
    from benchmarks.ttft import markdown, parse_config, run

    cfg = LazyConfig(prune_layers=[1], keep_ratios=[0.25], min_keep_tokens=8)
    seen = []
    result = run(
        tiny_llama, tiny_tokenizer, cfg, [300], repeats=2, warmup=0, on_row=lambda r: seen.append(len(r["rows"]))
    )
    (row,) = result["rows"]
    assert seen == [1] and row["prompt_tokens"] == 300 and row["repeats"] == 2
    assert len(row["times"]["full"]) == len(row["times"]["lazy"]) == len(row["times"]["off"]) == 2
    assert row["off_matches_full"] is True  # the engine with pruning off gives the unpatched model's first token
    assert row["computed_token_fraction"] == pytest.approx((2 * 300 + 2 * 75) / (4 * 300))
    assert row["speedup"] == pytest.approx(row["full_s"] / row["lazy_s"])
    result["machine"] = {"date_utc": "d", "git_commit": "c", "torch_threads": 1, "cpu_count": 2, "load_average_1m": 0}
    assert "| 300 |" in markdown(result, "python -m benchmarks.ttft")
    assert parse_config("off", tiny_llama) == LazyConfig.off()
    assert parse_config('{"prune_layers": [1], "keep_ratios": [0.5]}', tiny_llama).keep_ratios == [0.5]
    from benchmarks.ruler import method_config

    assert parse_config("late_start", tiny_llama) == method_config("late_start", tiny_llama)
    assert parse_config("late_start", tiny_llama) != parse_config("default", tiny_llama)
    with pytest.raises(ValueError, match="JSON"):
        parse_config("nonsense", tiny_llama)
