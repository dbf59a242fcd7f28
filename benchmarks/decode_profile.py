"""Where a decoding step's time goes: the engine's layer compute vs. its bookkeeping, per revival policy, against the
unpatched model's own decoding step (``model.generate``).

    .venv/bin/python -m benchmarks.decode_profile --lengths 2048 4096 8192 --new-tokens 65

For each prompt length (real-essay prompts, :func:`benchmarks.data.essay_prompt_ids`, ``--batch`` of them) and each
method, one generation of ``--new-tokens`` tokens (no EOS) after a warm-up; the methods take turns, ``--repeats``
rounds, medians.
The step is split by timing the engine's own functions while it runs (wall clock: the CPU is synchronous), each
counted without the functions it calls: the model's MLP, attention projections + RoPE, the attention kernel, the rest
of a decoder layer (norms, residuals), lm_head, and the engine's bookkeeping (masks, scoring and selection at the
pruning layers, revival, cache appends). ``model.generate``'s step is (time for N tokens - time for 1) / (N - 1).
Writes ``benchmarks/results/decode_profile.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from benchmarks.common import RESULTS_DIR, load, machine, md_table, median, write_json
from benchmarks.data import essay_prompt_ids
from benchmarks.eval import METHODS
from lazy_core import LazyLLM
from lazy_core.attention import HOOK_NAME, lazy_attention

# (owner, attribute, label): the functions timed, each without the time of the timed functions it calls
PROBES = (
    ("lazy_core.engine:LayerLoop", "decode", "step (rest)"),
    ("lazy_core.engine:LayerLoop", "_run_layer", "layer: norms, residuals"),
    ("MLP", "forward", "layer: MLP"),
    ("ATTN", "forward", "layer: q/k/v/o projections, RoPE"),
    ("ATTN_FN", "lazyllm", "layer: attention kernel"),
    ("lazy_core.arch:ModelParts", "logits", "lm_head + norm"),
    ("lazy_core.cache:LazyKVCache", "update", "bookkeeping: cache append"),
    ("lazy_core.engine:LayerLoop", "_decode_mask", "bookkeeping: masks"),
    ("lazy_core.engine:LayerLoop", "_score_inputs", "bookkeeping: scoring"),
    ("lazy_core.scoring:TokenPruner", "select", "bookkeeping: scoring"),
    ("lazy_core.scoring:AttentionPruner", "scores", "bookkeeping: scoring"),
    ("lazy_core.revival:SelectRevival", "revive", "bookkeeping: revival"),
    ("lazy_core.revival:TopRevival", "revive", "bookkeeping: revival"),
    ("lazy_core.engine:LayerLoop", "add_revived", "bookkeeping: revival"),
)


class StepTimer:
    """Exclusive wall time per label, counted only inside LayerLoop.decode (the decoding steps)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = collections.defaultdict(float)
        self.stack: list[list[float]] = []
        self.active = False
        self.undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = owner._global_mapping[name] if owner is AttentionInterface else owner.__dict__[name]
        timer = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            outer = name == "decode" and label == "step (rest)"
            if not timer.active and not outer:
                return original(*args, **kwargs)
            timer.active = True
            start = time.perf_counter()
            timer.stack.append([0.0])
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                children = timer.stack.pop()[0]
                timer.totals[label] += spent - children
                if timer.stack:
                    timer.stack[-1][0] += spent
                if outer:
                    timer.active = False

        self._set(owner, name, timed)
        self.undo.append((owner, name, original))

    @staticmethod
    def _set(owner: Any, name: str, fn: Any) -> None:
        if owner is AttentionInterface:  # the engine's attention is called through transformers' registry
            AttentionInterface.register(name, fn)
        else:
            setattr(owner, name, fn)

    def restore(self) -> None:
        for owner, name, original in reversed(self.undo):
            self._set(owner, name, original)


def _owner(spec: str, model: Any) -> Any:
    import importlib

    layer = model.model.layers[0]
    if spec == "ATTN_FN":
        if HOOK_NAME not in ALL_ATTENTION_FUNCTIONS:
            AttentionInterface.register(HOOK_NAME, lazy_attention)
        return AttentionInterface
    if spec == "MLP":
        return type(layer.mlp)
    if spec == "ATTN":
        return type(layer.self_attn)
    module, _, cls = spec.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, cls) if cls else mod


def engine_step(model: Any, config: Any, ids: torch.Tensor, new_tokens: int) -> tuple[float, dict[str, float], Any]:
    """(ms per decoding step, exclusive ms per label per step, the item's stats) of one timed generation."""
    timer = StepTimer()
    for spec, name, label in PROBES:
        timer.wrap(_owner(spec, model), name, label)
    try:
        out = LazyLLM(model, config).generate(ids, max_new_tokens=new_tokens, eos_token_id=[])
    finally:
        timer.restore()
    stats = out.stats[0]
    steps = new_tokens - 1
    return 1000 * stats.decode_s / steps, {k: 1000 * v / steps for k, v in timer.totals.items()}, stats


def generate_step(model: Any, ids: torch.Tensor, new_tokens: int) -> float:
    """ms per decoding step of the unpatched model's generate (greedy, no EOS)."""
    def timed(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False)
        return time.perf_counter() - start

    return 1000 * (timed(new_tokens) - timed(1)) / (new_tokens - 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--methods", nargs="+", default=["full", "prefill_only", "lazy", "select_prev"],
                        choices=sorted(METHODS))
    parser.add_argument("--new-tokens", type=int, default=65)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="items per batch (each its own essays, same length)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    parser.add_argument("--quantize", default="none", choices=["none", "int8", "int4"],
                        help="the model's weights (lazy_core.quantize)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "decode_profile.json"))
    args = parser.parse_args(argv)
    model, tok = load(args.model, args.threads, args.dtype, args.quantize)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    results: dict[str, Any] = {"args": vars(args), "machine": machine(), "lengths": {}}
    for length in args.lengths:
        length = min(length, limit - args.new_tokens)
        ids = torch.tensor([essay_prompt_ids(tok, length, offset_essay=3 * b) for b in range(args.batch)])
        configs = {m: METHODS[m][1](model) for m in args.methods}
        engine_step(model, configs[args.methods[0]], ids, 4)  # warm-up, both paths
        generate_step(model, ids, 3)
        runs: dict[str, list[Any]] = collections.defaultdict(list)
        for _ in range(args.repeats):
            runs["generate"].append(generate_step(model, ids, args.new_tokens))
            for name, config in configs.items():
                runs[name].append(engine_step(model, config, ids, args.new_tokens))
        entry: dict[str, Any] = {"generate_ms": median(runs["generate"])}
        for name in args.methods:
            step_ms = median([r[0] for r in runs[name]])
            labels = sorted({k for r in runs[name] for k in r[1]})
            parts = {k: median([r[1].get(k, 0.0) for r in runs[name]]) for k in labels}
            stats = runs[name][-1][2]
            entry[name] = {"step_ms": step_ms, "parts_ms": parts, "revived": stats.revived_tokens,
                           "computed_total": stats.computed_token_fraction_total}
        results["lengths"][str(length)] = entry
        print(length, {k: (v if isinstance(v, float) else round(v["step_ms"], 1)) for k, v in entry.items()},
              flush=True)
    write_json(Path(args.out), results)
    text = markdown(results, " ".join(sys.argv[1:] if argv is None else argv))
    Path(args.out).with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return results


def markdown(results: dict[str, Any], command: str) -> str:
    methods = results["args"]["methods"]
    labels = sorted({k for e in results["lengths"].values() for m in methods for k in e[m]["parts_ms"]})
    header = ["prompt", "method", "ms/step", "vs generate", "bookkeeping ms", "bookkeeping share", "revived",
              "computed (whole)", *labels]
    rows = []
    for length, entry in results["lengths"].items():
        rows.append([length, "model.generate", entry["generate_ms"], 1.0, "", "", "", "", *[""] * len(labels)])
        for m in methods:
            e = entry[m]
            book = sum(v for k, v in e["parts_ms"].items() if k.startswith("bookkeeping"))
            ratio = e["step_ms"] / entry["generate_ms"]
            rows.append([length, m, e["step_ms"], ratio, book, book / e["step_ms"], e["revived"],
                         e["computed_total"],
                         *[e["parts_ms"].get(k, 0.0) for k in labels]])
    run = results["args"]
    return (f"Decoding step, {run['new_tokens']} new tokens, batch {run.get('batch', 1)}, {run['threads']} threads, "
            f"{run.get('dtype', 'float32')}, weights {run.get('quantize', 'none')}, "
            f"medians of {run['repeats']} interleaved rounds (`python -m benchmarks.decode_profile "
            f"{command}`); parts are exclusive ms per step\n\n" + md_table(header, rows) + "\n")


if __name__ == "__main__":
    main()
