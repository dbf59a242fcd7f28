"""The Ray Data stage vs. our driver: docs/s of ``lazy_map_batches`` and of ``run_pipeline`` on the same corpus.

    .venv/bin/python -m benchmarks.ray_data --docs 8 --prompt-tokens 2048 --max-new-tokens 32

Same corpus as ``benchmarks/pipeline.py`` (essays cut to ``--prompt-tokens``), same settings (default schedule, one
worker of ``--threads`` torch threads, batches of at most ``--batch-size``), one Ray session for all runs, the two paths
taking turns (ABBA, ``--rounds`` times). Per run: the whole wall time (model load included: the Ray Data actor loads it
inside the run), docs/s over it, the time inside ``LazyLLM.generate`` (the batches' ttft + decode, from the output
rows) and so the share of wall time spent outside the engine. Writes ``<out>/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.common import md_table
from benchmarks.pipeline import _engine_seconds, build_corpus


def run_driver(cfg: dict, out: Path) -> dict:
    from pipeline import run_pipeline

    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    report = run_pipeline({**cfg, "output": str(out)})
    wall = time.monotonic() - started
    rows = [r for f in sorted(out.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return _record("run_pipeline", rows, wall, report.rows_in)


def run_ray_data(cfg: dict, out: Path) -> dict:
    import ray

    from pipeline import lazy_map_batches

    shutil.rmtree(out, ignore_errors=True)
    fields = {k: v for k, v in cfg.items() if k not in ("input", "progress", "max_in_flight")}
    started = time.monotonic()
    lazy_map_batches(ray.data.read_parquet(cfg["input"]), {**fields, "batch_size": 8}).write_parquet(str(out))
    wall = time.monotonic() - started
    rows = pq.read_table(out).to_pylist()
    return _record("ray_data", rows, wall, len(rows))


def _record(path: str, rows: list[dict], wall: float, count: int) -> dict:
    if any(r["status"] != "ok" for r in rows):
        raise RuntimeError(f"{path}: error rows {[r['error'] for r in rows if r['status'] != 'ok']}")
    engine = _engine_seconds(rows)
    return {"path": path, "rows": count, "wall_s": wall, "docs_per_s": count / wall, "engine_s": engine,
            "outside_engine_share": 1 - engine / wall, "generations": {r["id"]: r["generation"] for r in rows}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds.")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("bench_out/ray_data"))
    args = parser.parse_args(argv)

    import ray

    corpus = args.out / "input"
    shutil.rmtree(corpus, ignore_errors=True)
    build_corpus(corpus, args.docs, args.prompt_tokens * 6)
    cfg = {"input": str(corpus), "model": args.model, "max_new_tokens": args.max_new_tokens,
           "max_prompt_tokens": args.prompt_tokens, "max_batch_size": args.batch_size, "num_workers": 1,
           "cpus_per_worker": args.threads, "baseline_sample_rate": 0.0, "progress": False}
    # one logical CPU more than the worker takes: Ray Data's read and write tasks need one to run beside it
    ray.init(num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False)
    runs = []
    try:
        for _ in range(args.rounds):
            for path in ("run_pipeline", "ray_data", "ray_data", "run_pipeline"):
                fn = run_driver if path == "run_pipeline" else run_ray_data
                runs.append(fn(cfg, args.out / f"out-{path}"))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "generations"}), flush=True)
    finally:
        ray.shutdown()
    same = all(r["generations"] == runs[0]["generations"] for r in runs)
    summary = {}
    for path in ("run_pipeline", "ray_data"):
        mine = [r for r in runs if r["path"] == path]
        summary[path] = {"docs_per_s": statistics.median(r["docs_per_s"] for r in mine),
                         "wall_s": statistics.median(r["wall_s"] for r in mine),
                         "outside_engine_share": statistics.median(r["outside_engine_share"] for r in mine)}
    table = md_table(["path", "docs/s (median)", "wall s", "share of wall outside the engine"],
                     [[p, s["docs_per_s"], s["wall_s"], f"{s['outside_engine_share']:.1%}"]
                      for p, s in summary.items()])
    text = (f"{args.docs} essays cut to {args.prompt_tokens} tokens, {args.max_new_tokens} new tokens, default "
            f"schedule, 1 worker x {args.threads} threads, batches <= {args.batch_size}, ABBA x {args.rounds}; "
            f"ratio ray_data / run_pipeline docs/s: "
            f"{summary['ray_data']['docs_per_s'] / summary['run_pipeline']['docs_per_s']:.2f}x; identical "
            f"generations across all runs: {same}.\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "summary": summary, "same": same}, indent=1))
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return summary


if __name__ == "__main__":
    main()
