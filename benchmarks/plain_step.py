"""The plain decoding step (no row revives) three ways, interleaved in one process on the same items, and what a join
costs against it.

    .venv/bin/python -m benchmarks.plain_step --batches 1 4 --rounds 5                 # SmolLM2, 4K, int4, 1 thread
    .venv/bin/python -m benchmarks.plain_step --batches 4 --quantize none --compile off default

The items are prefilled once (the default schedule, so each layer holds what the job's items hold), then per round
and batch size each way runs ``--steps`` steps and the median step is kept:

- **eager (batch)**: :meth:`LayerLoop.decode` on the prefilled batch's own state, every row past its reviving steps:
  the step every plain step of a stream ran before the fixed-shape step existed;
- **fixed, eager**: :class:`lazy_core.plain_step.PlainStep` on a slot-resident state holding the same items
  (:meth:`BatchState.place`), uncompiled;
- **fixed, compiled** (per ``--compile`` mode): the same step through ``torch.compile(fullgraph=True)``; its first
  call (the compile) is timed apart.

Join: with ``batch - 1`` items running, one row is freed and a prefilled item placed into it (what a newcomer costs),
in plain steps of the fastest way. (Before rows were slot-resident, a join rebuilt the running set: the regroup,
1.3-3.4 steps here; BENCHMARKS.md.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, machine, md_table, write_json
from benchmarks.data import essay_prompt_ids
from lazy_core import LazyConfig, LazyLLM, load_model, load_tokenizer
from lazy_core.attention import attention_hook
from lazy_core.engine import BatchState, LayerLoop
from lazy_core.plain_step import COMPILE_MODES, PlainStep


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


class Bench:
    """One batch of prefilled items, and the states each way steps on."""

    def __init__(self, lazy: LazyLLM, prompts: list[list[int]], inner: str, headroom: int) -> None:
        """``headroom``: free K/V slots per layer, what every step this bench takes needs (no buffer grows while it
        is timed; as in a stream, where a join makes room for the newcomer's tokens)."""
        parts = lazy.parts
        self.headroom = headroom
        self.lazy, self.parts, self.inner = lazy, parts, inner
        lengths = torch.tensor([len(p) for p in prompts])
        self.batch = len(prompts)
        self.group = BatchState(parts, lengths, capacity=int(lengths.max()) + headroom)
        ids = torch.tensor(prompts)
        self.first = lazy.prefill_loop(self.group, inner).prefill(self.group, ids).argmax(-1)  # [B]
        self.decoder = LayerLoop(parts, lazy.config, inner, lazy.pruner)
        self.slots = BatchState.slots(parts, self.batch)
        self.slots.place(list(range(self.batch)), self.group, list(range(self.batch)), headroom)
        self.live = torch.ones(self.batch, dtype=torch.bool)
        self.lengths = lengths
        self.done = {"eager": 0, "fixed": 0}  # steps each state has taken (its positions)
        self.late = lazy.config.revive_steps or 0  # a step number past every row's reviving steps

    def _inputs(self, state: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.done[state] += 1
        return self.first, self.lengths + self.done[state] - 1

    def eager(self) -> None:
        tokens, positions = self._inputs("eager")
        self.decoder.decode(self.group, tokens, positions, self.live, step=self.late + 1 + self.done["eager"])

    def fixed(self, step: PlainStep) -> None:
        tokens, positions = self._inputs("fixed")
        step(self.slots, tokens, positions, self.live)

    def join_ms(self, rounds: int) -> dict[str, float]:
        """A newcomer into a freed row of ``batch - 1`` running items (BatchState.place)."""
        place = []
        for _ in range(rounds):
            self.slots.free([0])
            place.append(_timed(lambda: self.slots.place([0], self.group, [0], self.headroom)))
        return {"place_ms": statistics.median(place)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=8, help="steps per way and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--quantize", default="int4", choices=["none", "int8", "int4"])
    parser.add_argument("--compile", nargs="+", default=["default"], choices=[m for m in COMPILE_MODES if m != "off"])
    parser.add_argument("--seed", type=int, default=0, help="which essays (another seed: other items)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype, device="cpu", quantize=args.quantize)[0]
    lazy = LazyLLM(model, LazyConfig.default_for(model))
    prompts = [essay_prompt_ids(tok, args.length, offset_essay=3 * b + 17 * args.seed)
               for b in range(max(args.batches))]
    results: list[dict[str, Any]] = []
    with torch.inference_mode(), attention_hook(model) as inner:
        for batch in args.batches:
            headroom = args.rounds * args.steps * (2 + len(args.compile)) + len(args.compile) + 8
            bench = Bench(lazy, prompts[:batch], inner, headroom)
            eager_step = PlainStep(lazy.parts, inner, "off")
            ways = {"eager (batch)": bench.eager, "fixed, eager": lambda b=bench, s=eager_step: b.fixed(s)}
            compile_s = {}
            for mode in args.compile:
                step = PlainStep(lazy.parts, inner, mode)
                compile_s[mode] = _timed(lambda b=bench, s=step: b.fixed(s)) / 1000
                ways[f"fixed, {mode}"] = lambda b=bench, s=step: b.fixed(s)
            times: dict[str, list[float]] = {w: [] for w in ways}
            for _ in range(args.rounds):
                for way, fn in ways.items():
                    per_step = [_timed(fn) for _ in range(args.steps)]
                    times[way].append(statistics.median(per_step))
            row = {"batch": batch, "compile_s": compile_s,
                   "step_ms": {w: statistics.median(t) for w, t in times.items()}}
            row.update(bench.join_ms(args.rounds))
            results.append(row)
            print(row, flush=True)
    payload = {"machine": machine(), "args": vars(args) | {"out": str(args.out)}, "results": results,
               "command": " ".join(["python -m benchmarks.plain_step", *sys.argv[1:]])}
    out = args.out or RESULTS_DIR / f"plain_step-{args.length}-{args.quantize}-t{args.threads}-s{args.seed}.json"
    write_json(out, payload)
    out.with_suffix(".md").write_text(markdown(payload))
    print(markdown(payload))
    return payload


def markdown(payload: dict[str, Any]) -> str:
    rows = []
    for r in payload["results"]:
        base = r["step_ms"]["eager (batch)"]
        for way, ms in r["step_ms"].items():
            rows.append([r["batch"], way, f"{ms:.1f}", f"{ms / base:.2f}x"])
        best = min(r["step_ms"].values())
        rows.append([r["batch"], "join (a newcomer into a freed row)", f"{r['place_ms']:.1f}",
                     f"{r['place_ms'] / best:.2f} steps"])
    a = payload["args"]
    head = (f"Plain decoding step, {a['model']}, {a['length']} tokens, {a['dtype']}, weights {a['quantize']}, "
            f"{a['threads']} thread(s), medians of {a['rounds']} rounds x {a['steps']} steps "
            f"(`{payload['command']}`); compile: " +
            ", ".join(f"{m} {s:.0f} s" for r in payload["results"][:1] for m, s in r["compile_s"].items()))
    return head + "\n\n" + md_table(["batch", "way", "ms", "vs eager (batch)"], rows) + "\n"


if __name__ == "__main__":
    main()
