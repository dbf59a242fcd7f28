"""BENCHMARKS.md's generated blocks (short_prompts, gemma_eval, ruler, ruler_n20, ruler_remedies*, ruler_margins*)
are what their ``--report-only`` (or, for the margins, ``ruler_margins.section``) writes from the results files now."""

from __future__ import annotations

import json

import pytest
from helpers import _block

from benchmarks import gemma_eval, ruler, ruler_margins, short_prompts
from benchmarks.common import BENCHMARKS_MD, RESULTS_DIR
from lazy_core import LazyConfig

REMEDIES = {  # block -> (results file or files, methods of its per-task table[, the one dtype it compares within])
    "ruler_remedies": (("ruler-remedies-smollm2-135m-instruct.jsonl",  # the second round's candidates: -round2
                        "ruler-remedies-smollm2-135m-instruct-round2.jsonl"), ["full", "mid17", "first63_sink4"]),
    "ruler_remedies_s1": ("ruler-remedies-smollm2-135m-instruct-s1.jsonl", ["full", "mid17", "first63_sink4"]),
    "ruler_remedies_gemma": ("ruler-remedies-gemma3-270m.jsonl", ["full", "lazy_mid14", "first63_sink4"]),
    "ruler_entity": ("ruler-entity-smollm2-135m-instruct.jsonl", ["full", "mid17", "first63_sink4"]),
    "ruler_gemma_8k": ("ruler-n20-gemma3-270m-8192.jsonl", ["full", "lazy_mid14", "first63_sink4"]),
    "ruler_dec31": (("ruler-remedies-smollm2-135m-instruct.jsonl", "ruler-remedies-smollm2-135m-instruct-round2.jsonl",
                     "ruler-remedies-smollm2-135m-instruct-round3.jsonl"),
                    ["full", "mid17", "first63_sink4", "first63_sink4_dec31"]),
    "ruler_dec31_s1": (("ruler-remedies-smollm2-135m-instruct-s1.jsonl",
                        "ruler-remedies-smollm2-135m-instruct-s1-round3.jsonl"),
                       ["full", "mid17", "first63_sink4", "first63_sink4_dec31"]),
    "ruler_entity_gemma": ("ruler-entity-gemma3-270m.jsonl", ["full", "lazy_mid14", "gentle_merge"]),
    "ruler_gentle": (("ruler-n20-gemma3-270m.jsonl", "ruler-n60-gemma3-270m-4096.jsonl",
                      "ruler-remedies-gemma3-270m-round4.jsonl", "ruler-remedies-gemma3-270m-qa2-round4.jsonl"),
                     ["full", "lazy_mid14", "gentle_merge"]),
    "ruler_gentle_s1": ("ruler-remedies-gemma3-270m-s1-round4.jsonl", ["full", "lazy_mid14", "gentle_merge"]),
    "ruler_gentle_8k": (("ruler-n20-gemma3-270m-8192.jsonl", "ruler-n60-gemma3-270m-8192.jsonl",
                         "ruler-remedies-gemma3-270m-8192-round4.jsonl"), ["full", "lazy_mid14", "gentle_merge"]),
    "ruler_gemma_8k_rest": ("ruler-n20-gemma3-270m-8192-rest.jsonl", ["full", "lazy_mid14"]),
    "ruler_late_start_8k": (("ruler-n20-gemma3-270m-8192.jsonl", "ruler-n20-gemma3-270m-8192-rest.jsonl",
                             "ruler-n60-gemma3-270m-8192.jsonl", "ruler-remedies-gemma3-270m-8192-round4.jsonl",
                             "ruler-remedies-gemma3-270m-8192-round5.jsonl",
                             "ruler-remedies-gemma3-270m-8192-round5b.jsonl"), ["full", "gentle_merge", "late_start"]),
    "ruler_late_start_8k_s12": (("ruler-remedies-gemma3-270m-8192-s1-round5.jsonl",
                                 "ruler-remedies-gemma3-270m-8192-s2-round5.jsonl"),
                                ["full", "gentle_merge", "first80", "late_start"]),
    "ruler_by_length_8k_s12": (("ruler-remedies-gemma3-270m-8192-s1-round6.jsonl",
                                "ruler-remedies-gemma3-270m-8192-s2-round6.jsonl"),
                               ["full", "gentle_merge", "late_start"]),
    "ruler_by_length_8k": (("ruler-n20-gemma3-270m-8192.jsonl", "ruler-n20-gemma3-270m-8192-rest.jsonl",
                            "ruler-n60-gemma3-270m-8192.jsonl", "ruler-remedies-gemma3-270m-8192-round4.jsonl",
                            "ruler-remedies-gemma3-270m-8192-round5.jsonl",
                            "ruler-remedies-gemma3-270m-8192-round5b.jsonl",
                            "ruler-remedies-gemma3-270m-8192-s1-round5.jsonl",
                            "ruler-remedies-gemma3-270m-8192-s2-round5.jsonl",
                            "ruler-remedies-gemma3-270m-8192-s1-round6.jsonl",
                            "ruler-remedies-gemma3-270m-8192-s2-round6.jsonl"), ["full", "gentle_merge", "late_start"]),
    "ruler_by_length_6k": (("ruler-remedies-gemma3-270m-6144-a.jsonl", "ruler-remedies-gemma3-270m-6144-b.jsonl"),
                           ["full", "gentle_merge", "late_start"]),
    "ruler_fp32_8k": (("ruler-remedies-gemma3-270m-8192-s1-round5.jsonl",
                       "ruler-remedies-gemma3-270m-8192-s2-round5.jsonl",
                       "ruler-fp32-gemma3-270m-8192-s1.jsonl", "ruler-fp32-gemma3-270m-8192-s2.jsonl",
                       "ruler-remedies-gemma3-270m-8192-s1-round6.jsonl", "ruler-fp32-gemma3-270m-8192-mq-s1.jsonl"),
                      ["full", "full@float32", "gentle_merge", "late_start"]),
    "ruler_fp32_within": (("ruler-fp32-gemma3-270m-8192-s1.jsonl", "ruler-fp32-gemma3-270m-8192-s2.jsonl",
                           "ruler-fp32-gemma3-270m-8192-s1-lazy.jsonl", "ruler-fp32-gemma3-270m-8192-s2-lazy.jsonl"),
                          ["full", "gentle_merge"], "float32"),
}


MARGINS = {"ruler_margins": "ruler-margins-gemma3-270m-8192.jsonl",  # block -> benchmarks.ruler_margins --out
           "ruler_margins_s12": "ruler-margins-gemma3-270m-8192-s12.jsonl",
           "ruler_margins_tasks": "ruler-margins-gemma3-270m-8192-tasks.jsonl",
           "ruler_margins_fp32": "ruler-margins-gemma3-270m-8192-fp32.jsonl"}


@pytest.mark.parametrize("name", ["short", "gemma", "ruler", "ruler_n20", *MARGINS, *REMEDIES])
def test_benchmarks_md_blocks_are_what_the_results_give(name):
    """BENCHMARKS.md's generated block is what ``--report-only`` writes from the results file now (not stale)."""
    if name == "short":
        threshold = LazyConfig.default_for(30).min_prompt_tokens
        records = [r for r in short_prompts.load_records(short_prompts.DEFAULT_OUT, threshold)
                   if r["new_tokens"] == short_prompts.DEFAULT_NEW_TOKENS]
        body = short_prompts.section(records, threshold, short_prompts.DEFAULT_NEW_TOKENS, short_prompts.DEFAULT_OUT)
    elif name == "ruler":
        body = ruler.section(ruler.load_records(ruler.DEFAULT_OUT))
    elif name == "ruler_n20":
        records = [r for model in ("gemma3-270m", "smollm2-135m-instruct")
                   for r in ruler.load_records(RESULTS_DIR / f"ruler-n20-{model}.jsonl")]
        body = ruler.section(records, ["full", "lazy", "lazy_mid14"])  # Gemma's default then: lazy_mid14 (= mid17)
    elif name in MARGINS:
        body = ruler_margins.section(ruler_margins.load_rows(RESULTS_DIR / MARGINS[name]))
    elif name in REMEDIES:
        paths, methods, *dtype = REMEDIES[name]
        paths = (paths,) if isinstance(paths, str) else paths
        records = [r for path in paths for r in ruler.load_records(RESULTS_DIR / path)]
        body = ruler.section(ruler.within_dtype(records, dtype[0]) if dtype else records, methods)
    else:
        lines = (RESULTS_DIR / "gemma_eval.jsonl").read_text(encoding="utf-8").splitlines()
        body = gemma_eval.section([json.loads(line) for line in lines if line.strip()], gemma_eval.DEFAULT_OUT)
    assert _block(BENCHMARKS_MD.read_text(encoding="utf-8"), name).strip() == body.strip()
