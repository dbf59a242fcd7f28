"""benchmarks.cpu_kernels: every shape, dtype and batch timed, the weight-only products of every scheme, and the
markdown tables written."""

from __future__ import annotations


def test_cpu_kernels_times_every_shape_dtype_and_batch(tmp_path):
    from benchmarks import cpu_kernels

    out = tmp_path / "k.json"
    results = cpu_kernels.main(["--threads", "1", "--rows", "1", "4", "--batches", "1", "2", "--keys", "64",
                                "--repeats", "1", "--cold-mb", "4", "--out", str(out)])
    assert len(results["linear"]) == len(cpu_kernels.SHAPES) * 2 * 2  # shapes x rows x dtypes
    assert {(r["dtype"], r["batch"]) for r in results["attention"]} == {
        (d, b) for d in ("float32", "bfloat16") for b in (1, 2)}
    assert {(r["shape"], r["rows"], r["weights"]) for r in results["quantized"]} == {
        (f"{o}x{i}", n, w) for o, i in cpu_kernels.SHAPES for n in (1, 4) for w in ("bf16", "int8", "int4")}
    assert all(r["hot_ms"] > 0 and r["cold_ms"] > 0 for r in results["quantized"])
    assert all(r["ms"] > 0 for r in results["linear"]) and out.with_suffix(".md").read_text().count("\n|---") == 3
    only = cpu_kernels.main(["--threads", "1", "--rows", "1", "--repeats", "1", "--cold-mb", "4", "--only-quantized",
                             "--out", str(out)])
    assert only["linear"] == [] and len(only["quantized"]) == len(cpu_kernels.SHAPES) * 3
