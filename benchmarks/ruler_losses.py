"""Why the default loses a fact the full model finds: for each RULER item of a results file where ``lazy`` scores below
``full``, where the answer's tokens fall out of the kept set, and whether revival brought them back.

    .venv/bin/python -m benchmarks.ruler_losses --results benchmarks/results/ruler-n20.jsonl --model gemma3-270m

Per lost item (rebuilt from its id, run again with the method's config from the record, greedy, keeping the state):
the answer strings' token positions in the prompt (each answer's first occurrence, tokenized as it stands in the
prompt); per pruning layer, how many of them the layer after it holds once prefill is done (what the first token is
chosen from); and at the end of the generation, how many the last layer holds (kept, or brought back by revival) and
how many tokens the item revived in all. An
answer whose tokens every layer keeps and still comes out wrong points at something other than pruning (the scores
of the kept context, or bf16). Rank by score at the pruning layer is not computed here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import QuantizedModels, md_table
from benchmarks.ruler import ONE_LINE, load_records, stop_ids
from benchmarks.ruler_tasks import build_item
from lazy_core import LazyConfig, LazyLLM


def answer_positions(tok: Any, prompt_ids: list[int], answers: list[str]) -> dict[str, list[int]]:
    """Per answer: its tokens' positions in the prompt (first occurrence, tried with and without a leading space);
    empty when the answer is not in the prompt as tokens (a count or a word the model must produce)."""
    out = {}
    for answer in answers:
        found: list[int] = []
        for text in (f" {answer}", answer):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            for start in range(len(prompt_ids) - len(ids) + 1):
                if ids and prompt_ids[start : start + len(ids)] == ids:
                    found = list(range(start, start + len(ids)))
                    break
            if found:
                break
        out[answer] = found
    return out


def held(state, layer: int, positions: list[int]) -> int:
    """How many of ``positions`` layer ``layer`` of the (batch-1) state holds."""
    kv = state.cache.layers[layer]
    have = set(kv.positions[0, : kv.length][kv.valid[0, : kv.length]].tolist())
    return sum(p in have for p in positions)


def analyse(lazy: LazyLLM, tok: Any, item, eos: list[int], lines: list[int], max_new: int = 64) -> dict[str, Any]:
    ids = torch.tensor([item.prompt_ids])
    one_line = bool(lines) and item.task.split("_")[0] in ONE_LINE
    lazy.generate(ids, max_new_tokens=1, eos_token_id=[])
    prefilled = lazy.last_state  # each layer's kept set once prefill is done
    out = lazy.generate(ids, max_new_tokens=min(item.max_new_tokens, max_new),
                        eos_token_id=eos + (lines if one_line else []))
    state, stats = lazy.last_state, out.stats[0]
    where = answer_positions(tok, item.prompt_ids, item.answers)
    prune_layers = sorted(lazy.config.active_steps())
    last = len(state.cache.layers) - 1
    per_answer = {}
    for answer, positions in where.items():
        if not positions:
            per_answer[answer] = {"in_prompt": False}
            continue
        after = {j + 1: held(prefilled, j + 1, positions) for j in prune_layers if j + 1 <= last}
        kept_prefill = [stats.kept_per_layer[j + 1] for j in prune_layers if j + 1 <= last]
        per_answer[answer] = {"in_prompt": True, "tokens": len(positions), "first_position": positions[0],
                              "held_after_each_pruning_layer": after, "layer_sizes": kept_prefill,
                              "held_at_last_layer": held(state, last, positions)}
    text = tok.decode(out.sequences[0, ids.shape[1]: ids.shape[1] + stats.new_tokens], skip_special_tokens=True)
    return {"id": item.id, "task": item.task, "prompt_tokens": len(item.prompt_ids), "answers": per_answer,
            "revived_tokens": stats.revived_tokens, "output": text}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--method", default="lazy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    records = [r for r in load_records(args.results) if r["model"] == args.model]
    by = {(r["id"], r["method"]): r for r in records}
    lost = [r for r in records if r["method"] == args.method and (r["id"], "full") in by
            and by[(r["id"], "full")]["score"] > r["score"]]
    models = QuantizedModels(args.model, args.threads, lost[0]["dtype"] if lost else "bfloat16")
    model, tok = models.get("none"), models.tokenizer
    eos = list(LazyLLM(model, LazyConfig.off())._eos_ids(None))  # as benchmarks.ruler runs them
    lines = stop_ids(tok) if not lost or not lost[0].get("chat") else []
    results = []
    for r in lost:
        item = build_item(tok, r["task"], r["length"], int(r["id"].split("-")[2]), r.get("seed", 0), r.get("chat",
                                                                                                          False))
        lazy = LazyLLM(model, LazyConfig(**r["config"]), keep_state=True)
        res = analyse(lazy, tok, item, eos, lines)
        res.update(full_score=by[(r["id"], "full")]["score"], score=r["score"])
        results.append(res)
        print(json.dumps(res), flush=True)
    if args.out:
        args.out.write_text("\n".join(json.dumps(r) for r in results) + "\n")
    print(markdown(results))
    return results


def markdown(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        for answer, a in r["answers"].items():
            if not a["in_prompt"]:
                rows.append([r["id"], answer, "not in the prompt", "", "", r["revived_tokens"], r["output"][:30]])
                continue
            after = ", ".join(f"{layer}: {n}/{a['tokens']}" for layer, n in a["held_after_each_pruning_layer"].items())
            rows.append([r["id"], answer, f"{a['first_position']} / {r['prompt_tokens']}", after,
                         f"{a['held_at_last_layer']}/{a['tokens']}", r["revived_tokens"], r["output"][:30]])
    return md_table(["item", "answer", "position / prompt", "after prefill, held by the layer after each pruning "
                     "layer", "last layer, end of generation", "revived (all)", "output"], rows)


if __name__ == "__main__":
    main()
