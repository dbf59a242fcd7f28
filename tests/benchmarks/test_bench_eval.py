"""The evaluation runner (benchmarks/eval.py): the order of the items, one record on a tiny model, and a resumed run
that counts only records of the current config."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.data import EvalItem
from benchmarks.eval import interleave, run_item
from benchmarks.report import load_records
from lazy_core import LazyConfig, LazyLLM


def test_interleave_orders_by_length_then_task_turns():
    def item(task, n, k):
        return EvalItem(
            task=task, item_id=f"{task}-{n}-{k}", target_tokens=n, prompt_ids=[1], answers=[], max_new_tokens=1
        )

    items = [item("needle", 2048, 0), item("needle", 1024, 0), item("needle", 1024, 1), item("single_qa", 1024, 0)]
    assert [i.item_id for i in interleave(items)] == [
        "needle-1024-0",
        "single_qa-1024-0",
        "needle-1024-1",
        "needle-2048-0",
    ]


def test_run_item_record_on_a_tiny_model(tiny_llama, tiny_tokenizer):
    ids = tiny_tokenizer("The passkey is 123456. What is it?", add_special_tokens=False)["input_ids"]
    item = EvalItem(
        task="single_qa", item_id="t", target_tokens=64, prompt_ids=ids, answers=["123456"], max_new_tokens=5
    )
    lazy = LazyLLM(tiny_llama, LazyConfig.off())
    rec = run_item(lazy, tiny_tokenizer, item, loglik=True)
    assert 1 <= len(rec["new_ids"]) <= 5 and rec["computed_token_fraction"] == 1.0
    assert rec["prompt_tokens"] == len(ids) and rec["text"] == tiny_tokenizer.decode(
        rec["new_ids"], skip_special_tokens=True
    )
    gold = tiny_tokenizer("123456", add_special_tokens=False)["input_ids"]
    expected = lazy.loglikelihood(torch.tensor([ids]), None, [gold])[0]
    assert rec["gold_loglik"] == pytest.approx(expected) and rec["gold_loglik"] < 0
    assert run_item(lazy, tiny_tokenizer, item, loglik=False)["gold_loglik"] is None


def test_eval_resumes_only_pairs_run_with_the_current_config(tiny_model_dir, tmp_path):
    """A stopped run resumes where it was; a record made with another config (e.g. before a change of the default)
    does not count as done, so the method reruns on that item and the report takes the newer line."""
    from benchmarks.eval import main as run_eval

    out = tmp_path / "eval.jsonl"
    args = ["--model", str(tiny_model_dir), "--tasks", "needle", "--needle-lengths", "600", "--depths", "0.5"]
    args += ["--methods", "lazy", "--threads", "1", "--no-loglik", "--out", str(out)]
    run_eval(args)
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in first] == ["full", "lazy"]
    run_eval(args)
    assert out.read_text().splitlines() == [json.dumps(r) for r in first]  # nothing rerun
    stale = dict(first[1], config=dict(first[1]["config"], keep_ratios=[0.9, 0.8, 0.7]), text="stale")
    out.write_text("".join(json.dumps(r) + "\n" for r in (first[0], stale)))
    run_eval(args)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in lines] == ["full", "lazy", "lazy"] and lines[2]["config"] == first[1]["config"]
    assert load_records([out])["lazy"][first[1]["item_id"]]["text"] == first[1]["text"]
