"""jobs/summarize.py as a command line: flags over YAML, validation, dry run, exit status (no Ray needed here).

The runs through Ray (`ray job submit`, a second node) are in test_submit.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import summarize
from pipeline import PipelineConfig, RunReport
from pipeline.report import FailedShard

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "jobs" / "summarize.py"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The script as users run it, from another directory (so nothing but the script itself finds the repo)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=180, cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(cwd)},
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus"
    path.mkdir()
    texts = ["The way to get startup ideas is to notice them.", "Cities attract ambitious people.", "Write simply."]
    for s in range(2):
        rows = [{"id": f"d{s}-{i}", "text": t} for i, t in enumerate(texts)]
        pq.write_table(pa.Table.from_pylist(rows), path / f"part-{s:05d}.parquet")
    return path


@pytest.fixture
def tokenizer_only_dir(tmp_path: Path, tiny_tokenizer) -> Path:
    """A model dir with a tokenizer and no weights: a dry run must work with it (it loads no model)."""
    path = tmp_path / "tokenizer-only"
    tiny_tokenizer.save_pretrained(path)
    return path


def test_help_lists_every_flag(tmp_path: Path) -> None:
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--input", "--output", "--model", "--config", "--workers", "--max-new-tokens",
                 "--baseline-sample-rate", "--min-agreement", "--overwrite", "--dry-run", "--quantize"):
        assert flag in proc.stdout


def test_flags_override_the_yaml_which_overrides_the_defaults(tmp_path: Path) -> None:
    yaml_file = tmp_path / "nightly.yaml"
    yaml_file.write_text("input: /data/in\noutput: /data/out\nmax_new_tokens: 48\nnum_workers: 4\ntask: qa\n")
    args = summarize.build_parser().parse_args(["--config", str(yaml_file), "--workers", "2", "--output", "/o"])
    config = summarize.load_config(args)
    expected = PipelineConfig(input="/data/in", output="/o", max_new_tokens=48, num_workers=2, task="qa")
    assert config == expected
    assert config.overwrite is False and config.baseline_sample_rate == PipelineConfig.model_fields[
        "baseline_sample_rate"].default
    assert config.quantize == "auto"
    quantized = summarize.load_config(summarize.build_parser().parse_args(["--config", str(yaml_file),
                                                                           "--quantize", "none"]))
    assert quantized.quantize == "none" and quantized.config_hash != config.config_hash
    with pytest.raises(SystemExit):
        summarize.build_parser().parse_args(["--quantize", "int3"])


@pytest.mark.parametrize(
    ("yaml_text", "args", "message"),
    [
        ("", ["--input", "x"], "--output required"),
        ("max_new_tokens: 0\n", ["--input", "x", "--output", "y"], "max_new_tokens: Input should be greater than"),
        ("max_new_token: 8\n", ["--input", "x", "--output", "y"], "max_new_token: Extra inputs are not permitted"),
        ("- a list\n", ["--input", "x", "--output", "y"], "must hold a mapping"),
        ("input: [x\n", ["--output", "y"], "is not valid YAML"),
        ("max_new_tokens: 0\n", [], "--input and --output required"),
    ],
)
def test_bad_configs_exit_2_with_one_line_naming_the_problem(
    tmp_path: Path, yaml_text: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(yaml_text)
    assert summarize.main(["--config", str(yaml_file), *args]) == summarize.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("summarize: error:") and message in err and "\n" not in err


def test_a_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert summarize.main(["--config", str(missing), "--input", "x", "--output", "y"]) == summarize.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == f"summarize: error: --config {str(missing)!r} not found; pass a YAML file of PipelineConfig fields"


def test_bad_flag_values_are_refused_by_the_parser(tmp_path: Path) -> None:
    for bad in (["--workers", "0"], ["--min-agreement", "1.5"], ["--baseline-sample-rate", "x"]):
        proc = run_cli("--input", "a", "--output", "b", *bad, cwd=tmp_path)
        assert proc.returncode == 2 and bad[0] in proc.stderr


def test_dry_run_counts_the_work_and_writes_nothing(corpus: Path, tokenizer_only_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("--input", str(corpus), "--output", str(out), "--model", str(tokenizer_only_dir), "--dry-run",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "shards: 2 found, 2 to do, 0 already done, 0 unreadable" in proc.stdout
    assert "rows:   6 to do, 0 would be error rows" in proc.stdout
    assert "summarize: DRY RUN OK: 2 shards / 6 rows to do" in proc.stdout
    assert not out.exists()


def test_dry_run_fails_on_an_unreadable_shard_and_a_missing_column(
    corpus: Path, tokenizer_only_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (corpus / "part-00002.parquet").write_bytes(b"not parquet at all")
    common = ["--input", str(corpus), "--output", str(tmp_path / "o"), "--model", str(tokenizer_only_dir), "--dry-run"]
    assert summarize.main(common) == summarize.EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("summarize: DRY RUN FAILED: 1 of 3 shards unreadable")

    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("text_column: body\n")
    (corpus / "part-00002.parquet").unlink()
    assert summarize.main(["--config", str(yaml_file), *common]) == summarize.EXIT_USAGE
    assert "column(s) ['body'] not found; columns are: id, text" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _report(**fields) -> RunReport:
    base = dict(output="out/", config_hash="abc", shards_total=3, shards_done=2, shards_skipped=1, rows_in=10,
                rows_ok=10, sampled_items=3, fallbacks=1, compared_items=4, first_token_agreement=0.75)
    base.update(fields)
    return RunReport(**base)


def test_exit_0_only_when_every_shard_finished() -> None:
    assert summarize.verdict(_report(), None)[0] == summarize.EXIT_OK
    failed = _report(shards_done=1, shards_failed=[FailedShard(shard="in/part-2.parquet", reason="unreadable_shard")])
    code, reason = summarize.verdict(failed, None)
    assert code == summarize.EXIT_FAILED
    assert reason.startswith("FAILED: 1 of 3 shards did not finish; first: in/part-2.parquet: unreadable_shard")
    assert summarize.verdict(_report(shards_done=1), None)[0] == summarize.EXIT_FAILED  # one never processed


def test_accuracy_guard() -> None:
    assert summarize.verdict(_report(), 0.75)[0] == summarize.EXIT_OK
    code, reason = summarize.verdict(_report(), 0.8)
    assert code == summarize.EXIT_ACCURACY
    assert "75.0% over 4 compared items (3 sampled, 1 fallbacks) is below --min-agreement 80.0%" in reason
    code, reason = summarize.verdict(
        _report(sampled_items=0, fallbacks=0, compared_items=0, first_token_agreement=None), 0.5)
    assert code == summarize.EXIT_ACCURACY and "no item was compared" in reason
    # a failed shard outranks the guard: the night failed whatever the agreement
    failed = _report(shards_done=1, shards_failed=[FailedShard(shard="s", reason="r")])
    assert summarize.verdict(failed, 0.5)[0] == summarize.EXIT_FAILED


def test_summary_shows_the_report() -> None:
    text = summarize.format_summary(_report(failures_by_reason={"empty_text": 2}, median_speedup=2.5, workers=2,
                                            threads_per_worker=1, device="cpu", dtype="bfloat16",
                                            quantize="int4 (int4pack+int8pack: 210 int4, 1 int8 layers)"))
    assert "shards: 3 found, 2 written, 1 already done, 0 failed" in text
    assert ("ran on: 2 worker(s) x 1 thread(s), cpu, bfloat16, weights quantized: int4 (int4pack+int8pack: 210 int4, "
            "1 int8 layers)") in text
    assert "speedup median 2.50x" in text and "first-token agreement 75.0%" in text
    assert "error rows: 2 x empty_text" in text
    assert "empty:  0 empty generations written, 1 fallbacks to the full model, 0 outputs lost to pruning" in text


def test_verdict_names_empty_generations_and_fallbacks() -> None:
    assert summarize.verdict(_report(fallbacks=0), None)[1].startswith("OK: 3 of 3 shards finished, 10 of 10 rows "
                                                                      "ok this run -> out/")
    reason = summarize.verdict(_report(empty_generations=2, fallbacks=3), None)[1]
    assert "10 of 10 rows ok this run, 2 empty generations, 3 fallbacks to the full model -> out/" in reason
