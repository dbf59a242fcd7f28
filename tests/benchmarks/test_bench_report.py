"""The evaluation report (benchmarks/report.py): records paired with the full run, scores, the summary and its
one-point rule, the choice of method, records of the current config only, markdown and plots."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.report import (
    build_report,
    choose,
    current_only,
    load_records,
    schedule_text,
    score_records,
    summarise,
)
from lazy_core import LazyConfig


def _config(method):
    from benchmarks.eval import METHODS, method_config

    return method_config(method, 4).model_dump() if method in METHODS else {}


def _rec(method, item_id, task, text, new_ids, answers, ttft, loglik=None, est=1.0, frac=1.0, length=1000):
    return {
        "method": method,
        "item_id": item_id,
        "task": task,
        "target_tokens": length,
        "prompt_tokens": length,
        "answers": answers,
        "new_ids": new_ids,
        "text": text,
        "ttft_s": ttft,
        "wall_s": ttft,
        "computed_token_fraction": frac,
        "computed_token_fraction_total": frac,
        "est_speedup": est,
        "kept_per_layer": [length, length // 2, length // 4, length // 4],
        "revived_tokens": 0,
        "gold_loglik": loglik,
        "config": _config(method),
        "machine": {"date_utc": "2026-01-01 00:00", "git_commit": "abc", "cpu_count": 2},
    }


RECORDS = [
    _rec("full", "n1", "needle", "It is 123456.", [5, 6], ["123456"], 4.0),
    _rec("full", "n2", "needle", "It is 654321.", [5, 7], ["654321"], 4.0),
    _rec("full", "q1", "single_qa", "Paris", [9], ["Paris"], 2.0, loglik=-1.0),
    _rec("full", "s1", "summarize", "the cat sat on the mat", [1, 2], [], 2.0),
    _rec("lazy", "n1", "needle", "It is 123456.", [5, 6], ["123456"], 1.0, est=4.0, frac=0.25),
    _rec("lazy", "n2", "needle", "I do not know.", [8], ["654321"], 2.0, est=4.0, frac=0.25),
    _rec("lazy", "q1", "single_qa", "Paris, France", [9], ["Paris"], 1.0, loglik=-1.5, est=4.0, frac=0.25),
    _rec("lazy", "s1", "summarize", "the cat sat", [1, 3], [], 0.5, est=4.0, frac=0.25),
    _rec("lazy", "extra", "needle", "x", [1], ["111111"], 1.0),  # no full record: left out of every comparison
]


@pytest.fixture()
def eval_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


def test_scores_are_paired_with_the_full_run(eval_file):
    rows = {(r["method"], r["item_id"]): r for r in score_records(load_records([eval_file]))}
    assert ("lazy", "extra") not in rows and len(rows) == 8
    assert rows[("lazy", "n1")]["score"] == 1.0 and rows[("lazy", "n2")]["score"] == 0.0
    assert rows[("lazy", "n2")]["first_token_agrees"] is False and rows[("lazy", "n1")]["same_output"] is True
    assert rows[("lazy", "q1")]["score"] == pytest.approx(2 / 3)  # F1 of "paris france" vs "paris"
    assert rows[("lazy", "q1")]["dloglik"] == pytest.approx(-0.5)
    assert rows[("lazy", "s1")]["score"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # ROUGE-L vs the full summary
    assert rows[("lazy", "n2")]["ttft_speedup"] == pytest.approx(2.0)
    assert rows[("full", "s1")]["score"] == pytest.approx(1.0) and math.isnan(rows[("full", "n1")]["dloglik"])


def test_summary_counts_needle_losses_and_applies_the_one_point_rule(eval_file):
    rows = score_records(load_records([eval_file]))
    summary = {s["method"]: s for s in summarise(rows, ["full", "lazy"])}
    lazy = summary["lazy"]
    assert (lazy["needle_lost"], lazy["needle_changed"], lazy["needle_n"]) == (1, 1, 2)
    assert lazy["needle"] == 0.5 and summary["full"]["needle"] == 1.0
    assert lazy["qa_drop"] == pytest.approx(1 - 2 / 3)
    assert lazy["qualifies"] is False and summary["full"]["qualifies"] is True
    assert lazy["ttft_speedup"] == pytest.approx(3.0)  # median of 4, 2, 2, 4
    assert lazy["est_speedup"] == pytest.approx(4.0) and lazy["computed_token_fraction"] == pytest.approx(0.25)


def test_choose_applies_the_rule_then_the_fewest_needles_lost():
    def s(method, lost, n, qa_drop, est, qualifies=False):
        return dict(
            method=method,
            needle_lost=lost,
            needle_n=n,
            qa_drop=qa_drop,
            est_speedup=est,
            computed_token_fraction=1 / est,
            qualifies=qualifies,
        )

    summary = [
        s("full", 0, 10, 0.0, 1.0, True),
        s("slow", 1, 10, 0.0, 2.5),
        s("fast", 1, 10, -0.1, 3.0),
        s("lossy_qa", 0, 10, 0.05, 4.0),
        s("worse", 3, 10, 0.0, 5.0),
    ]
    text = choose(summary)
    assert "**No pruned method is within 1 point of full**" in text
    assert (
        "(1/10) and QA F1 within 1 point of full: **fast** (est. speedup 3.00x; tied: fast 3.00x, slow 2.50x)" in text
    )
    summary.append(s("exact", 0, 10, 0.0, 1.5, True))
    text = choose(summary)
    assert "Fastest method within 1 point of full: **exact** (est. speedup 1.50x" in text
    assert "(0/10) and QA F1 within 1 point of full: **exact**" in text
    summary.append(s("fewer_items", 0, 5, 0.0, 9.0))  # not run on every needle item: not comparable
    assert "(0/10) and QA F1 within 1 point of full: **exact**" in choose(summary)
    assert choose([summary[0]]) == "No pruned method was run."


def test_report_writes_markdown_and_plots(eval_file, tmp_path):
    out = tmp_path / "out"
    text = build_report([eval_file], tmp_path / "missing-ttft.json", out)
    assert (out / "report.md").read_text(encoding="utf-8") == text
    assert "Table 1" in text and "| Needle (passkey found) | 1000 | 2 | 1 | 0.5 |" in text
    assert "**No pruned method is within 1 point of full**" in text  # lazy loses a needle and 1/3 F1
    assert "fewest needle items lost" not in text  # ... so it is not among the fair ones either
    assert sorted(p.name for p in out.glob("*.png")) == ["kept_per_layer.png", "score_vs_speedup.png"]


def test_report_counts_only_records_run_with_the_current_config(eval_file):
    records = load_records([eval_file])
    records["lazy"]["n1"] = dict(records["lazy"]["n1"], config=dict(records["lazy"]["n1"]["config"], keep_ratios=[0.9]))
    records["old_name"] = {"n1": dict(records["lazy"]["n2"], method="old_name")}
    kept = current_only(records)
    assert sorted(kept["lazy"]) == ["extra", "n2", "q1", "s1"]  # n1 ran with a stale config
    assert sorted(kept["full"]) == ["n1", "n2", "q1", "s1"] and list(kept["old_name"]) == ["n1"]


def test_report_without_records_of_todays_default_is_an_error(eval_file, tmp_path):
    stale = [
        dict(r, config=dict(r["config"], keep_ratios=[0.9, 0.8, 0.7])) if r["method"] == "lazy" else r for r in RECORDS
    ]
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in stale), encoding="utf-8")
    with pytest.raises(ValueError, match="no 'lazy' records run with today's LazyConfig.default_for"):
        build_report([eval_file], tmp_path / "missing-ttft.json", tmp_path / "out")


def test_missing_full_records_is_an_error(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(RECORDS[4]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no 'full' records"):
        load_records([path])
    with pytest.raises(FileNotFoundError, match="benchmarks.eval"):
        load_records([tmp_path / "nope.jsonl"])


def test_agreement_counts_first_tokens_with_a_wilson_interval(tmp_path):
    from benchmarks.report import agreement_text, wilson

    lo, hi = wilson(45, 50)
    assert 0.78 < lo < 0.79 and 0.95 < hi < 0.96  # 90 % of 50: the textbook 95 % Wilson interval [78.6, 95.7]
    assert wilson(0, 0) == (0.0, 0.0) and wilson(10, 10)[1] == pytest.approx(1.0)
    path = tmp_path / "eval.jsonl"
    recs = [_rec("full", "q1", "multidoc_qa", "Paris", [5, 6], ["Paris"], 2.0, loglik=-1.0),
            _rec("full", "q2", "multidoc_qa", "Rome", [7], ["Rome"], 2.0, loglik=-2.0),
            _rec("lazy", "q1", "multidoc_qa", "Paris", [5, 9], ["Paris"], 1.0, loglik=-1.5),
            _rec("lazy", "q2", "multidoc_qa", "Milan", [8], ["Rome"], 1.0, loglik=-3.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    line = next(x for x in agreement_text([path]).splitlines() if x.startswith("| lazy |"))
    assert "| 2 | 1/2 [" in line and "| 1.000 | 0.500 |" in line and "| -0.750 | -0.750 | ? |" in line
    for rec, threads in zip(recs, (2, 2, 1, 2), strict=True):  # lazy's q1 at 1 thread against full's 2, its q2 at 2
        rec["torch_threads"] = threads
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    line = next(x for x in agreement_text([path]).splitlines() if x.startswith("| lazy |"))
    assert line.endswith("| 1 of 2 at two counts |")


def test_schedule_text_names_the_pool_per_layer_and_the_kept_first_tokens():
    wide = LazyConfig.default_for(30).model_copy(update={"pool_kernels": [63, 31, 31], "keep_head": 4})
    assert schedule_text(wide.model_dump()).endswith("window 8, pool 63/31/31, first 4 kept")
    narrow_revivals = wide.model_copy(update={"decode_pool_kernel": 31}).model_dump()
    assert schedule_text(narrow_revivals).endswith("window 8, pool 63/31/31 (31 when decoding), first 4 kept")
    assert schedule_text(LazyConfig.default_for(30).model_dump()).endswith("window 8, pool 31")
    shifted = LazyConfig(prune_layers=[1], keep_ratios=[0.5], pool_kernel=5, pool_shift=2).model_dump()
    assert schedule_text(shifted).endswith("window 1, pool 5 shifted 2")
    assert schedule_text(LazyConfig.off().model_dump()) == "no pruning"
