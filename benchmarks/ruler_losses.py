"""Why the default loses a fact the full model finds: for each RULER item of a results file where ``lazy`` scores below
``full``, where the answer's tokens fall out of the kept set, and whether revival brought them back.

    .venv/bin/python -m benchmarks.ruler_losses --results benchmarks/results/ruler-n20-gemma3-270m.jsonl \
        --method lazy_mid14 --model gemma3-270m --out benchmarks/results/ruler-losses-gemma3-270m-4096.jsonl
    .venv/bin/python -m benchmarks.ruler_losses --results benchmarks/results/ruler-n20-smollm2-135m-instruct.jsonl \
        --model smollm2-135m-instruct --profile --tasks niah_single_1 niah_single_2 niah_single_3 niah_multikey_1 \
        niah_multivalue niah_multiquery qa_1 qa_2 --out benchmarks/results/ruler-layers-smollm2-135m-instruct-4096.jsonl

``--bound``: also the asked key (where the task names one) and every number or UUID the output wrote that stands in
the prompt but is not the answer: whether the loss is a fact dropped or another value chosen while the answer was held
(and where that value sits, and whether decoding revived it).

``--profile``: instead, for every item the full model finds, each layer's ranking of the answer's tokens under the
full model's attention (scored as the method scores): which layers' attention singles out the answers, and so where
pruning can afford to look.

Per lost item (rebuilt from its id, run again with the method's config from the record, greedy, keeping the state):
the answer strings' token positions in the prompt (each answer's first occurrence, tokenized as it stands in the
prompt); per pruning layer, how many of them the layer after it holds once prefill is done (what the first token is
chosen from); and at the end of the generation, how many the last layer holds (kept, or brought back by revival) and
how many tokens the item revived in all; per pruning layer, the best and the worst rank of the answer's tokens by the
layer's score among the prompt tokens it scored, against the layer's budget, and the same ranks under the full
model's attention (the same scoring with nothing pruned before that layer: `lazy_core.profile`). An answer whose tokens
every layer keeps and still comes out wrong points at something other than pruning (the scores of the kept context,
or bf16); one whose tokens rank low under the full model's attention too is lost to the scoring itself, one that
ranks high there and low under pruning is lost to an earlier layer's choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import QuantizedModels, md_table
from benchmarks.ruler import ONE_LINE, load_records, stop_ids
from benchmarks.ruler_tasks import build_item
from lazy_core import LazyConfig, LazyLLM, profile
from lazy_core.profile import RankingPruner, prefill_ranks, scoring_only


def answer_positions(tok: Any, prompt_ids: list[int], answers: list[str]) -> dict[str, list[int]]:
    """Per answer: its tokens' positions in the prompt (:func:`lazy_core.profile.answer_positions`); empty when the
    answer is not in the prompt as tokens (a count or a word the model must produce)."""
    return {answer: profile.answer_positions(tok, prompt_ids, answer) for answer in answers}


VALUE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d{5,}")  # UUIDs, 5+ digit numbers


def bound_strings(item: Any, output: str, prompt: str) -> dict[str, str]:
    """What ``--bound`` adds to an item's answers, by role: the asked key (``item.meta["query"]``, when the task asks
    by one), and each value the output wrote that stands in the prompt and is not an answer."""
    roles = {}
    key = item.meta.get("query")
    if isinstance(key, str) and key in prompt and key not in item.answers:
        roles[key] = "key"
    for value in VALUE.findall(output):
        if value in prompt and value not in item.answers:
            roles.setdefault(value, "written")
    return roles


def held(state, layer: int, positions: list[int]) -> int:
    """How many of ``positions`` layer ``layer`` of the (batch-1) state holds."""
    kv = state.cache.layers[layer]
    have = set(kv.positions[0, : kv.length][kv.valid[0, : kv.length]].tolist())
    return sum(p in have for p in positions)


def rank_summary(pruner: RankingPruner, positions: list[int]) -> dict[int, dict[str, int | None]]:
    """Per scored layer: the best and worst rank of ``positions`` (None where the layer no longer held them) and the
    layer's budget (ranks below it are kept)."""
    out = {}
    for layer, ranks in sorted(pruner.ranks.items()):
        found = [ranks[p] for p in positions if p in ranks]
        out[layer] = {"best": min(found) if found else None, "worst": max(found) if found else None,
                      "scored": len(found), "budget": pruner.budgets[layer]}
    return out


def layer_profile(model: Any, tok: Any, config: LazyConfig, items: list) -> list[dict[str, Any]]:
    """Per item: for each prunable layer, the worst rank of each answer's tokens under the full model's attention
    scored as ``config`` scores, as a fraction of the prompt (:func:`lazy_core.profile.worst_rank_shares`)."""
    out = []
    for item in items:
        where = {a: p for a, p in answer_positions(tok, item.prompt_ids, item.answers).items() if p}
        shares = profile.worst_rank_shares(model, config, item.prompt_ids, list(where.values()))
        out.append({"id": item.id, "task": item.task, "prompt_tokens": len(item.prompt_ids),
                    "worst_rank_share": dict(zip(where, shares, strict=True))})
    return out


def profile_table(profiles: list[dict[str, Any]], shares: tuple[float, ...] = (0.1, 0.2, 0.4)) -> str:
    """Per layer: the median worst-rank share of the answers, and how many answers a layer keeping each share keeps
    (:func:`lazy_core.profile.layer_hits`)."""
    answers = [{int(layer): v for layer, v in answer.items()}  # JSON records have string keys
               for prof in profiles for answer in prof["worst_rank_share"].values()]
    hits = {s: profile.layer_hits(answers, s) for s in shares}
    rows = []
    for layer in sorted({layer for answer in answers for layer in answer}):
        values = sorted(answer[layer] for answer in answers)
        rows.append([layer, f"{values[len(values) // 2]:.3f}",
                     *[f"{round(hits[s][layer] * len(answers))}/{len(answers)}" for s in shares]])
    return md_table(["layer", "median worst rank / prompt", *[f"kept whole at {s:.0%}" for s in shares]], rows)


def analyse(lazy: LazyLLM, tok: Any, item, eos: list[int], lines: list[int], max_new: int = 64) -> dict[str, Any]:
    ids = torch.tensor([item.prompt_ids])
    one_line = bool(lines) and item.task.split("_")[0] in ONE_LINE
    model = lazy.model
    pruned = prefill_ranks(model, lazy.config, ids, keep_state=True)
    prefilled = pruned.state  # each layer's kept set once prefill is done
    unpruned = prefill_ranks(model, scoring_only(lazy.config, ids.shape[1]), ids)
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
                              "held_at_last_layer": held(state, last, positions),
                              "rank_pruned": rank_summary(pruned, positions),
                              "rank_full": rank_summary(unpruned, positions)}
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
    p.add_argument("--profile", action="store_true",
                   help="instead: each layer's ranking of the answers of the items the full model finds")
    p.add_argument("--tasks", nargs="+", help="only these tasks")
    p.add_argument("--bound", action="store_true",
                   help="also the asked key and the values the output wrote in the answer's place")
    args = p.parse_args(argv)
    records = [r for r in load_records(args.results) if r["model"] == args.model
               and (not args.tasks or r["task"] in args.tasks)]
    if args.profile:
        return profile_main(args, records)
    by = {(r["id"], r["method"]): r for r in records}
    lost = [r for r in records if r["method"] == args.method and (r["id"], "full") in by
            and by[(r["id"], "full")]["score"] > r["score"]]
    models = QuantizedModels(args.model, args.threads, lost[0]["dtype"] if lost else "bfloat16")
    model, tok = models.get("none"), models.tokenizer
    eos = list(LazyLLM(model, LazyConfig.off())._eos_ids(None))  # as benchmarks.ruler runs them
    lines = stop_ids(tok) if not lost or not lost[0].get("chat") else []
    results = []
    for r in lost:
        item = item_of(tok, r)
        roles = bound_strings(item, r["text"], tok.decode(item.prompt_ids)) if args.bound else {}
        item = dataclasses.replace(item, answers=item.answers + list(roles))
        lazy = LazyLLM(model, LazyConfig(**r["config"]), keep_state=True)
        res = analyse(lazy, tok, item, eos, lines)
        res.update(full_score=by[(r["id"], "full")]["score"], score=r["score"], roles=roles)
        results.append(res)
        print(json.dumps(res), flush=True)
    if args.out:
        args.out.write_text("\n".join(json.dumps(r) for r in results) + "\n")
    print(markdown(results))
    return results


def item_of(tok: Any, record: dict[str, Any]):
    """The RULER item a results record was measured on, rebuilt from its id, length, seed and chat flag."""
    return build_item(tok, record["task"], record["length"], int(record["id"].split("-")[2]), record.get("seed", 0),
                      record.get("chat", False))


def profile_main(args: argparse.Namespace, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = [r for r in records if r["method"] == "full" and r["score"] == 1.0]
    config = next(LazyConfig(**r["config"]) for r in records if r["method"] == args.method)
    models = QuantizedModels(args.model, args.threads, found[0]["dtype"] if found else "bfloat16")
    model, tok = models.get("none"), models.tokenizer
    profiles = []
    for r in found:
        profiles += layer_profile(model, tok, config, [item_of(tok, r)])
        print(json.dumps(profiles[-1]), flush=True)
    if args.out:
        args.out.write_text("\n".join(json.dumps(p) for p in profiles) + "\n")
    print(profile_table(profiles))
    return profiles


def markdown(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        for text, a in r["answers"].items():
            role = r.get("roles", {}).get(text)
            answer = f"{role}: {text}" if role else text
            if not a["in_prompt"]:
                rows.append([r["id"], answer, "not in the prompt", "", "", "", r["revived_tokens"], r["output"][:30]])
                continue
            after = ", ".join(f"{layer}: {n}/{a['tokens']}" for layer, n in a["held_after_each_pruning_layer"].items())
            rows.append([r["id"], answer, f"{a['first_position']} / {r['prompt_tokens']}", after,
                         _ranks(a), f"{a['held_at_last_layer']}/{a['tokens']}", r["revived_tokens"],
                         r["output"][:30].replace("\n", " ")])
    return md_table(["item", "answer", "position / prompt", "after prefill, held by the layer after each pruning "
                     "layer", "worst rank of its tokens at each pruning layer (full model's) / budget",
                     "last layer, end of generation", "revived (all)", "output"], rows)


def _ranks(answer: dict[str, Any]) -> str:
    pruned, full = answer.get("rank_pruned"), answer.get("rank_full")
    if not pruned:
        return ""
    cells = []
    for layer, r in pruned.items():
        f = full.get(layer, {}) if full else {}
        mine = "gone" if r["worst"] is None else str(r["worst"])
        cells.append(f"{layer}: {mine} ({f.get('worst')}) / {r['budget']}")
    return ", ".join(cells)


if __name__ == "__main__":
    main()
