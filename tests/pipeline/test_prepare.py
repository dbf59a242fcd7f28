"""prepare_shards: datasets sources (saved dir, JSON/JSONL/CSV) -> id-stamped Parquet shards."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import _read_all

from pipeline import prepare_shards

ROWS = [{"title": f"T{i}", "text": f"text number {i}"} for i in range(7)]


def test_jsonl_source_is_sharded_and_id_stamped(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in ROWS))
    paths = prepare_shards(str(src), tmp_path / "out", rows_per_shard=3)
    assert [Path(p).name for p in paths] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    rows = _read_all(paths)
    assert [r["text"] for r in rows] == [r["text"] for r in ROWS]  # rows in == rows out, in order
    assert len({r["id"] for r in rows}) == 7 and rows[0]["id"] == "00000-000000" and rows[3]["id"] == "00001-000000"
    assert [len(pq.read_table(p)) for p in paths] == [3, 3, 1]
    assert _read_all(prepare_shards(str(src), tmp_path / "again", rows_per_shard=3)) == rows  # stable ids


def test_csv_and_json_and_existing_ids_kept(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text("id,text\nx1,hello\nx2,world\n")
    assert [r["id"] for r in _read_all(prepare_shards(str(csv), tmp_path / "c"))] == ["x1", "x2"]
    js = tmp_path / "rows.json"
    js.write_text(json.dumps(ROWS[:2]))
    assert [r["title"] for r in _read_all(prepare_shards([str(js)], tmp_path / "j"))] == ["T0", "T1"]


def test_saved_dataset_dir_and_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:2])})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert len(_read_all(prepare_shards(str(tmp_path / "saved"), tmp_path / "o1", rows_per_shard=5))) == 7
    assert len(_read_all(prepare_shards(str(tmp_path / "saved"), tmp_path / "o2", split="test"))) == 2
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]; pass split="):
        prepare_shards(str(tmp_path / "saved"), tmp_path / "o3", split="validation")


def test_bad_sources_say_what(tmp_path):
    with pytest.raises(ValueError, match="rows_per_shard must be >= 1"):
        prepare_shards(str(tmp_path), tmp_path / "o", rows_per_shard=0)
    with pytest.raises(FileNotFoundError, match="no files match"):
        prepare_shards(str(tmp_path / "*.jsonl"), tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no saved dataset and no JSON/JSONL/CSV"):
        prepare_shards(str(tmp_path / "empty"), tmp_path / "o")
