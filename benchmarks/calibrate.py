"""``lazy_core.calibrate`` on the real default model: which schedule does the automatic search pick?

Calibration samples are built like the evaluation items but with another seed (default 1), so the chosen schedule is
not tuned on the items ``benchmarks.eval`` scores: passkey haystacks, entity-bound needles (a person's code written
once, asked by name), HotpotQA / SQuAD questions and, with ``--ruler-tasks``, RULER items, each scored by
word F1 against its gold answer (the full model's own output for prompts without one). Writes
``benchmarks/results/calibrate.json`` and the "calibrate" section of BENCHMARKS.md.

    python -m benchmarks.calibrate                      # 6 passkey + 4 QA samples at 1K-2K tokens, max_drop 0.01
    python -m benchmarks.calibrate --max-drop 0.05 --section calibrate5 --out benchmarks/results/calibrate-5.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, load, machine, md_table, replace_section, write_json
from benchmarks.data import EvalItem, SuiteSpec, build_suite
from benchmarks.report import schedule_text
from benchmarks.ruler import CHAT_MODELS
from benchmarks.ruler_tasks import RulerItem, build_item
from lazy_core.calibrate import CandidateResult, calibrate_report


def _schedule(cfg: Any) -> str:
    return schedule_text(cfg.model_dump())


def _row(r: CandidateResult) -> dict[str, Any]:
    return {
        "schedule": _schedule(r.config),
        "config": r.config.model_dump(),
        "predicted_speedup": r.predicted_speedup,
        "est_speedup": r.est_speedup,
        "computed_token_fraction": r.computed_token_fraction,
        "score": r.score,
        "drop": r.drop,
        "outputs": r.outputs,
    }


def ruler_eval_item(item: RulerItem) -> EvalItem:
    """A RULER item as a calibration sample: its answers, joined, are the reference its output is scored on."""
    return EvalItem(task="entity", item_id=item.id, target_tokens=item.length, prompt_ids=item.prompt_ids,
                    answers=item.answers, max_new_tokens=item.max_new_tokens)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=1, help="items seed (the evaluation uses 0)")
    parser.add_argument("--needle-lengths", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    parser.add_argument("--qa-length", type=int, default=2048)
    parser.add_argument("--qa-items", type=int, default=2, help="HotpotQA and SQuAD questions each")
    parser.add_argument("--entity-haystacks", type=int, default=1,
                        help="entity haystacks (2 names, each asked: 2 samples each) at --qa-length")
    parser.add_argument("--ruler-tasks", nargs="*", default=[],
                        help="RULER tasks (benchmarks.ruler_tasks) to add as samples, one item each at --qa-length")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "calibrate.json")
    parser.add_argument("--section", default="calibrate", help="BENCHMARKS.md section to rewrite ('' for none)")
    args = parser.parse_args(argv)

    model, tok = load(args.model, args.threads)
    spec = SuiteSpec(
        seed=args.seed,
        needle_lengths=args.needle_lengths,
        needle_depths=args.depths,
        multidoc_lengths=[args.qa_length],
        multidoc_items=args.qa_items,
        single_lengths=[args.qa_length],
        single_items=args.qa_items,
        entity_lengths=[args.qa_length],
        entity_haystacks=args.entity_haystacks,
        summarize_items=0,
        tasks=["needle", "entity", "multidoc_qa", "single_qa"],
    )
    items = build_suite(tok, spec)
    chat = args.model in CHAT_MODELS
    items += [ruler_eval_item(build_item(tok, task, args.qa_length, 0, args.seed, chat)) for task in args.ruler_tasks]
    samples = [{"prompt": it.prompt_ids, "reference": " ".join(it.answers) if it.answers else None} for it in items]
    print(f"calibrating on {len(samples)} samples (seed {args.seed}), max_drop {args.max_drop}", flush=True)
    start = time.perf_counter()
    result = calibrate_report(model, tok, samples, max_drop=args.max_drop, max_new_tokens=args.max_new_tokens)
    wall = time.perf_counter() - start
    for r in result.tried:
        print(f"{r.predicted_speedup:5.2f}x score {r.score:.3f} drop {r.drop:+.3f}  {_schedule(r.config)}", flush=True)
    print(f"chosen: {_schedule(result.config)} ({wall:.0f} s)", flush=True)

    payload = {
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "samples": [{"item_id": it.item_id, "prompt_tokens": it.prompt_tokens, "answers": it.answers} for it in items],
        "wall_s": wall,
        "full": _row(result.full),
        "tried": [_row(r) for r in result.tried],
        "chosen": _schedule(result.config),
        "chosen_config": result.config.model_dump(),
    }
    write_json(args.out, payload)
    if args.section:
        replace_section(args.section, _markdown(payload))
    return args.out


def _markdown(p: dict[str, Any]) -> str:
    a, m = p["args"], p["machine"]
    cmd = (
        f"python -m benchmarks.calibrate --seed {a['seed']} --needle-lengths {' '.join(map(str, a['needle_lengths']))}"
        f" --depths {' '.join(map(str, a['depths']))} --qa-length {a['qa_length']} --qa-items {a['qa_items']}"
        f" --entity-haystacks {a.get('entity_haystacks', 0)}"
        + (f" --ruler-tasks {' '.join(a['ruler_tasks'])}" if a.get("ruler_tasks") else "") +
        f" --max-drop {a['max_drop']} --max-new-tokens {a['max_new_tokens']}"
    )
    rows = [
        [r["schedule"], r["predicted_speedup"], r["est_speedup"], r["computed_token_fraction"], r["score"], r["drop"]]
        for r in p["tried"]
    ]
    table = md_table(
        ["candidate (fastest first)", "predicted speedup", "engine est. speedup", "computed", "score", "drop"], rows
    )
    lengths = sorted({s["prompt_tokens"] for s in p["samples"]})
    return (
        f"## `lazy_core.calibrate` on the default model (max_drop {a['max_drop']})\n\n"
        f"Command: `{cmd}`\n\n"
        f"Measured {m['date_utc']} UTC at commit {m['git_commit']}, {m['torch_threads']} torch threads, "
        f"{p['wall_s']:.0f} s in all. {len(p['samples'])} samples of {lengths[0]}-{lengths[-1]} tokens built with "
        f"seed {a['seed']} (the evaluation's items use seed 0), scored by word F1 against the gold answer; the full "
        f"model scores {p['full']['score']:.3f}. Candidates run fastest first (FLOP model) until one stays within "
        f"max_drop of the full model.\n\n{table}\n\n**Chosen:** {p['chosen']}\n"
    )


if __name__ == "__main__":
    main()
