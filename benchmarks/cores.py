"""Every core, how: one CPU worker with every thread against several workers with fewer threads each, on the job.

    .venv/bin/python -m benchmarks.cores --layouts 1x2 2x1 --papers 8 --batch-size 4

ACLSum papers (:func:`benchmarks.summarize_job.choose_papers`) cut to ``--prompt-tokens`` in one shard, ``--new-tokens``
generated per paper exactly (``min_new_tokens``), the default schedule, ``dtype="auto"`` and ``quantize="auto"``
(the pipeline's defaults; each run records what they chose), batches of at most
``--batch-size`` (so that every layout gets the same batches), ``baseline_sample_rate=0``. Each layout ``WxT`` (W
workers of T threads) is one ``run_pipeline`` on one Ray session; the layouts take turns (ABBA) for ``--rounds``
rounds; docs/s = docs / (wall - start-up), medians. Writes ``benchmarks/results/cores.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine, md_table, write_json


def run_layout(shard_dir: Path, work: Path, workers: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import PipelineConfig, run_pipeline

    out = work / f"out-{workers}x{threads}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PipelineConfig(input=str(shard_dir), output=str(out), max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, max_prompt_tokens=args.prompt_tokens,
                         max_batch_size=args.batch_size, baseline_sample_rate=0.0, progress=False,
                         num_workers=workers, cpus_per_worker=threads)
    report = run_pipeline(cfg)
    if report.rows_ok != report.rows_in:
        raise RuntimeError(f"layout {workers}x{threads} had failures: {report.failures_by_reason}")
    shutil.rmtree(out, ignore_errors=True)
    steady = report.wall_s - report.startup_s
    return {"workers": report.workers, "threads": report.threads_per_worker, "dtype": report.dtype,
            "quantize": report.quantize,
            "docs": report.rows_ok, "steady_s": steady, "docs_per_s": report.rows_ok / steady,
            "startup_s": report.startup_s}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="WxT: W workers of T threads")
    parser.add_argument("--papers", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("bench_out/cores"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cores.json")
    args = parser.parse_args(argv)
    layouts = [tuple(int(x) for x in layout.split("x")) for layout in args.layouts]
    import ray

    from benchmarks.summarize_job import choose_papers, write_shards
    from lazy_core import load_tokenizer

    papers = choose_papers(load_tokenizer("smollm2-135m-instruct"), args.papers, args.prompt_tokens, args.seed)
    shard_dir = args.work / "input"
    shutil.rmtree(shard_dir, ignore_errors=True)
    write_shards(papers, shard_dir, len(papers))
    cpus = max(w * t for w, t in layouts)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(), "runs": []}
    ray.init(num_cpus=cpus, include_dashboard=False, _system_config={"worker_niceness": 0})
    try:
        for r in range(args.rounds):
            for workers, threads in layouts if r % 2 == 0 else layouts[::-1]:
                entry = {"layout": f"{workers}x{threads}", "round": r,
                         **run_layout(shard_dir, args.work, workers, threads, args)}
                results["runs"].append(entry)
                print(entry, flush=True)
                write_json(args.out, results)
    finally:
        ray.shutdown()
    rows = []
    for layout in args.layouts:
        runs = [e for e in results["runs"] if e["layout"] == layout]
        rows.append([layout, statistics.median(e["docs_per_s"] for e in runs), len(runs), runs[0]["dtype"],
                     runs[0].get("quantize") or "none"])
    best = max(r[1] for r in rows)
    rows = [[*r[:2], r[1] / best, *r[2:]] for r in rows]
    command = " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"{args.papers} ACLSum papers at {args.prompt_tokens} tokens, {args.new_tokens} new tokens each, batches "
            f"<= {args.batch_size}, medians of {args.rounds} ABBA rounds (`python -m benchmarks.cores {command}`)\n\n"
            + md_table(["workers x threads", "docs/s", "vs best", "runs", "dtype", "weights"], rows) + "\n")
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return results


if __name__ == "__main__":
    main()
