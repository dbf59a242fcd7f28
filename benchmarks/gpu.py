"""The GPU path, checked and timed in one call: LazyLLM on randomly initialised models of a real shape, bf16, sdpa.

    python -m benchmarks.gpu                  # on a CUDA machine: every check and timing, then the table
    python -m benchmarks.gpu --dry-run        # the same code on CPU, a 4-layer tiny shape, seconds (a test runs it)
    # a lent GPU's one call (about 8 minutes): the checks, the plain-step sweep and the job, then TTFT at 4K / 8K
    python -m benchmarks.gpu --shapes llama-3.1-8b --parts checks steps job ttft --lengths 4096 8192 --repeats 3

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
4. **The plain step at many slots** (``steps``): :class:`lazy_core.plain_step.PlainStep` eager, compiled
   (``default``) and with CUDA graphs (``reduce-overhead``) at ``--slots`` slots and ``--slot-lengths`` tokens, on a
   slot-resident state holding what the default schedule keeps per layer (random K/V): ms per step, tokens/s, the
   bytes-bound (weights + kept K/V over the measured copy bandwidth) and the step's ratio to it, peak memory, the
   first call (the compile) apart. The checks (1.) run a continuous stream with each mode against eager (tokens,
   graph breaks).
5. **The job at few and many slots** (``job``): ``--job-prompts`` random prompts through ``generate_continuous`` at
   ``--job-slots`` slots with the compiled plain step: new tokens per second of the whole stream.

``--parts`` picks and orders what runs; each part's rows are saved as they come.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

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


class StepClock(LogitsProcessor):
    """Clocks each step of ``model.generate`` as its logits come out (after a synchronize on a GPU): the decoding
    steps' own time, not a whole call's time less a separately timed prefill (a difference that noise can make
    negative)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return scores

    def per_step(self) -> float:
        """Seconds per decoding step after the first token (the first call follows prefill)."""
        if len(self.times) < 2:
            raise ValueError("StepClock saw fewer than 2 steps: generate at least 2 new tokens")
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


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
    stream = compiled_stream(lazy, prompts, device, dtype)
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    exact_batch = all(a == new for a in agree)
    tolerated = exact_batch or (dtype != torch.float32 and min(agree) >= 1)
    result = {"pruning_off_equals_generate": off_equal, "batch_equals_singles_tokens": agree,
              "batch_equals_singles": tolerated, "model_unchanged": unchanged, "compiled_stream": stream,
              "passed": off_equal and tolerated and unchanged and stream["passed"]}
    del model
    _free(device)
    return result


def compiled_stream(lazy: LazyLLM, prompts: list[torch.Tensor], device: str, dtype: torch.dtype) -> dict[str, Any]:
    """A continuous stream (joins, ends, plain and reviving steps) with the plain step compiled in each mode against
    the eager stream: tokens agreeing before each item's first divergence (fp32: all of them; bf16 on a GPU: sums
    in another order may flip a later token, so at least the first), and graph breaks (none allowed)."""
    from torch._dynamo.utils import counters

    lazy = LazyLLM(lazy.model, lazy.config.model_copy(update={"revive_steps": 2}))  # later steps are plain
    stops = [10, 4, 7, 12, 3, 9]
    items = [p.to(device) for p in prompts * 2]
    run = dict(slots=3, max_new_tokens=12, stop_after=stops, eos_token_id=[])
    eager = lazy.generate_continuous(items, **run)
    modes = ["default", "reduce-overhead"] if device.startswith("cuda") else ["default"]
    out: dict[str, Any] = {"passed": True}
    for mode in modes:
        counters.clear()
        try:
            compiled = lazy.generate_continuous(items, compile_step=mode, **run)
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            out[mode] = {"error": repr(exc)[:300]}
            out["passed"] = False
            continue
        agree = []
        for a, b in zip(compiled.outputs, eager.outputs, strict=True):
            x, y = a.sequences[0].tolist(), b.sequences[0].tolist()
            agree.append(next((i for i, (u, v) in enumerate(zip(x, y, strict=True)) if u != v), len(x)))
        exact = [o.sequences.tolist() for o in compiled.outputs] == [o.sequences.tolist() for o in eager.outputs]
        breaks = sum(counters["graph_break"].values())
        lengths = [p.shape[0] for p in items]
        first_new_agrees = all(a > n for a, n in zip(agree, lengths, strict=True))
        ok = breaks == 0 and compiled.counters.plain_steps > 0 and (exact or (dtype != torch.float32 and
                                                                              first_new_agrees))
        out[mode] = {"tokens_equal": exact, "agree_until": agree, "graph_breaks": breaks,
                     "plain_steps": compiled.counters.plain_steps, "passed": ok}
        out["passed"] = out["passed"] and ok
    return out


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
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(7)).to(device)
    engines = {"off": LazyLLM(model, LazyConfig.off()), "lazy": LazyLLM(model, LazyConfig.default_for(model))}
    rows: dict[str, list[float]] = {"generate": [], "off": [], "lazy": []}
    mems: dict[str, int | None] = {}
    revived = 0

    for r in range(repeats + 1):  # the first round warms up
        for name in ("generate", "off", "lazy"):
            if name == "generate":
                clock = StepClock(device)
                with torch.inference_mode():
                    mem, _ = peak_memory(device, lambda clock=clock: model.generate(
                        ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                        logits_processor=LogitsProcessorList([clock])))
                step = clock.per_step()
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


# ---- 4. the plain step at many slots ---------------------------------------------------------------------------------


def slot_state(model, config: LazyConfig, slots: int, length: int, headroom: int):
    """A slot-resident state of ``slots`` items of ``length`` prompt tokens, each layer holding what the schedule keeps
    there (random K/V: a plain step's cost depends on the shapes only), with ``headroom`` free slots per layer."""
    from lazy_core.engine import BatchState

    parts = LazyLLM(model, config).parts
    state = BatchState.slots(parts, slots)
    kept = config.kept_per_layer(parts.num_layers, length)
    gen = torch.Generator(device=parts.device).manual_seed(0)
    for kv, n in zip(state.cache.layers, kept, strict=True):
        kv.reserve(n + headroom)
        shape = kv.keys[:, :, :n].shape
        kv.keys[:, :, :n] = torch.randn(shape, generator=gen, device=parts.device, dtype=kv.keys.dtype)
        kv.values[:, :, :n] = torch.randn(shape, generator=gen, device=parts.device, dtype=kv.keys.dtype)
        kv.positions[:, :n] = torch.arange(n, device=parts.device)
        kv.valid[:, :n] = True
        kv.fill.fill_(n)
    state.cache.sync_lengths()
    state.host_lengths = [length] * slots
    return parts, state, kept


def bandwidth_gbs(device: str) -> float:
    """Measured device memory bandwidth (GB/s): a 1 GiB device-to-device copy, read + write counted."""
    if not device.startswith("cuda"):
        return float("nan")
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timer = Timer(device)
    dst.copy_(src)
    seconds = statistics.median(timer(lambda: dst.copy_(src))[0] for _ in range(5))
    return 2 * 2**30 / seconds / 1e9


def plain_steps(model, device: str, slot_counts: list[int], lengths: list[int], modes: list[str], steps: int,
                save) -> list[dict]:
    """The fixed-shape plain step (lazy_core.plain_step) eager and compiled in each mode at each slot count and
    prompt length: ms per step, tokens/s, the bytes-bound (weights + kept K/V over the measured bandwidth) and the
    step's ratio to it, peak memory (the compiled steps' tokens against eager's: :func:`checks`)."""
    from lazy_core.attention import attention_hook
    from lazy_core.plain_step import PlainStep

    config = LazyConfig.default_for(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = bandwidth_gbs(device)
    rows: list[dict] = []
    for length in lengths:
        for slots in slot_counts:
            headroom = (len(modes) + 1) * (steps + 3) + 4
            try:
                parts, state, kept = slot_state(model, config, slots, length, headroom)
            except torch.OutOfMemoryError:
                rows.append({"slots": slots, "tokens": length, "error": "out of memory building the caches"})
                _free(device)
                continue
            kv_bytes = sum(slots * n * 2 * parts.num_kv_heads * parts.head_dim * parts.dtype.itemsize for n in kept)
            row: dict[str, Any] = {"slots": slots, "tokens": length, "kv_gib": kv_bytes / 2**30,
                                   "weights_gib": weights / 2**30, "bandwidth_gbs": bandwidth,
                                   "bound_ms": (weights + kv_bytes) / (bandwidth * 1e9) * 1e3}
            with torch.inference_mode(), attention_hook(model) as inner:
                for mode in ["off", *modes]:
                    row[mode] = _time_plain_step(PlainStep(parts, inner, mode), state, device, length, steps,
                                                 row["bound_ms"])
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()
            del state
            _free(device)
    return rows


def _time_plain_step(step, state, device: str, length: int, steps: int, bound_ms: float) -> dict[str, Any]:
    """ms per call of ``step`` on ``state`` (every slot live, each call one position further), after its first call
    (timed apart: the compile) and two warm-up calls (CUDA graphs record on a later call)."""
    slots = len(state.host_lengths)
    timer = Timer(device)
    tokens = torch.randint(3, 500, (slots,), generator=torch.Generator().manual_seed(slots)).to(device)
    live = torch.ones(slots, dtype=torch.bool, device=device)
    position = [length + 1]

    def call():
        position[0] += 1
        return step(state, tokens, torch.full((slots,), position[0], device=device), live)

    try:
        first_s, _ = timer(call)
        call(), call()
        mem, _ = peak_memory(device, call)
        times = [timer(call)[0] for _ in range(steps)]
    except Exception as exc:  # noqa: BLE001 - a mode that fails on this device is a result too
        _free(device)
        return {"error": repr(exc)[:300]}
    ms = statistics.median(times) * 1e3
    return {"ms": ms, "tokens_per_s": slots / ms * 1e3, "over_bound": ms / bound_ms, "first_call_s": first_s,
            "peak_step_gib": _gib(mem)}


def job_slots(model, device: str, length: int, prompts: int, new_tokens: int, slot_counts: list[int],
              compile_step: str) -> list[dict]:
    """A continuous stream of ``prompts`` random prompts through :meth:`LazyLLM.generate_continuous` at each slot
    count: new tokens per second of the whole stream (prefills, reviving steps, plain steps) and its counters."""
    lazy = LazyLLM(model, LazyConfig.default_for(model))
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(3)
    items = [torch.randint(3, vocab, (length,), generator=gen).to(device) for _ in range(prompts)]
    timer = Timer(device)
    rows = []
    for slots in slot_counts:
        try:
            seconds, out = timer(lambda s=slots: lazy.generate_continuous(
                items, slots=s, max_new_tokens=new_tokens, eos_token_id=[], compile_step=compile_step))
        except torch.OutOfMemoryError:
            rows.append({"slots": slots, "error": "out of memory"})
            _free(device)
            continue
        c = out.counters
        rows.append({"slots": slots, "tokens": length, "prompts": prompts, "new_tokens": new_tokens,
                     "compile_step": compile_step, "seconds": seconds,
                     "new_tokens_per_s": prompts * new_tokens / seconds, "steps": c.steps,
                     "plain_steps": c.plain_steps, "prefill_s": c.prefill_s, "join_s": c.join_s,
                     "idle": c.idle_fraction})
        print(json.dumps(rows[-1]), flush=True)
        _free(device)
    return rows


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
        if res.get("plain_steps"):
            modes = [k for k in res["plain_steps"][0] if isinstance(res["plain_steps"][0].get(k), dict)]
            table = []
            for r in res["plain_steps"]:
                for mode in modes:
                    m = r.get(mode, {})
                    if "ms" in m:
                        table.append([r["slots"], r["tokens"], mode, m["ms"], m["tokens_per_s"], r["bound_ms"],
                                      f"{m['over_bound']:.2f}x", m["first_call_s"], m["peak_step_gib"]])
                    else:
                        table.append([r["slots"], r["tokens"], mode, m.get("error", r.get("error", "n/a")),
                                      "", "", "", "", ""])
            parts.append(md_table(["slots", "tokens", "plain step", "ms", "tokens/s", "bytes-bound ms",
                                   "÷ bound", "first call s", "peak GiB"], table))
        if res.get("job"):
            parts.append(md_table(
                ["job: slots", "prompt tokens", "prompts", "new tokens", "compile", "s", "new tokens/s", "steps",
                 "plain steps", "idle"],
                [[r["slots"], r.get("tokens"), r.get("prompts"), r.get("new_tokens"), r.get("compile_step"),
                  r.get("seconds"), r.get("new_tokens_per_s"), r.get("steps"), r.get("plain_steps"),
                  r.get("idle")] for r in res["job"]]))
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
    parser.add_argument("--slots", type=int, nargs="+", default=[8, 32, 64, 128],
                        help="Slot counts of the plain-step sweep.")
    parser.add_argument("--slot-lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--modes", nargs="+", default=["default", "reduce-overhead"],
                        help="torch.compile modes of the plain step besides eager ('reduce-overhead': CUDA graphs).")
    parser.add_argument("--steps", type=int, default=10, help="Timed plain steps per way.")
    parser.add_argument("--job-slots", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--job-prompts", type=int, default=128)
    parser.add_argument("--job-length", type=int, default=2048)
    parser.add_argument("--job-new-tokens", type=int, default=64)
    parser.add_argument("--parts", nargs="+", default=["checks", "steps", "job", "ttft", "decode"],
                        choices=["checks", "steps", "job", "ttft", "decode"], help="What to run, in this order.")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu.json")
    parser.add_argument("--write", action="store_true", help="Write the BENCHMARKS.md section.")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, shapes = "cpu", torch.float32, ["tiny"]
        # past the default's min_prompt_tokens (1000), so the dry run prunes
        args.lengths, args.batch, args.batch_length, args.decode_length = [1024, 2048], 2, 1024, 1024
        args.new_tokens, args.repeats = 8, 1
        args.slots, args.slot_lengths, args.modes, args.steps = [2, 4], [1024], ["default"], 2
        args.job_slots, args.job_prompts, args.job_length, args.job_new_tokens = [1, 4], 6, 1024, 40
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
        if "checks" in args.parts:
            res["checks"] = checks(shape, device, dtype)
            print(shape, "checks", json.dumps(res["checks"]), flush=True)
            save()
        model = build(shape, device, dtype)
        if shape in timed and "steps" in args.parts:  # the sweep appends rows as it goes
            res["plain_steps"] = []
            rows = plain_steps(model, device, args.slots, args.slot_lengths, args.modes, args.steps, save)
            res["plain_steps"] = rows
            save()
        if shape in timed and "job" in args.parts:
            compiled = "reduce-overhead" if device.startswith("cuda") else "default"
            res["job"] = job_slots(model, device, args.job_length, args.job_prompts, args.job_new_tokens,
                                   args.job_slots, compiled)
            save()
        if "ttft" in args.parts:
            res["ttft"] = ttft(model, device, args.lengths if shape in timed else args.lengths[1:2],
                               [(args.batch, args.batch_length)] if shape in timed else [], args.repeats)
            save()
        if shape in timed and "decode" in args.parts:
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
