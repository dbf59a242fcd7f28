"""run_pipeline(): the driver. Streams shards, schedules batches on Ray workers, writes output shards atomically,
keeps the manifest for resume, and returns (and saves) the RunReport."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lazy_core import load_tokenizer
from pipeline.bucketing import padding_waste
from pipeline.config import PipelineConfig
from pipeline.manifest import (
    check_config_hash,
    is_finished,
    load_manifest,
    open_for_run,
    record_shard,
    save_manifest,
    write_success,
)
from pipeline.plan import ShardWork, id_key, output_table, plan_shard
from pipeline.prompts import check_chat_template, fit_to_context
from pipeline.report import Aggregator, FailedShard, RunReport, save_report
from pipeline.resources import (
    cluster_node_cpus,
    cluster_node_memory,
    model_weight_bytes,
    plan_workers,
    worker_spec,
)
from pipeline.scheduler import ActorPool, BatchTask
from pipeline.shards import Shard, discover_shards, read_schema, remove_stale_temps, resolve_fs, write_table_atomic

log = logging.getLogger("pipeline")
MAX_SHARDS_IN_MEMORY = 2  # the shard being drained and the next one being fed


def _event(name: str, **fields: Any) -> None:
    log.info("%s %s", name, json.dumps(fields, sort_keys=True, default=str))


def check_inputs(
    config: PipelineConfig,
) -> tuple[pafs.FileSystem, list[Shard], list[tuple[Shard, int]], list[Shard], list[FailedShard]]:
    """Before any work: find the shards, split finished (resume) from to-do ones, read each to-do footer and check
    the required columns. Returns (input fs, all shards, [(to-do shard, rows)], skipped, unreadable).
    Raises ValueError naming the missing column and the ones found, or on a config-hash mismatch."""
    in_fs, shards = discover_shards(config.input)
    out_fs, out_dir = resolve_fs(config.output)
    manifest = load_manifest(out_fs, out_dir) if out_fs.get_file_info(out_dir).type == pafs.FileType.Directory else None
    check_config_hash(manifest, config.output, config.config_hash, config.overwrite)
    resuming = manifest is not None and manifest.config_hash == config.config_hash
    todo: list[tuple[Shard, int]] = []
    skipped: list[Shard] = []
    unreadable: list[FailedShard] = []
    for shard in shards:
        if resuming and manifest is not None and is_finished(out_fs, out_dir, manifest, shard.name):
            skipped.append(shard)
            continue
        try:
            schema, rows = read_schema(in_fs, shard)
        except (OSError, pa.ArrowException) as exc:
            unreadable.append(FailedShard(shard=shard.path, reason=f"unreadable_shard: {exc}"))
            continue
        missing = [c for c in config.required_columns if c not in schema.names]
        if missing:
            raise ValueError(
                f"shard {shard.path!r}: column(s) {missing} not found; columns are: {', '.join(schema.names)}. "
                "Set id_column= / text_column= / question_column= / passthrough_columns= to match the input"
            )
        todo.append((shard, rows))
    return in_fs, shards, todo, skipped, unreadable


def run_pipeline(config: PipelineConfig | dict[str, Any] | str | os.PathLike[str]) -> RunReport:
    """Run the pipeline (see docs/pipeline.md). Starts Ray only if it is not initialised (inside ``ray job submit``
    or a notebook the caller's Ray is used) and stops only what it started."""
    cfg = PipelineConfig.from_any(config)
    started = time.monotonic()
    in_fs, shards, todo, skipped, unreadable = check_inputs(cfg)
    out_fs, out_dir = resolve_fs(cfg.output)
    report = RunReport(
        output=cfg.output, config_hash=cfg.config_hash, shards_total=len(shards), shards_skipped=len(skipped),
        shards_failed=list(unreadable), batching=cfg.batching,
    )
    _event("run_start", config_hash=cfg.config_hash, shards=len(shards), todo=len(todo), skipped=len(skipped),
           unreadable=len(unreadable), rows=sum(r for _, r in todo))
    if not todo:
        report.wall_s = time.monotonic() - started
        if unreadable:  # something to report; a finished directory is left untouched
            out_fs.create_dir(out_dir, recursive=True)
            save_report(out_fs, out_dir, report, [])
        return report

    out_fs.create_dir(out_dir, recursive=True)
    manifest, fresh = open_for_run(out_fs, out_dir, cfg.config_hash, cfg.overwrite)
    if fresh:
        save_manifest(out_fs, out_dir, manifest)
    if remove_stale_temps(out_fs, out_dir):
        _event("stale_temps_removed", output=cfg.output)
    tokenizer = load_tokenizer(cfg.model)
    check_chat_template(tokenizer, cfg)
    plan_cfg = fit_to_context(cfg)
    if plan_cfg.max_prompt_tokens != cfg.max_prompt_tokens:
        _event("prompt_limit", max_prompt_tokens=cfg.max_prompt_tokens, effective=plan_cfg.max_prompt_tokens,
               reason="model context")
    seen_ids = _ids_of_finished(out_fs, out_dir, skipped)

    import ray

    started_ray = False
    if not ray.is_initialized():
        ray.init()
        started_ray = True
    progress = _progress(cfg, sum(r for _, r in todo))
    pool: ActorPool | None = None
    agg = Aggregator()
    try:
        pool = _make_pool(cfg)
        report.startup_s = time.monotonic() - started
        _describe_workers(report, pool.worker_infos)
        plan_cfg = _with_worker_slots(plan_cfg, pool.worker_infos)
        run = _Run(cfg=cfg, plan_cfg=plan_cfg, pool=pool, in_fs=in_fs, out_fs=out_fs, out_dir=out_dir,
                   manifest=manifest, seen_ids=seen_ids, report=report, agg=agg, progress=progress,
                   tokenizer=tokenizer)
        run.drive([shard for shard, _ in todo])
        report.batch_retries = pool.retries
        report.worker_restarts = pool.failures_seen
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown()
        if started_ray:
            ray.shutdown()
    report.wall_s = time.monotonic() - started
    agg.fill(report)
    save_report(out_fs, out_dir, report, agg.speedups)
    if report.ok:
        write_success(out_fs, out_dir, {"config_hash": cfg.config_hash, "shards": len(shards)})
    _event("run_done", **{k: v for k, v in report.model_dump().items() if k != "shards_failed"},
           shards_failed=len(report.shards_failed))
    return report


@dataclass
class _Run:
    """One run's state once the workers are up: the scheduling loop and the writing of finished shards."""

    cfg: PipelineConfig
    plan_cfg: PipelineConfig  # the config the prompts are planned with (max_prompt_tokens fitted to the context)
    pool: ActorPool
    in_fs: pafs.FileSystem
    out_fs: pafs.FileSystem
    out_dir: str
    manifest: Any
    seen_ids: set[Any]  # ids of earlier shards: duplicates become error rows
    report: RunReport
    agg: Aggregator
    progress: Any
    tokenizer: Any
    active: dict[int, ShardWork] = field(default_factory=dict)  # shards in memory, by index
    padded: int = 0
    real: int = 0

    def drive(self, todo: list[Shard]) -> None:
        """Feed batches while the pool has room (backpressure), at most two shards in memory."""
        upcoming = deque(enumerate(todo))
        feed: deque[BatchTask] = deque()
        while True:
            while self.pool.has_room:
                if feed:
                    self.pool.add(feed.popleft())
                    continue
                if not upcoming or len(self.active) >= MAX_SHARDS_IN_MEMORY:
                    break
                work = self.plan(*upcoming.popleft())
                if work is not None:
                    feed.extend(work.tasks)
            if not self.pool.busy and not feed and not upcoming:
                break
            for outcome in self.pool.step(wait_s=0.5):
                work = self.active[outcome.task.shard]
                if outcome.rows is not None:
                    work.apply(outcome.task.positions, outcome.rows)
                else:
                    work.fail(outcome.task.positions, str(outcome.error))
                self.progress.update(len(outcome.task.positions))
                if work.remaining == 0:
                    self.finalize(work)
        if self.active:
            names = sorted(w.shard.name for w in self.active.values())
            raise RuntimeError(f"internal error: shards {names} never finished")

    def plan(self, index: int, shard: Shard) -> ShardWork | None:
        """Read and plan one shard (None when it is unreadable: a failed shard in the report)."""
        try:
            work = plan_shard(index, self.in_fs, shard, self.plan_cfg, tokenizer=self.tokenizer, seen_ids=self.seen_ids,
                              workers=self.pool.size)
        except (OSError, pa.ArrowException) as exc:
            self.report.shards_failed.append(FailedShard(shard=shard.path, reason=f"unreadable_shard: {exc}"))
            _event("shard_failed", shard=shard.path, reason=str(exc))
            return None
        self.active[index] = work
        self.padded += work.padded_tokens
        self.real += work.real_tokens
        self.report.batches += len(work.tasks)
        self.report.padding_waste = padding_waste(self.real, self.padded)
        self.progress.update(len(work.results) - work.remaining)  # error rows are done already
        _event("shard_planned", shard=shard.name, rows=len(work.results), batches=len(work.tasks),
               error_rows=len(work.results) - work.remaining)
        if work.remaining == 0:
            self.finalize(work)
        return work

    def finalize(self, work: ShardWork) -> None:
        """Write a shard whose rows all have results, record it in the manifest, count its rows."""
        table = output_table(work, self.cfg.model, self.cfg.config_hash)
        write_table_atomic(self.out_fs, table, posixpath.join(self.out_dir, work.shard.name))
        rows = table.to_pylist()
        ok = sum(1 for r in rows if r["status"] == "ok")
        record_shard(self.manifest, work.shard.name, len(rows), ok, work.shard.path)
        save_manifest(self.out_fs, self.out_dir, self.manifest)
        self.agg.add_rows(rows)
        self.report.shards_done += 1
        del self.active[work.index]
        _event("shard_done", shard=work.shard.name, rows=len(rows), ok=ok, failed=len(rows) - ok)


def _make_pool(cfg: PipelineConfig) -> ActorPool:
    import ray

    from workers.actor import LazyWorker
    from workers.spec import actor_options

    plan = plan_workers(cfg.device, float(ray.cluster_resources().get("GPU", 0)), cluster_node_cpus(),
                        cfg.num_workers, cfg.cpus_per_worker, cluster_node_memory(), model_weight_bytes(cfg))
    spec = worker_spec(cfg, plan)
    options = actor_options(1.0 if plan.use_gpu else 0.0, plan.cpus_per_worker, cfg.max_restarts)
    remote_cls = ray.remote(LazyWorker)
    run_tag = uuid.uuid4().hex[:8]
    counter = iter(range(1_000_000))

    def make_actor() -> Any:
        return remote_cls.options(name=f"lazy-worker-{run_tag}-{next(counter)}", **options).remote(spec)

    _event("pool_start", workers=plan.workers, options=options)
    return ActorPool(
        make_actor, num_workers=plan.workers, max_in_flight=cfg.max_in_flight or 2 * plan.workers,
        max_retries=cfg.max_retries, batch_timeout_s=cfg.task_timeout_s,
    )


def _describe_workers(report: RunReport, infos: list[dict[str, Any]]) -> None:
    """What ran: workers, their torch threads, device, dtype and quantization (as the first actor reported them)."""
    report.workers = len(infos)
    if infos:
        report.threads_per_worker = infos[0].get("torch_threads")
        report.device = infos[0].get("device")
        report.dtype = infos[0].get("dtype")
        report.quantize = infos[0].get("quantize")
        report.slots = infos[0].get("slots")
        report.slots_reason = infos[0].get("slots_reason")


def _with_worker_slots(plan_cfg: PipelineConfig, infos: list[dict[str, Any]]) -> PipelineConfig:
    """The config tasks are planned with, its batch size and held-token budget those the workers run with (GPU
    workers plan theirs from their memory: pipeline.resources.worker_sets_slots)."""
    if not infos or not infos[0].get("slots"):
        return plan_cfg
    update = {"max_batch_size": int(infos[0]["slots"])}
    if infos[0].get("max_held_tokens"):
        update["max_batch_tokens"] = int(infos[0]["max_held_tokens"])
    return plan_cfg.model_copy(update=update)


def _ids_of_finished(fs: pafs.FileSystem, out_dir: str, skipped: list[Shard]) -> set[Any]:
    """Ids already written by finished shards, so duplicates across a resumed run are still caught."""
    seen: set[Any] = set()
    for shard in skipped:
        with fs.open_input_file(posixpath.join(out_dir, shard.name)) as f:
            for item_id in pq.read_table(f, columns=["id"]).column("id").to_pylist():
                if item_id is not None:
                    seen.add(id_key(item_id))
    return seen


def _progress(cfg: PipelineConfig, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc="pipeline", disable=not cfg.progress, dynamic_ncols=True)
