"""The output manifest: which shards are finished, with which config hash. It is the source of truth for resume."""

from __future__ import annotations

import json
import posixpath
import time
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, Field

from pipeline.shards import write_bytes_atomic

MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"


class ShardRecord(BaseModel):
    rows: int = Field(description="Rows written (== rows read from the input shard).")
    rows_ok: int = Field(description="Rows with status ok.")
    rows_failed: int = Field(description="Rows with status error.")
    input: str = Field(description="Input shard path.")
    finished_at: float = Field(description="Unix time the shard was committed.")


class Manifest(BaseModel):
    config_hash: str = Field(description="PipelineConfig.config_hash of the run that wrote the shards.")
    shards: dict[str, ShardRecord] = Field(default_factory=dict, description="Finished output shards by file name.")


def load_manifest(fs: pafs.FileSystem, out_dir: str) -> Manifest | None:
    path = posixpath.join(out_dir, MANIFEST_NAME)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        raw = f.read()
    try:
        return Manifest.model_validate_json(raw)
    except ValueError as exc:
        raise ValueError(
            f"manifest {path!r} is unreadable ({exc}); it is written atomically, so something else changed it: "
            "delete the output directory or pass overwrite=True"
        ) from exc


def save_manifest(fs: pafs.FileSystem, out_dir: str, manifest: Manifest) -> None:
    write_bytes_atomic(fs, manifest.model_dump_json(indent=1).encode(), posixpath.join(out_dir, MANIFEST_NAME))


def check_config_hash(manifest: Manifest | None, output: str, config_hash: str, overwrite: bool) -> None:
    """Refuse an output directory whose finished shards were written with another config hash, unless ``overwrite``
    (raises ValueError saying what to do). No manifest, or the same hash (resume), passes."""
    if manifest is not None and manifest.config_hash != config_hash and not overwrite:
        raise ValueError(
            f"output {output!r} holds shards written with config hash {manifest.config_hash}, this config hashes to "
            f"{config_hash}; use a new output directory or pass overwrite=True to replace them"
        )


def open_for_run(fs: pafs.FileSystem, out_dir: str, config_hash: str, overwrite: bool) -> tuple[Manifest, bool]:
    """The manifest this run appends to, and whether it must be (re)written before work starts.

    Same hash: resume (finished shards are skipped). Different hash: refuse unless ``overwrite``, which starts a fresh
    manifest (the shards are rewritten as the run reaches them)."""
    existing = load_manifest(fs, out_dir)
    if existing is None:
        return Manifest(config_hash=config_hash), True
    if existing.config_hash == config_hash:
        return existing, False
    check_config_hash(existing, out_dir, config_hash, overwrite)
    success = posixpath.join(out_dir, SUCCESS_NAME)
    if fs.get_file_info(success).type != pafs.FileType.NotFound:
        fs.delete_file(success)
    return Manifest(config_hash=config_hash), True


def record_shard(manifest: Manifest, name: str, rows: int, rows_ok: int, input_path: str) -> None:
    manifest.shards[name] = ShardRecord(
        rows=rows, rows_ok=rows_ok, rows_failed=rows - rows_ok, input=input_path, finished_at=time.time()
    )


def is_finished(fs: pafs.FileSystem, out_dir: str, manifest: Manifest, name: str) -> bool:
    """Recorded in the manifest and the output file still exists."""
    if name not in manifest.shards:
        return False
    return fs.get_file_info(posixpath.join(out_dir, name)).type == pafs.FileType.File


def write_success(fs: pafs.FileSystem, out_dir: str, info: dict[str, Any]) -> None:
    write_bytes_atomic(fs, json.dumps(info, sort_keys=True).encode(), posixpath.join(out_dir, SUCCESS_NAME))
