"""The distributed batch pipeline: Parquet shards in, LazyLLM generations on Ray workers, Parquet shards out."""

from pipeline.config import PipelineConfig
from pipeline.driver import run_pipeline
from pipeline.dry_run import DryRunReport, dry_run
from pipeline.prepare import prepare_shards
from pipeline.ray_data import RayDataConfig, lazy_map_batches
from pipeline.report import RunReport

__all__ = [
    "DryRunReport", "PipelineConfig", "RayDataConfig", "RunReport", "dry_run", "lazy_map_batches", "prepare_shards",
    "run_pipeline",
]
