"""What a schedule costs the summarization job against another, in one process, on the same papers.

    .venv/bin/python -m benchmarks.schedule_cost --against lazy_mid14 --papers 12 --rounds 4
    .venv/bin/python -m benchmarks.schedule_cost --against lazy_mid14 --papers 12 --rounds 4 --seed 1
    .venv/bin/python -m benchmarks.schedule_cost --method first63_sink4_dec31 --against lazy_mid14 --papers 8

A worker's work, as the job does it on a CPU: the pipeline's prompts (template, middle cut) of ``--papers`` ACL papers,
``LazyLLM.generate_continuous`` with 4 slots, one torch thread, bf16 with int4 decoding weights (``quantize="auto"``
here), the job's generation rules. ``--method`` (the default, ``lazy``, unless named) and ``--against`` (methods of
``benchmarks.ruler``) take turns, ABBA over ``--rounds``, so both meet the same load; per round, the ratio of their
docs/s and of their new tokens per second (the outputs differ in length), and the report takes the medians.
``run_pipeline`` through Ray (``benchmarks.summarize_job``) measures the same with process start-up and a shard's
output lengths on top, and its run-to-run noise on this shared VM was larger than the difference measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine, md_table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="lazy", help="a method of benchmarks.ruler.CANDIDATES (lazy: the default)")
    parser.add_argument("--against", default="lazy_mid14", help="a method of benchmarks.ruler.CANDIDATES")
    parser.add_argument("--papers", type=int, default=12)
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a pipeline CPU worker has 1)")
    parser.add_argument("--quantize", default="auto", choices=["auto", "none", "int8", "int4"])
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.method == args.against:
        parser.error(f"--method and --against are both {args.method!r}: name two methods to compare")

    import torch

    from benchmarks.continuous import run_continuous
    from benchmarks.peer import _prompts
    from benchmarks.ruler import method_config
    from benchmarks.summarize_job import choose_papers
    from lazy_core import DecodingOptions, LazyLLM, load_model
    from pipeline import PipelineConfig

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype="auto", device="cpu", quantize=args.quantize)
    engines = {args.method: LazyLLM(model, method_config(args.method, model)),
               args.against: LazyLLM(model, method_config(args.against, model))}
    chat = bool(getattr(tokenizer, "chat_template", None))  # a base model (Gemma 3 270M) gets the raw prompt
    plan = PipelineConfig(input="unused", output="unused", max_prompt_tokens=args.prompt_tokens,
                          max_new_tokens=args.max_new_tokens, chat_template=chat)
    papers = choose_papers(tokenizer, args.papers, args.prompt_tokens, args.seed, chat)
    prompts = sorted(_prompts(tokenizer, papers, plan), key=len, reverse=True)
    options = DecodingOptions(max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
                              no_repeat_ngram_size=args.no_repeat_ngram_size)
    engines[args.method].generate(torch.tensor([prompts[-1][:64]]), max_new_tokens=2)  # warm-up
    pair = args.against if args.method == "lazy" else f"{args.method}-vs-{args.against}"
    model_part = "" if args.model == parser.get_default("model") else f"{args.model}-"  # the default model's names
    name = f"schedule_cost-{model_part}{pair}-{args.prompt_tokens}-p{len(prompts)}-s{args.seed}"
    out = args.out or RESULTS_DIR / f"{name}.jsonl"
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    rounds = []
    for r in range(args.rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        runs = {}
        for name in order:
            run = run_continuous(engines[name], prompts, args.slots, options, plan.max_batch_tokens)
            new = sum(len(t) for t in run.pop("tokens"))
            runs[name] = {**run, "new_tokens": new, "docs_per_s": len(prompts) / run["wall_s"],
                          "tokens_per_s": new / run["wall_s"]}
            print(f"round {r} {name}: {run['wall_s']:.1f} s, {new} new tokens", flush=True)
        rounds.append(runs)
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"round": r, "settings": settings, "machine": machine(), "runs": runs}) + "\n")
    result = summarize(rounds, args.against, args.method)
    out.with_suffix(".md").write_text(report(result, args, out) + "\n", encoding="utf-8")
    print(report(result, args, out))
    return result


def summarize(rounds: list[dict[str, dict[str, Any]]], against: str, method: str = "lazy") -> dict[str, Any]:
    """Medians over rounds of ``method`` / ``against`` for docs/s and new tokens per second, and each method's
    medians."""
    def ratio(key: str) -> float:
        return statistics.median(r[method][key] / r[against][key] for r in rounds)

    methods = {m: {k: statistics.median(r[m][k] for r in rounds) for k in ("wall_s", "docs_per_s", "tokens_per_s",
                                                                          "new_tokens", "prefill_s")}
               for m in (method, against)}
    return {"rounds": len(rounds), "docs_per_s_ratio": ratio("docs_per_s"),
            "tokens_per_s_ratio": ratio("tokens_per_s"), "methods": methods}


def report(result: dict[str, Any], args: argparse.Namespace, out: Path) -> str:
    rows = [[m, f"{v['docs_per_s']:.3f}", f"{v['tokens_per_s']:.1f}", f"{v['new_tokens']:.0f}", f"{v['prefill_s']:.1f}"]
            for m, v in result["methods"].items()]
    return (f"{args.model}, {args.papers} papers at {args.prompt_tokens} tokens (seed {args.seed}), "
            f"{args.rounds} rounds ABBA, {args.slots} slots, {args.threads} thread, quantize {args.quantize} "
            f"(`{out.name}`)\n\n"
            + md_table(["method", "docs/s (median)", "new tokens/s", "new tokens", "prefill s"], rows)
            + f"\n\n{'default' if args.method == 'lazy' else args.method} / {args.against}: docs/s"
            f" **{result['docs_per_s_ratio']:.3f}x**, new tokens/s "
            f"{result['tokens_per_s_ratio']:.3f}x (medians of the rounds' ratios)")


if __name__ == "__main__":
    main()
