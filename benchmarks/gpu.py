"""The GPU path, checked and timed in one call: LazyLLM on randomly initialised models of a real shape, bf16, sdpa.

    python -m benchmarks.gpu                  # on a CUDA machine: every check and timing, then the table
    python -m benchmarks.gpu --dry-run        # the same code on CPU, a 4-layer tiny shape, seconds (a test runs it)

No model files: the weights are random, built from a config in code (Llama-3.1-8B's and Qwen2.5-7B's shapes). The
schedule fixes how many tokens each layer computes, so prefill timings are valid; which tokens are kept, and so the
decode-time revival counts, are not those of a trained model.

What it does, in this order (each part appends to the JSON at ``--out`` as soon as it is done, so a run stopped by
a time limit still reports what it finished):

1. **Checks** on the device, on a small model of the same family (4 layers): pruning off == ``model.generate`` token
   for token; a batch of N == N runs of 1 (pruned); the model unchanged after use. bf16 on CUDA: token equality is
   required for pruning off, and the batch/single check allows the first divergence only after the first token
   (bf16 sums in a different order for different batch shapes).
2. **TTFT**: the unpatched model's prefill (``model(ids, logits_to_keep=1)``) vs. ``LazyLLM`` with
   ``LazyConfig.default_for`` (its prefill and first token), at ``--lengths``, batch 1, and batch ``--batch`` at
   ``--batch-length``; CUDA events after warm-up, ``--repeats`` interleaved pairs, medians; peak memory of each;
   the FLOP model's estimate and measured / estimated.
3. **Decode** ms/token over ``--new-tokens`` tokens at ``--decode-length``: ``model.generate`` vs. LazyLLM off vs.
   LazyLLM default (revival on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, md_table, replace_section
from lazy_core import LazyConfig, LazyLLM
from lazy_core.revival import TopRevival
from lazy_core.stats import FlopModel

SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0,
                       max_position_embeddings=131072),
    # the dry run's: 4 layers, the fewest that LazyConfig.default_for prunes
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512, rope_theta=10000.0,
                 max_position_embeddings=4096),
}


def build(shape: str, device: str, dtype: torch.dtype, layers: int | None = None, seed: int = 0):
    """A randomly initialised causal LM of ``shape`` (optionally cut to ``layers`` layers), eval mode, sdpa."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(SHAPES[shape])
    model_type = fields.pop("model_type")
    theta = fields.pop("rope_theta")
    if layers is not None:
        fields["num_hidden_layers"] = layers
    config = AutoConfig.for_model(model_type, **fields, rope_parameters={"rope_type": "default", "rope_theta": theta},
                                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


class Timer:
    """Wall time of a callable: CUDA events on a GPU (after a synchronize), perf_counter on CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, fn) -> tuple[float, Any]:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3, out
        start_s = time.perf_counter()
        out = fn()
        return time.perf_counter() - start_s, out


def peak_memory(device: str, fn) -> tuple[int | None, Any]:
    """Peak bytes allocated while ``fn`` runs (CUDA only; None on CPU)."""
    if not device.startswith("cuda"):
        return None, fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, out


# ---- 1. checks -------------------------------------------------------------------------------------------------------


def checks(shape: str, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """The engine's invariants on the device, on a 4-layer model of the shape's family (hidden size kept)."""
    model = build(shape, device, dtype, layers=4, seed=1)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    lengths = [96, 40, 70]
    prompts = [torch.randint(3, vocab, (n,), generator=gen) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):  # left padding, as model.generate wants
        ids[b, width - len(p):] = p
        mask[b, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = 12
    rules = dict(max_new_tokens=new, min_new_tokens=new, eos_token_id=2)  # every item runs all the steps
    off = LazyLLM(model, LazyConfig.off()).generate(ids, attention_mask=mask, **rules)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **rules)
    off_equal = torch.equal(off.sequences, ref)
    pruned_cfg = LazyConfig(prune_layers=[0, 2], keep_ratios=[0.5, 0.25], min_keep_tokens=4, keep_tail=2,
                            revival=TopRevival(top=8))
    lazy = LazyLLM(model, pruned_cfg)
    batch = lazy.generate(ids, attention_mask=mask, **rules)
    agree = []
    for b, p in enumerate(prompts):
        alone = lazy.generate(p[None].to(device), **rules)
        mine, theirs = batch.sequences[b, width:].tolist(), alone.sequences[0, len(p):].tolist()
        same = next((i for i, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y), len(mine))
        agree.append(same)
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    exact_batch = all(a == new for a in agree)
    tolerated = exact_batch or (dtype != torch.float32 and min(agree) >= 1)
    result = {"pruning_off_equals_generate": off_equal, "batch_equals_singles_tokens": agree,
              "batch_equals_singles": tolerated, "model_unchanged": unchanged,
              "passed": off_equal and tolerated and unchanged}
    del model
    _free(device)
    return result


# ---- 2. TTFT ---------------------------------------------------------------------------------------------------------


def ttft(model, device: str, lengths: list[int], batch_runs: list[tuple[int, int]], repeats: int) -> list[dict]:
    """Full (unpatched) vs. lazy prefill + first token, per (batch, length)."""
    timer = Timer(device)
    lazy = LazyLLM(model, LazyConfig.default_for(model))
    flops = FlopModel.from_config(model.config)
    vocab = model.config.vocab_size
    rows = []
    runs = [(1, n) for n in lengths] + batch_runs
    warm = torch.randint(3, vocab, (1, 256), device=device)
    with torch.inference_mode():
        for _ in range(2):
            model(warm, logits_to_keep=1)
            lazy.generate(warm, max_new_tokens=1)
    for batch, n in runs:
        ids = torch.randint(3, vocab, (batch, n), generator=torch.Generator().manual_seed(n)).to(device)

        def full_fn(ids=ids):
            with torch.inference_mode():
                return model(ids, logits_to_keep=1).logits[:, -1].argmax(-1)

        def lazy_fn(ids=ids):
            return lazy.generate(ids, max_new_tokens=1)

        full_t, lazy_t = [], []
        full_mem, _ = peak_memory(device, full_fn)
        lazy_mem, out = peak_memory(device, lazy_fn)
        for r in range(repeats):  # interleaved, alternating which goes first
            pair = [("full", full_fn), ("lazy", lazy_fn)] if r % 2 == 0 else [("lazy", lazy_fn), ("full", full_fn)]
            for name, fn in pair:
                seconds, _ = timer(fn)
                (full_t if name == "full" else lazy_t).append(seconds)
        kept = out.stats[0].kept_per_layer
        est = flops.prefill([n] * len(kept)) / flops.prefill(kept)
        full_s, lazy_s = statistics.median(full_t), statistics.median(lazy_t)
        rows.append({"batch": batch, "tokens": n, "full_ms": full_s * 1e3, "lazy_ms": lazy_s * 1e3,
                     "speedup": full_s / lazy_s, "est_speedup": est, "measured_over_est": (full_s / lazy_s) / est,
                     "tokens_per_s_full": batch * n / full_s, "tokens_per_s_lazy": batch * n / lazy_s,
                     "peak_mem_full_gib": _gib(full_mem), "peak_mem_lazy_gib": _gib(lazy_mem),
                     "computed_token_fraction": out.stats[0].computed_token_fraction})
        print(json.dumps(rows[-1]), flush=True)
        _free(device)
    return rows


# ---- 3. decode -------------------------------------------------------------------------------------------------------


def decode(model, device: str, length: int, new_tokens: int, repeats: int) -> list[dict]:
    """ms per decoding step after the first token: model.generate, LazyLLM off, LazyLLM default (revival)."""
    timer = Timer(device)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(7)).to(device)
    engines = {"off": LazyLLM(model, LazyConfig.off()), "lazy": LazyLLM(model, LazyConfig.default_for(model))}
    rows: dict[str, list[float]] = {"generate": [], "off": [], "lazy": []}
    mems: dict[str, int | None] = {}
    revived = 0

    def hf_prefill():
        with torch.inference_mode():
            return model(ids, logits_to_keep=1)

    for r in range(repeats + 1):  # the first round warms up
        for name in ("generate", "off", "lazy"):
            if name == "generate":
                with torch.inference_mode():
                    pre, _ = timer(hf_prefill)
                    mem, (total, _) = peak_memory(device, lambda: timer(lambda: model.generate(
                        ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None)))
                step = (total - pre) / (new_tokens - 1)
            else:
                mem, out = peak_memory(device, lambda name=name: engines[name].generate(
                    ids, max_new_tokens=new_tokens, eos_token_id=[]))
                step = out.stats[0].decode_s / (out.stats[0].new_tokens - 1)
                if name == "lazy":
                    revived = out.stats[0].revived_tokens
            if r:
                rows[name].append(step)
                mems[name] = mem
    base = statistics.median(rows["generate"])
    result = [{"method": m, "tokens": length, "new_tokens": new_tokens, "ms_per_token": statistics.median(v) * 1e3,
               "vs_generate": statistics.median(v) / base, "peak_mem_gib": _gib(mems.get(m))}
              for m, v in rows.items()]
    result[-1]["revived_tokens"] = revived
    for row in result:
        print(json.dumps(row), flush=True)
    return result


# ---- report ----------------------------------------------------------------------------------------------------------


def report_text(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    parts = [f"{env['device_name']}, torch {env['torch']}, transformers {env['transformers']}, {payload['dtype']}, "
             f"sdpa; random weights of the real shape (revival counts are not a trained model's). "
             f"Command: `{payload['command']}`."]
    for shape, res in payload["shapes"].items():
        chk = res.get("checks", {})
        parts.append(f"**{shape}**: checks {'passed' if chk.get('passed') else 'FAILED'} ({json.dumps(chk)}).")
        if res.get("ttft"):
            parts.append(md_table(
                ["batch", "tokens", "full ms", "lazy ms", "TTFT full / lazy", "FLOP estimate", "measured / est.",
                 "lazy tokens/s ÷ full", "peak GiB full", "peak GiB lazy"],
                [[r["batch"], r["tokens"], r["full_ms"], r["lazy_ms"], f"{r['speedup']:.2f}x",
                  f"{r['est_speedup']:.2f}x", f"{r['measured_over_est']:.2f}",
                  f"{r['tokens_per_s_lazy'] / r['tokens_per_s_full']:.2f}x", r["peak_mem_full_gib"],
                  r["peak_mem_lazy_gib"]] for r in res["ttft"]]))
        if res.get("decode"):
            parts.append(md_table(
                ["decode", "prompt tokens", "new tokens", "ms/token", "÷ model.generate", "peak GiB"],
                [[r["method"], r["tokens"], r["new_tokens"], r["ms_per_token"], f"{r['vs_generate']:.2f}x",
                  r["peak_mem_gib"]] for r in res["decode"]]))
    return "\n\n".join(parts)


def _gib(value: int | None) -> float:
    return float("nan") if value is None else value / 2**30


def _free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def environment(device: str) -> dict[str, Any]:
    import transformers

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    return {"device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, the 4-layer tiny shape, short lengths.")
    parser.add_argument("--shapes", nargs="+", choices=[s for s in SHAPES if s != "tiny"],
                        default=["llama-3.1-8b", "qwen2.5-7b"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-length", type=int, default=8192)
    parser.add_argument("--decode-length", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ttft-shapes", nargs="+", default=None,
                        help="Shapes that get the TTFT and decode timings (default: the first of --shapes; the "
                        "others get the checks and TTFT only).")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu.json")
    parser.add_argument("--write", action="store_true", help="Write the BENCHMARKS.md section.")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, shapes = "cpu", torch.float32, ["tiny"]
        # past the default's min_prompt_tokens (1000), so the dry run prunes
        args.lengths, args.batch, args.batch_length, args.decode_length = [1024, 2048], 2, 1024, 1024
        args.new_tokens, args.repeats = 8, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here; run with --dry-run to check the script on CPU")
        device, dtype, shapes = "cuda", torch.bfloat16, args.shapes
    payload: dict[str, Any] = {"environment": environment(device), "dtype": str(dtype).replace("torch.", ""),
                               "command": "python -m benchmarks.gpu" + (" --dry-run" if args.dry_run else ""),
                               "shapes": {}}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n")

    timed = args.ttft_shapes or shapes[:1]
    for shape in shapes:
        res: dict[str, Any] = payload["shapes"].setdefault(shape, {})
        res["checks"] = checks(shape, device, dtype)
        print(shape, "checks", json.dumps(res["checks"]), flush=True)
        save()
        model = build(shape, device, dtype)
        res["ttft"] = ttft(model, device, args.lengths if shape in timed else args.lengths[1:2],
                           [(args.batch, args.batch_length)] if shape in timed else [], args.repeats)
        save()
        if shape in timed:
            res["decode"] = decode(model, device, args.decode_length, args.new_tokens, args.repeats)
            save()
        del model
        _free(device)
    text = report_text(payload)
    print(text)
    if args.write:
        replace_section("gpu", text)
    return payload


if __name__ == "__main__":
    main()
