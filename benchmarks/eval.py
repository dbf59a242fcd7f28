"""Accuracy vs. speed of LazyLLM and its baselines on real long-context items (paper §4, Table 1).

Every method runs on the same fixed-seed items (benchmarks/data.py), one item at a time, greedy. Each (method, item)
writes one JSON line to the results file as soon as it is done, so a run can be stopped and resumed (pairs already
present are skipped) and ``python -m benchmarks.report`` can summarise whatever is there.

Methods: ``full`` (LazyConfig.off(), the exact baseline through the same engine), ``lazy`` (LazyConfig.default_for),
``paper`` (LazyConfig.paper: the paper's own scoring), ``prefill_only`` (default without Aux Cache revival),
``static`` and ``random`` (the paper's baselines), and a sweep of schedules and scoring settings (``sweep_*``).

    python -m benchmarks.eval                       # default size: tens of items, prompts <= 4K tokens
    python -m benchmarks.eval --long                # adds 8K-token needle and multi-doc items
    python -m benchmarks.eval --methods full lazy --tasks needle --needle-lengths 2048
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, QuantizedModels, context_limit, machine, quant_label, split_quant
from benchmarks.data import TASKS, EvalItem, SuiteSpec, build_suite
from lazy_core import LazyConfig, LazyLLM
from lazy_core.arch import place_schedule
from lazy_core.config import DEFAULT_RATIOS, EARLY_FRACTIONS, LATE_FRACTIONS, MID14_FRACTIONS
from lazy_core.revival import FLAT_REVIVAL_KEYS, POLICIES, SelectRevival, TopRevival, revival_from_flat_keys

# The default's scoring before its 8-query window (method "lazy_w1"): the last prompt token as the only query.
LAST_TOKEN_SCORING = {"query_window": 1, "query_reduce": "max"}


def before_losses(model: Any, **update: Any) -> LazyConfig:
    """The default before the loss analysis of 2026-12-05 (``lazy_mid14``: the middle pruning layer at 15/30 of the
    depth, max-pool over 31), with these fields changed (validated). The candidates measured against that default
    vary it, so their names keep the meaning their records have."""
    layers, ratios = place_schedule(model, MID14_FRACTIONS, DEFAULT_RATIOS)
    return LazyConfig(**{**LazyConfig.default_for(model).model_dump(), "pool_kernel": 31, "pool_kernels": None,
                         "decode_pool_kernel": None, "keep_head": 0, "later_start_tokens": None,
                         "prune_layers": layers, "keep_ratios": ratios, **update})


MID17_FRACTIONS = (8 / 30, 18 / 30, 22 / 30)  # the placement that became DEFAULT_FRACTIONS (lazy_core.config)


def mid17(model: Any, merge: Callable[[float, float], float] = min, **update: Any) -> LazyConfig:
    """``mid17``, the default since 2026-12-05 20:00 (``before_losses`` with the middle layer at 17 of 30), with these
    fields changed (validated); ``merge``: the ratio stages that meet at one layer of a hybrid model keep
    (``place_schedule``; ``max`` is the default's since 2026-12-06)."""
    layers, ratios = place_schedule(model, MID17_FRACTIONS, DEFAULT_RATIOS, merge=merge)
    return before_losses(model, prune_layers=layers, keep_ratios=ratios, **update)


def first_ratio(config: LazyConfig, ratio: float) -> LazyConfig:
    """``config`` keeping ``ratio`` of the prompt at its first pruning layer, its own ratios at the others."""
    return config.rescheduled(list(config.prune_layers), [ratio, *config.keep_ratios[1:]])


def first_pool(config: LazyConfig, width: int) -> LazyConfig:
    """``config`` with a ``width``-wide pool at its first pruning layer, its own pool at the others."""
    pools = [width] + [config.pool_kernel] * (len(config.prune_layers) - 1)
    return LazyConfig(**{**config.model_dump(), "pool_kernels": pools})


def first63_sink4(model: Any, **update: Any) -> LazyConfig:
    """``mid17`` with a 63-wide pool at the first pruning layer and the first 4 prompt tokens always kept (keeps the
    UUID needles whole: BENCHMARKS.md, "A wide first pool and the first tokens"), with these fields changed."""
    return first_pool(mid17(model, keep_head=4, **update), 63)


def first63_sink4_dec31(model: Any, **update: Any) -> LazyConfig:
    """``first63_sink4`` with decoding scoring its revivals over 31 (BENCHMARKS.md, "Decoding's own pool")."""
    return first63_sink4(model, decode_pool_kernel=31, **update)


def first47_sink4(model: Any) -> LazyConfig:
    """``mid17`` with a 47-wide pool at the first pruning layer and the first 4 prompt tokens always kept."""
    return first_pool(mid17(model, keep_head=4), 47)


def _default(model: Any, **update: Any) -> LazyConfig:
    """The default as the top* variants ran (``before_losses`` with ``LAST_TOKEN_SCORING``) with these fields changed
    (validated)."""
    return before_losses(model, **{**LAST_TOKEN_SCORING, **update})


def _select_default(model: Any, **update: Any) -> LazyConfig:
    """The previous default (SelectRevival: every step re-selects and revives): the baselines and sweeps below were run
    on it, with min_prompt_tokens 0 (every prompt pruned, as they ran)."""
    return _default(model, **{"revival": SelectRevival(), "revive_steps": None, "min_prompt_tokens": 0, **update})


def _placed(model: Any, fractions: tuple[float, ...], ratios: tuple[float, ...]) -> dict[str, Any]:
    """prune_layers and keep_ratios at these fractions of the depth, placed as the presets place theirs."""
    layers, kept = place_schedule(model, fractions, ratios)
    return {"prune_layers": layers, "keep_ratios": kept}


# name -> (description, config factory). Fractions of depth map to layers by place_schedule, as in default_for. The
# baselines and sweeps vary the previous default (SelectRevival), as they were run; top* vary the current one.
METHODS: dict[str, tuple[str, Callable[[Any], LazyConfig]]] = {
    "full": ("full prefill (LazyConfig.off())", lambda m: LazyConfig.off()),
    "lazy": ("LazyLLM, LazyConfig.default_for(model)", lambda m: LazyConfig.default_for(m)),
    "select_prev": (
        "the previous default: each decoding step re-selects 40/20/10 % and revives what it lacks",
        lambda m: _select_default(m),
    ),
    "lazy_prev": ("the default before that: keep 0.3/0.1/0.05",
                  lambda m: _select_default(m, keep_ratios=[0.3, 0.1, 0.05])),
    "paper": ("LazyLLM with the paper's scoring (LazyConfig.paper)", lambda m: LazyConfig.paper(m)),
    "prefill_only": ("default schedule, no Aux Cache revival", lambda m: _select_default(m, revive=False)),
    "static": ("static pruning (once, at the first layer)", lambda m: _select_default(m, method="static")),
    "random": ("random pruning, default schedule", lambda m: _select_default(m, method="random")),
    "select_cap8": ("previous default, at most 8 revivals per layer and step",
                    lambda m: _select_default(m, revival=SelectRevival(per_step=8))),
    "select_hyst": ("previous default, hysteresis 0.5 (favour what the next layer holds)",
                    lambda m: _select_default(m, revival=SelectRevival(hysteresis=0.5))),
    "select_first16": ("previous default, revival in the first 16 decoding steps only",
                       lambda m: _select_default(m, revive_steps=16)),
    "lazy_w1": ("the default before RULER: the last prompt token as the only query (records run as lazy)",
                lambda m: _default(m)),
    "lazy_mid14": ("the default before the loss analysis: the middle pruning layer at 14 of 30, max-pool over 31",
                   before_losses),
    # the default's neighbours on the curve of 2026-12-05 (BENCHMARKS.md, "A wide first pool"); mid17's records ran as
    # lazy
    "mid17": ("the default since 2026-12-05 20:00: lazy_mid14 with the middle layer at 17 of 30", mid17),
    "first63_sink4": ("mid17 with a 63-wide pool at the first pruning layer and the first 4 tokens kept (records "
                      "run as lazy while it was the default, relabelled)", first63_sink4),
    "first63_sink4_dec31": ("first63_sink4, decoding scoring its revivals with a 31-wide pool", first63_sink4_dec31),
    "first47_sink4": ("mid17 with a 47-wide pool at the first pruning layer and the first 4 tokens kept",
                      first47_sink4),
    "top32": ("default, revive the pruned among each step's top 32, every step",
              lambda m: _default(m, revival=TopRevival(top=32), revive_steps=None)),
    "top64": ("default, revive the pruned among each step's top 64, every step",
              lambda m: _default(m, revival=TopRevival(top=64), revive_steps=None)),
    "top128_all": ("default, revival at every step (not only the first 32)",
                   lambda m: _default(m, revive_steps=None)),
    "top64_first16": ("default with top 64, revival in the first 16 decoding steps only",
                      lambda m: _default(m, revival=TopRevival(top=64), revive_steps=16)),
    "sweep_mild": ("default layers, keep 0.5/0.3/0.2", lambda m: _select_default(m, keep_ratios=[0.5, 0.3, 0.2])),
    "sweep_tail": ("default layers, keep 0.3/0.15/0.1", lambda m: _select_default(m, keep_ratios=[0.3, 0.15, 0.1])),
    "sweep_strong": ("default layers, keep 0.2/0.07/0.03",
                     lambda m: _select_default(m, keep_ratios=[0.2, 0.07, 0.03])),
    "sweep_late": (
        "layers at 10/17/24 of 30, keep 0.3/0.1/0.05",
        lambda m: _select_default(m, **_placed(m, LATE_FRACTIONS, (0.3, 0.1, 0.05))),
    ),
    "sweep_early": (
        "layers at 3/15/22 of 30, keep 0.3/0.1/0.05",
        lambda m: _select_default(m, **_placed(m, EARLY_FRACTIONS, (0.3, 0.1, 0.05))),
    ),
    "sweep_floor256": ("default schedule, at least 256 tokens kept",
                       lambda m: _select_default(m, min_keep_tokens=256)),
    "sweep_pool15": ("default schedule, pool kernel 15", lambda m: _select_default(m, pool_kernel=15)),
    "sweep_window32": (
        "default schedule scored by the last 32 prompt queries (the first default's scoring)",
        lambda m: _select_default(m, query_window=32),
    ),
}


def method_config(name: str, num_layers: int) -> LazyConfig:
    """The config ``METHODS[name]`` gives a model of ``num_layers`` layers (the factories read only the depth)."""
    return METHODS[name][1](SimpleNamespace(config=SimpleNamespace(num_hidden_layers=num_layers)))


DEFAULT_METHODS = [
    "full",
    "lazy",
    "select_prev",
    "lazy_prev",
    "paper",
    "prefill_only",
    "static",
    "random",
    "sweep_mild",
    "sweep_strong",
    "sweep_late",
    "sweep_tail",
]


def run_item(lazy: LazyLLM, tok: Any, item: EvalItem, loglik: bool) -> dict[str, Any]:
    """One greedy generation (+ the gold answer's log-likelihood when asked) -> a JSON-able record."""
    ids = torch.tensor([item.prompt_ids])  # [1, T]
    start = time.perf_counter()
    out = lazy.generate(ids, max_new_tokens=item.max_new_tokens, do_sample=False)
    wall = time.perf_counter() - start
    new = out.sequences[0, ids.shape[1] :].tolist()
    s = out.stats[0]
    new = new[: s.new_tokens]
    record = {
        "item_id": item.item_id,
        "task": item.task,
        "target_tokens": item.target_tokens,
        "prompt_tokens": item.prompt_tokens,
        "answers": item.answers,
        "new_ids": new,
        "text": tok.decode(new, skip_special_tokens=True),
        "ttft_s": s.ttft_s,
        "wall_s": wall,
        "computed_token_fraction": s.computed_token_fraction,
        "computed_token_fraction_total": s.computed_token_fraction_total,
        "est_speedup": s.est_speedup,
        "kept_per_layer": s.kept_per_layer,
        "revived_tokens": s.revived_tokens,
        "gold_loglik": None,
    }
    if loglik and item.answers:
        gold = tok(item.answers[0], add_special_tokens=False)["input_ids"]
        record["gold_loglik"] = lazy.loglikelihood(ids, None, [gold])[0]
        record["gold_tokens"] = len(gold)
    return record


def interleave(items: list[EvalItem]) -> list[EvalItem]:
    """Shortest prompts first, the tasks taking turns within a length: partial runs cover every task."""
    rank: dict[tuple[str, int], int] = {}
    keyed = []
    for item in items:
        key = (item.task, item.target_tokens)
        rank[key] = rank.get(key, -1) + 1
        keyed.append((item.target_tokens, rank[key], TASKS.index(item.task), item))
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:3])]


def _done(path: Path) -> set[tuple[str, str, str]]:
    """(method, item_id, config JSON) of the records already in ``path``: a pair counts as done only if it ran with
    the config the method has now (after a change of ``LazyConfig.default_for``, the default's methods rerun)."""
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            done.add((rec["method"], rec["item_id"], config_key(rec.get("config") or {})))
    return done


def config_key(config: dict[str, Any]) -> str:
    """A config's identity for resuming: its fields that differ from LazyConfig's defaults, so a new field with a
    default leaves the records run before it valid (they ran with that default's behaviour). Records written with the
    old flat revive_* keys name the revival policy they meant."""
    defaults = LazyConfig().model_dump()
    flat = {k: config[k] for k in FLAT_REVIVAL_KEYS if k in config}
    if flat:
        policy = revival_from_flat_keys(flat)
        config = {k: v for k, v in config.items() if k not in flat} | {
            "revival": POLICIES[policy["name"]](**policy).model_dump()}
    return json.dumps({k: v for k, v in config.items() if k not in defaults or defaults[k] != v}, sort_keys=True)


def spec_from_args(args: argparse.Namespace, limit: int) -> SuiteSpec:
    long_len = min(8192, limit) - 64  # room for the longest answer (64 new tokens) inside the model's context
    needle = list(args.needle_lengths) + ([long_len] if args.long else [])
    multidoc = list(args.qa_lengths) + ([long_len] if args.long else [])
    return SuiteSpec(
        seed=args.seed,
        needle_lengths=needle,
        needle_depths=args.depths,
        entity_lengths=args.entity_lengths,
        entity_names=args.entity_names,
        entity_haystacks=args.entity_haystacks,
        multidoc_lengths=multidoc,
        multidoc_items=args.items,
        single_lengths=args.qa_lengths,
        single_items=args.items,
        summarize_lengths=args.summarize_lengths,
        summarize_items=args.summarize_items,
        tasks=args.tasks,
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=sorted(METHODS) + ["all"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--needle-lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--entity-lengths", type=int, nargs="+", default=[2048, 3072])
    parser.add_argument("--entity-names", type=int, default=2, help="names (codes) per entity haystack")
    parser.add_argument("--entity-haystacks", type=int, default=2, help="entity haystacks per length")
    parser.add_argument("--qa-lengths", type=int, nargs="+", default=[2048])
    parser.add_argument("--items", type=int, default=8, help="QA questions per length and task")
    parser.add_argument("--summarize-lengths", type=int, nargs="+", default=[2048])
    parser.add_argument("--summarize-items", type=int, default=3)
    parser.add_argument("--long", action="store_true", help="add 8K-token needle and multi-doc items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-loglik", action="store_true", help="skip the gold answers' log-likelihoods")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                        help="model dtype (write other dtypes to their own --out)")
    parser.add_argument("--quantize", nargs="+", default=["none"], choices=["none", "int8", "int4"],
                        help="each method also on the model with these weights (lazy_core.quantize): records named "
                        "method+int4 (none: the name alone)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "eval.jsonl")
    parser.add_argument(
        "--without-full", action="store_true", help="do not add 'full' (when another process's file holds it)"
    )
    parser.add_argument("--fresh", action="store_true", help="delete the results file first instead of resuming")
    args = parser.parse_args(argv)
    methods = sorted(METHODS) if "all" in args.methods else list(dict.fromkeys(args.methods))
    if "full" not in methods and not args.without_full:
        methods.insert(0, "full")  # every score is relative to the full model
    models = QuantizedModels(args.model, args.threads, args.dtype)
    model = models.get(args.quantize[0])
    tok = models.tokenizer
    items = build_suite(tok, spec_from_args(args, context_limit(model)))
    if args.fresh and args.out.exists():
        args.out.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(args.out)
    env = machine()
    print(f"{len(items)} items x {len(methods)} methods -> {args.out} ({len(done)} pairs already there)", flush=True)
    engines = {quant_label(name, q): LazyLLM(models.get(q), METHODS[name][1](models.get(q)))
               for q in args.quantize for name in methods}
    with args.out.open("a", encoding="utf-8") as sink:
        for item in interleave(items):  # item-major: a stopped run still compares every method on the same items
            for name, lazy in engines.items():
                if (name, item.item_id, config_key(lazy.config.model_dump())) in done:
                    continue
                loglik = not args.no_loglik and item.task in ("multidoc_qa", "single_qa")
                record = run_item(lazy, tok, item, loglik=loglik)
                record.update(method=name, config=lazy.config.model_dump(), machine=env,
                              dtype=str(model.dtype).removeprefix("torch."), quantize=split_quant(name)[1])
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                print(
                    f"{name:>14} {item.item_id:<42} {record['prompt_tokens']:>5} tok ttft {record['ttft_s']:.2f}s "
                    f"computed {record['computed_token_fraction']:.2f} -> {record['text'][:40]!r}",
                    flush=True,
                )
    return args.out


if __name__ == "__main__":
    main()
