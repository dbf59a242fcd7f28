"""How close the full model's answer was: for each RULER item of results files that the full model answers, its
margin on the answer (teacher-forced), beside what every pruned method in the files scored on it. Pruning perturbs the
last layers' inputs a little; where the full model's choice of an answer token was a near tie, a little is enough.

    R=benchmarks/results
    .venv/bin/python -m benchmarks.ruler_margins --model gemma3-270m --tasks niah_single_1 --results \
        $R/ruler-n20-gemma3-270m-8192.jsonl $R/ruler-n60-gemma3-270m-8192.jsonl \
        $R/ruler-remedies-gemma3-270m-8192-round4.jsonl $R/ruler-remedies-gemma3-270m-8192-round5.jsonl \
        --out $R/ruler-margins-gemma3-270m-8192.jsonl

Per found item (the full model's record scores > 0): the full model's own output up to the end of the last answer it
wrote, tokenized, is fed after the prompt in one forward pass of the unpatched model (bf16 as recorded, the first
``max_tokens`` of it at most); at each of its tokens the margin is the log-probability of that token minus the best
other token's (nats; > 0 where the greedy choice was that token). The item's margin is the smallest of them: how near
the full model came to writing something else. The report buckets the found items by margin and counts, per method,
the items it lost in each bucket. ``--margins-from`` an earlier ``--out`` reuses the margins of the items it holds,
so new methods' records (another schedule, the model in fp32: ``full@float32``) are set beside them without computing
again.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import QuantizedModels, md_table
from benchmarks.ruler import load_records
from benchmarks.ruler_losses import item_of

EDGES = (0.5, 1.0, 2.0)  # nats: the buckets' upper ends, the last bucket open


def answer_prefix(text: str, answers: list[str]) -> str | None:
    """``text`` up to the end of the last answer it holds (the part the answer's tokens were chosen in), None when it
    holds none."""
    ends = [text.find(a) + len(a) for a in answers if a and a in text]
    return text[: max(ends)] if ends else None


@torch.inference_mode()
def token_margins(model: Any, prompt_ids: list[int], continuation: list[int]) -> list[float]:
    """Teacher-forced ``continuation`` after ``prompt_ids``: per continuation token, its log-probability minus the best
    other token's (nats), from one forward pass keeping only the logits that predict the continuation."""
    n = len(continuation)
    ids = torch.tensor([prompt_ids + continuation])  # [1, T + n]
    logits = model(input_ids=ids, logits_to_keep=n + 1).logits[0, :n].float()  # [n, V]: rows predict continuation
    logp = logits.log_softmax(-1)
    at = (torch.arange(n), torch.tensor(continuation))  # each row's continuation token
    chosen = logp[at]  # [n]
    logp[at] = float("-inf")  # what is left: every other token
    return (chosen - logp.max(-1).values).tolist()


def found_items(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The full model's records that score > 0 and wrote an answer, one per item id, in file order."""
    seen, out = set(), []
    for r in records:
        if r["method"] == "full" and r["score"] > 0 and r["id"] not in seen and answer_prefix(r["text"], r["answers"]):
            seen.add(r["id"])
            out.append(r)
    return out


def outcomes(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """item id -> method -> score (the last record of each pair wins)."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        out.setdefault(r["id"], {})[r["method"]] = r["score"]
    return out


def bucket_of(margin: float, edges: tuple[float, ...] = EDGES) -> str:
    """The name of the bucket ``margin`` falls in: below the first edge, between two, or at or above the last."""
    for low, high in zip((None, *edges), edges, strict=False):
        if margin < high:
            return f"< {high:g}" if low is None else f"{low:g}-{high:g}"
    return f">= {edges[-1]:g}"


def bucket_table(rows: list[dict[str, Any]], methods: list[str], edges: tuple[float, ...] = EDGES) -> str:
    """Found items by the full model's margin; per method, how many of them it ran and lost there."""
    names = [bucket_of(x, edges) for x in (edges[0] - 1, *edges)]
    table = []
    for name in names:
        here = [r for r in rows if bucket_of(r["margin"], edges) == name]
        cells = []
        for m in methods:
            ran = [r for r in here if m in r["scores"]]
            lost = sum(r["scores"][m] < r["full_score"] for r in ran)
            cells.append(f"{lost} / {len(ran)}")
        table.append([name, len(here), *cells])
    return md_table(["full model's margin (nats)", "found", *[f"{m} lost / ran" for m in methods]], table)


def item_table(rows: list[dict[str, Any]], methods: list[str], below: float) -> str:
    """The found items whose margin is below ``below`` or that some method lost, smallest margin first."""
    shown = [r for r in rows if r["margin"] < below or any(r["scores"].get(m, 1e9) < r["full_score"] for m in methods)]
    table = [[r["id"], f"{r['margin']:.2f}", repr(r["answer_text"])[:32],
              *[("lost" if r["scores"][m] < r["full_score"] else "kept") if m in r["scores"] else "-" for m in methods]]
             for r in sorted(shown, key=lambda r: r["margin"])]
    return md_table(["item", "margin", "full's output", *methods], table)


def section(rows: list[dict[str, Any]]) -> str:
    """The report (what BENCHMARKS.md shows): the bucket table, then the items below the first edge or lost."""
    methods = sorted({m for r in rows for m in r["scores"]})
    return bucket_table(rows, methods) + "\n\n" + item_table(rows, methods, EDGES[0])


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def margin_rows(found: list[dict[str, Any]], scores: dict[str, dict[str, float]], known: dict[str, dict[str, Any]],
                compute: Callable[[dict[str, Any]], tuple[str, list[float]]]) -> list[dict[str, Any]]:
    """One row per found record: the full model's answer text and per-token margins from ``known`` (rows of an earlier
    run, by item id: the margins depend only on the full model's record) or else from ``compute(record)``, beside
    every other method's score on the item in ``scores``."""
    rows = []
    for r in found:
        text, margins = ((known[r["id"]]["answer_text"], known[r["id"]]["margins"]) if r["id"] in known
                         else compute(r))
        rows.append({"id": r["id"], "task": r["task"], "length": r["length"], "answer_text": text,
                     "margins": [round(m, 3) for m in margins], "margin": min(margins), "full_score": r["score"],
                     "scores": {m: s for m, s in scores[r["id"]].items() if m != "full"}})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, nargs="+", required=True)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--tasks", nargs="+", help="only these tasks")
    p.add_argument("--lengths", type=int, nargs="+", help="only these lengths")
    p.add_argument("--max-tokens", type=int, default=64, help="the longest output prefix fed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("--margins-from", type=Path, nargs="+", default=[],
                   help="earlier --out files whose items' margins are reused, not computed again (e.g. to set a new "
                   "method's records beside margins measured before)")
    args = p.parse_args(argv)
    records = [r for path in args.results for r in load_records(path) if r["model"] == args.model
               and (not args.tasks or r["task"] in args.tasks) and (not args.lengths or r["length"] in args.lengths)]
    found = found_items(records)
    if not found:
        raise SystemExit(f"no item of {args.model} that the full model answers in {[str(p) for p in args.results]}")
    known = {row["id"]: row for path in args.margins_from for row in load_rows(path)}
    models = None

    def compute(r: dict[str, Any]) -> tuple[str, list[float]]:
        nonlocal models
        models = models or QuantizedModels(args.model, args.threads, found[0]["dtype"])
        tok = models.tokenizer
        text = answer_prefix(r["text"], r["answers"])
        continuation = tok(text, add_special_tokens=False).input_ids[: args.max_tokens]
        margins = token_margins(models.get("none"), item_of(tok, r).prompt_ids, continuation)
        print(json.dumps({"id": r["id"], "answer_text": text, "margins": margins}), flush=True)
        return text, margins

    rows = margin_rows(found, outcomes(records), known, compute)
    if args.out:
        args.out.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    print(section(rows))
    return rows


if __name__ == "__main__":
    main()
