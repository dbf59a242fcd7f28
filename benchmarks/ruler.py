"""RULER accuracy of LazyLLM against the full model, per task and length, with the speed it buys.

    .venv/bin/python -m benchmarks.ruler --model gemma3-270m --lengths 4096 --count 2
    .venv/bin/python -m benchmarks.ruler --model smollm2-135m-instruct --lengths 4096 --count 2
    .venv/bin/python -m benchmarks.ruler --model gemma3-270m --tasks entity_3 --lengths 4096 8192 --count 6 \\
        --methods full lazy
    .venv/bin/python -m benchmarks.ruler --report-only          # rebuild the BENCHMARKS.md section from the records

Items: :mod:`benchmarks.ruler_tasks` (RULER's 13 tasks to their published definitions, plus our entity-bound needles
``entity_<k>``). SmolLM2-135M-Instruct gets its chat template; Gemma 3 270M (a base model) gets completion-style
prompts, as RULER prompts base models. Methods run on the same items, one at a time, greedy, in an order that rotates
per item: ``full`` (LazyConfig.off()), ``lazy`` (LazyConfig.default_for), ``paper`` (LazyConfig.paper) and the
candidate defaults of ``CANDIDATES``. Per item and method: RULER's score, TTFT (the engine's prefill + first token),
the computed-token fraction, the output.

Generation: RULER's budget per task, capped at ``--max-new`` (default 64: every expected answer fits) on this CPU;
completion-style (base model) outputs of niah, qa and entity end at their first line break (their answers are one
line), vt, cwe and fwe run to their budget; a chat model's output ends with its turn (or the budget). Each (model,
item, method) appends a JSON line to ``--out`` as soon as it is done, so a stopped run resumes.
``--report`` / ``--report-only`` rewrites the part of BENCHMARKS.md between ``<!-- ruler:begin -->`` and
``<!-- ruler:end -->``; what the numbers mean is written by hand around it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BENCHMARKS_MD,
    RESULTS_DIR,
    QuantizedModels,
    machine,
    md_table,
    quant_label,
    replace_section,
    split_quant,
    threads_text,
)
from benchmarks.eval import (
    LAST_TOKEN_SCORING,
    before_losses,
    first47_sink4,
    first63_sink4,
    first63_sink4_dec31,
    first_pool,
    first_ratio,
    mid17,
)
from benchmarks.ruler_tasks import TASK_NAMES, RulerItem, build_items, score
from lazy_core import LazyConfig, LazyLLM
from lazy_core.arch import place_schedule
from lazy_core.config import MID14_FRACTIONS

DEFAULT_OUT = RESULTS_DIR / "ruler.jsonl"
CHAT_MODELS = ("smollm2-135m-instruct",)
ONE_LINE = ("niah", "qa", "entity")  # vt outputs often open with a line break: it runs to its budget
REPORT_METHODS = ["full", "lazy", "paper"]
MIN_FULL = 0.2  # retention counts over the tasks where the full model scores at least this
BOOTSTRAP_REPS = 2000


DEFAULT_RATIOS_WIDE = (0.5, 0.3, 0.15)


def _placed(model: Any, ratios: tuple[float, ...]) -> dict[str, Any]:
    """The pruning layers of the default the candidates were measured against with these keep ratios."""
    layers, kept = place_schedule(model, MID14_FRACTIONS, ratios)
    return {"prune_layers": layers, "keep_ratios": kept}


# name -> (what it is, config factory)
CANDIDATES: dict[str, tuple[str, Callable[[Any], LazyConfig]]] = {
    "full": ("full prefill (LazyConfig.off())", lambda m: LazyConfig.off()),
    "lazy": ("the default (LazyConfig.default_for)", lambda m: LazyConfig.default_for(m)),
    "paper": ("the paper's scoring (LazyConfig.paper)", lambda m: LazyConfig.paper(m)),
    "lazy_w1": ("the default before this round: the last prompt token as the only query",
                lambda m: before_losses(m, **LAST_TOKEN_SCORING)),
    # candidate defaults (BENCHMARKS.md, "RULER"), each a change of the default they were measured against (lazy_w1,
    # i.e. lazy_mid14 scored by the last token): the scoring query, the pooling, the keep ratios. The one that won,
    # the last 8 prompt tokens as queries with their mean ("win8"), is now the default: its records became "lazy".
    "win32": ("default, the last 32 prompt tokens (the question) as queries, mean over them (SnapKV's window)",
              lambda m: before_losses(m, query_window=32, query_reduce="mean")),
    "win32max": ("default, the last 32 prompt tokens as queries, max over them",
                 lambda m: before_losses(m, query_window=32, query_reduce="max")),
    "kvgroup": ("default, heads reduced per KV group (mean within, max across) instead of max over heads",
                lambda m: before_losses(m, **LAST_TOKEN_SCORING, head_reduce="kv_group")),
    "sink4": ("default, the first 4 prompt tokens always kept (attention sinks)",
              lambda m: before_losses(m, **LAST_TOKEN_SCORING, keep_head=4)),
    "pool15": ("default, max-pool over 15 positions (not 31)",
               lambda m: before_losses(m, **LAST_TOKEN_SCORING, pool_kernel=15)),
    "wide": ("default placement, keeping 50/30/15 % (not 40/20/10)",
             lambda m: before_losses(m, **LAST_TOKEN_SCORING, **_placed(m, DEFAULT_RATIOS_WIDE))),
    # remedies of the loss analysis (BENCHMARKS.md, "Why the default loses facts"), each a change of the default
    # before it ("lazy_mid14"): where SmolLM2's attention ranks the answers well (benchmarks.ruler_losses --profile),
    # and a pool wide enough for the UUID needles (34 tokens; a 31-wide pool keeps 15 on either side of a peak)
    "lazy_mid14": ("the default before the loss analysis: the middle pruning layer at 15/30 of the depth (14 of 30), "
                   "max-pool over 31 positions (records before 2026-12-05 20:00 ran it as lazy)", before_losses),
    "mid17": ("lazy_mid14 with the middle pruning layer at 18/30 of the depth (17 of 30): the default of "
              "2026-12-05 20:00 on (the same config as lazy)",
              mid17),
    "pool63": ("lazy_mid14 with max-pool over 63 positions", lambda m: before_losses(m, pool_kernel=63)),
    "mid17_pool63": ("lazy_mid14 with both: layer 17 and a 63-wide pool (loses single facts: BENCHMARKS.md)",
                     lambda m: mid17(m, pool_kernel=63)),
    # the pool by layer: wide where the budget is (the first pruning layer keeps 40 %, where the UUIDs fall out),
    # the default's 31 where it is tight (the 63-wide pool everywhere lost single facts)
    "first63": ("mid17 with max-pool over 63 positions at the first pruning layer only",
                lambda m: first_pool(mid17(m), 63)),
    # the wide pool dropped the chat template's first tokens (where attention sinks) on the single facts it lost:
    # they are kept whatever their score
    "first63_sink4": ("first63, the first 4 prompt tokens always kept (the default for an hour: BENCHMARKS.md)",
                      first63_sink4),
    # first63_sink4 revived 20 % more tokens in decoding (each step's top 128 pooled 63 wide at layer 7) and cost the
    # job 8-12 % docs/s: decoding scores its revivals with the default's 31, prefill keeps the wide pool's choice
    "first63_sink4_dec31": ("first63_sink4, decoding scoring its revivals with a 31-wide pool at every layer",
                            first63_sink4_dec31),
    # first63_sink4_dec31 held 29 of a UUID's ~36 tokens after prefill and revived the rest only within 31 of the
    # step's peak and the first 32 steps, while the answer ends near step 50: a first pool wide enough to hold the
    # value whole (the peak sits 3-4 tokens before it), or revival for longer
    "first81_sink4_dec31": ("first63_sink4_dec31 with an 81-wide first pool (40 tokens either side of a peak)",
                            lambda m: first_pool(mid17(m, keep_head=4, decode_pool_kernel=31), 81)),
    "first63_sink4_dec31_r48": ("first63_sink4_dec31 reviving during the first 48 decoding steps (not 32)",
                                lambda m: first63_sink4_dec31(m, revive_steps=48)),
    "first47_sink4": ("first63_sink4 with a 47-wide first pool", first47_sink4),
    "pool63_sink4": ("mid17 with max-pool over 63 positions at every layer, the first 4 prompt tokens always kept",
                     lambda m: mid17(m, pool_kernel=63, keep_head=4)),
    # the pool reaching forward: the peak sits on the key 3-4 tokens before its value (a UUID's 33-36 tokens rank low
    # themselves), so a token keeps what follows it rather than as much before
    "fwd31": ("mid17 with its 31-wide pool reaching 27 tokens ahead and 3 back (pool_shift 12)",
              lambda m: mid17(m, pool_shift=12)),
    "fwd41": ("mid17 with a 41-wide pool reaching 36 tokens ahead and 4 back (pool_shift 16)",
              lambda m: mid17(m, pool_kernel=41, pool_shift=16)),
    # Gemma's held-answer losses (the answer kept at every layer, a held distractor or a run of digits written
    # instead) and fwe's word counts point at how little its last 6 of 18 layers see (10 % of the prompt)
    "gentle_merge": ("mid17 where stages meeting at one layer of a hybrid model keep the larger ratio (Gemma 3: "
                     "40 % / 20 %, not 40 % / 10 %; the default since 2026-12-06)", lambda m: mid17(m, merge=max)),
    # Gemma's 8K niah_single_1 losses hold the needle and its key at every layer and fall with how much the first
    # stage (global layer 5 of 18) keeps: a gentler first stage, or none
    "first80": ("gentle_merge keeping 80 % at its first pruning layer (Gemma 3: 80 % / 20 %)",
                lambda m: first_ratio(mid17(m, merge=max), 0.8)),
    "late_start": ("gentle_merge without its first stage: pruning starts at its second layer (Gemma 3: layer 11 "
                   "keeping 20 %)", lambda m: mid17(m, merge=max).later_start()),
}


DTYPE_SEP = "@"
REFERENCE_DTYPE = "bfloat16"  # the dtype the job runs in on a bf16 CPU: every method's name alone means this one


def dtype_label(method: str, dtype: str) -> str:
    """A method's name in a run of another dtype than the reference's: ``full@float32`` (bf16: the name alone), so a
    report sets the model in fp32 beside the same model in bf16 as one more method."""
    return method if dtype == REFERENCE_DTYPE else f"{method}{DTYPE_SEP}{dtype}"


def within_dtype(records: list[dict[str, Any]], dtype: str) -> list[dict[str, Any]]:
    """The records run in ``dtype``, each under its method's own name (``full@float32`` -> ``full``): a report of them
    compares the methods within that precision, each against the full model in the same dtype."""
    suffix = dtype_label("", dtype)
    return [{**r, "method": r["method"].removesuffix(suffix)} for r in records
            if r.get("dtype", REFERENCE_DTYPE) == dtype]


def method_config(name: str, model: Any) -> LazyConfig:
    if name not in CANDIDATES:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(CANDIDATES)}")
    return CANDIDATES[name][1](model)


def stop_ids(tok: Any) -> list[int]:
    """Every token whose text holds a line break (the one-line tasks end there)."""
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    return [i for i, text in enumerate(texts) if "\n" in text]


def run_item(lazy: LazyLLM, tok: Any, item: RulerItem, max_new: int, eos: list[int], lines: list[int]) -> dict:
    """Greedy output and stats of one item; ``lines`` (line-break tokens) end the one-line tasks' outputs."""
    ids = torch.tensor([item.prompt_ids])
    one_line = bool(lines) and item.task.split("_")[0] in ONE_LINE
    gen = lazy.generate(ids, max_new_tokens=min(item.max_new_tokens, max_new),
                        eos_token_id=eos + (lines if one_line else []))
    st = gen.stats[0]
    new = gen.sequences[0, ids.shape[1]: ids.shape[1] + st.new_tokens].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    return {"score": score(item.metric, text, item.answers), "text": text, "ttft_s": st.ttft_s,
            "computed_token_fraction": st.computed_token_fraction, "est_speedup": st.est_speedup,
            "new_tokens": st.new_tokens}


def only_ids(items: list[RulerItem], ids: list[str]) -> list[RulerItem]:
    """The items whose id is in ``ids``; an id none of them has is an error (its task, length, seed or index is not
    among those the run builds)."""
    missing = sorted(set(ids) - {item.id for item in items})
    if missing:
        raise SystemExit(f"--ids {missing} are not among the items of --tasks / --lengths / --count / --seed; an id is "
                         "<task>-<length>-<index>-s<seed>: raise --count above the largest index")
    return [item for item in items if item.id in ids]


def measured(*paths: Path) -> set[tuple[str, str, str]]:
    """(model, item id, method) of every record in these results files (missing files hold none): what a run does
    not measure again."""
    return {(r["model"], r["id"], r["method"]) for path in paths for r in load_records(path)}


def measure(args: argparse.Namespace) -> None:
    models = QuantizedModels(args.model, args.threads, args.dtype)
    model = models.get(args.quantize[0])
    tok = models.tokenizer
    chat = args.model in CHAT_MODELS if args.chat is None else args.chat
    limit = int(getattr(model.config, "max_position_embeddings", 1 << 30))
    lengths = [min(length, limit) for length in args.lengths]
    items = build_items(tok, args.tasks, lengths, args.count, args.seed, chat)
    if args.ids:  # only these of them: a run on the items an earlier one lost (build_items seeds each by its index)
        items = only_ids(items, args.ids)
    done = measured(args.out, *args.measured_in)
    engines = {dtype_label(quant_label(name, q), args.dtype): LazyLLM(models.get(q),
                                                                      method_config(name, models.get(q)))
               for q in args.quantize for name in args.methods}
    labels = list(engines)
    eos = list(LazyLLM(model, LazyConfig.off())._eos_ids(None))
    lines = [] if chat else stop_ids(tok)  # a chat model ends its turn itself, and may answer on the next line
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = {"model": args.model, "dtype": args.dtype, "chat": chat, "machine": machine()}
    for n, item in enumerate(items):
        order = labels[n % len(labels):] + labels[: n % len(labels)]
        for method in order:
            if (args.model, item.id, method) in done:
                continue
            started = time.perf_counter()
            result = run_item(engines[method], tok, item, args.max_new, eos, lines)
            record = {**header, "id": item.id, "task": item.task, "length": item.length, "seed": item.seed,
                      "prompt_tokens": len(item.prompt_ids), "answers": item.answers, "method": method,
                      "quantize": split_quant(method.partition(DTYPE_SEP)[0])[1],
                      "config": engines[method].config.model_dump(), "wall_s": time.perf_counter() - started,
                      **result}
            with args.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{item.id} {method}: {result['score']:.2f} ttft {result['ttft_s']:.1f}s {result['text'][:40]!r}",
                  flush=True)


# ---- report ------------------------------------------------------------------------------------------------------

def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(records: list[dict[str, Any]], model: str, length: int, methods: list[str]) -> dict[str, Any]:
    """Per task: items, each method's mean score, retention (method / full), median TTFT speedup (full / method per
    item) and computed fraction; and the retention averaged over the tasks where full scores >= MIN_FULL."""
    rows = [r for r in records if r["model"] == model and r["length"] == length]
    by = {(r["id"], r["method"]): r for r in rows}
    tasks: dict[str, dict[str, Any]] = {}
    for task in sorted({r["task"] for r in rows}, key=lambda t: (t not in TASK_NAMES, TASK_NAMES.index(t)
                                                               if t in TASK_NAMES else 0, t)):
        ids = sorted({r["id"] for r in rows if r["task"] == task and all((r["id"], m) in by for m in methods)})
        if not ids:
            continue
        entry: dict[str, Any] = {"items": len(ids), "ids": ids}
        for m in methods:
            entry[m] = _mean([by[(i, m)]["score"] for i in ids])
            if m != "full":
                entry[f"{m}_speedup"] = statistics.median(by[(i, "full")]["ttft_s"] / by[(i, m)]["ttft_s"] for i in ids)
                entry[f"{m}_computed"] = statistics.median(by[(i, m)]["computed_token_fraction"] for i in ids)
                entry[f"{m}_lost"] = sum(by[(i, "full")]["score"] > by[(i, m)]["score"] for i in ids)
                entry[f"{m}_gained"] = sum(by[(i, "full")]["score"] < by[(i, m)]["score"] for i in ids)
        tasks[task] = entry
    summary: dict[str, Any] = {"tasks": tasks}
    counted = {t: e for t, e in tasks.items() if e.get("full", 0) >= MIN_FULL}
    for m in methods:
        if m == "full":
            continue
        ratios = {t: e[m] / e["full"] for t, e in counted.items()}
        scores = {t: [(by[(i, "full")]["score"], by[(i, m)]["score"]) for i in e["ids"]] for t, e in counted.items()}
        overall, per_task = retention_intervals(scores)
        for t, ci in per_task.items():
            tasks[t][f"{m}_ci"] = ci
        summary[m] = {"retention": _mean(list(ratios.values())), "worst": min(ratios.items(), key=lambda kv: kv[1])
                      if ratios else None, "counted": len(ratios), "ci": overall}
    for e in tasks.values():
        e.pop("ids")
    return summary


def retention_intervals(scores: dict[str, list[tuple[float, float]]], reps: int = BOOTSTRAP_REPS,
                        seed: int = 0) -> tuple[tuple[float, float] | None, dict[str, tuple[float, float]]]:
    """95 % percentile-bootstrap intervals of the retention (mean method score / mean full score), per task and
    averaged over the tasks: ``scores`` maps a task to its items' (full, method) scores; each replicate resamples
    every task's items with replacement (a replicate whose full mean is 0 counts as retention 1, nothing to lose)."""
    rng = random.Random(seed)
    per_task: dict[str, list[float]] = {t: [] for t in scores}
    overall: list[float] = []
    for _ in range(reps):
        ratios = []
        for task, pairs in scores.items():
            sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
            full = sum(f for f, _ in sample)
            ratio = sum(x for _, x in sample) / full if full else 1.0
            per_task[task].append(ratio)
            ratios.append(ratio)
        if ratios:
            overall.append(sum(ratios) / len(ratios))

    def interval(values: list[float]) -> tuple[float, float]:
        values = sorted(values)
        return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]

    return (interval(overall) if overall else None), {t: interval(v) for t, v in per_task.items() if v}


def report_text(records: list[dict[str, Any]], methods: list[str]) -> str:
    parts = []
    for model in sorted({r["model"] for r in records}):
        for length in sorted({r["length"] for r in records if r["model"] == model}):
            present = {r["method"] for r in records if r["model"] == model and r["length"] == length}
            shown = [m for m in methods if m in present]
            if "full" not in shown or len(shown) < 2:
                continue
            s = summarize(records, model, length, shown)
            header = ["task", "items", "full"]
            for m in shown[1:]:
                header += [m, f"{m} ret.", f"{m} lost", f"{m} TTFT x", f"{m} computed"]
            rows = []
            for task, e in s["tasks"].items():
                row = [task, e["items"], f"{100 * e['full']:.0f}"]
                for m in shown[1:]:
                    ci = e.get(f"{m}_ci")
                    ret = (f"{100 * e[m] / e['full']:.0f} % [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"
                           if e["full"] >= MIN_FULL and ci else "n/c")
                    row += [f"{100 * e[m]:.0f}", ret, e[f"{m}_lost"], f"{e[f'{m}_speedup']:.2f}",
                            f"{e[f'{m}_computed']:.2f}"]
                rows.append(row)
            lines = [f"**{model}, {length} tokens**", "", md_table(header, rows), ""]
            for m in shown[1:]:
                worst = s[m]["worst"]
                ci = s[m]["ci"]
                lines.append(f"- `{m}`: retention {100 * s[m]['retention']:.1f} %" +
                             (f" (95 % bootstrap interval {100 * ci[0]:.1f}-{100 * ci[1]:.1f} %)" if ci else "") +
                             " averaged over the "
                             f"{s[m]['counted']} tasks where full scores >= {100 * MIN_FULL:.0f} %" +
                             (f"; lowest {worst[0]} {100 * worst[1]:.0f} %" if worst else ""))
            excluded = [f"{t} ({100 * e['full']:.0f})" for t, e in s["tasks"].items() if e["full"] < MIN_FULL]
            if excluded:
                lines.append(f"- not counted (full < {100 * MIN_FULL:.0f} %): {', '.join(excluded)}")
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def curve_text(records: list[dict[str, Any]]) -> str:
    """Every method against full on the items it ran, per (model, task family, length, seed): the accuracy / speed
    curve (choose on one seed, confirm on another).
    Score = mean over those items; lost / gained = items where it scores below / above full; kept of full's = what
    it keeps of what full finds (gains not counted); TTFT x = median of
    full / method per item (runs at different times: a candidate run later than full is noisier than the
    interleaved full / lazy / paper); computed = median computed-token fraction; threads = the torch thread counts of
    full's and the method's runs (:func:`benchmarks.common.threads_text`: compare methods at equal counts)."""
    rows = []
    def family_of(task: str) -> str:
        return task if task.startswith("entity") else "ruler"

    for model, family, length, seed in sorted({(r["model"], family_of(r["task"]), r["length"], r.get("seed", 0))
                                               for r in records}):
        mine = [r for r in records if r["model"] == model and r["length"] == length
                and family_of(r["task"]) == family and r.get("seed", 0) == seed]
        full = {r["id"]: r for r in mine if r["method"] == "full"}
        others = sorted({r["method"] for r in mine} - set(CANDIDATES))  # another dtype's runs: full@float32
        for method in [*CANDIDATES, *others]:
            pairs = [(full[r["id"]], r) for r in mine if r["method"] == method and r["id"] in full]
            if method == "full" or not pairs:
                continue
            rows.append([model, family if family != "ruler" else "RULER 13", length, seed, method, len(pairs),
                         f"{100 * _mean([f['score'] for f, _ in pairs]):.1f}",
                         f"{100 * _mean([m['score'] for _, m in pairs]):.1f}",
                         sum(f["score"] > m["score"] for f, m in pairs), sum(f["score"] < m["score"] for f, m in pairs),
                         _kept(pairs), f"{statistics.median(f['ttft_s'] / m['ttft_s'] for f, m in pairs):.2f}",
                         f"{statistics.median(m['computed_token_fraction'] for _, m in pairs):.2f}",
                         threads_text(pairs)])
    return md_table(["model", "items", "tokens", "seed", "method", "n", "full score", "score", "lost", "gained",
                     "kept of full's", "TTFT x", "computed", "threads (full / it)"], rows)


def _kept(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """What the method keeps of what the full model finds: sum over items of min(full, method) / sum of full (no
    credit for items it scores above full)."""
    found = sum(f["score"] for f, _ in pairs)
    return f"{100 * sum(min(f['score'], m['score']) for f, m in pairs) / found:.1f} %" if found else "n/c"


def section(records: list[dict[str, Any]], methods: list[str] = REPORT_METHODS) -> str:
    """What ``--report`` writes between the markers: the per-task tables, then every method's curve."""
    return report_text(records, methods) + "\n**Every method on the items it ran**\n\n" + curve_text(records)


def load_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m", help="gemma3-270m (completion) or smollm2-135m-instruct (chat)")
    p.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), help="RULER task names, or entity_<k>")
    p.add_argument("--lengths", nargs="+", type=int, default=[4096])
    p.add_argument("--count", type=int, default=2, help="items per task and length")
    p.add_argument("--ids", nargs="+", help="only the items of these ids among those built (e.g. the items an earlier "
                   "run lost: niah_single_1-8192-6-s0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["full", "lazy", "paper"], choices=list(CANDIDATES))
    p.add_argument("--max-new", type=int, default=64, help="cap on RULER's generation budget per task")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="chat template (default: for the instruct models) or completion-style prompts")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantize", nargs="+", default=["none"], choices=["none", "int8", "int4"],
                   help="each method also on the model with these weights (lazy_core.quantize), recorded as "
                   "method+int8 (none: the name alone); benchmarks.quantized compares them")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--report", action="store_true", help="after measuring, rewrite the BENCHMARKS.md section")
    p.add_argument("--report-only", action="store_true", help="only rewrite the BENCHMARKS.md section")
    p.add_argument("--report-methods", nargs="+", default=REPORT_METHODS)
    p.add_argument("--section", default="ruler", help="the BENCHMARKS.md block --report writes (<!-- NAME:begin -->); "
                   "ruler_n20 holds the 20-items-per-task runs (benchmarks/results/ruler-n20-<model>.jsonl)")
    p.add_argument("--report-from", type=Path, nargs="+", help="results files the report reads (default: --out)")
    p.add_argument("--report-dtype", help="report only the records run in this dtype, each method against the full "
                   "model in the same dtype (default: every record, another dtype's methods as name@dtype)")
    p.add_argument("--measured-in", type=Path, nargs="+", default=[],
                   help="results files whose records are not measured again (e.g. full's, in an earlier round's "
                   "file), so a new round's file holds only its own methods; report with --report-from both")
    args = p.parse_args(argv)
    if "full" not in args.methods and not args.report_only:
        p.error("--methods must include full: retention is measured against it")
    if not args.report_only:
        measure(args)
    if args.report or args.report_only:
        records = [r for path in args.report_from or [args.out] for r in load_records(path)]
        text = section(within_dtype(records, args.report_dtype) if args.report_dtype else records,
                       args.report_methods)
        replace_section(args.section, text, BENCHMARKS_MD)
        print(text)


if __name__ == "__main__":
    main()
