"""TTFT of the LazyLLM engine vs. full prefill of the unpatched model (paper §4, Table 1).

For each prompt length (real essay text through the chat template, exactly N tokens), three ways to get the first
token are timed, interleaved (the order rotates every repeat) so that a shared machine's load hits all alike:
- ``full``: the UNPATCHED model, ``model(input_ids, use_cache=True, logits_to_keep=1)`` with its own attention
  (sdpa) + argmax — what ``model.generate`` does for its prefill;
- ``lazy``: ``LazyLLM(model, config).generate(ids, max_new_tokens=1)`` (default config: ``LazyConfig.default_for``);
- ``off``: the same engine with ``LazyConfig.off()`` (engine overhead without pruning).
Reported: medians, the speedup full/lazy (ratio of medians and median of per-repeat ratios), the engine's
computed_token_fraction and FLOP-model est_speedup, and measured/est (how much of the FLOP saving turns into time).

    python -m benchmarks.ttft                      # 1K/2K/4K/8K, writes benchmarks/results/ttft.json + BENCHMARKS.md
    python -m benchmarks.ttft --lengths 1024 2048 --repeats 3 --no-md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, context_limit, load, machine, md_table, median, replace_section, write_json
from benchmarks.data import essay_prompt_ids
from benchmarks.ruler import CANDIDATES, method_config
from lazy_core import LazyConfig, LazyLLM


def parse_config(spec: str, model: Any) -> LazyConfig:
    """'default', 'paper', 'off', a method of ``benchmarks.ruler.CANDIDATES``, a JSON object, or a path to a JSON
    file -> LazyConfig."""
    if spec == "default":
        return LazyConfig.default_for(model)
    if spec == "paper":
        return LazyConfig.paper(model)
    if spec == "off":
        return LazyConfig.off()
    if spec in CANDIDATES:
        return method_config(spec, model)
    text = Path(spec).read_text(encoding="utf-8") if Path(spec).is_file() else spec
    try:
        return LazyConfig(**json.loads(text))
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {spec!r}: expected default, paper, off, a method of benchmarks.ruler.CANDIDATES, "
                         "a JSON object or a JSON file") from err


def time_full(model: Any, ids: torch.Tensor) -> tuple[float, float, int]:
    """ids: [1, T]. Wall and process-CPU seconds of the unpatched model's prefill + first (greedy) token; the token."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=True, logits_to_keep=1).logits  # [1, 1, V]
        token = int(logits[0, -1].argmax())
    return time.perf_counter() - start, time.process_time() - cpu, token


def time_engine(lazy: LazyLLM, ids: torch.Tensor) -> tuple[float, float, int, Any]:
    """ids: [1, T]. Wall and process-CPU seconds of generate(max_new_tokens=1) (validation and stats included), the
    token, the stats."""
    start, cpu = time.perf_counter(), time.process_time()
    out = lazy.generate(ids, max_new_tokens=1, do_sample=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, int(out.sequences[0, -1]), out.stats[0]


def run(
    model: Any,
    tok: Any,
    config: LazyConfig,
    lengths: list[int],
    repeats: int,
    warmup: int = 1,
    on_row: Any = None,
    off_max_tokens: int = 1 << 30,
) -> dict:
    """Times every length; ``on_row(result_so_far)`` is called after each length (incremental results files)."""
    lazy, off = LazyLLM(model, config), LazyLLM(model, LazyConfig.off())
    limit = context_limit(model)
    rows: list[dict] = []
    result = {"config": config.model_dump(), "rows": rows}
    for length in lengths:
        n = min(length, limit - 1)  # room for the first new token inside the model's context
        ids = torch.tensor([essay_prompt_ids(tok, n)])  # [1, n]
        for _ in range(warmup):
            time_full(model, ids)
            time_engine(lazy, ids)
        times: dict[str, list[float]] = {"full": [], "lazy": [], "off": []}
        cpu: dict[str, list[float]] = {"full": [], "lazy": [], "off": []}
        engine_ttft, tokens, stats = [], {}, None
        order = ["full", "lazy", "off"] if n <= off_max_tokens else ["full", "lazy"]
        for rep in range(repeats):
            for name in order[rep % len(order) :] + order[: rep % len(order)]:
                if name == "full":
                    t, c, tokens["full"] = time_full(model, ids)
                elif name == "lazy":
                    t, c, tokens["lazy"], stats = time_engine(lazy, ids)
                    engine_ttft.append(stats.ttft_s)
                else:
                    t, c, tokens["off"], _ = time_engine(off, ids)
                times[name].append(t)
                cpu[name].append(c)
            done = [k for k in times if times[k]]
            print(
                f"  {n} tokens rep {rep}: " + ", ".join(f"{k} {times[k][-1]:.2f}s cpu {cpu[k][-1]:.2f}s" for k in done)
            )
        paired = [f / z for f, z in zip(times["full"], times["lazy"], strict=True)]
        speedup = median(times["full"]) / median(times["lazy"])
        rows.append(
            {
                "prompt_tokens": n,
                "repeats": repeats,
                "full_s": median(times["full"]),
                "lazy_s": median(times["lazy"]),
                "lazy_engine_ttft_s": median(engine_ttft),
                "off_s": median(times["off"]) if times["off"] else float("nan"),
                "speedup": speedup,
                "speedup_paired": median(paired),
                "off_overhead": median(times["off"]) / median(times["full"]) - 1.0 if times["off"] else float("nan"),
                "computed_token_fraction": stats.computed_token_fraction,
                "est_speedup": stats.est_speedup,
                "measured_over_est": speedup / stats.est_speedup,
                "first_token_full": tokens["full"],
                "full_cpu_s": median(cpu["full"]),
                "lazy_cpu_s": median(cpu["lazy"]),
                "off_cpu_s": median(cpu["off"]) if cpu["off"] else float("nan"),
                "cpu_speedup": median(cpu["full"]) / median(cpu["lazy"]),
                "off_matches_full": tokens.get("off") == tokens["full"] if "off" in tokens else None,
                "lazy_matches_full": tokens["lazy"] == tokens["full"],
                "times": times,
                "cpu_times": cpu,
            }
        )
        if on_row is not None:
            on_row(result)
    return result


def markdown(result: dict, command: str) -> str:
    env = result["machine"]

    def pct(x: float) -> str:
        return "n/a" if x != x else f"{100 * x:+.1f} %"

    rows = [
        [
            r["prompt_tokens"],
            r["full_s"],
            r["lazy_s"],
            r["speedup"],
            r["speedup_paired"],
            r["full_cpu_s"],
            r["lazy_cpu_s"],
            r["cpu_speedup"],
            r["computed_token_fraction"],
            r["est_speedup"],
            r["cpu_speedup"] / r["est_speedup"],
            pct(r["off_cpu_s"] / r["full_cpu_s"] - 1.0),
            "yes" if r["lazy_matches_full"] else "no",
            r["repeats"],
        ]
        for r in result["rows"]
    ]
    table = md_table(
        [
            "prompt tokens",
            "full TTFT s (wall)",
            "lazy TTFT s (wall)",
            "wall speedup",
            "paired wall speedup",
            "full CPU s",
            "lazy CPU s",
            "CPU-time speedup",
            "computed fraction",
            "est. speedup",
            "CPU speedup / est.",
            "engine off vs. full (CPU)",
            "same 1st token",
            "repeats",
        ],
        rows,
    )
    cfg = result["config"]
    return (
        f"## TTFT: LazyLLM vs. full prefill ({env['torch_threads']} torch thread(s))\n\n"
        f"Command: `{command}`\n\n"
        f"Measured {env['date_utc']} UTC at commit {env['git_commit']}, fp32, {env['torch_threads']} torch threads "
        f"on a {env['cpu_count']}-core CPU **shared with other jobs** (1-minute load average "
        f"{env['load_average_1m']} at "
        "the end): absolute times are noisy; the ratios come from interleaved runs (medians over the repeats; "
        "'paired' = median of per-repeat ratios; 'CPU-time' = ratio of the process CPU seconds, which a busy machine "
        "inflates much less than wall time).\n\n"
        f"Lazy config: prune after layers {cfg['prune_layers']} keeping {cfg['keep_ratios']} of the prompt "
        f"(query window {cfg['query_window']}, pool {cfg['pool_kernel']}, min {cfg['min_keep_tokens']} tokens). "
        "Full = the unpatched model's `model(ids, use_cache=True, logits_to_keep=1)` + argmax (sdpa); lazy and off = "
        "wall time of `LazyLLM.generate(ids, max_new_tokens=1)`.\n\n" + table + "\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--config", default="default",
                        help="default | paper | a method of benchmarks.ruler.CANDIDATES | JSON object | JSON file")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ttft.json")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of full and lazy per length first")
    parser.add_argument("--off-max-tokens", type=int, default=1 << 30, help="time LazyConfig.off() up to this length")
    parser.add_argument("--merge", action="store_true", help="keep the other lengths' rows already in --out")
    parser.add_argument("--section", default="ttft", help="name of the BENCHMARKS.md section to rewrite")
    parser.add_argument("--no-md", action="store_true", help="do not rewrite the TTFT section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    model, tok = load(args.model, args.threads)
    config = parse_config(args.config, model)
    command = "python -m benchmarks.ttft " + " ".join(argv if argv is not None else sys.argv[1:])

    previous = json.loads(args.out.read_text(encoding="utf-8"))["rows"] if args.merge and args.out.exists() else []

    def save(result: dict) -> None:
        result["machine"] = machine()
        result["model"] = args.model
        result["command"] = command.strip()
        mine = {r["prompt_tokens"] for r in result["rows"]}
        kept = [r for r in previous if r["prompt_tokens"] not in mine]
        result = {**result, "rows": sorted(kept + result["rows"], key=lambda r: r["prompt_tokens"])}
        write_json(args.out, result)
        if not args.no_md:
            replace_section(args.section, markdown(result, command.strip()))

    result = run(
        model, tok, config, args.lengths, args.repeats, args.warmup, on_row=save, off_max_tokens=args.off_max_tokens
    )
    for r in result["rows"]:
        print(
            f"{r['prompt_tokens']:>5} tokens: full {r['full_s']:.2f}s lazy {r['lazy_s']:.2f}s "
            f"speedup {r['speedup']:.2f}x (paired {r['speedup_paired']:.2f}x, CPU {r['cpu_speedup']:.2f}x) "
            f"est {r['est_speedup']:.2f}x "
            f"computed {r['computed_token_fraction']:.3f} off overhead {100 * r['off_overhead']:+.1f}%"
        )
    return result


if __name__ == "__main__":
    main()
