"""prepare_shards(): any Hugging Face ``datasets`` source -> id-stamped Parquet shards the pipeline reads."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.shards import resolve_fs, write_table_atomic

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def prepare_shards(
    source: str | os.PathLike[str] | list[str],
    out_dir: str | os.PathLike[str],
    rows_per_shard: int = 1000,
    id_column: str = "id",
    split: str = "train",
    limit: int | None = None,
) -> list[str]:
    """Write ``source`` as ``part-00000.parquet``, ``part-00001.parquet``, ... of ``rows_per_shard`` rows each.

    ``source``: a dataset saved with ``save_to_disk``, JSON/JSONL/CSV file(s) (a path, a glob or a list), or a hub
    dataset name when online. Rows without an ``id_column`` get one: ``"<shard>-<row>"`` stamped in order, stable
    for the same source. ``limit`` keeps the first rows only. Returns the shard paths, in order."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    dataset = _load(source, split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    table: pa.Table = dataset.with_format("arrow")[:]
    if id_column not in table.column_names:
        ids = [f"{i // rows_per_shard:05d}-{i % rows_per_shard:06d}" for i in range(table.num_rows)]
        table = table.add_column(0, id_column, pa.array(ids, type=pa.string()))
    fs, root = resolve_fs(str(out_dir))
    fs.create_dir(root, recursive=True)
    paths = []
    for shard, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
        path = f"{root}/part-{shard:05d}.parquet"
        write_table_atomic(fs, table.slice(start, rows_per_shard), path)
        paths.append(path)
    return paths


def _load(source: str | os.PathLike[str] | list[str], split: str) -> Any:
    import datasets

    if isinstance(source, list):
        files = [str(s) for s in source]
    else:
        text = str(source)
        path = Path(text).expanduser()
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            return _pick_split(loaded, split, text)
        if path.is_dir():
            files = sorted(str(p) for p in path.iterdir() if p.suffix in _FILE_BUILDERS)
            if not files:
                raise FileNotFoundError(f"{text!r} is a directory with no saved dataset and no JSON/JSONL/CSV files")
        elif any(ch in text for ch in "*?["):
            files = sorted(glob.glob(os.path.expanduser(text)))
            if not files:
                raise FileNotFoundError(f"no files match {text!r}")
        elif path.is_file():
            files = [str(path)]
        else:
            try:  # a hub name: needs network (or the local datasets cache)
                return _pick_split(datasets.load_dataset(text), split, text)
            except (FileNotFoundError, ConnectionError, ValueError) as exc:
                raise FileNotFoundError(
                    f"source {text!r} is not a saved dataset dir, a JSON/JSONL/CSV file or glob, nor a hub dataset "
                    f"reachable now ({exc})"
                ) from exc
    kinds = {_FILE_BUILDERS.get(Path(f).suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"files must all be one of .json/.jsonl/.csv/.parquet, got {files[:5]}")
    return datasets.load_dataset(kinds.pop(), data_files=files, split="train")


def _pick_split(loaded: Any, split: str, source: str) -> Any:
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"dataset {source!r} has splits {list(loaded)}; pass split= one of them")
        return loaded[split]
    return loaded
