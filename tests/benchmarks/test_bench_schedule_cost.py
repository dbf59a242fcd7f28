"""benchmarks.schedule_cost: medians of the rounds' ratios, and the report's numbers."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from benchmarks.schedule_cost import report, summarize


def _run(wall: float, new: int, docs: int = 4) -> dict:
    return {"wall_s": wall, "docs_per_s": docs / wall, "tokens_per_s": new / wall, "new_tokens": new,
            "prefill_s": 1.0}


def test_ratios_are_medians_of_each_rounds_ratio():
    rounds = [{"lazy": _run(10.0, 400), "old": _run(9.0, 400)},  # 0.9x
              {"lazy": _run(20.0, 400), "old": _run(20.0, 500)},  # load doubled both: 1.0x docs/s, 0.8x tokens/s
              {"lazy": _run(11.0, 400), "old": _run(10.0, 400)}]  # 0.909x
    result = summarize(rounds, "old")
    assert abs(result["docs_per_s_ratio"] - 10 / 11) < 1e-12
    assert abs(result["tokens_per_s_ratio"] - 0.9) < 1e-12  # median of 0.9, 0.8, 0.909
    assert result["methods"]["lazy"]["wall_s"] == 11.0 and result["rounds"] == 3
    args = Namespace(model="m", papers=4, prompt_tokens=4096, seed=0, rounds=3, slots=4, threads=1, quantize="auto",
                     against="old", method="lazy")
    text = report(result, args, Path("x.jsonl"))
    assert "docs/s **0.909x**" in text and "| old |" in text and "| lazy |" in text
    assert "default / old: docs/s" in text and text.startswith("m, 4 papers at 4096 tokens")


def test_a_named_method_against_another():
    """--method: a candidate measured against another without being the default."""
    rounds = [{"cand": _run(10.0, 400), "old": _run(8.0, 400)}, {"cand": _run(9.0, 400), "old": _run(9.0, 400)}]
    result = summarize(rounds, "old", "cand")
    assert abs(result["docs_per_s_ratio"] - 0.9) < 1e-12  # median of 0.8 and 1.0
    assert set(result["methods"]) == {"cand", "old"}
    args = Namespace(model="m", papers=4, prompt_tokens=4096, seed=0, rounds=2, slots=4, threads=1, quantize="auto",
                     against="old", method="cand")
    assert "cand / old: docs/s **0.900x**" in report(result, args, Path("x.jsonl"))
