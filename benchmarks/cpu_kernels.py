"""The CPU kernels under a decoding step, fp32 against bf16: why bf16 is the CPU default where the CPU has bf16
units, why a step's few queries attend through two matmuls instead of torch's SDPA, and what int8 / int4 weights
(lazy_core.quantize) cost against bf16 by row count.

    .venv/bin/python -m benchmarks.cpu_kernels --threads 2
    .venv/bin/python -m benchmarks.cpu_kernels --threads 1 --only-quantized

Times (medians of ``--repeats`` runs of a loop) ``F.linear`` on the default model's weight shapes for 1-16 rows, and
the attention of one query per head (9 query heads on 3 K/V heads, head dim 64, the default model's layout) onto
``--keys`` keys for batches 1-8: torch's SDPA with ``enable_gqa`` against the engine's two matmuls
(:func:`lazy_core.attention._small_query_attention`).
Weight-only products (bf16 activations): each shape as a dense bf16 ``F.linear`` and as a ``QuantizedLinear`` of
each scheme (its small-product path), twice: the same weight again and again ("hot": it stays in the core's cache)
and a rotation of copies that together take ``--cold-mb`` ("cold": read from memory, as a decoding step reads a
model's weights once each).
Writes ``benchmarks/results/cpu_kernels.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import RESULTS_DIR, machine, md_table, write_json
from lazy_core.attention import _small_query_attention
from lazy_core.quantize import QuantizedLinear

SHAPES = ((576, 576), (1536, 576), (576, 1536), (49152, 576))  # q/o, MLP up/gate, MLP down, lm_head (out, in)
DTYPES = (torch.float32, torch.bfloat16)


def timed_ms(fn: Any, loops: int, repeats: int) -> float:
    for _ in range(3):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        runs.append(1000 * (time.perf_counter() - start) / loops)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--keys", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold-mb", type=int, default=256, help="bytes of dense weights the cold rotation spans")
    parser.add_argument("--only-quantized", action="store_true", help="only the weight-only products")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu_kernels.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(),
                               "linear": [], "attention": [], "quantized": []}
    for dtype in () if args.only_quantized else DTYPES:
        for out_f, in_f in SHAPES:
            weight = torch.randn(out_f, in_f, dtype=dtype)
            loops = 20 if out_f > 10_000 else 200
            for rows in args.rows:
                x = torch.randn(rows, 1, in_f, dtype=dtype)
                ms = timed_ms(lambda x=x, weight=weight: F.linear(x, weight), loops, args.repeats)
                results["linear"].append({"dtype": str(dtype)[6:], "shape": f"{out_f}x{in_f}", "rows": rows, "ms": ms})
        for batch in args.batches:
            q = torch.randn(batch, 9, 1, 64, dtype=dtype)
            k, v = torch.randn(batch, 3, args.keys, 64, dtype=dtype), torch.randn(batch, 3, args.keys, 64, dtype=dtype)
            mask = torch.ones(batch, 1, 1, args.keys, dtype=torch.bool)
            sdpa = timed_ms(lambda q=q, k=k, v=v, m=mask: F.scaled_dot_product_attention(
                q, k, v, attn_mask=m, enable_gqa=True), 50, args.repeats)
            small = timed_ms(lambda q=q, k=k, v=v, m=mask: _small_query_attention(q, k, v, m, 0.125), 50, args.repeats)
            results["attention"].append({"dtype": str(dtype)[6:], "batch": batch, "sdpa_ms": sdpa, "matmul_ms": small})
        write_json(args.out, results)
    results["quantized"] = quantized_products(args)
    write_json(args.out, results)
    text = markdown(results, " ".join(sys.argv[1:] if argv is None else argv))
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return results


def quantized_products(args: argparse.Namespace) -> list[dict[str, Any]]:
    """ms of one product per (shape, rows, weights, hot/cold): dense bf16 against each quantization scheme."""
    out = []
    for out_f, in_f in SHAPES:
        copies = max(1, (args.cold_mb << 20) // (2 * out_f * in_f))
        dense = [nn.Linear(in_f, out_f, bias=False).to(torch.bfloat16) for _ in range(copies)]
        layers = {"bf16": dense, **{s: [QuantizedLinear(d, s, f"{s}pack", max_rows=max(args.rows)) for d in dense]
                                    for s in ("int8", "int4")}}
        for rows in args.rows:
            x = torch.randn(rows, in_f, dtype=torch.bfloat16)
            for weights, mods in layers.items():
                turn = itertools.cycle(mods)
                with torch.inference_mode():
                    hot = timed_ms(lambda x=x, m=mods[0]: m(x), 20 if out_f > 10_000 else 200, args.repeats)
                    cold = timed_ms(lambda x=x, t=turn: next(t)(x), len(mods), args.repeats)
                out.append({"shape": f"{out_f}x{in_f}", "rows": rows, "weights": weights, "hot_ms": hot,
                            "cold_ms": cold})
        print(out[-1], flush=True)
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    rows_list = sorted({r["rows"] for r in results["linear"]})
    lin = {}
    for r in results["linear"]:
        lin.setdefault((r["dtype"], r["shape"]), {})[r["rows"]] = r["ms"]
    linear = md_table(["dtype", "weight (out x in)", *[f"{n} rows ms" for n in rows_list]],
                      [[d, s, *[by[n] for n in rows_list]] for (d, s), by in lin.items()])
    attention = md_table(["dtype", "batch", "SDPA ms", "two matmuls ms", "SDPA / matmuls"],
                         [[r["dtype"], r["batch"], r["sdpa_ms"], r["matmul_ms"], r["sdpa_ms"] / r["matmul_ms"]]
                          for r in results["attention"]])
    keys = results["args"]["keys"]
    text = f"`python -m benchmarks.cpu_kernels {command}` ({results['machine']['torch_threads']} threads)\n\n"
    if results["linear"]:
        text += (f"`F.linear`, rows x weight:\n\n{linear}\n\nOne query per head onto {keys} keys (9 heads, 3 K/V "
                 f"heads, d 64, a mask over the keys):\n\n{attention}\n\n")
    if results.get("quantized"):
        text += "Weight-only products, bf16 activations (ms per product; x = bf16's time / this one's):\n\n"
        text += quantized_table(results["quantized"]) + "\n"
    return text


def quantized_table(runs: list[dict[str, Any]]) -> str:
    by = {(r["shape"], r["rows"], r["weights"]): r for r in runs}
    rows = []
    for (shape, n, weights), r in by.items():
        if weights == "bf16":
            continue
        dense = by[(shape, n, "bf16")]
        rows.append([shape, n, weights, dense["hot_ms"], r["hot_ms"], dense["hot_ms"] / r["hot_ms"],
                     dense["cold_ms"], r["cold_ms"], dense["cold_ms"] / r["cold_ms"]])
    return md_table(["weight (out x in)", "rows", "weights", "bf16 hot ms", "hot ms", "hot x", "bf16 cold ms",
                     "cold ms", "cold x"], rows)


if __name__ == "__main__":
    main()
