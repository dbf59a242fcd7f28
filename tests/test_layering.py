"""Imports point one way, as docs/architecture.md states: jobs -> pipeline -> workers -> lazy_core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what each package must never import, anywhere in its files (function-level imports included)
FORBIDDEN = {
    "lazy_core": {"ray", "pyarrow", "workers", "pipeline", "jobs", "benchmarks"},
    "workers": {"pipeline", "jobs", "benchmarks"},
    "pipeline": {"jobs", "benchmarks"},
    "jobs": {"benchmarks"},
}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    files = sorted((ROOT / package).glob("*.py"))
    assert files, f"no Python files in {package}/"
    bad = {str(f.relative_to(ROOT)): sorted(_imported_roots(f) & FORBIDDEN[package]) for f in files}
    assert {f: names for f, names in bad.items() if names} == {}
