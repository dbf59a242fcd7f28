"""Markdown report + PNG plots of the evaluation and the TTFT benchmark (the paper's Table 1).

Reads ``benchmarks/results/eval.jsonl`` (``python -m benchmarks.eval``) and ``benchmarks/results/ttft.json``
(``python -m benchmarks.ttft``), writes ``benchmarks/results/report.md`` with a table like the paper's Table 1, a
per-method comparison (score, first-token agreement with full, gold-answer log-likelihood change, computed-token
fraction, FLOP-model and measured TTFT speedup) and three plots, and refreshes the "eval" section of BENCHMARKS.md.

    python -m benchmarks.report              # summarise the existing results
    python -m benchmarks.report --run        # run the default evaluation first (tens of items, <= 4K tokens)
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, md_table, median, replace_section, threads_text
from benchmarks.metrics import exact_match, first_line, first_token_agrees, task_score

TASK_NAMES = {
    "needle": "Needle (passkey found)",
    "entity": "Entity needles (code found)",
    "multidoc_qa": "Multi-doc QA, HotpotQA (F1)",
    "single_qa": "Single-doc QA, SQuAD (F1)",
    "summarize": "Summarization (ROUGE-L vs. full)",
}
MAX_DROP = 0.01  # a method qualifies within 1 point of full's score and with <= 1 % of needle items changed


def load_records(paths: list[Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """method -> item_id -> record, from one or more JSONL files (the last line wins if a pair appears twice)."""
    if not paths:
        raise FileNotFoundError("no eval results; run `python -m benchmarks.eval` first (or pass --run)")
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; run `python -m benchmarks.eval` first (or pass --run)")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                out[rec["method"]][rec["item_id"]] = rec
    if "full" not in out:
        raise ValueError(f"{paths} hold no 'full' records: every score is relative to the full model; rerun the eval")
    return out


def current_only(records: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Drop the records of a method of ``benchmarks.eval.METHODS`` that were run with another config than the one the
    method has now (e.g. the baselines before a change of the default); methods no longer defined are kept as run."""
    from benchmarks.eval import METHODS, config_key, method_config

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, by_item in records.items():
        if method not in METHODS:
            out[method] = by_item
            continue
        kept = {}
        for item_id, rec in by_item.items():
            current = method_config(method, len(rec["kept_per_layer"])).model_dump()
            if config_key(rec.get("config") or {}) == config_key(current):
                kept[item_id] = rec
        if kept:
            out[method] = kept
    return out


def score_records(records: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (method, item) present for both the method and full, with its scores against gold and full."""
    full = records["full"]
    rows = []
    for method, by_item in records.items():
        for item_id, rec in by_item.items():
            ref = full.get(item_id)
            if ref is None:
                continue
            qa = rec["task"] in ("multidoc_qa", "single_qa")
            rows.append(
                {
                    "method": method,
                    "item_id": item_id,
                    "task": rec["task"],
                    "target_tokens": rec["target_tokens"],
                    "prompt_tokens": rec["prompt_tokens"],
                    "score": task_score(rec["task"], rec["text"], rec["answers"], reference=ref["text"]),
                    "em": exact_match(first_line(rec["text"]), rec["answers"]) if qa else math.nan,
                    "first_token_agrees": first_token_agrees(rec["new_ids"], ref["new_ids"]),
                    "same_output": rec["new_ids"] == ref["new_ids"],
                    "ttft_speedup": ref["ttft_s"] / rec["ttft_s"],
                    "est_speedup": rec["est_speedup"],
                    "computed_token_fraction": rec["computed_token_fraction"],
                    "computed_total": rec["computed_token_fraction_total"],
                    "revived_tokens": rec["revived_tokens"],
                    "schedule": schedule_text(rec.get("config") or {}),
                    "kept_fraction_per_layer": [k / rec["prompt_tokens"] for k in rec["kept_per_layer"]],
                    "dloglik": (rec["gold_loglik"] - ref["gold_loglik"])
                    if rec.get("gold_loglik") is not None and ref.get("gold_loglik") is not None
                    else math.nan,
                }
            )
    return rows


def schedule_text(config: dict[str, Any]) -> str:
    """The schedule a record was run with, as recorded (the default may change between runs)."""
    if not config.get("prune_layers"):
        return "no pruning"
    text = f"layers {config['prune_layers']} keep {config['keep_ratios']}"
    if config.get("method", "attention") != "attention":
        text += f", {config['method']}"
    if not config.get("revive", True):
        text += ", no revival"
    elif (config.get("revival") or {}).get("name", config.get("revive_policy")) == "top":  # or the old flat keys
        text += f", revive top {(config.get('revival') or {}).get('top', config.get('revive_top'))}"
        text += f" in the first {config['revive_steps']} steps" if config.get("revive_steps") else ""
    pools = config.get("pool_kernels")
    pool = "/".join(map(str, pools)) if pools else config.get("pool_kernel")
    text += f", window {config.get('query_window')}, pool {pool}"
    text += f" shifted {config['pool_shift']}" if config.get("pool_shift") else ""
    text += f" ({config['decode_pool_kernel']} when decoding)" if config.get("decode_pool_kernel") else ""
    return text + (f", first {config['keep_head']} kept" if config.get("keep_head") else "")


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else math.nan


def summarise(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Per-method aggregates, methods in ``order``."""
    full_scores = {r["item_id"]: r["score"] for r in rows if r["method"] == "full"}
    out = []
    for method in order:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        by_task = {t: [r for r in mine if r["task"] == t] for t in TASK_NAMES}
        needle = by_task["needle"] + by_task["entity"]  # facts retrieved: passkeys and entity-bound codes
        needle_lost = sum(1 for r in needle if full_scores[r["item_id"]] > r["score"])
        needle_changed = sum(1 for r in needle if full_scores[r["item_id"]] != r["score"])
        qa = by_task["multidoc_qa"] + by_task["single_qa"]
        qa_drop = _mean([full_scores[r["item_id"]] for r in qa]) - _mean([r["score"] for r in qa]) if qa else 0.0
        summary = {
            "method": method,
            "schedule": mine[0]["schedule"],
            "items": len(mine),
            **{t: _mean([r["score"] for r in by_task[t]]) for t in TASK_NAMES},
            "needle_lost": needle_lost,
            "needle_changed": needle_changed,
            "needle_n": len(needle),
            "qa_drop": qa_drop,
            "first_token_agreement": _mean([float(r["first_token_agrees"]) for r in mine]),
            "same_output": _mean([float(r["same_output"]) for r in mine]),
            "dloglik": _mean([r["dloglik"] for r in qa]),
            "computed_token_fraction": _mean([r["computed_token_fraction"] for r in mine]),
            "computed_total": _mean([r["computed_total"] for r in mine]),
            "est_speedup": _mean([r["est_speedup"] for r in mine]),
            "ttft_speedup": median([r["ttft_speedup"] for r in mine]),
            "revived_tokens": _mean([float(r["revived_tokens"]) for r in mine]),
        }
        summary["qualifies"] = method == "full" or (
            needle_lost <= MAX_DROP * max(1, len(needle)) and qa_drop <= MAX_DROP + 1e-9
        )
        out.append(summary)
    return out


def choose(summary: list[dict[str, Any]]) -> str:
    """The selection rule applied to the pruned methods, in words: the fastest within 1 point of full, and
    (since a handful of needle items makes "<= 1 % changed" mean "none") the fastest among those with the fewest
    needle items lost and QA F1 no more than 1 point below full, among the methods run on the most needle items."""
    pruned = [s for s in summary if s["method"] != "full"]
    if not pruned:
        return "No pruned method was run."
    strict = [s for s in pruned if s["qualifies"]]
    lines = []
    if strict:
        best = max(strict, key=lambda s: s["est_speedup"])
        lines.append(
            f"Fastest method within 1 point of full: **{best['method']}** (est. speedup {best['est_speedup']:.2f}x, "
            f"computed fraction {best['computed_token_fraction']:.3f})."
        )
    else:
        lines.append("**No pruned method is within 1 point of full** (every one changes at least one needle item).")
    most = max(s["needle_n"] for s in pruned)  # compare on the same items: the methods run on every needle item
    fair = [s for s in pruned if s["qa_drop"] <= MAX_DROP + 1e-9 and s["needle_n"] == most and most]
    if fair:
        fewest = min(s["needle_lost"] / s["needle_n"] for s in fair)
        tied = [s for s in fair if s["needle_lost"] / s["needle_n"] == fewest]
        best = max(tied, key=lambda s: s["est_speedup"])
        lines.append(
            f"Fastest among the methods with the fewest needle items lost ({best['needle_lost']}/{best['needle_n']}) "
            f"and QA F1 within 1 point of full: **{best['method']}** (est. speedup {best['est_speedup']:.2f}x; tied: "
            + ", ".join(f"{s['method']} {s['est_speedup']:.2f}x" for s in sorted(tied, key=lambda s: -s["est_speedup"]))
            + ")."
        )
    return "\n".join(lines)


def table1(rows: list[dict[str, Any]], lazy: str = "lazy") -> str:
    """Like the paper's Table 1: per task and length, full score, LazyLLM score, measured TTFT speedup."""
    cells = []
    keys = sorted({(r["task"], r["target_tokens"]) for r in rows}, key=lambda k: (list(TASK_NAMES).index(k[0]), k[1]))
    for task, length in keys:
        sel = [r for r in rows if r["task"] == task and r["target_tokens"] == length]
        full = [r for r in sel if r["method"] == "full"]
        mine = [r for r in sel if r["method"] == lazy]
        if not full or not mine:
            continue
        cells.append(
            [
                TASK_NAMES[task],
                length,
                len(mine),
                _mean([r["score"] for r in full]),
                _mean([r["score"] for r in mine]),
                _mean([float(r["first_token_agrees"]) for r in mine]),
                median([r["ttft_speedup"] for r in mine]),
                _mean([r["est_speedup"] for r in mine]),
            ]
        )
    header = ["task", "tokens", "items", "full", "LazyLLM", "1st-token agree", "TTFT speedup", "est. speedup"]
    return md_table(header, cells)


def methods_table(summary: list[dict[str, Any]], descriptions: dict[str, str]) -> str:
    header = [
        "method",
        "items",
        "needle",
        "HotpotQA F1",
        "SQuAD F1",
        "summary R-L",
        "needle lost",
        "1st-token agree",
        "Δ gold loglik",
        "computed (prefill)",
        "computed (+decode)",
        "revived",
        "est. speedup",
        "TTFT speedup",
        "within 1 pt",
    ]
    body = [
        [
            f"{s['method']}: {descriptions.get(s['method'], '')} ({s['schedule']})",
            s["items"],
            s["needle"],
            s["multidoc_qa"],
            s["single_qa"],
            s["summarize"],
            f"{s['needle_lost']}/{s['needle_n']}",
            s["first_token_agreement"],
            s["dloglik"],
            s["computed_token_fraction"],
            s["computed_total"],
            s["revived_tokens"],
            s["est_speedup"],
            s["ttft_speedup"],
            "yes" if s["qualifies"] else "no",
        ]
        for s in summary
    ]
    return md_table(header, body)


def needle_by_length(rows: list[dict[str, Any]], order: list[str]) -> str:
    lengths = sorted({r["target_tokens"] for r in rows if r["task"] == "needle"})
    body = []
    for method in order:
        mine = [r for r in rows if r["method"] == method and r["task"] == "needle"]
        if mine:
            per = [[r["score"] for r in mine if r["target_tokens"] == n] for n in lengths]
            body.append([method] + [f"{int(sum(p))}/{len(p)}" if p else "-" for p in per])
    return md_table(["method"] + [f"{n} tokens" for n in lengths], body)


def plots(rows: list[dict[str, Any]], summary: list[dict[str, Any]], ttft: dict | None, out_dir: Path) -> list[Path]:
    """score vs. speedup per method, kept tokens per layer, TTFT vs. prompt length (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = {s["method"]: plt.cm.tab20(i % 20) for i, s in enumerate(summary)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "needle", "needle retrieval (passkey found)"),
        (axes[1], "first_token_agreement", "first-token agreement with full (all tasks)"),
    ):
        for s in summary:
            x = s["est_speedup"]
            ax.scatter([x], [s[key]], s=40, color=colors[s["method"]])
            ax.annotate(s["method"], (x, s[key]), textcoords="offset points", xytext=(4, 3), fontsize=8)
        ax.set_xlabel("FLOP-model prefill speedup (est_speedup)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Score vs. speedup per method")
    fig.tight_layout()
    paths.append(out_dir / "score_vs_speedup.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in summary:
        per = [r["kept_fraction_per_layer"] for r in rows if r["method"] == s["method"]]
        if per and s["method"] != "full":
            mean = [sum(col) / len(col) for col in zip(*per, strict=True)]
            ax.step(range(len(mean)), mean, where="post", label=s["method"], color=colors[s["method"]])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("fraction of prompt tokens computed")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title("Kept tokens per layer (prefill, mean over items)")
    fig.tight_layout()
    paths.append(out_dir / "kept_per_layer.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if ttft:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        xs = [r["prompt_tokens"] for r in ttft["rows"]]
        for key, label in (
            ("full_s", "full prefill (unpatched model), wall"),
            ("lazy_s", "LazyLLM, wall"),
            ("full_cpu_s", "full prefill, process CPU"),
            ("lazy_cpu_s", "LazyLLM, process CPU"),
        ):
            if all(key in r for r in ttft["rows"]):
                style = "--" if "cpu" in key else "-"
                ax.plot(xs, [r[key] for r in ttft["rows"]], style, marker="o", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("TTFT, median s (log)")
        ax.set_xscale("log", base=2)
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_title("TTFT vs. prompt length")
        fig.tight_layout()
        paths.append(out_dir / "ttft_vs_length.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def build_report(eval_paths: list[Path], ttft_path: Path, out_dir: Path) -> str:
    from benchmarks.eval import METHODS

    records = current_only(load_records(eval_paths))
    if "lazy" not in records:  # Table 1 is the default's; current_only left only records run with today's default
        raise ValueError(
            f"{eval_paths} hold no 'lazy' records run with today's LazyConfig.default_for; "
            "run `python -m benchmarks.eval --methods lazy`"
        )
    rows = score_records(records)
    order = [m for m in METHODS if m in records] + sorted(m for m in records if m not in METHODS)
    summary = summarise(rows, order)
    ttft = json.loads(ttft_path.read_text(encoding="utf-8")) if ttft_path.exists() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plots(rows, summary, ttft, out_dir)
    env = next(iter(records["full"].values()))["machine"]
    verdict = choose(summary)
    rel = [p.relative_to(out_dir.parent.parent) if out_dir.parent.parent in p.parents else p for p in pngs]
    text = (
        "## Evaluation: accuracy vs. speed on real long-context data\n\n"
        "Commands: `python -m benchmarks.eval` then `python -m benchmarks.report` (or `make bench`). "
        f"Model: the embedded SmolLM2-135M-Instruct, fp32, greedy; measured {env['date_utc']} UTC at commit "
        f"{env['git_commit']} on a {env['cpu_count']}-core CPU, {env.get('torch_threads', '?')} torch threads, "
        f"1-minute load average {env.get('load_average_1m', '?')} at the first full run (TTFT speedups are wall-time "
        "medians of per-item ratios to the full run of the same item, noisy on a shared machine; the FLOP-model "
        "speedup is exact arithmetic on the tokens computed).\n\n"
        "### Table 1 (paper-style): full vs. LazyLLM default (method `lazy`: "
        f"{next(s['schedule'] for s in summary if s['method'] == 'lazy')})\n\n"
        + table1(rows)
        + "\n\n"
        "### All methods on the same items\n\n"
        "needle lost = items the full model answers and the method does not; Δ gold loglik = mean change (nats) of "
        "the gold answer's log-likelihood vs. full, QA items; within 1 pt = needle lost <= 1 % of items and QA F1 "
        "drop <= 0.01; computed = token-layers computed / (layers x tokens), over the prefill and over the whole "
        "generation (revivals included); revived = Aux-Cache revivals per item.\n\n"
        + methods_table(summary, {k: v[0] for k, v in METHODS.items()})
        + "\n\n"
        "### Needle retrieval by length (found / items)\n\n" + needle_by_length(rows, order) + "\n\n" + verdict + "\n\n"
        "Plots: " + ", ".join(f"![{p.stem}]({p})" for p in rel) + "\n"
    )
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (0, 0 for no trials)."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def agreement_text(paths: list[Path]) -> str:
    """Per method of these eval records (as run, whatever the method's config is now), against the full model on the
    same items: first-token agreement with its Wilson interval, the task score, and the gold answer's
    log-likelihood change (mean and median), and the thread counts the pairs ran at (compare at equal counts)."""
    records = load_records(paths)
    rows = score_records(records)
    full = {r["item_id"]: r["score"] for r in rows if r["method"] == "full"}
    table = []
    for method in sorted({r["method"] for r in rows} - {"full"}):
        mine = [r for r in rows if r["method"] == method]
        agree = sum(r["first_token_agrees"] for r in mine)
        lo, hi = wilson(agree, len(mine))
        dll = [r["dloglik"] for r in mine if not math.isnan(r["dloglik"])]
        table.append([method, mine[0]["schedule"], len(mine), f"{agree}/{len(mine)} [{100 * lo:.0f}, {100 * hi:.0f}] %",
                      f"{_mean([full[r['item_id']] for r in mine]):.3f}", f"{_mean([r['score'] for r in mine]):.3f}",
                      f"{_mean(dll):+.3f}" if dll else "", f"{median(dll):+.3f}" if dll else "",
                      threads_text([(records["full"][r["item_id"]], records[method][r["item_id"]]) for r in mine])])
    return md_table(["method", "schedule", "items", "first token = full's [95 % interval]", "full score", "score",
                     "Δ gold loglik (mean)", "(median)", "threads (full / it)"], table)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, nargs="+", default=None, help="default: benchmarks/results/eval*.jsonl")
    parser.add_argument("--ttft", type=Path, default=RESULTS_DIR / "ttft.json")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--run", action="store_true", help="run `python -m benchmarks.eval` (default size) first")
    parser.add_argument("--no-md", action="store_true", help="do not rewrite the eval section of BENCHMARKS.md")
    parser.add_argument("--agreement", action="store_true",
                        help="only print each method's first-token agreement with full (Wilson interval), score and "
                        "gold log-likelihood change on the --eval files, as run")
    args = parser.parse_args(argv)
    if args.agreement:
        print(agreement_text(args.eval or sorted(RESULTS_DIR.glob("eval*.jsonl"))))
        return args.out_dir / "report.md"
    if args.run:
        from benchmarks.eval import main as run_eval

        run_eval(["--out", str(RESULTS_DIR / "eval.jsonl")])
    evals = args.eval if args.eval is not None else sorted(RESULTS_DIR.glob("eval*.jsonl"))
    text = build_report(evals, args.ttft, args.out_dir)
    if not args.no_md:
        replace_section("eval", text)
    print(text)
    return args.out_dir / "report.md"


if __name__ == "__main__":
    main()
