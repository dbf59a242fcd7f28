"""jobs/build_demo_corpus.py as a command line: real essays -> id-stamped Parquet shards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import _read_all


def test_build_demo_corpus_cli(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(repo / "jobs" / "build_demo_corpus.py"), "--out", str(out), "--docs", "5",
         "--rows-per-shard", "2"],
        capture_output=True, text=True, timeout=300, cwd=repo,
    )
    assert proc.returncode == 0, proc.stderr
    paths = sorted(out.glob("part-*.parquet"))
    rows = _read_all([str(p) for p in paths])
    assert len(paths) == 3 and len(rows) == 5 and len({r["id"] for r in rows}) == 5
    assert set(rows[0]) == {"id", "title", "text"} and all(len(r["text"]) > 1000 for r in rows)
    assert str(out) in proc.stdout
