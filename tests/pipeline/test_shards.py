"""pipeline.shards: shard discovery (sorted, deterministic, globs and URIs, clear errors)."""

from __future__ import annotations

import pytest
from helpers import _write

from pipeline.shards import discover_shards


def test_discover_shards_sorted_deterministic_and_glob(tmp_path):
    for name in ["b.parquet", "a.parquet", "c.parquet", "_meta.parquet", ".hidden.parquet"]:
        _write(tmp_path / name, id=["x"], text=["t"])
    (tmp_path / "notes.txt").write_text("x")
    _, shards = discover_shards(str(tmp_path))
    assert [s.name for s in shards] == ["a.parquet", "b.parquet", "c.parquet"]
    _, globbed = discover_shards(str(tmp_path / "[ab].parquet"))
    assert [s.name for s in globbed] == ["a.parquet", "b.parquet"]
    _, uri = discover_shards(f"file://{tmp_path}")
    assert [s.name for s in uri] == ["a.parquet", "b.parquet", "c.parquet"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_shards(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        discover_shards(str(tmp_path / "*.json"))
