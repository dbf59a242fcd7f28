"""benchmarks.gemma_eval's BENCHMARKS.md section (hand-written text kept around the generated block) and the commands
that rebuild a results file's plan."""

from __future__ import annotations

import json

from helpers import _check_hand_text_kept, _markdown

from benchmarks import gemma_eval


def _gemma_record(task, length, k, methods=gemma_eval.METHODS):
    rec = {"task": task, "id": f"{task}-{length}-{k}", "length": length, "answer": "12345", "new_tokens": 8,
           "prompt_tokens": length, "seed": 0}
    for m in methods:
        ttft = 10.0 if m == "full" else 4.0
        rec[m] = {"ttft_s": ttft, "wall_s": ttft, "est_speedup": 10.0 / ttft, "computed_token_fraction": 0.5,
                  "first": 7, "text": " 12345."}
        rec[m] |= {"found": True} if task == "passkey" else {"gold_loglik": -1.0, "exact": False}
    return rec


def _gemma_records():
    recs = [_gemma_record("passkey", n, k) for n in (4096, 8192, 16384) for k in range(gemma_eval.PLAN[n])]
    recs += [_gemma_record("hotpot", n, k) for n in (4096, 8192) for k in range(3)]
    return recs + [_gemma_record("passkey", 32768, 0, ("full", "lazy"))]


def test_gemma_report_keeps_hand_written_text(tmp_path):
    out = tmp_path / "gemma.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in _gemma_records()), encoding="utf-8")
    md = _markdown(tmp_path, "gemma")
    block = _check_hand_text_kept(
        md, "gemma", lambda: gemma_eval.main(["--report-only", "--out", str(out), "--md", str(md)]))
    assert "`python -m benchmarks.gemma_eval --lengths 4096 8192 16384 --hotpot 3 --hotpot-max 8192 --seed 0`" in block
    assert "| 32768 | 1 | 1 | 10.0 | 1 (0) | 2.50x | 2.50x | 1/1 | n/a | not run |" in block


def test_gemma_commands_rebuild_the_plan():
    assert gemma_eval.commands(_gemma_records()) == [
        "python -m benchmarks.gemma_eval --lengths 4096 8192 16384 --hotpot 3 --hotpot-max 8192 --seed 0",
        "python -m benchmarks.gemma_eval --lengths 32768 --hotpot 0 --methods full lazy --seed 0",
    ]
    # a passkey count other than PLAN's is explicit; HotpotQA again after a length without it needs its own command
    recs = [_gemma_record("passkey", n, k) for n in (4096, 8192, 16384) for k in range(2)]
    recs += [_gemma_record("hotpot", n, 0) for n in (4096, 16384)]
    assert gemma_eval.commands(recs) == [
        "python -m benchmarks.gemma_eval --lengths 4096 8192 --passkeys 2 --hotpot 1 --hotpot-max 4096 --seed 0",
        "python -m benchmarks.gemma_eval --lengths 16384 --passkeys 2 --hotpot 1 --hotpot-max 16384 --seed 0",
    ]
