"""LazyLLM as a Ray Data stage: ``lazy_map_batches(ds, config)`` appends the pipeline's output columns to a dataset.

:class:`LazyPredictor` is the callable class for ``Dataset.map_batches``: it loads the model once in ``__init__`` (a
:class:`workers.actor.LazyWorker`); each call takes a batch of rows (a pyarrow Table or a dict of numpy arrays), builds
their prompts exactly as the pipeline does (chat template, task template, middle truncation), buckets them by length,
runs the buckets and returns the batch's columns followed by the result columns, in the input's format. Bad rows
become error rows; a call never raises for a row.

:func:`lazy_map_batches` runs it as an actor pool of fixed size (``num_workers``), one model per actor, one GPU each
when the cluster has GPUs (the rule of :func:`run_pipeline`). Unlike :func:`run_pipeline` it keeps no manifest and
resumes nothing: a failed dataset is rerun by Ray Data's own means. Rows in == rows out (each batch's rows in their
order; the dataset's order is Ray Data's, see ``DataContext.execution_options.preserve_order``).
"""

from __future__ import annotations

import os
import zlib
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field

from pipeline.config import GenerationSettings
from pipeline.plan import bucket_rows, error_result, prepare_rows
from pipeline.prompts import check_chat_template, fit_to_context
from pipeline.resources import (
    WorkerPlan,
    cluster_node_cpus,
    cluster_node_memory,
    model_weight_bytes,
    plan_workers,
    worker_spec,
)
from workers.schema import RESULT_COLUMNS, result_arrays


class RayDataConfig(GenerationSettings):
    """The settings of a Ray Data stage: those of :class:`pipeline.PipelineConfig` that concern a row's generation
    and the workers (task, model, schedule, decoding, prompt limits, batching inside a worker, resources), plus the
    rows handed to a worker per call."""

    RUN_ONLY: ClassVar[frozenset[str]] = GenerationSettings.RUN_ONLY | {"batch_size"}

    batch_size: int = Field(
        16, ge=1, description="Rows per map_batches call; a worker buckets them by length into batches of at most "
        "max_batch_size items and max_batch_tokens padded tokens.",
    )

    @property
    def config_hash(self) -> str:
        """sha256 (16 hex) of the settings that change what an output row contains: the config_hash of a
        PipelineConfig with the same settings and no passthrough columns (the rows are the same)."""
        return self.settings_hash(passthrough_columns=[])

    @classmethod
    def from_any(cls, config: Any) -> RayDataConfig:
        """Accept a RayDataConfig, a dict of its fields, a YAML file holding that dict, or a PipelineConfig (its
        run-only fields are dropped)."""
        if isinstance(config, GenerationSettings) and not isinstance(config, cls):
            config = config.model_dump(include=set(GenerationSettings.model_fields))
        return super().from_any(config)


def stage_options(cfg: RayDataConfig, cluster_gpus: float, node_cpus: list[float] | None = None,
                  node_memory: list[float] | None = None) -> dict[str, Any]:
    """The map_batches arguments of the stage besides the callable: pool size, resources, batch size.

    Workers are planned as the driver plans them (:func:`pipeline.resources.plan_workers`) over ``node_cpus`` (Ray's
    CPUs per node; default one node of one CPU) less one CPU of the first node, left to the dataset's read and write
    tasks: an actor pool holding every CPU would starve them."""
    import ray.data

    nodes = list(node_cpus or [1.0])
    nodes[0] = max(1.0, nodes[0] - 1)
    plan = plan_workers(cfg.device, cluster_gpus, nodes, cfg.num_workers, cfg.cpus_per_worker, node_memory,
                        model_weight_bytes(cfg) if node_memory else None)
    return {
        "compute": ray.data.ActorPoolStrategy(size=plan.workers),
        "num_gpus": 1 if plan.use_gpu else 0,
        "num_cpus": plan.cpus_per_worker,
        "batch_size": cfg.batch_size,
        "batch_format": "pyarrow",
        "udf_modifying_row_count": False,
        "fn_constructor_kwargs": {"config": cfg.model_dump(mode="json"), "use_gpu": plan.use_gpu,
                                  "cpus_per_worker": plan.cpus_per_worker},
    }


def lazy_map_batches(ds: Any, config: RayDataConfig | dict[str, Any] | str | os.PathLike[str]) -> Any:
    """``ds`` with the pipeline's output columns (docs/pipeline.md) appended to its own: ``generation``, ``status``,
    ``error``, ``warning``, ``prompt_tokens``, ..., ``model``, ``config_hash``. ``config``: a :class:`RayDataConfig`
    or its dict (``model``, ``text_column``, ``max_new_tokens``, ``lazy``, ``num_workers``, ...; the task defaults
    to "summarize"). Lazy, like every Ray Data transform: nothing runs until the dataset is consumed."""
    import ray

    cfg = RayDataConfig.from_any(config)
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        _check_no_result_columns(schema.names, "the dataset")
    gpus = float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0
    nodes = cluster_node_cpus() if ray.is_initialized() else None
    memory = cluster_node_memory() if ray.is_initialized() else None
    return ds.map_batches(LazyPredictor, **stage_options(cfg, gpus, nodes, memory))


class LazyPredictor:
    """One model per actor; ``config`` is a :class:`pipeline.ray_data.RayDataConfig` or its dict."""

    def __init__(self, config: Any, use_gpu: bool = False, cpus_per_worker: int | None = None) -> None:
        """``cpus_per_worker``: torch threads on CPU (default: the config's, else every CPU of this machine)."""
        from workers.actor import LazyWorker  # torch and the engine: imported where the model is loaded

        cfg = RayDataConfig.from_any(config)
        threads = cpus_per_worker or cfg.cpus_per_worker or os.cpu_count() or 1
        self.worker = LazyWorker(worker_spec(cfg, WorkerPlan(1, use_gpu, threads)))
        check_chat_template(self.worker.tokenizer, cfg)
        self.config = fit_to_context(cfg)  # prompt + new tokens fit the model's context, as the driver plans them
        self.config_hash = cfg.config_hash

    def __call__(self, batch: pa.Table | dict[str, Any]) -> pa.Table | dict[str, Any]:
        table = batch if isinstance(batch, pa.Table) else _to_table(batch)
        _check_no_result_columns(table.column_names, "the batch")
        columns = result_arrays(self.results(table), self.config.model, self.config_hash)
        for name in RESULT_COLUMNS:
            table = table.append_column(name, columns[name])
        if isinstance(batch, pa.Table):
            return table
        from ray.data.block import BlockAccessor

        return BlockAccessor.for_block(table).to_batch_format("numpy")

    def results(self, table: pa.Table) -> list[dict[str, Any]]:
        """One result dict per row of ``table``, in order."""
        cfg, rows = self.config, table.num_rows
        results: list[dict[str, Any] | None] = [None] * rows
        needed = [cfg.text_column] + ([cfg.question_column] if cfg.needs_question else [])
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            reason = (f"missing_column: column(s) {missing} not found; columns are: {', '.join(table.column_names)}. "
                      "Set text_column= / question_column= to match the dataset")
            return [error_result(reason) for _ in range(rows)]
        texts = table.column(cfg.text_column).to_pylist()
        questions = table.column(cfg.question_column).to_pylist() if cfg.needs_question else [None] * rows
        ids = table.column(cfg.id_column).to_pylist() if cfg.id_column in table.column_names else texts
        good = prepare_rows(self.worker.tokenizer, cfg, list(range(rows)), texts, questions, results)
        for positions, input_ids, sampled, _ in bucket_rows(good, [ids[p] for p, _ in good], cfg):
            seed = cfg.seed + zlib.crc32(repr(ids[positions[0]]).encode())  # the same rows draw the same samples
            for pos, row in zip(positions, self.worker.run_batch(input_ids, sampled, seed), strict=True):
                results[pos] = {**(results[pos] or {}), **row}
        return [r if r is not None else error_result("internal_error: row got no result") for r in results]


def _check_no_result_columns(names: list[str], what: str) -> None:
    """Raise ValueError when ``names`` include a column the stage writes (the input would be overwritten)."""
    clash = sorted(set(names) & set(RESULT_COLUMNS))
    if clash:
        raise ValueError(
            f"{what} already has column(s) {clash}, which the LazyLLM stage writes; rename or drop them first "
            "(e.g. ds.rename_columns({...}))"
        )


def _to_table(batch: dict[str, Any]) -> pa.Table:
    from ray.data.block import BlockAccessor

    block = BlockAccessor.batch_to_block(batch)
    return block if isinstance(block, pa.Table) else pa.Table.from_pandas(block, preserve_index=False)
