"""A decoding step with its K/V products on the cache's whole contiguous buffer against the same products on the
prefix view (lazy_core.attention.CAPACITY_READ_MAX set to 0), interleaved in one process on the same prompts.

    .venv/bin/python -m benchmarks.kv_reads --batches 1 4 --new-tokens 17 --rounds 2       # reviving steps only
    .venv/bin/python -m benchmarks.kv_reads --batches 4 --new-tokens 129 --rounds 1        # a whole summary

Per batch size, method (full, the default lazy) and weights: the step in ms both ways (median over rounds) and
their ratio. Outputs are the same both ways (tests/lazy_core/test_small_query_attention.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

import lazy_core.attention as attention
from benchmarks import batch_curve
from benchmarks.common import machine, md_table, write_json
from benchmarks.data import essay_prompt_ids
from lazy_core import LazyConfig, load_model, load_tokenizer


def step_ms(model: Any, config: LazyConfig, ids: torch.Tensor, new_tokens: int, whole: bool) -> float:
    saved = attention.CAPACITY_READ_MAX
    attention.CAPACITY_READ_MAX = saved if whole else 0.0
    try:
        return batch_curve.run(model, config, ids, new_tokens)["step_ms"]
    finally:
        attention.CAPACITY_READ_MAX = saved


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=17)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quantize", nargs="+", default=["none", "int4"], choices=["none", "int8", "int4"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (a step is timed after the first token)")
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    models = {q: load_model(args.model, dtype="bfloat16", device="cpu", quantize=q)[0] for q in args.quantize}
    prompts = [essay_prompt_ids(tok, args.length, offset_essay=3 * b) for b in range(max(args.batches))]
    times: dict[tuple[int, str, str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for batch in args.batches:
            ids = torch.tensor(prompts[:batch])
            for method in ("full", "lazy"):
                for q, model in models.items():
                    config = LazyConfig.off() if method == "full" else LazyConfig.default_for(model)
                    for whole in (False, True):
                        times.setdefault((batch, method, q, whole), []).append(
                            step_ms(model, config, ids, args.new_tokens, whole))
    rows = []
    for (batch, method, q, whole), ms in times.items():
        if whole:
            view = statistics.median(times[(batch, method, q, False)])
            rows.append({"batch": batch, "method": method, "weights": q, "view_ms": view,
                         "whole_ms": statistics.median(ms), "ratio": statistics.median(ms) / view})
    command = "python -m benchmarks.kv_reads " + " ".join(sys.argv[1:] if argv is None else argv)
    table = md_table(["B", "method", "weights", "prefix view ms", "whole buffer ms", "whole / view"],
                     [[r["batch"], r["method"], r["weights"], r["view_ms"], r["whole_ms"], r["ratio"]] for r in rows])
    text = (f"Decoding step at {args.length} tokens, {args.new_tokens - 1} steps, {args.threads} thread(s), bf16, "
            f"medians of {args.rounds} round(s) (`{command.strip()}`)\n\n{table}\n")
    print(text)
    results = {"args": vars(args) | {"out": str(args.out)}, "machine": machine(), "rows": rows}
    if args.out:
        write_json(args.out, results)
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
