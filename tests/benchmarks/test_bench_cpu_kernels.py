"""benchmarks.cpu_kernels: every shape, dtype and batch timed, and the markdown tables written."""

from __future__ import annotations


def test_cpu_kernels_times_every_shape_dtype_and_batch(tmp_path):
    from benchmarks import cpu_kernels

    out = tmp_path / "k.json"
    results = cpu_kernels.main(["--threads", "1", "--rows", "1", "4", "--batches", "1", "2", "--keys", "64",
                                "--repeats", "1", "--out", str(out)])
    assert len(results["linear"]) == len(cpu_kernels.SHAPES) * 2 * 2  # shapes x rows x dtypes
    assert {(r["dtype"], r["batch"]) for r in results["attention"]} == {
        (d, b) for d in ("float32", "bfloat16") for b in (1, 2)}
    assert all(r["ms"] > 0 for r in results["linear"]) and out.with_suffix(".md").read_text().count("\n|---") == 2
