"""Shard discovery, schema checks, reading and atomic writing of Parquet on any pyarrow filesystem."""

from __future__ import annotations

import fnmatch
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Shard:
    """One input Parquet file and the deterministic name of its output shard."""

    path: str  # path inside ``fs``
    name: str  # output file name (the input's base name)


def resolve_fs(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; plain paths are local."""
    if "://" in uri_or_path:
        return pafs.FileSystem.from_uri(uri_or_path)
    local = pafs.LocalFileSystem()
    return local, _abspath(uri_or_path)


def _abspath(path: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(path))


def discover_shards(input_spec: str) -> tuple[pafs.FileSystem, list[Shard]]:
    """Every ``*.parquet`` file of a directory (not recursive, hidden files ignored), or the files matching a glob,
    sorted by path. Output names are the input base names, so they must be unique."""
    fs, path = resolve_fs(input_spec)
    if any(ch in path for ch in "*?["):
        base = posixpath.dirname(path)
        while any(ch in base for ch in "*?["):
            base = posixpath.dirname(base)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input {input_spec!r} does not exist; give a directory or glob of Parquet shards")
        if info.type == pafs.FileType.File:
            files = [path]
        else:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
            files = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")]
    files = sorted(f for f in files if not posixpath.basename(f).startswith((".", "_")))
    if not files:
        raise FileNotFoundError(f"no Parquet shards (*.parquet) found at {input_spec!r}")
    shards = [Shard(path=f, name=posixpath.basename(f)) for f in files]
    names = [s.name for s in shards]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"input shards share base names {dupes}; output shards are named after them, rename the inputs"
        )
    return fs, shards


def read_schema(fs: pafs.FileSystem, shard: Shard) -> tuple[pa.Schema, int]:
    """Schema and row count from the Parquet footer (no data read). Raises on an unreadable file."""
    with fs.open_input_file(shard.path) as f:
        meta = pq.ParquetFile(f).metadata
        return meta.schema.to_arrow_schema(), meta.num_rows


def read_shard(fs: pafs.FileSystem, shard: Shard, columns: list[str]) -> pa.Table:
    """The given columns of one shard (one shard at a time is all the driver holds)."""
    with fs.open_input_file(shard.path) as f:
        return pq.read_table(f, columns=columns)


def write_table_atomic(fs: pafs.FileSystem, table: pa.Table, path: str) -> None:
    """Write to a hidden temp file beside ``path`` then rename, so a reader never sees a partial shard."""
    tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        with fs.open_output_stream(tmp) as out:
            pq.write_table(table, out)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def write_bytes_atomic(fs: pafs.FileSystem, data: bytes, path: str) -> None:
    """Like write_table_atomic, for small files (manifest, report)."""
    tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def remove_stale_temps(fs: pafs.FileSystem, out_dir: str) -> int:
    """Delete temp files left by an interrupted run; returns how many."""
    infos = fs.get_file_info(pafs.FileSelector(out_dir, recursive=False, allow_not_found=True))
    stale = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(".tmp-")]
    for path in stale:
        fs.delete_file(path)
    return len(stale)
