"""The decoding step against batch size: what a batch costs per step, pruned or not, bf16 or fp32, and where the
pipeline's batching defaults come from.

    .venv/bin/python -m benchmarks.batch_curve --lengths 4096 --batches 1 2 4 8 16 --dtypes bfloat16
    .venv/bin/python -m benchmarks.batch_curve --lengths 4096 --batches 1 4 8 --dtypes float32
    .venv/bin/python -m benchmarks.batch_curve --lengths 8192 --batches 1 4 8 16 --dtypes bfloat16

For each length, dtype and batch size: a batch of B real-essay prompts (:func:`benchmarks.data.essay_prompt_ids`, each
its own essays, exactly the length) generates ``--new-tokens`` tokens (no EOS) with ``full`` (``LazyConfig.off()``)
and ``lazy`` (the default schedule, revival in every one of these steps: the first 32), taking turns. Reported: the
step in ms (decode time / steps), the step per item, the step against B=1 and the reviving step against the full one.
Each configuration runs once after a warm-up (prefill dominates the cost of a run: 16 x 4K prompts take 40-100 s);
rerun with another --offset for a second set of essays. Writes ``benchmarks/results/batch_curve-<T>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, machine, md_table, write_json
from benchmarks.data import essay_prompt_ids
from lazy_core import LazyConfig, LazyLLM, load_model, load_tokenizer


def run(model: Any, config: LazyConfig, ids: torch.Tensor, new_tokens: int) -> dict[str, float]:
    out = LazyLLM(model, config).generate(ids, max_new_tokens=new_tokens, eos_token_id=[])
    stats = out.stats[0]
    return {"step_ms": 1000 * stats.decode_s / (new_tokens - 1), "ttft_s": stats.ttft_s,
            "revived_per_item": sum(s.revived_tokens for s in out.stats) / len(out.stats)}


def _sdpa_small_query(query, key, value, mask, scaling):
    """What a step's few queries cost through torch's SDPA (query [B, H, Q, d]) -> ([B, Q, H, d], None)."""
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                           enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--full-batches", type=int, nargs="+", help="batch sizes for full (default: --batches)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=["bfloat16", "float32", "auto"])
    parser.add_argument("--new-tokens", type=int, default=17)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every CPU)")
    parser.add_argument("--offset", type=int, default=0, help="first essay of the prompts (a second set: 40)")
    parser.add_argument("--attention", choices=["engine", "sdpa"], default="engine",
                        help="sdpa: a step's few queries go through torch's SDPA kernel instead of the engine's two "
                        "matmuls (the A/B behind BENCHMARKS 'The CPU the job runs on')")
    parser.add_argument("--quantize", nargs="+", default=["none"], choices=["none", "int8", "int4"],
                        help="weights (lazy_core.quantize): each scheme's model takes its turn at every batch size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.attention == "sdpa":
        import lazy_core.attention

        lazy_core.attention._small_query_attention = _sdpa_small_query
    results: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}, "machine": machine(), "runs": []}
    out = args.out or RESULTS_DIR / f"batch_curve-{'-'.join(map(str, args.lengths))}-{'-'.join(args.dtypes)}.json"
    for dtype in args.dtypes:
        models = {q: load_model(args.model, dtype=dtype, device="cpu", quantize=q)[0] for q in args.quantize}
        tok = load_tokenizer(args.model)
        model = models[args.quantize[0]]
        configs = {"full": LazyConfig.off(), "lazy": LazyConfig.default_for(model)}
        for length in args.lengths:
            prompts = [essay_prompt_ids(tok, length, offset_essay=args.offset + 3 * b)
                       for b in range(max(args.batches))]
            for quantized in models.values():
                run(quantized, configs["lazy"], torch.tensor(prompts[:1]), 3)  # warm-up
            for batch in args.batches:
                ids = torch.tensor(prompts[:batch])
                for (name, config), (quantize, quantized) in itertools.product(configs.items(), models.items()):
                    if name == "full" and args.full_batches and batch not in args.full_batches:
                        continue
                    entry = {"dtype": str(model.dtype).removeprefix("torch."), "attention": args.attention,
                             "quantize": quantize, "length": length, "batch": batch,
                             "method": name, **run(quantized, config, ids, args.new_tokens)}
                    results["runs"].append(entry)
                    print(entry, flush=True)
                    write_json(out, results)
    text = markdown(results, " ".join(sys.argv[1:] if argv is None else argv))
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return results


def markdown(results: dict[str, Any], command: str) -> str:
    runs = results["runs"]
    def key(r: dict[str, Any], **change: Any) -> tuple:
        r = {"quantize": "none", **r, **change}
        return r["dtype"], r["quantize"], r["length"], r["method"], r["batch"]

    by_key = {key(r): r for r in runs}
    rows = []
    for r in runs:
        one, full, dense = by_key.get(key(r, batch=1)), by_key.get(key(r, method="full")), by_key.get(
            key(r, quantize="none"))
        rows.append([r["dtype"], r.get("quantize", "none"), r["length"], r["method"], r["batch"], r["step_ms"],
                     r["step_ms"] / r["batch"], r["step_ms"] / one["step_ms"] if one else float("nan"),
                     r["step_ms"] / full["step_ms"] if full else float("nan"),
                     r["step_ms"] / dense["step_ms"] if dense else float("nan"), r["ttft_s"], r["revived_per_item"]])
    header = ["dtype", "weights", "prompt", "method", "B", "step ms", "ms per item", "vs B=1", "vs full step",
              "vs dense weights", "TTFT s", "revived/item"]
    return (f"Decoding step vs. batch size, {results['args']['new_tokens'] - 1} steps (all reviving), "
            f"{results['machine']['torch_threads']} threads (`python -m benchmarks.batch_curve {command}`)\n\n"
            + md_table(header, rows) + "\n")


if __name__ == "__main__":
    main()
