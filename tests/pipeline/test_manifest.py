"""pipeline.manifest: resume from the manifest, refuse another config hash unless overwrite, atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.manifest import Manifest, load_manifest, open_for_run, record_shard, save_manifest
from pipeline.shards import resolve_fs


def test_manifest_resume_and_hash_mismatch(tmp_path):
    fs, root = resolve_fs(str(tmp_path))
    manifest, fresh = open_for_run(fs, root, "aaaa", overwrite=False)
    assert fresh and manifest.shards == {}
    record_shard(manifest, "p.parquet", rows=3, rows_ok=2, input_path="/in/p.parquet")
    save_manifest(fs, root, manifest)
    again, fresh = open_for_run(fs, root, "aaaa", overwrite=False)
    assert not fresh and again.shards["p.parquet"].rows_failed == 1
    with pytest.raises(ValueError, match="config hash aaaa.*overwrite=True"):
        open_for_run(fs, root, "bbbb", overwrite=False)
    replaced, fresh = open_for_run(fs, root, "bbbb", overwrite=True)
    assert fresh and replaced.config_hash == "bbbb" and replaced.shards == {}
    assert load_manifest(fs, root) == Manifest.model_validate(json.loads((tmp_path / "_manifest.json").read_text()))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
