"""The distributed batch pipeline: Parquet shards in, LazyLLM generations on Ray workers, Parquet shards out."""

from pipeline.config import PipelineConfig
from pipeline.driver import run_pipeline
from pipeline.dry_run import DryRunReport, dry_run
from pipeline.prepare import prepare_shards
from pipeline.report import RunReport

__all__ = ["DryRunReport", "PipelineConfig", "RunReport", "dry_run", "prepare_shards", "run_pipeline"]
