#!/usr/bin/env python
"""Nightly summarization job: Parquet shards in, LazyLLM summaries out, through ``pipeline.run_pipeline``.

Runs the same way on a laptop and on a cluster::

    python jobs/summarize.py --input corpus/ --output out/            # a local Ray (started, or RAY_ADDRESS)
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/summarize.py --input s3://bucket/in/ --output s3://bucket/out/2026-11-24/

Settings come from the PipelineConfig defaults, then ``--config`` (YAML), then the flags given here; the result is
validated once by PipelineConfig. Exit status: 0 when every shard finished (and the accuracy guard held), 1 when
the run failed or left shards unfinished, 2 for a bad command line, config or input, 3 when the sampled agreement
of lazy vs. full output fell below ``--min-agreement``. The last line of output is the one-line verdict.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# `python jobs/summarize.py` puts jobs/ on sys.path, not the repo; under `ray job submit --working-dir .` the
# working dir is the repo. Either way the packages (lazy_core, workers, pipeline) live one level up.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ACCURACY = 3

# CLI flag -> PipelineConfig field. Flags left out keep the YAML / default value.
FLAG_TO_FIELD = {
    "input": "input",
    "output": "output",
    "model": "model",
    "workers": "num_workers",
    "cpus_per_worker": "cpus_per_worker",
    "max_new_tokens": "max_new_tokens",
    "batching": "batching",
    "quantize": "quantize",
    "compile_step": "compile_step",
    "baseline_sample_rate": "baseline_sample_rate",
    "overwrite": "overwrite",
}


class UsageError(ValueError):
    """A bad command line, config file or input: exit status 2."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="summarize.py",
        description="Summarize a corpus of Parquet shards with LazyLLM (dynamic token pruning) on Ray. "
        "Flags override --config; both are validated by pipeline.PipelineConfig.",
        epilog="Exit status: 0 every shard finished; 1 run failed or shards unfinished; 2 bad arguments, config or "
        "input; 3 agreement below --min-agreement. Resume: rerun with the same arguments; finished shards are "
        "skipped.",
    )
    parser.add_argument("--input", help="Directory or glob of Parquet shards (local path or pyarrow URI, e.g. s3://).")
    parser.add_argument("--output", help="Output directory; one output shard per input shard plus _run_report.json.")
    parser.add_argument("--model", help="Model: 'smollm2-135m-instruct' (embedded default), a local HF dir or HF id.")
    parser.add_argument("--config", type=Path, help="YAML file of PipelineConfig fields (flags given here win).")
    parser.add_argument("--workers", type=_positive_int, help="Ray actors, one model each (default: one per GPU; "
                        "without GPUs, as many as fill the CPUs).")
    parser.add_argument("--cpus-per-worker", type=_positive_int, help="CPUs (torch threads) per worker without GPUs "
                        "(default: one single-thread worker per CPU; fewer, wider ones if the memory holds fewer "
                        "model copies).")
    parser.add_argument("--max-new-tokens", type=_positive_int, help="Summary length limit in tokens.")
    parser.add_argument("--batching", choices=["continuous", "static"], help="'continuous' (default): a finished "
                        "item's slot takes the next prompt; 'static': a batch decodes until its longest item ends.")
    parser.add_argument("--quantize", choices=["auto", "none", "int8", "int4"], help="Weight-only quantization for "
                        "decoding: 'auto' (default: int4 on a CPU with bf16 units, where it measured faster at the "
                        "same quality; none elsewhere), 'int4' (int8 where 4 bits do not hold a layer), 'int8', "
                        "'none'.")
    parser.add_argument("--compile-step", choices=["off", "default", "max-autotune-no-cudagraphs", "reduce-overhead"],
                        help="Continuous batching: run the decoding steps in which no item revives through "
                        "torch.compile in this mode ('reduce-overhead': CUDA graphs on a GPU); 'off' (default) runs "
                        "them eagerly.")
    parser.add_argument(
        "--baseline-sample-rate", type=_fraction, help="Share of items also run on the full model (for agreement)."
    )
    parser.add_argument(
        "--min-agreement",
        type=_fraction,
        help="Accuracy guard: exit 3 when the first-token agreement of lazy vs. full output over the compared items "
        "(the baseline sample and every fallback rerun of an empty pruned output) falls below this, or when no item "
        "was compared.",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="Write into an output dir finished with a different config (otherwise refused).",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Validate config and inputs, count shards / rows / tokens, estimate the work; loads no model, no Ray.",
    )
    parser.add_argument(
        "--gpus",
        type=_positive_int,
        help="Ask the autoscaler for this many 1-GPU nodes and wait until the cluster has them before starting "
        "(a cluster at min_workers 0 has no GPU when the job starts); --workers defaults to it.",
    )
    parser.add_argument(
        "--gpu-wait-s",
        type=_positive_int,
        default=1800,
        help="How long --gpus waits for the GPUs before failing the run (default 1800).",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to connect to (default: RAY_ADDRESS, the job's cluster under `ray job submit`, else a "
        "new local Ray).",
    )
    return parser


def load_config(args: argparse.Namespace) -> Any:
    """PipelineConfig from defaults <- YAML (--config, ``PipelineConfig.from_yaml``) <- flags, validated once.
    Raises UsageError."""
    import yaml
    from pydantic import ValidationError

    from pipeline import PipelineConfig

    flags = {field: getattr(args, flag) for flag, field in FLAG_TO_FIELD.items() if getattr(args, flag) is not None}
    where = f"--config {str(args.config)!r}"
    try:
        if args.config is None:
            return PipelineConfig(**flags)
        return PipelineConfig.from_yaml(args.config, **flags)
    except FileNotFoundError:
        raise UsageError(f"{where} not found; pass a YAML file of PipelineConfig fields") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{where} is not valid YAML: {_one_line(exc)}") from None
    except ValidationError as exc:
        errors = exc.errors()
        missing = [f"--{f}" for f in ("input", "output") if any(e["type"] == "missing" and e["loc"] == (f,)
                                                                for e in errors)]
        if missing:
            raise UsageError(f"{' and '.join(missing)} required (as flags or as fields of the --config YAML)") from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in errors)
        raise UsageError(f"invalid configuration: {problems}") from None
    except ValueError:  # from_yaml's only other refusal: the file holds no mapping
        raise UsageError(f"{where} must hold a mapping of PipelineConfig fields") from None


def prepare_ray(address: str | None) -> bool:
    """Make the repo's packages importable on the Ray workers of this run; True if this process joined Ray here.

    Inside `ray job submit` the job's runtime_env (``--working-dir .``) already ships the repo to every worker and
    ``run_pipeline`` joins the job's cluster. A plain run exports the repo on PYTHONPATH: a Ray that
    ``run_pipeline`` starts inherits it; a running local cluster (``--address`` / ``RAY_ADDRESS``) gets it through
    the runtime_env of this driver."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:  # set by the job supervisor of `ray job submit`
        return False
    pythonpath = os.pathsep.join(_pythonpath())
    os.environ["PYTHONPATH"] = pythonpath
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None:
        return False
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    return True


def wait_for_gpus(gpus: int, timeout_s: float, poll_s: float = 5.0) -> None:
    """Request ``gpus`` one-GPU bundles from the autoscaler and block until the cluster has that many GPUs.
    The request persists until ``release_gpus()``. Raises TimeoutError with what the cluster has."""
    import time

    import ray
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}] * gpus)
    deadline = time.monotonic() + timeout_s
    while (have := ray.cluster_resources().get("GPU", 0)) < gpus:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the cluster has {have:g} of the {gpus} GPUs asked for by --gpus after {timeout_s:g}s; check the "
                "autoscaler (`ray status`, worker type max_workers, cloud quota) or raise --gpu-wait-s"
            )
        time.sleep(poll_s)
    print(f"summarize: {have:g} GPUs available", flush=True)


def release_gpus() -> None:
    """Drop the standing autoscaler request so idle GPU nodes time out after the run."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])


def _pythonpath() -> list[str]:
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [str(REPO_ROOT)] + [p for p in existing if p != str(REPO_ROOT)]


def format_summary(report: Any) -> str:
    """The run report in a few lines (the full report is ``_run_report.json`` in the output dir)."""

    def num(value: float | None, fmt: str, unit: str = "") -> str:
        return "n/a" if value is None else format(value, fmt) + unit

    lines = [
        f"run report: {report.output}  (config {report.config_hash})",
        f"  shards: {report.shards_total} found, {report.shards_done} written, {report.shards_skipped} already done, "
        f"{len(report.shards_failed)} failed",
        f"  rows:   {report.rows_in} read, {report.rows_ok} ok, {report.rows_failed} error rows",
        f"  speed:  {report.rows_per_s:.2f} rows/s, {report.tokens_per_s:.0f} tokens/s, {report.wall_s:.1f} s wall, "
        f"padding waste {report.padding_waste:.1%}, {report.batching or 'n/a'} batching, decode slots idle "
        f"{num(report.decode_slot_idle, '.1%')}",
        f"  ran on: {report.workers} worker(s) x {num(report.threads_per_worker, 'd')} thread(s), "
        f"{report.device or 'n/a'}, {report.dtype or 'n/a'}, weights quantized: {report.quantize or 'n/a'}",
        f"  slots:  {num(report.slots, 'd')} per worker ({report.slots_reason or 'n/a'})",
        f"  lazy:   computed-token fraction {num(report.mean_computed_token_fraction, '.3f')}, est. speedup "
        f"{num(report.median_est_speedup, '.2f', 'x')} (median), {report.unpruned_items} rows computed in full",
        f"  vs full ({report.sampled_items} sampled): speedup median {num(report.median_speedup, '.2f', 'x')} "
        f"[p10 {num(report.p10_speedup, '.2f')}, p90 {num(report.p90_speedup, '.2f')}], first-token agreement "
        f"{num(report.first_token_agreement, '.1%')} over {report.compared_items} compared, ROUGE-L "
        f"{num(report.mean_rouge_l_vs_baseline, '.3f')}",
        f"  empty:  {report.empty_generations} empty generations written, {report.fallbacks} fallbacks to the full "
        f"model, {report.pruning_losses} outputs lost to pruning",
    ]
    for reason, count in report.failures_by_reason.items():
        lines.append(f"  error rows: {count} x {reason}")
    for failed in report.shards_failed:
        lines.append(f"  failed shard: {failed.shard}: {failed.reason}")
    if report.batch_retries or report.worker_restarts:
        lines.append(f"  faults: {report.worker_restarts} worker restarts, {report.batch_retries} batch retries")
    return "\n".join(lines)


def format_dry_run(plan: Any) -> str:
    """What a run would do: shards, rows, tokens, batches (no model loaded, no Ray)."""
    lines = [
        f"dry run (config {plan.config_hash}):",
        f"  shards: {plan.shards_total} found, {plan.shards_todo} to do, {plan.shards_skipped} already done, "
        f"{len(plan.shards_failed)} unreadable",
        f"  rows:   {plan.rows} to do, {plan.rows_invalid} would be error rows, {plan.rows_truncated} truncated, "
        f"{plan.rows_sampled} compared with the full model",
        f"  work:   {plan.prompt_tokens} prompt tokens, <= {plan.max_new_tokens_total} new tokens, {plan.batches} "
        f"batches, padding waste {plan.padding_waste:.1%}",
    ]
    for reason, count in plan.invalid_by_reason.items():
        lines.append(f"  error rows: {count} x {reason}")
    for failed in plan.shards_failed:
        lines.append(f"  unreadable shard: {failed.shard}: {failed.reason}")
    return "\n".join(lines)


def verdict(report: Any, min_agreement: float | None) -> tuple[int, str]:
    """Exit status and its one-line reason."""
    unfinished = report.shards_total - report.shards_done - report.shards_skipped
    if report.shards_failed or unfinished:
        first = report.shards_failed[0] if report.shards_failed else None
        detail = f"; first: {first.shard}: {_one_line(first.reason)}" if first else ""
        return EXIT_FAILED, (
            f"FAILED: {len(report.shards_failed) or unfinished} of {report.shards_total} shards did not finish"
            f"{detail}; fix the cause and rerun the same command to resume"
        )
    if min_agreement is not None:
        agreement = report.first_token_agreement
        if agreement is None:
            return EXIT_ACCURACY, (
                f"FAILED: --min-agreement {min_agreement:g} set but no item was compared with the full model "
                "(raise --baseline-sample-rate)"
            )
        if agreement < min_agreement:
            return EXIT_ACCURACY, (
                f"FAILED: first-token agreement with the full model {agreement:.1%} over {report.compared_items} "
                f"compared items ({report.sampled_items} sampled, {report.fallbacks} fallbacks) is below "
                f"--min-agreement {min_agreement:.1%}"
            )
    return EXIT_OK, (
        f"OK: {report.shards_done + report.shards_skipped} of {report.shards_total} shards finished, "
        f"{report.rows_ok} of {report.rows_in} rows ok this run{_empties(report)} -> {report.output}"
    )


def _empties(report: Any) -> str:
    """', 2 empty generations, 3 fallbacks to the full model' or '' when there is nothing to say."""
    parts = []
    if report.empty_generations:
        parts.append(f"{report.empty_generations} empty generations")
    if report.fallbacks:
        parts.append(f"{report.fallbacks} fallbacks to the full model")
    return "".join(f", {p}" for p in parts)


def _one_line(obj: object) -> str:
    text = " ".join(str(obj).split())
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except UsageError as exc:
        print(f"summarize: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from pipeline import dry_run, run_pipeline

    if args.dry_run:
        try:
            plan = dry_run(config)
        except (OSError, ValueError) as exc:
            print(f"summarize: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        print(format_dry_run(plan))
        if plan.shards_failed:
            first = plan.shards_failed[0]
            print(
                f"summarize: DRY RUN FAILED: {len(plan.shards_failed)} of {plan.shards_total} shards unreadable; "
                f"first: {first.shard}: {_one_line(first.reason)}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        print(f"summarize: DRY RUN OK: {plan.shards_todo} shards / {plan.rows} rows to do; nothing written")
        return EXIT_OK

    import ray

    joined = prepare_ray(args.address)
    try:
        if args.gpus is not None:
            if not ray.is_initialized():  # inside `ray job submit`: the job's cluster
                ray.init(address=args.address)
                joined = True
            try:
                wait_for_gpus(args.gpus, args.gpu_wait_s)
            except TimeoutError as exc:
                print(f"summarize: FAILED: {exc}", file=sys.stderr)
                return EXIT_FAILED
            if config.num_workers is None:
                config = config.model_copy(update={"num_workers": args.gpus})
        report = run_pipeline(config)
    except (FileNotFoundError, ValueError) as exc:
        # Bad input or config found by the run itself (no shards, missing column, config hash mismatch).
        print(f"summarize: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if args.gpus is not None and ray.is_initialized():
            release_gpus()
        if joined:
            ray.shutdown()
    print(format_summary(report))
    code, reason = verdict(report, args.min_agreement)
    print(f"summarize: {reason}", file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
