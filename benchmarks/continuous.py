"""Continuous batching against static batches in the engine, on the same ACL papers, in one process.

    .venv/bin/python -m benchmarks.continuous --prompt-tokens 4096 --papers 12 --rounds 2
    .venv/bin/python -m benchmarks.continuous --prompt-tokens 8192 --papers 8 --rounds 2

What a worker does with one task, both ways, on the pipeline's own prompts (template, middle cut) sorted longest
first as its length buckets sort them:

- **static**: ``LazyLLM.generate`` on consecutive batches of ``--slots`` prompts (the pipeline's ``max_batch_size``);
  a batch decodes until its longest item ends.
- **continuous**: ``LazyLLM.generate_continuous`` with ``--slots`` slots (and the pipeline's ``max_batch_tokens`` as
  its held-token budget); an item that ends gives its slot to the next prompt.

Outputs end where the model stops (its end-of-sequence) or at ``--max-new-tokens``: no ``min_new_tokens``.
``--mix-short`` asks every other paper a one-word question instead (:data:`SHORT_TASK`): a stream whose items end
at very different steps, as a corpus mixing tasks has (the issue's "half asking for one word"). The two
take turns (ABBA across rounds) and the report takes medians of the ratios of each round. Per method: docs/s, the
share of decode slot-steps with no item in them (static: a batch's rows x its steps, against the steps each item
decoded), output lengths (min / median / max), and whether each item's tokens are the same both ways. Every round
appends a JSON line to ``--out``; ``<out>.md`` is the table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine, md_table

TIMES = ("prefills", "joins", "plain_steps", "prefill_s", "join_s")  # what a run records beside its summary
SHORT_TASK = "{text}\n\nIn one word, what field of research is this paper in?"


def static_idle(new_tokens: list[int], batch: int) -> tuple[int, int]:
    """(slot-steps, busy slot-steps) of a static batch whose items made ``new_tokens`` each: the batch runs
    ``max - 1`` decoding steps (the first token comes from prefill) with ``batch`` rows, item i busy in
    ``new_tokens[i] - 1`` of them."""
    steps = max(new_tokens) - 1
    return batch * steps, sum(n - 1 for n in new_tokens)


def run_static(lazy: Any, prompts: list[list[int]], slots: int, options: Any) -> dict[str, Any]:
    import torch

    start = time.perf_counter()
    tokens, slot_steps, busy, prefill_s = [], 0, 0, 0.0
    for i in range(0, len(prompts), slots):
        group = prompts[i : i + slots]
        width = max(map(len, group))
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(group):
            ids[b, width - len(p) :] = torch.tensor(p)
            mask[b, width - len(p) :] = 1
        out = lazy.generate(ids, attention_mask=mask, options=options)
        counts = [s.new_tokens for s in out.stats]
        prefill_s += out.stats[0].ttft_s
        tokens += [out.sequences[b, width : width + c].tolist() for b, c in enumerate(counts)]
        total, used = static_idle(counts, slots)
        slot_steps, busy = slot_steps + total, busy + used
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": tokens, "slot_steps": slot_steps, "busy_slot_steps": busy,
            "prefills": -(-len(prompts) // slots), "prefill_s": prefill_s}


def run_continuous(lazy: Any, prompts: list[list[int]], slots: int, options: Any,
                   max_held_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    result = lazy.generate_continuous(prompts, options, slots=slots, max_held_tokens=max_held_tokens)
    wall = time.perf_counter() - start
    tokens = [o.sequences[0, len(p) :].tolist() for o, p in zip(result.outputs, prompts, strict=True)]
    c = result.counters
    return {"wall_s": wall, "tokens": tokens, "slot_steps": c.slot_steps, "busy_slot_steps": c.busy_slot_steps,
            "prefills": c.prefills, "joins": c.joins, "plain_steps": c.plain_steps, "prefill_s": c.prefill_s,
            "join_s": c.join_s}


def run_generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> dict[str, Any]:
    """transformers' continuous batching (``model.generate_batch``, paged cache, no pruning) on the same prompts,
    greedy, ending at the model's end-of-sequence as ours do."""
    from transformers import GenerationConfig

    from benchmarks.peer import _cb_config

    eos = model.generation_config.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id)
    start = time.perf_counter()
    out = model.generate_batch(inputs=prompts, generation_config=config,
                               continuous_batching_config=_cb_config(prompts, max_new_tokens), progress_bar=False)
    wall = time.perf_counter() - start
    results = list(out.values())  # in the order of the inputs
    errors = [r.error for r in results if r.error is not None]
    if len(results) != len(prompts) or errors:
        raise RuntimeError(f"generate_batch returned {len(results)} of {len(prompts)} outputs; errors: {errors}")
    tokens = [list(r.generated_tokens) for r in results]
    return {"wall_s": wall, "tokens": tokens, "slot_steps": 0, "busy_slot_steps": 0}


def run_job(papers: list[dict[str, str]], batching: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The user's job: ``run_pipeline`` over the papers as one shard, every setting at its default but ``batching``
    (and the prompt and output lengths): 2 single-thread workers here, bf16, batches (slots) of 4."""
    import shutil

    import pyarrow.parquet as pq

    from benchmarks.summarize_job import write_shards
    from pipeline import PipelineConfig, run_pipeline

    shard_dir, out = work / "input", work / f"out-{batching}"
    if not shard_dir.exists():
        write_shards(papers, shard_dir, len(papers))
    shutil.rmtree(out, ignore_errors=True)
    cfg = PipelineConfig(input=str(shard_dir), output=str(out), model=args.model, lazy=args.lazy,
                         max_prompt_tokens=args.prompt_tokens, max_new_tokens=args.max_new_tokens,
                         baseline_sample_rate=0.0, batching=batching, max_batch_size=args.slots, progress=False,
                         repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    report = run_pipeline(cfg)
    if report.rows_ok != report.rows_in:
        raise RuntimeError(f"{batching}: failures {report.failures_by_reason}")
    rows = [r for f in sorted(out.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    steady = report.wall_s - report.startup_s
    lengths = [r["new_tokens"] for r in rows]
    return {"docs": len(rows), "wall_s": steady, "docs_per_s": len(rows) / steady, "idle": report.decode_slot_idle,
            "new_tokens": [min(lengths), statistics.median(lengths), max(lengths)], "workers": report.workers,
            "threads": report.threads_per_worker, "dtype": report.dtype, "batches": report.batches,
            "tokens": [r["generation"] for r in rows]}


def step_profile(lazy: Any, prompts: list[list[int]], reps: int = 8) -> dict[str, float]:
    """Median ms of a decoding step of one state holding ``prompts`` (one prefill) when no row, one row or every row is
    within its reviving steps (the steps interleaved), and ms of one item joining a slot-resident state holding the
    others (BatchState.place): what a stream pays for items joining at different steps, and for each join."""
    import torch

    from lazy_core.attention import attention_hook
    from lazy_core.engine import BatchState

    batch, lengths = len(prompts), [len(p) for p in prompts]
    left = torch.zeros(batch, max(lengths), dtype=torch.long)
    for b, p in enumerate(prompts):
        left[b, : len(p)] = torch.tensor(p)
    late = (lazy.config.revive_steps or 10**6) + 1
    variants = {"no row revives": [late] * batch, "one row revives": [1] + [late] * (batch - 1),
                "every row revives": [1] * batch}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode(), attention_hook(lazy.model) as inner:
        state = BatchState(lazy.parts, torch.tensor(lengths), capacity=max(lengths) + len(variants) * reps + 1)
        loop = lazy.prefill_loop(state, inner)
        tokens = loop.prefill(state, left).argmax(-1)
        step = 0
        for _ in range(reps):
            for name, steps in variants.items():
                start = time.perf_counter()
                tokens = loop.decode(state, tokens, torch.tensor(lengths) + step, torch.ones(batch, dtype=torch.bool),
                                     step=steps).argmax(-1)
                times[name].append(1000 * (time.perf_counter() - start))
                step += 1
        slots = BatchState.slots(lazy.parts, batch)
        slots.place(list(range(batch)), state, list(range(batch)), 128)
        join = []
        for _ in range(3):  # the first item leaves and comes back: what one newcomer costs
            slots.free([0])
            start = time.perf_counter()
            slots.place([0], state, [0], 128)
            join.append(1000 * (time.perf_counter() - start))
    return {**{f"{k} ms": statistics.median(v) for k, v in times.items()}, "join ms": statistics.median(join)}


def summary(record: dict[str, Any]) -> dict[str, Any]:
    lengths = [len(t) for t in record["tokens"]]
    docs = len(lengths)
    idle = 1 - record["busy_slot_steps"] / record["slot_steps"] if record["slot_steps"] else 0.0
    return {"docs": docs, "wall_s": record["wall_s"], "docs_per_s": docs / record["wall_s"], "idle": idle,
            "new_tokens": [min(lengths), statistics.median(lengths), max(lengths)]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--papers", type=int, default=12)
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--slots", type=int, default=4, help="static batch size = continuous slots")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a pipeline CPU worker has 1)")
    parser.add_argument("--lazy", default="default", choices=["default", "off"])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix-short", action="store_true", help="every other paper asks a one-word question")
    parser.add_argument("--generate-batch", action="store_true",
                        help="also run transformers' generate_batch once on the same prompts (after the rounds)")
    parser.add_argument("--check-alone", action="store_true",
                        help="also run each prompt alone once and count the items each method reproduces exactly")
    parser.add_argument("--profile", action="store_true", help="only time a decoding step of --slots papers by how "
                        "many rows revive, and a join (benchmarks.continuous.step_profile)")
    parser.add_argument("--job", action="store_true", help="time the whole job (run_pipeline, default workers) "
                        "instead of the engine in this process")
    parser.add_argument("--work", type=Path, default=Path("bench_out/continuous"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import torch

    from benchmarks.peer import _prompts
    from benchmarks.summarize_job import choose_papers
    from lazy_core import DecodingOptions, LazyConfig, LazyLLM, load_model
    from pipeline import PipelineConfig

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device="cpu")
    config = LazyConfig.resolve(args.lazy, model)
    lazy = LazyLLM(model, config)
    plan = PipelineConfig(input="unused", output="unused", max_prompt_tokens=args.prompt_tokens,
                          max_new_tokens=args.max_new_tokens)
    papers = choose_papers(tokenizer, args.papers, args.prompt_tokens, args.seed)
    prompts = _prompts(tokenizer, papers, plan)
    if args.mix_short:
        short = _prompts(tokenizer, papers, plan.model_copy(update={"task": SHORT_TASK}))
        prompts = [short[i] if i % 2 else p for i, p in enumerate(prompts)]
    prompts = sorted(prompts, key=len, reverse=True)  # as a bucket sorts them (ties keep the papers' order)
    options = DecodingOptions(max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
                              no_repeat_ngram_size=args.no_repeat_ngram_size)
    budget = plan.max_batch_tokens
    dtype = str(model.dtype).removeprefix("torch.")
    mix = ("-mix" if args.mix_short else "") + ("-rules" if options.repetition_penalty != 1.0
                                                or options.no_repeat_ngram_size else "")
    name = (f"continuous-{args.prompt_tokens}-{args.max_new_tokens}-{args.lazy}{mix}-{dtype}-p{len(prompts)}"
            f"-s{args.seed}")
    out = args.out or RESULTS_DIR / f"{name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"prompt_tokens": args.prompt_tokens, "papers": len(prompts), "max_new_tokens": args.max_new_tokens,
                "slots": args.slots, "threads": args.threads, "dtype": dtype, "lazy": args.lazy,
                "model": args.model, "seed": args.seed, "max_held_tokens": budget, "mix_short": args.mix_short,
                "repetition_penalty": args.repetition_penalty, "no_repeat_ngram_size": args.no_repeat_ngram_size}
    if args.profile:
        profile = step_profile(lazy, prompts[: args.slots])
        print(json.dumps(profile), flush=True)
        with (RESULTS_DIR / f"{name}-profile.json").open("w", encoding="utf-8") as f:
            json.dump({"settings": settings, "machine": machine(), "profile": profile}, f, indent=1)
        return {"profile": profile}
    if args.job:
        if args.mix_short:
            raise SystemExit("--job runs one task over every paper; --mix-short is for the engine runs")
        settings["job"] = True
        name += "-job"
        out = args.out or RESULTS_DIR / f"{name}.jsonl"
    else:
        lazy.generate(torch.tensor([prompts[-1][:64]]), max_new_tokens=2)  # warm-up
    rounds = []
    for r in range(args.rounds):
        order = ["static", "continuous"] if r % 2 == 0 else ["continuous", "static"]
        runs = {}
        for method in order:
            if args.job:
                runs[method] = run_job(papers, method, args, args.work)
            elif method == "static":
                runs[method] = run_static(lazy, prompts, args.slots, options)
            else:
                runs[method] = run_continuous(lazy, prompts, args.slots, options, budget)
            print(f"round {r} {method}: { {k: v for k, v in runs[method].items() if k != 'tokens'} }", flush=True)
        same = sum(a == b for a, b in zip(runs["static"]["tokens"], runs["continuous"]["tokens"], strict=True))
        record = {"settings": settings, "machine": machine(), "round": r, "order": order, "same_tokens": same,
                  **{m: (_job_record(v) if args.job else
                         {**summary(v), **{k: v[k] for k in TIMES if k in v}})
                     for m, v in runs.items()}}
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        rounds.append(record)
    if args.check_alone and not args.job:
        alone = [lazy.generate(torch.tensor([p]), options=options).sequences[0, len(p):].tolist() for p in prompts]
        last = rounds[-1]
        last["same_as_alone"] = {m: sum(a == b for a, b in zip(runs[m]["tokens"], alone, strict=True))
                                 for m in runs}
        print(f"items equal to their run alone: {last['same_as_alone']}", flush=True)
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"settings": settings, "machine": machine(), "same_as_alone": last["same_as_alone"]})
                    + "\n")
    peer = None
    if args.generate_batch:
        peer = summary(run_generate_batch(model, tokenizer, prompts, args.max_new_tokens))
        print(f"generate_batch: {peer}", flush=True)
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"settings": settings, "machine": machine(), "generate_batch": peer}) + "\n")
    report = _report(rounds, settings, peer)
    Path(str(out) + ".md").write_text(report, encoding="utf-8")
    print(report)
    return {"rounds": rounds}


def _job_record(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "tokens"}


def _report(rounds: list[dict[str, Any]], settings: dict[str, Any], peer: dict[str, Any] | None = None) -> str:
    ratio = statistics.median(r["continuous"]["docs_per_s"] / r["static"]["docs_per_s"] for r in rounds)
    rows = []
    for method in ("static", "continuous"):
        runs = [r[method] for r in rounds]
        lengths = runs[0]["new_tokens"]
        rows.append([method, f"{statistics.median(x['docs_per_s'] for x in runs):.4f}",
                     f"{statistics.median(x['idle'] for x in runs):.1%}",
                     f"{lengths[0]} / {lengths[1]:g} / {lengths[2]}"])
    if peer is not None:
        lengths = peer["new_tokens"]
        rows.append(["transformers generate_batch (no pruning, one run)", f"{peer['docs_per_s']:.4f}", "n/a",
                     f"{lengths[0]} / {lengths[1]:g} / {lengths[2]}"])
    same = statistics.median(r["same_tokens"] for r in rounds)
    alone = rounds[-1].get("same_as_alone")
    if alone:
        rows = [row + [f"{alone[row[0]]} of {settings['papers']}"] if row[0] in alone else row + [""]
                for row in rows]
    mix = ", every other asked for one word" if settings.get("mix_short") else ""
    if settings.get("repetition_penalty", 1.0) != 1.0 or settings.get("no_repeat_ngram_size"):
        mix += (f" (repetition_penalty {settings['repetition_penalty']}, no_repeat_ngram_size "
                f"{settings['no_repeat_ngram_size']})")
    where = ("the whole job (`run_pipeline`, default workers, one shard)" if settings.get("job")
             else "the engine in one process")
    head = (f"{where}: {settings['papers']} papers at {settings['prompt_tokens']} tokens, "
            f"{settings['max_new_tokens']} new at "
            f"most{mix}, {settings['slots']} slots, {settings['dtype']}, "
            f"{'default workers' if settings.get('job') else str(settings['threads']) + ' thread(s)'}, lazy="
            f"{settings['lazy']}; {len(rounds)} rounds. Continuous / static docs/s: **{ratio:.2f}x** (median of the "
            f"rounds' ratios). Items with the same tokens both ways: {same:g} of {settings['papers']}.\n\n")
    header = ["method", "docs/s", "decode slot-steps idle", "new tokens min / median / max"]
    return head + md_table(header + (["items equal to their run alone"] if alone else []), rows)


if __name__ == "__main__":
    main()
