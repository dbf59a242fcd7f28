"""benchmarks.kv_reads on a tiny model: both ways timed per batch, method and weights; the switch restored."""

from __future__ import annotations


def test_kv_reads_times_both_ways_and_restores_the_switch(tiny_model_dir, tmp_path):
    from benchmarks import kv_reads
    from lazy_core import attention

    before = attention.CAPACITY_READ_MAX
    out = tmp_path / "kv.json"
    results = kv_reads.main(["--model", str(tiny_model_dir), "--length", "300", "--batches", "1", "2",
                             "--new-tokens", "4", "--rounds", "1", "--quantize", "none", "int8", "--out", str(out)])
    keys = {(r["batch"], r["method"], r["weights"]) for r in results["rows"]}
    assert keys == {(b, m, q) for b in (1, 2) for m in ("full", "lazy") for q in ("none", "int8")}
    assert all(r["view_ms"] > 0 and r["whole_ms"] > 0 for r in results["rows"])
    assert attention.CAPACITY_READ_MAX == before
    assert out.with_suffix(".md").read_text().count("\n| ") == 8 + 1  # the rows and the header
