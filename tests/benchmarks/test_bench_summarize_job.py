"""benchmarks.summarize_job on a tiny model: end to end on real ACLSum papers through run_pipeline on a local Ray
(every paper scored for every method, the interleaved runs resumable, the report's arithmetic)."""

from __future__ import annotations

import json

import pytest

from benchmarks import summarize_job


def test_job_scores_every_paper_for_every_method_and_resumes(local_ray, tiny_model_dir, tmp_path):
    out = tmp_path / "job.jsonl"
    # 1100 tokens: past the default's min_prompt_tokens (1000), so "lazy" prunes
    argv = ["--model", str(tiny_model_dir), "--papers", "2", "--prompt-tokens", "1100", "--max-new-tokens", "6",
            "--rows-per-shard", "1", "--threads", "1", "--methods", "full", "lazy", "--out", str(out),
            "--work", str(tmp_path / "work"), "--no-repeat-ngram-size", "3"]
    summary = summarize_job.main(argv)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["method"], r["shard"]) for r in records) == [
        ("full", "part-00000.parquet"), ("full", "part-00001.parquet"),
        ("lazy", "part-00000.parquet"), ("lazy", "part-00001.parquet")]
    assert [r["method"] for r in records] == ["full", "lazy", "lazy", "full"]  # ABBA
    assert summary["papers"] == 2
    for name in ("full", "lazy"):
        entry = summary["methods"][name]
        rows = [row for r in records if r["method"] == name for row in r["rows"]]
        assert len(rows) == 2 and entry["docs_per_s"] == pytest.approx(2 / sum(
            r["steady_s"] for r in records if r["method"] == name))
        assert 0 <= entry["rougeL"] <= 1 and entry["mean_new_tokens"] <= 6
    lazy = summary["methods"]["lazy"]
    assert lazy["computed_prefill"] < 1 and "rougeL_diff" in lazy and "rougeL_diff" not in summary["methods"]["full"]
    mean, low, high = lazy["rougeL_diff"]
    assert low <= mean <= high
    assert (tmp_path / "job.md").read_text().count("\n| ") == 3  # header + full + lazy

    again = summarize_job.main(argv)  # everything is there: nothing reruns, the same report
    assert len(out.read_text().splitlines()) == 4
    assert again["methods"]["lazy"]["rougeL"] == lazy["rougeL"]
    other = summarize_job.main([*argv[:-1], "0", "--report-only"])  # other settings: none of the records count
    assert other["papers"] == 0 and other["methods"] == {}


def test_batches_share_times_and_count_steps():
    rows = [dict(worker="w", ttft_s=1.0, decode_s=2.0, new_tokens=5), dict(worker="w", ttft_s=1.0, decode_s=2.0,
                                                                            new_tokens=9),
            dict(worker="w", ttft_s=3.0, decode_s=1.0, new_tokens=3)]
    assert sorted(summarize_job._batches(rows)) == [(1.0, 2.0, 8), (3.0, 1.0, 2)]
