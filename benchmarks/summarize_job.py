"""The product's job end to end: summarize ACL papers through ``run_pipeline``, lazy vs. full, scored against the
authors' abstracts.

    .venv/bin/python -m benchmarks.summarize_job --prompt-tokens 4096 --papers 40
    .venv/bin/python -m benchmarks.summarize_job --prompt-tokens 8192 --papers 20
    .venv/bin/python -m benchmarks.summarize_job --prompt-tokens 4096 --papers 10 --max-new-tokens 256

Corpus: ACLSum papers (``aclsum==0.1.2``, :func:`benchmarks.data.load_aclsum`): the body with the abstract removed is
the document, the abstract the human reference. Papers are taken in a seeded order among those at least
``--prompt-tokens`` long once templated (each is cut in the middle to that length by the pipeline itself) and
written as sharded Parquet, ``--rows-per-shard`` to a shard.

Each shard is one ``run_pipeline`` run per method, the methods taking turns shard by shard (ABBA order), so machine
load drifts over both alike; throughput is docs / steady time (the run's wall time minus its start-up). Every run
appends one JSON line to ``--out`` as soon as it is done: a stopped benchmark resumes where it stopped (also across
sessions), and the report is rebuilt from the lines whose corpus, settings and method config match.

Per method: docs/s, median TTFT, decode ms per step (a batch's decode time / its steps), the computed-token fraction
over the whole generation, revivals per item, ROUGE-1/2/L against the abstract; per pruned method also the paired
bootstrap interval of its ROUGE differences vs. full, and ROUGE-L against the full model's summary. Writes
``<out>.md`` (a table for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import RESULTS_DIR, machine, md_table, quant_label, split_quant
from benchmarks.data import load_aclsum
from benchmarks.eval import METHODS, config_key, method_config
from benchmarks.metrics import paired_bootstrap, rouge_l, rouge_scores

SETTINGS = ("prompt_tokens", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "min_new_tokens",
            "batch_size", "threads", "model", "seed")


def choose_papers(tokenizer: Any, count: int, prompt_tokens: int, seed: int,
                  chat_template: bool = True) -> list[dict[str, str]]:
    """``count`` papers in a seeded order whose prompt (in the chat template, or raw for a base model: the
    pipeline's ``chat_template``) has at least ``prompt_tokens`` tokens."""
    from pipeline import PipelineConfig
    from pipeline.prompts import build_prompt_ids

    papers = list(load_aclsum())
    random.Random(seed).shuffle(papers)
    cfg = PipelineConfig(input="unused", output="unused", chat_template=chat_template)
    chosen = []
    for paper in papers:
        if len(build_prompt_ids(tokenizer, cfg, paper["text"], None)) >= prompt_tokens:
            chosen.append(paper)
        if len(chosen) == count:
            return chosen
    raise ValueError(f"only {len(chosen)} ACLSum papers reach {prompt_tokens} tokens; ask for fewer --papers")


def write_shards(papers: list[dict[str, str]], folder: Path, rows_per_shard: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(papers), rows_per_shard):
        path = folder / f"part-{i // rows_per_shard:05d}.parquet"
        rows = [{"id": p["id"], "text": p["text"]} for p in papers[i : i + rows_per_shard]]
        pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(path)
    return paths


def label(method: str, dtype: str, quantize: str = "none") -> str:
    """A method's name in the report: the name alone in float32 (the records before dtypes were recorded), else
    ``method@dtype``; on quantized weights ``+int4`` after it (:func:`benchmarks.common.quant_label`)."""
    return quant_label(method if dtype == "float32" else f"{method}@{dtype}", quantize)


def record_label(rec: dict[str, Any]) -> str:
    return label(rec["method"], rec.get("dtype", "float32"), rec.get("quantize", "none"))


def baseline(labels: list[str]) -> str:
    """What the diffs are against: full in float32 when it ran, else the first full."""
    return "full" if "full" in labels else next((m for m in labels if m.startswith("full")), "full")


def run_shard(shard: Path, method: str, dtype: str, quantize: str, model: Any, args: argparse.Namespace,
              work: Path) -> dict[str, Any]:
    """One run_pipeline over one shard with one method in one dtype on weights quantized as ``quantize`` -> a
    JSON-able record."""
    from pipeline import PipelineConfig, run_pipeline

    config = METHODS[method][1](model)
    out = work / f"out-{method}-{dtype}-{quantize}-{shard.stem}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PipelineConfig(
        input=str(shard), output=str(out), model=args.model, lazy=config, max_new_tokens=args.max_new_tokens,
        dtype=dtype, quantize=quantize,
        max_prompt_tokens=args.prompt_tokens, baseline_sample_rate=0.0, num_workers=1, cpus_per_worker=args.threads,
        max_batch_size=args.batch_size, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, min_new_tokens=args.min_new_tokens, progress=False,
    )
    report = run_pipeline(cfg)
    if report.rows_ok != report.rows_in:
        raise RuntimeError(f"{method} on {shard.name} had failures: {report.failures_by_reason}")
    rows = [r for f in sorted(out.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    shutil.rmtree(out, ignore_errors=True)
    keep = ("id", "generation", "prompt_tokens", "prompt_tokens_used", "new_tokens", "ttft_s", "decode_s",
            "computed_token_fraction", "computed_token_fraction_total", "revived_tokens", "worker")
    return {"method": method, "dtype": dtype, "quantize": quantize, "config": config.model_dump(),
            "shard": shard.name, "quantized": report.quantize,
            "steady_s": report.wall_s - report.startup_s, "startup_s": report.startup_s,
            "rows": [{k: r[k] for k in keep} for r in rows]}


def _batches(rows: list[dict[str, Any]]) -> list[tuple[float, float, int]]:
    """(ttft_s, decode_s, steps) per batch: rows of a batch share their times; steps = its longest output - 1."""
    groups: dict[tuple[Any, float, float], int] = {}
    for r in rows:
        key = (r["worker"], r["ttft_s"], r["decode_s"])
        groups[key] = max(groups.get(key, 0), r["new_tokens"])
    return [(t, d, n - 1) for (_, t, d), n in groups.items()]


def summarize(records: list[dict[str, Any]], references: dict[str, str], methods: list[str]) -> dict[str, Any]:
    by_method: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in methods}
    steady = dict.fromkeys(methods, 0.0)
    shards = {m: set() for m in methods}
    for rec in records:
        m = record_label(rec)
        by_method[m].update({r["id"]: r for r in rec["rows"]})
        steady[m] += rec["steady_s"]
        shards[m].add(rec["shard"])
    common = sorted(set.intersection(*(set(v) for v in by_method.values()))) if methods else []
    common_shards = set.intersection(*shards.values()) if methods else set()
    out: dict[str, Any] = {"papers": len(common), "methods": {}}
    if not common:  # nothing run yet (or nothing under these settings)
        return out
    base = baseline(methods)
    full = by_method.get(base, {})
    for m in methods:
        rows = [by_method[m][i] for i in common]
        scores = [rouge_scores(r["generation"] or "", references[r["id"]]) for r in rows]
        batches = _batches(rows)
        mine = [rec for rec in records if record_label(rec) == m and rec["shard"] in common_shards]
        time_s = sum(rec["steady_s"] for rec in mine)
        docs = sum(len(rec["rows"]) for rec in mine)
        entry = {
            "docs_per_s": docs / time_s if time_s else float("nan"),
            "median_ttft_s": statistics.median(b[0] for b in batches),
            "decode_ms_per_step": statistics.median(1000 * d / s for _, d, s in batches if s > 0),
            "mean_new_tokens": statistics.fmean(r["new_tokens"] for r in rows),
            "computed_total": statistics.fmean(r["computed_token_fraction_total"] for r in rows),
            "computed_prefill": statistics.fmean(r["computed_token_fraction"] for r in rows),
            "revived_per_item": statistics.fmean(r["revived_tokens"] for r in rows),
            "empty_outputs": sum(not (r["generation"] or "").strip() for r in rows),
            **{name: statistics.fmean(s[name] for s in scores) for name in ("rouge1", "rouge2", "rougeL")},
        }
        if m != base and full:
            base = [rouge_scores(full[i]["generation"] or "", references[i]) for i in common]
            for name in ("rouge1", "rouge2", "rougeL"):
                entry[f"{name}_diff"] = paired_bootstrap([s[name] for s in scores], [s[name] for s in base])
            entry["rougeL_vs_full"] = statistics.fmean(
                rouge_l(r["generation"] or "", full[r["id"]]["generation"] or "") for r in rows)
        plain = split_quant(m)[0]
        if plain != m and plain in by_method:  # quantized: paired against the same method on the dense weights
            dense = [rouge_scores(by_method[plain][i]["generation"] or "", references[i]) for i in common]
            entry["rougeL_diff_vs_dense"] = paired_bootstrap([s["rougeL"] for s in scores],
                                                             [s["rougeL"] for s in dense])
            entry["same_text_as_dense"] = statistics.fmean(
                (r["generation"] or "") == (by_method[plain][r["id"]]["generation"] or "") for r in rows)
        out["methods"][m] = entry
    return out


def markdown(summary: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    methods = summary["methods"]
    full = methods.get(baseline(list(methods)), {})
    header = ["method", "docs/s", "docs/s vs full", "TTFT s (median)", "decode ms/step", "decode vs full",
              "computed (prefill)", "computed (whole job)", "revived/item", "new tokens", "empty", "R-1", "R-2",
              "R-L", "ΔR-L vs full [95 % CI]", "R-L vs full's summary", "ΔR-L vs dense weights [95 % CI]",
              "same text as dense"]
    rows = []
    for name, e in methods.items():
        diff, dense = e.get("rougeL_diff"), e.get("rougeL_diff_vs_dense")
        rows.append([
            name, e["docs_per_s"], e["docs_per_s"] / full["docs_per_s"] if full else float("nan"),
            e["median_ttft_s"], e["decode_ms_per_step"],
            e["decode_ms_per_step"] / full["decode_ms_per_step"] if full else float("nan"),
            e["computed_prefill"], e["computed_total"], e["revived_per_item"], e["mean_new_tokens"],
            e["empty_outputs"], e["rouge1"], e["rouge2"], e["rougeL"],
            f"{diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}]" if diff else "",
            e.get("rougeL_vs_full", ""),
            f"{dense[0]:+.4f} [{dense[1]:+.4f}, {dense[2]:+.4f}]" if dense else "", e.get("same_text_as_dense", ""),
        ])
    rules = (f"repetition_penalty {args.repetition_penalty}, no_repeat_ngram_size {args.no_repeat_ngram_size}, "
             f"min_new_tokens {args.min_new_tokens}")
    return (f"ACLSum, {summary['papers']} papers cut to {args.prompt_tokens} tokens, {args.max_new_tokens} new tokens "
            f"at most ({rules}), batch <= {args.batch_size}, 1 worker x {args.threads} threads, through "
            f"`run_pipeline`; methods alternate shard by shard (`{command}`)\n\n" + md_table(header, rows) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["full", "lazy"], choices=sorted(METHODS))
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="each method runs in each dtype; diffs are against full in float32 (or the first)")
    parser.add_argument("--quantize", nargs="+", default=["none"], choices=["none", "int8", "int4"],
                        help="each method also on these weights (PipelineConfig.quantize); ROUGE diffs of a "
                        "quantized method are paired against the same method on the dense weights")
    parser.add_argument("--papers", type=int, default=40)
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--rows-per-shard", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4, help="max_batch_size of the pipeline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="results JSONL (default: benchmarks/results/summarize_job-<T>.jsonl)")
    parser.add_argument("--work", type=Path, default=Path("bench_out/summarize_job"))
    parser.add_argument("--report-only", action="store_true", help="rebuild the table from the results, run nothing")
    args = parser.parse_args(argv)
    if "full" not in args.methods:
        args.methods.insert(0, "full")
    out = args.out or RESULTS_DIR / f"summarize_job-{args.prompt_tokens}.jsonl"
    from benchmarks.common import load

    model, tok = load(args.model, args.threads)
    papers = choose_papers(tok, args.papers, args.prompt_tokens, args.seed)
    references = {p["id"]: p["abstract"] for p in papers}
    settings = {k: getattr(args, k) for k in SETTINGS}
    corpus_ids = [p["id"] for p in papers]

    def matches(rec: dict[str, Any]) -> bool:
        return (rec["settings"] == settings and rec["method"] in args.methods
                and rec.get("dtype", "float32") in args.dtypes and rec.get("quantize", "none") in args.quantize
                and config_key(rec["config"]) == config_key(method_config(rec["method"],
                                                                          model.config.num_hidden_layers).model_dump())
                and all(r["id"] in references for r in rec["rows"]))

    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    records = [r for r in records if matches(r)]
    if not args.report_only:
        import ray

        shards = write_shards(papers, args.work / f"corpus-{args.prompt_tokens}-s{args.seed}", args.rows_per_shard)
        done = {(r["method"], r.get("dtype", "float32"), r.get("quantize", "none"), r["shard"]) for r in records}
        started_ray = not ray.is_initialized()
        if started_ray:  # Ray's default niceness 15 for workers would slow the actors against anything else running
            ray.init(num_cpus=args.threads, include_dashboard=False, _system_config={"worker_niceness": 0})
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with out.open("a", encoding="utf-8") as sink:
                for i, shard in enumerate(shards):
                    runs = [(m, d, q) for q in args.quantize for d in args.dtypes for m in args.methods]
                    order = runs if i % 2 == 0 else runs[::-1]  # ABBA: drift hits both alike
                    for method, dtype, quantize in order:
                        if (method, dtype, quantize, shard.name) in done:
                            continue
                        rec = run_shard(shard, method, dtype, quantize, model, args, args.work)
                        rec.update(settings=settings, corpus=corpus_ids, machine=machine())
                        sink.write(json.dumps(rec) + "\n")
                        sink.flush()
                        records.append(rec)
                        print(f"{label(method, dtype, quantize):>20} {shard.name} {len(rec['rows'])} docs in "
                              f"{rec['steady_s']:.1f}s",
                              flush=True)
        finally:
            if started_ray:
                ray.shutdown()
    summary = summarize(records, references, [label(m, d, q) for q in args.quantize for d in args.dtypes
                                              for m in args.methods])
    summary["settings"] = settings
    text = markdown(summary, args, "python -m benchmarks.summarize_job " + " ".join(sys.argv[1:] if argv is None
                                                                                    else argv))
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return summary


if __name__ == "__main__":
    main()
