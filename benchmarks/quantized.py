"""Quantized weights against the dense ones on the same items: what int8 / int4 (lazy_core.quantize) keep of what the
dense bf16 model finds, full and pruned.

    .venv/bin/python -m benchmarks.eval --tasks needle entity --needle-lengths 2048 2560 3072 \\
        --depths 0.05 0.15 0.25 0.35 0.45 0.55 0.65 0.75 0.85 0.95 --entity-lengths 3072 --entity-haystacks 8 \\
        --methods full lazy --quantize none int4 --dtype bfloat16 --threads 1 --no-loglik \\
        --out benchmarks/results/quant-eval-smollm2.jsonl
    .venv/bin/python -m benchmarks.ruler --model gemma3-270m --lengths 4096 8192 --count 2 --methods full lazy \\
        --quantize none int4 --out benchmarks/results/quant-ruler-gemma.jsonl
    .venv/bin/python -m benchmarks.quantized --report

Each record of a quantized method (``lazy+int4``: benchmarks.common.quant_label) is paired with the record of the
same method on the dense weights (``lazy``) and the same item, in the same file. Per model, task (and length for
RULER), method and scheme: items, what the dense model finds and what the quantized one finds, items lost (found
dense, not quantized) and gained, and the share of items with the same text. "Found": a passkey or entity code in the
output (eval: :func:`benchmarks.metrics.passkey_found`), RULER's score 1 (every answer). The job's ROUGE-L comes from
``benchmarks.summarize_job --quantize none int4`` (paired bootstrap against the dense weights). ``--report`` writes the
BENCHMARKS.md block ``quantized``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import BENCHMARKS_MD, RESULTS_DIR, md_table, replace_section, split_quant
from benchmarks.metrics import passkey_found

DEFAULT_FILES = sorted(RESULTS_DIR.glob("quant-*.jsonl"))


def _found(rec: dict[str, Any]) -> bool:
    if "score" in rec:  # a RULER record
        return rec["score"] >= 1.0
    return passkey_found(rec["text"], rec["answers"][0])


def _item(rec: dict[str, Any]) -> str:
    return rec.get("item_id") or rec["id"]


def _group(rec: dict[str, Any]) -> tuple[str, str, int]:
    """(model, task, length) of a record: RULER records carry them, eval records their task and prompt length."""
    return rec["model"], rec["task"], rec.get("length") or 0


def compare(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, task, length, method, scheme) with a quantized record paired to a dense one."""
    dense = {(_group(r), r["method"], _item(r)): r for r in records if split_quant(r["method"])[1] == "none"}
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for rec in records:
        method, scheme = split_quant(rec["method"])
        partner = dense.get((_group(rec), method, _item(rec)))
        if scheme == "none" or partner is None:
            continue
        if partner.get("prompt_tokens") != rec.get("prompt_tokens") or partner["answers"] != rec["answers"]:
            raise ValueError(f"item {_item(rec)} differs between its dense and {scheme} records: rerun it")
        groups.setdefault((*_group(rec), method, scheme), []).append((partner, rec))
    rows = []
    for (model, task, length, method, scheme), pairs in sorted(groups.items()):
        found = [(_found(a), _found(b)) for a, b in pairs]
        rows.append({"model": model, "task": task, "length": length, "method": method, "scheme": scheme,
                     "items": len(pairs), "found_dense": sum(f for f, _ in found),
                     "found_quantized": sum(g for _, g in found), "lost": sum(f and not g for f, g in found),
                     "gained": sum(g and not f for f, g in found),
                     "same_text": sum(a["text"] == b["text"] for a, b in pairs) / len(pairs)})
    return rows


def totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, method, scheme): the rows summed (the "lost beyond 1 in 30 found" target)."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        t = out.setdefault((r["model"], r["method"], r["scheme"]), {"model": r["model"], "method": r["method"],
                                                                    "scheme": r["scheme"], "items": 0,
                                                                    "found_dense": 0, "found_quantized": 0,
                                                                    "lost": 0, "gained": 0})
        for key in ("items", "found_dense", "found_quantized", "lost", "gained"):
            t[key] += r[key]
    return list(out.values())


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["model", "task", "prompt", "method", "weights", "items", "found (dense)", "found (quantized)", "lost",
              "gained", "same text"]
    body = [[r["model"], r["task"], r["length"] or "mixed", r["method"], r["scheme"], r["items"], r["found_dense"],
             r["found_quantized"], r["lost"], r["gained"], f"{r['same_text']:.0%}"] for r in rows]
    sums = [[t["model"], t["method"], t["scheme"], t["items"], t["found_dense"], t["found_quantized"], t["lost"],
             t["gained"], f"{t['lost'] / t['found_dense']:.1%}" if t["found_dense"] else "n/a"] for t in totals(rows)]
    return (md_table(header, body) + "\n\nIn all:\n\n"
            + md_table(["model", "method", "weights", "items", "found (dense)", "found (quantized)", "lost", "gained",
                        "lost / found"], sums) + "\n")


def load_records(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                rec.setdefault("model", _model_of(path, rec))
                out.append(rec)
    return out


def _model_of(path: Path, rec: dict[str, Any]) -> str:
    """Eval records do not name their model: the file does (``quant-eval-<model>.jsonl``)."""
    stem = path.stem.removeprefix("quant-eval-").removeprefix("quant-ruler-")
    return {"smollm2": "smollm2-135m-instruct", "gemma": "gemma3-270m"}.get(stem, stem)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=Path, nargs="+", default=DEFAULT_FILES)
    parser.add_argument("--report", action="store_true", help="rewrite the BENCHMARKS.md block 'quantized'")
    args = parser.parse_args(argv)
    rows = compare(load_records(args.files))
    text = markdown(rows)
    if args.report:
        replace_section("quantized", text, BENCHMARKS_MD)
    print(text)
    return rows


if __name__ == "__main__":
    main()
