"""benchmarks.short_prompts' BENCHMARKS.md section: the code writes only what it computes from the results file
between the markers; the hand-written text around them survives every rewrite."""

from __future__ import annotations

import json

from helpers import _check_hand_text_kept, _markdown

from benchmarks import short_prompts
from lazy_core import LazyConfig


def _short_records(threshold):
    lines = []
    for length, tokens in ((128, 120), (256, 240)):
        for index in range(2):
            base = {"seed": 0, "length": length, "index": index, "prompt_tokens": tokens + index, "new_tokens": 16}
            for method, ttft, first, pruned in (("full", 0.4, 5, False), ("no_threshold", 0.2, 5 + index, True),
                                                ("default", 0.4, 5, False)):
                lines.append({**base, "method": method, "first": first, "text": f"summary {index}", "ttft_s": ttft,
                              "pruned": pruned, "threshold": threshold if method == "default" else 0})
    return lines


def test_short_prompts_report_keeps_hand_written_text(tmp_path):
    threshold = LazyConfig.default_for(30).min_prompt_tokens
    out = tmp_path / "short.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in _short_records(threshold)), encoding="utf-8")
    md = _markdown(tmp_path, "short")
    block = _check_hand_text_kept(
        md, "short", lambda: short_prompts.main(["--report-only", "--out", str(out), "--md", str(md)]))
    assert "`python -m benchmarks.short_prompts --seed 0 --items 2 --lengths 128 256 --new-tokens 16`" in block
    assert f"--report-only --out {out.resolve()}`" in block
    assert "| <= 128 | 2 | 0 | 400 | 0 (0) | 1 | 200 (2.00x) | 2 |" in block
