"""bf16 against fp32 on the evaluation's items: does the dtype that ``dtype="auto"`` picks on a bf16 CPU keep what the
fp32 model finds, full and pruned?

    .venv/bin/python -m benchmarks.eval --dtype bfloat16 --methods full lazy --tasks needle multidoc_qa --long \\
        --out benchmarks/results/precision-bf16.jsonl
    .venv/bin/python -m benchmarks.eval --dtype bfloat16 --methods full lazy --tasks needle --long --seed 2 \\
        --out benchmarks/results/precision-bf16-seed2.jsonl
    .venv/bin/python -m benchmarks.precision

(The bf16 records stay out of ``eval*.jsonl``, which ``benchmarks.report`` merges as fp32 runs.) Pairs each bf16 record
with the fp32 record of the same method and item (``--fp32`` files, default the evaluation's
own records) and reports per method and task: items, passkeys found (needle) in fp32 and bf16 and those lost, the gold
answer's mean log-likelihood (QA) in both and its mean change, and the share of items whose generated text is the
same. The job's ROUGE-L in both dtypes comes from ``benchmarks.summarize_job --dtypes float32 bfloat16``. Writes
``benchmarks/results/precision.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, md_table
from benchmarks.metrics import passkey_found


def load(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(method, item_id) -> record over the files that exist (the last line wins)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                out[(rec["method"], rec["item_id"])] = rec
    return out


def compare(fp32: dict[tuple[str, str], dict[str, Any]], bf16: dict[tuple[str, str], dict[str, Any]],
            methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    for method in methods:
        pairs = [(fp32[key], rec) for key, rec in bf16.items() if key[0] == method and key in fp32]
        odd = [a["item_id"] for a, b in pairs
               if (a["prompt_tokens"], a["answers"]) != (b["prompt_tokens"], b["answers"])]
        if odd:
            raise ValueError(f"items {odd[:3]} differ between the fp32 and bf16 records (another suite?): rerun them")
        for task in sorted({a["task"] for a, _ in pairs}):
            mine = [(a, b) for a, b in pairs if a["task"] == task]
            row: dict[str, Any] = {"method": method, "task": task, "items": len(mine),
                                   "same_text": sum(a["text"] == b["text"] for a, b in mine) / len(mine)}
            if task == "needle":
                found = [(passkey_found(a["text"], a["answers"][0]), passkey_found(b["text"], b["answers"][0]))
                         for a, b in mine]
                row.update(found_fp32=sum(f for f, _ in found), found_bf16=sum(g for _, g in found),
                           lost=sum(f and not g for f, g in found), gained=sum(g and not f for f, g in found))
            scored = [(a["gold_loglik"], b["gold_loglik"]) for a, b in mine
                      if a.get("gold_loglik") is not None and b.get("gold_loglik") is not None]
            if scored:
                row.update(loglik_fp32=statistics.fmean(a for a, _ in scored),
                           loglik_bf16=statistics.fmean(b for _, b in scored),
                           loglik_change=statistics.fmean(b - a for a, b in scored))
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["method", "task", "items", "passkeys fp32", "passkeys bf16", "lost", "gained", "gold loglik fp32",
              "gold loglik bf16", "change (nats)", "same text"]
    body = [[r["method"], r["task"], r["items"], r.get("found_fp32", ""), r.get("found_bf16", ""), r.get("lost", ""),
             r.get("gained", ""), r.get("loglik_fp32", ""), r.get("loglik_bf16", ""), r.get("loglik_change", ""),
             f"{r['same_text']:.0%}"] for r in rows]
    return md_table(header, body) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", type=Path, nargs="+",
                        default=[RESULTS_DIR / "eval.jsonl", RESULTS_DIR / "eval-needle-seed2.jsonl"])
    parser.add_argument("--bf16", type=Path, nargs="+",
                        default=[RESULTS_DIR / "precision-bf16.jsonl", RESULTS_DIR / "precision-bf16-seed2.jsonl"])
    parser.add_argument("--methods", nargs="+", default=["full", "lazy"])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "precision.md")
    args = parser.parse_args(argv)
    bf16 = load(args.bf16)
    if not bf16:
        raise FileNotFoundError(f"no bf16 records in {[str(p) for p in args.bf16]}; run the eval commands in the "
                                "module docstring first")
    rows = compare(load(args.fp32), bf16, args.methods)
    text = markdown(rows)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return rows


if __name__ == "__main__":
    main()
