"""benchmarks.gpu's dry run on CPU with the tiny shape: the checks and timings a lent GPU runs."""

from __future__ import annotations

import json

import pytest


def test_gpu_script_dry_run_checks_and_times_everything(tmp_path):
    """benchmarks/gpu.py on CPU with the tiny shape: the code that runs on a lent GPU, end to end."""
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    payload = gpu.main(["--dry-run", "--out", str(out)])
    res = payload["shapes"]["tiny"]
    assert res["checks"]["passed"] and res["checks"]["pruning_off_equals_generate"]
    assert res["checks"]["batch_equals_singles_tokens"] == [12, 12, 12]  # fp32: exact
    assert [(r["batch"], r["tokens"]) for r in res["ttft"]] == [(1, 1024), (1, 2048), (2, 1024)]
    for r in res["ttft"]:
        assert r["full_ms"] > 0 and r["lazy_ms"] > 0 and r["est_speedup"] > 1 and r["computed_token_fraction"] < 1
    assert [r["method"] for r in res["decode"]] == ["generate", "off", "lazy"]
    assert all(r["ms_per_token"] > 0 for r in res["decode"])
    stream = res["checks"]["compiled_stream"]["default"]
    assert stream["tokens_equal"] and stream["graph_breaks"] == 0 and stream["plain_steps"] > 0
    assert [(r["slots"], r["tokens"]) for r in res["plain_steps"]] == [(2, 1024), (4, 1024)]
    for r in res["plain_steps"]:
        assert r["off"]["ms"] > 0 and r["default"]["ms"] > 0 and r["kv_gib"] > 0
    assert [r["slots"] for r in res["job"]] == [1, 4]
    assert all(r["new_tokens_per_s"] > 0 and r["plain_steps"] > 0 for r in res["job"])
    assert json.loads(out.read_text())["shapes"]["tiny"]["checks"]["passed"]
    text = gpu.report_text(payload)
    assert "TTFT full / lazy" in text and "bytes-bound ms" in text and "job: slots" in text
    if not gpu.torch.cuda.is_available():  # without --dry-run the script wants a GPU and says so
        with pytest.raises(SystemExit, match="no CUDA device"):
            gpu.main(["--out", str(tmp_path / "x.json")])
