"""Short prompts: where does pruning stop paying? First-token agreement, empty outputs and TTFT saved vs. length.

    .venv/bin/python -m benchmarks.short_prompts                       # seed 0: the items the threshold is chosen on
    .venv/bin/python -m benchmarks.short_prompts --seed 1 --report     # seed 1: other documents; writes BENCHMARKS.md
    .venv/bin/python -m benchmarks.short_prompts --report-only         # only rebuild the tables from --out

Documents are real text (ACLSum paper bodies and Paul Graham essays, alternating, in a seeded order), each cut at a
sentence end so that the pipeline's summarization prompt (chat template + task template, ``pipeline.prompts``) has
at most L tokens, for L in ``--lengths``. Each item runs three ways, in rotating order: the full model
(``LazyConfig.off()``), the default schedule with the threshold switched off (``min_prompt_tokens=0``: every prompt
pruned) and the default schedule itself. Per length: the share of items whose output is empty (only whitespace once
decoded) or whose first token differs from the full model's, and the TTFT saved (median of the per-item differences
and of the per-item ratios). Every item appends a JSON line to ``--out``: a stopped run resumes.

``--report`` rewrites what lies between ``<!-- short:begin -->`` and ``<!-- short:end -->`` in BENCHMARKS.md: per
seed, the command that measures its items and their table. What the tables show is written by hand around the
markers, so a rebuild leaves it alone.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import BENCHMARKS_MD, RESULTS_DIR, ROOT, load, machine, md_table, replace_section
from benchmarks.data import load_aclsum, load_essays
from lazy_core import DEFAULT_MODEL, LazyConfig, LazyLLM

DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096)
DEFAULT_NEW_TOKENS = 16
DEFAULT_OUT = RESULTS_DIR / "short_prompts.jsonl"
METHODS = ("full", "no_threshold", "default")


def documents(seed: int) -> list[str]:
    """Paper bodies and essays, alternating, each list in a seeded order."""
    rng = random.Random(seed)
    papers = [p["text"] for p in load_aclsum()]
    essays = list(load_essays())
    rng.shuffle(papers)
    rng.shuffle(essays)
    out = []
    for a, b in zip(papers, essays, strict=False):
        out += [a, b]
    return out


def fit_prompt(tokenizer: Any, text: str, length: int) -> list[int] | None:
    """The pipeline's summarization prompt over the longest sentence-ending prefix of ``text`` that keeps the prompt
    within ``length`` tokens (None when the text is too short to fill at least 90 % of it)."""
    from pipeline import PipelineConfig
    from pipeline.prompts import build_prompt_ids

    cfg = PipelineConfig(input="unused", output="unused")
    overhead = len(build_prompt_ids(tokenizer, cfg, "x", None)) - 1
    enc = tokenizer(text[: length * 12], add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    budget = length - overhead
    if len(offsets) < budget:
        return None
    end = offsets[budget - 1][1]
    for _ in range(8):
        cut = max(text.rfind(". ", 0, end), text.rfind(".\n", 0, end))
        prefix = text[: cut + 1] if cut > 0 else text[:end]
        ids = build_prompt_ids(tokenizer, cfg, prefix, None)
        if len(ids) <= length:
            return ids if len(ids) >= 0.9 * length else None
        end = cut if cut > 0 else end - 16
    return None


def configs(model: Any) -> dict[str, LazyConfig]:
    default = LazyConfig.default_for(model)
    return {"full": LazyConfig.off(), "no_threshold": default.model_copy(update={"min_prompt_tokens": 0}),
            "default": default}


def run_item(engines: dict[str, LazyLLM], tok: Any, ids: list[int], order: list[str], new_tokens: int):
    import torch

    out = {}
    for name in order:
        gen = engines[name].generate(torch.tensor([ids]), max_new_tokens=new_tokens)
        new = gen.sequences[0, len(ids): len(ids) + gen.stats[0].new_tokens].tolist()
        out[name] = {"first": new[0], "text": tok.decode(new, skip_special_tokens=True), "ttft_s": gen.stats[0].ttft_s,
                     "pruned": gen.stats[0].pruned, "threshold": engines[name].config.min_prompt_tokens}
    return out


def _key(rec: dict[str, Any], method: str) -> tuple[Any, ...]:
    return rec["seed"], rec["length"], rec["index"], rec["new_tokens"], method, rec["threshold"]


def load_records(path: Path, threshold: int) -> list[dict[str, Any]]:
    """One line per (item, method) run -> one dict per item with a key per method (the latest run of each; for
    'default', the latest under ``threshold``, the current default's)."""
    items: dict[tuple[Any, ...], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec["method"] == "default" and rec["threshold"] != threshold:
                    continue
                item = items.setdefault((rec["seed"], rec["length"], rec["index"], rec["new_tokens"]),
                                        {k: rec[k] for k in ("seed", "length", "index", "prompt_tokens", "new_tokens")})
                item[rec["method"]] = rec
    return list(items.values())


def measure(args: argparse.Namespace) -> None:
    model, tok = load(args.model, args.threads)
    engines = {name: LazyLLM(model, cfg) for name, cfg in configs(model).items() if name in args.methods}
    done = set()
    if args.out.exists():
        done = {_key(r, r["method"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
    docs = documents(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for length in args.lengths:
        index = 0
        for text in docs:
            if index == args.items:
                break
            ids = fit_prompt(tok, text, length)
            if ids is None:
                continue
            base = {"seed": args.seed, "length": length, "index": index, "prompt_tokens": len(ids),
                    "new_tokens": args.new_tokens}
            todo = [m for m in args.methods
                    if _key({**base, "threshold": engines[m].config.min_prompt_tokens}, m) not in done]
            if todo:
                order = todo[index % len(todo):] + todo[: index % len(todo)]
                result = run_item(engines, tok, ids, order, args.new_tokens)
                with args.out.open("a", encoding="utf-8") as f:
                    for m in todo:
                        f.write(json.dumps({**base, "method": m, **result[m]}) + "\n")
                print(f"L={length} #{index}: " + ", ".join(
                    f"{m} {result[m]['ttft_s'] * 1e3:.0f} ms {result[m]['text'][:24]!r}" for m in todo), flush=True)
            index += 1


def _empty(rec: dict[str, Any], method: str) -> bool:
    return not rec[method]["text"].strip()


def summarize(records: list[dict[str, Any]], methods: tuple[str, ...] = ("no_threshold", "default")):
    """Per length: the full model's empties and TTFT, and per pruned method its empties, losses, first-token
    disagreements and TTFT saved (items that ran every method only)."""
    rows = []
    for length in sorted({r["length"] for r in records}):
        recs = [r for r in records if r["length"] == length and all(m in r for m in ("full", *methods))]
        if not recs:
            continue
        row: dict[str, Any] = {"length": length, "items": len(recs), "full_empty": sum(_empty(r, "full") for r in recs),
                               "full_ttft_ms": statistics.median(r["full"]["ttft_s"] for r in recs) * 1e3}
        for m in methods:
            row[m] = {
                "empty": sum(_empty(r, m) for r in recs),
                "lost": sum(_empty(r, m) and not _empty(r, "full") for r in recs),
                "first_differs": sum(r[m]["first"] != r["full"]["first"] for r in recs),
                "pruned": sum(r[m]["pruned"] for r in recs),
                "saved_ms": statistics.median((r["full"]["ttft_s"] - r[m]["ttft_s"]) * 1e3 for r in recs),
                "ratio": statistics.median(r["full"]["ttft_s"] / r[m]["ttft_s"] for r in recs),
            }
        rows.append(row)
    return rows


def report_text(rows: list[dict[str, Any]], methods: tuple[str, ...], threshold: int, new_tokens: int) -> str:
    names = {"no_threshold": "every prompt pruned", "default": f"min_prompt_tokens={threshold}"}
    header = ["prompt tokens", "items", "full: empty", "full TTFT ms"]
    for m in methods:
        header += [f"{names[m]}: empty (lost)", "first token differs", "TTFT saved ms (ratio)", "pruned"]
    body = []
    for r in rows:
        cells = [f"<= {r['length']}", r["items"], r["full_empty"], f"{r['full_ttft_ms']:.0f}"]
        for m in methods:
            s = r[m]
            cells += [f"{s['empty']} ({s['lost']})", s["first_differs"], f"{s['saved_ms']:.0f} ({s['ratio']:.2f}x)",
                      s["pruned"]]
        body.append(cells)
    return (
        f"{new_tokens} new tokens, greedy; 'lost' = empty where the full model's output is not; 'pruned' = items "
        "that lost any token in prefill. TTFT: medians of the per-item differences and ratios (interleaved runs, "
        "one process).\n\n" + md_table(header, body)
    )


def command(rows: list[dict[str, Any]], seed: int, new_tokens: int) -> str:
    """The command that measures the items of ``rows`` (one seed's :func:`summarize`); rerun, it skips what the
    results file holds."""
    lengths = " ".join(str(r["length"]) for r in rows)
    items = max(r["items"] for r in rows)
    return (f"python -m benchmarks.short_prompts --seed {seed} --items {items} --lengths {lengths} "
            f"--new-tokens {new_tokens}")


def section(records: list[dict[str, Any]], threshold: int, new_tokens: int, out: Path) -> str:
    """The generated part of BENCHMARKS.md's "short" section: per seed, the command behind it and its table."""
    out = out.resolve()
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    rebuild = "" if out == DEFAULT_OUT else f" --out {shown}"
    rebuild += "" if new_tokens == DEFAULT_NEW_TOKENS else f" --new-tokens {new_tokens}"
    parts = [f"From `{shown}`; `python -m benchmarks.short_prompts --report-only{rebuild}` rebuilds this part."]
    for seed in sorted({r["seed"] for r in records}):
        sub = [r for r in records if r["seed"] == seed]
        methods = tuple(m for m in ("no_threshold", "default") if any(m in r for r in sub))
        rows = summarize(sub, methods)
        if rows:
            parts.append(f"**Seed {seed}** (`{command(rows, seed, new_tokens)}`). "
                         + report_text(rows, methods, threshold, new_tokens))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument("--items", type=int, default=16, help="Items per length.")
    parser.add_argument("--new-tokens", type=int, default=DEFAULT_NEW_TOKENS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="Also write the BENCHMARKS.md section.")
    parser.add_argument("--report-only", action="store_true", help="Only rebuild the report from --out.")
    parser.add_argument("--md", type=Path, default=BENCHMARKS_MD, help="The Markdown file whose section to rewrite.")
    args = parser.parse_args(argv)
    threshold = LazyConfig.default_for(30).min_prompt_tokens
    if not args.report_only:
        print(json.dumps(machine()))
        measure(args)
    records = [r for r in load_records(args.out, threshold) if r["new_tokens"] == args.new_tokens]
    text = section(records, threshold, args.new_tokens, args.out)
    print(text)
    if args.report or args.report_only:
        replace_section("short", text, args.md)


if __name__ == "__main__":
    main()
