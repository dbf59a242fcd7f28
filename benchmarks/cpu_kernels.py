"""The CPU kernels under a decoding step, fp32 against bf16: why bf16 is the CPU default where the CPU has bf16
units, and why a step's few queries attend through two matmuls instead of torch's SDPA.

    .venv/bin/python -m benchmarks.cpu_kernels --threads 2

Times (medians of ``--repeats`` runs of a loop) ``F.linear`` on the default model's weight shapes for 1-16 rows, and
the attention of one query per head (9 query heads on 3 K/V heads, head dim 64, the default model's layout) onto
``--keys`` keys for batches 1-8: torch's SDPA with ``enable_gqa`` against the engine's two matmuls
(:func:`lazy_core.attention._small_query_attention`).
Writes ``benchmarks/results/cpu_kernels.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS_DIR, machine, md_table, write_json
from lazy_core.attention import _small_query_attention

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
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu_kernels.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(),
                               "linear": [], "attention": []}
    for dtype in DTYPES:
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
    text = markdown(results, " ".join(sys.argv[1:] if argv is None else argv))
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return results


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
    return (f"`python -m benchmarks.cpu_kernels {command}` ({results['machine']['torch_threads']} threads)\n\n"
            f"`F.linear`, rows x weight:\n\n{linear}\n\nOne query per head onto {keys} keys (9 heads, 3 K/V heads, "
            f"d 64, a mask over the keys):\n\n{attention}\n")


if __name__ == "__main__":
    main()
