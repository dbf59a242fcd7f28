"""lazy_core.calibrate on a tiny model: fastest-first search, the max_drop rule, determinism, errors."""

from __future__ import annotations

import pytest
from conftest import GEMMA_GLOBAL, make_tiny_model

from lazy_core import LazyConfig, LazyLLM
from lazy_core.calibrate import (
    _word_f1,
    calibrate,
    calibrate_report,
    candidate_schedules,
    predicted_speedup,
)
from lazy_core.stats import FlopModel

TEXT = "The quick brown fox jumps over the lazy dog while the cat watches from the old red barn. " * 3


def _samples(tok):
    prompts = [TEXT[i * 7 :] + f" Question {i}: what jumps?" for i in range(3)]
    return [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]


def _cands():
    mild = LazyConfig(prune_layers=[1], keep_ratios=[0.8], min_keep_tokens=1)
    strong = LazyConfig(prune_layers=[0, 1], keep_ratios=[0.3, 0.1], min_keep_tokens=1)
    medium = LazyConfig(prune_layers=[1], keep_ratios=[0.4], min_keep_tokens=1, query_window=4, pool_kernel=3)
    return [mild, strong, medium]


def test_any_drop_allowed_returns_the_fastest(tiny_llama, tiny_tokenizer):
    report = calibrate_report(tiny_llama, tiny_tokenizer, _samples(tiny_tokenizer), max_drop=1.0, candidates=_cands())
    assert report.config == _cands()[1]  # the strongest pruning, whatever its position in the list
    assert len(report.tried) == 1
    assert report.full.score == 1.0 and report.full.drop == 0.0  # no references: full is its own target
    assert 0.0 <= report.tried[0].score <= 1.0
    assert report.tried[0].est_speedup > 1.0 and report.tried[0].computed_token_fraction < 1.0


def test_choice_is_the_first_qualifying_in_speed_order_and_deterministic(tiny_llama, tiny_tokenizer):
    samples = _samples(tiny_tokenizer)
    report = calibrate_report(tiny_llama, tiny_tokenizer, samples, max_drop=0.0, candidates=_cands())
    speeds = [r.predicted_speedup for r in report.tried]
    assert speeds == sorted(speeds, reverse=True)
    for r in report.tried[:-1]:
        assert r.drop > 0.0  # everything faster than the chosen one lost quality
    if report.config != LazyConfig.off():
        assert report.config == report.tried[-1].config and report.tried[-1].drop <= 0.0
    else:
        assert len(report.tried) == 3 and all(r.drop > 0.0 for r in report.tried)
    again = calibrate(tiny_llama, tiny_tokenizer, samples, max_drop=0.0, candidates=_cands())
    assert again == report.config


def test_references_are_the_target_when_given(tiny_llama, tiny_tokenizer):
    samples = [{"prompt": p, "reference": "zzz qqq"} for p in _samples(tiny_tokenizer)]
    report = calibrate_report(tiny_llama, tiny_tokenizer, samples, max_drop=1.0, candidates=_cands())
    expected = sum(_word_f1(o, "zzz qqq") for o in report.full.outputs) / len(samples)
    assert report.full.score == pytest.approx(expected)


def test_nothing_faster_than_full_gives_off(tiny_llama, tiny_tokenizer):
    # a keep floor above the prompt length computes every token: no speedup to gain
    no_gain = LazyConfig(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=100_000)
    report = calibrate_report(tiny_llama, tiny_tokenizer, _samples(tiny_tokenizer), candidates=[no_gain])
    assert report.config == LazyConfig.off() and report.tried == []


def test_predicted_speedup_matches_the_flop_model(tiny_llama):
    flops = FlopModel.from_config(tiny_llama.config)
    cfg = LazyConfig(prune_layers=[1], keep_ratios=[0.25], min_keep_tokens=1)
    n, layers = 400, tiny_llama.config.num_hidden_layers
    expected = layers * flops.causal_layer(n) / (2 * flops.causal_layer(n) + (layers - 2) * flops.causal_layer(100))
    assert predicted_speedup(cfg, flops, layers, [n]) == pytest.approx(expected)
    assert predicted_speedup(LazyConfig.off(), flops, layers, [n]) == pytest.approx(1.0)


def test_default_candidates_fit_the_depth():
    for depth in (4, 12, 30):
        cands = candidate_schedules(depth)
        assert cands and len(set(map(str, cands))) == len(cands)
        for cfg in cands:
            cfg.check_depth(depth)
    assert LazyConfig.default_for(30) in candidate_schedules(30)
    assert candidate_schedules(2) == []


def test_candidates_on_the_gemma3_270m_layout_sit_at_global_layers():
    """Gemma 3 270M's layout (global layers 5, 11, 17 of 18): every candidate prunes at the global layers that can
    prune, as default_for and paper do; placements that snap to the same layers are one candidate; each schedule
    also starts at layer 11 (its later start: the remedy for the 8K needles its first stage loses)."""
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig(num_hidden_layers=18, sliding_window=512)
    windows = [None if t == "full_attention" else 512 for t in config.layer_types]
    cands = candidate_schedules(config)
    assert len(cands) > 1 and len(set(map(str, cands))) == len(cands)
    assert cands[0] == LazyConfig.default_for(config) and cands[-1] == LazyConfig.paper(config)
    for cfg in cands:
        assert cfg.prune_layers in ([5, 11], [11])
        cfg.check_layers(windows)
    late = [cfg for cfg in cands if cfg.prune_layers == [11]]
    assert sorted(cfg.keep_ratios[0] for cfg in late) == [0.07, 0.1, 0.2, 0.3]  # each grid row's second stage
    default = LazyConfig.default_for(config)
    assert default.later_start_tokens is not None  # the default by length comes first, then its stages for all
    assert cands[1] == default.model_copy(update={"later_start_tokens": None})
    assert all(cfg.later_start_tokens is None for cfg in cands[1:])
    assert default.later_start() in late
    assert cands[1].rescheduled([5, 11], [0.8, 0.2]) in cands  # a gentle first stage


def test_calibrate_runs_on_a_hybrid_model(tiny_tokenizer):
    """Tiny Gemma 3 (sliding window 8, global layers 2 and 4): LazyLLM accepts every default candidate, and calibrate
    on samples past the default's min_prompt_tokens (so the candidates prune) returns the fastest when any drop is
    allowed."""
    gemma = make_tiny_model("gemma3", num_layers=6)
    cands = candidate_schedules(gemma)
    assert len(cands) > 1 and len(set(map(str, cands))) == len(cands)
    for cfg in cands:
        assert set(cfg.prune_layers) <= set(GEMMA_GLOBAL)
        LazyLLM(gemma, cfg)  # refuses a pruning layer with a sliding window
    samples = [TEXT * 4 + f" Question {i}: what jumps?" for i in range(2)]
    lengths = [len(tiny_tokenizer(s, add_special_tokens=False)["input_ids"]) for s in samples]
    assert min(lengths) >= LazyConfig.default_for(gemma).min_prompt_tokens
    chosen = calibrate(gemma, tiny_tokenizer, samples, max_drop=1.0, max_new_tokens=4)
    flops = FlopModel.from_config(gemma.config)
    speeds = [predicted_speedup(c, flops, gemma.config.num_hidden_layers, lengths) for c in cands]
    assert chosen == cands[speeds.index(max(speeds))] and all(chosen.prunes(n) for n in lengths)


def test_bad_input_errors(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="non-empty list"):
        calibrate(tiny_llama, tiny_tokenizer, [])
    with pytest.raises(ValueError, match="needs 'prompt'"):
        calibrate(tiny_llama, tiny_tokenizer, [{"text": "x"}])
    with pytest.raises(ValueError, match="max_drop"):
        calibrate(tiny_llama, tiny_tokenizer, ["x"], max_drop=2.0)
    with pytest.raises(ValueError, match="empty prompt"):
        calibrate(tiny_llama, tiny_tokenizer, [[]])
    with pytest.raises(TypeError, match="LazyConfig"):
        calibrate(tiny_llama, tiny_tokenizer, ["hello"], candidates=[{"prune_layers": [1]}])


def test_calibrate_benchmark_writes_every_tried_candidate(tiny_model_dir, tmp_path):
    """benchmarks/calibrate.py on real-data samples (tiny model): the JSON names the samples, the full run, each
    candidate tried fastest first, and a chosen schedule that is either the last tried (it qualified) or off."""
    import json

    from benchmarks.calibrate import _markdown, main

    out = tmp_path / "calibrate.json"
    args = ["--model", str(tiny_model_dir), "--needle-lengths", "600", "--depths", "0.5", "--qa-length", "2000"]
    args += ["--qa-items", "1", "--max-new-tokens", "4", "--threads", "1", "--out", str(out), "--section", ""]
    args += ["--entity-haystacks", "1", "--ruler-tasks", "niah_single_1"]
    assert main(args) == out
    payload = json.loads(out.read_text())
    assert [s["item_id"].split("-")[0] for s in payload["samples"]] == ["needle", "entity2", "entity2", "hotpot",
                                                                         "squad", "niah_single_1"]
    assert payload["full"]["drop"] == 0.0 and len(payload["full"]["outputs"]) == 6
    tried = payload["tried"]
    assert tried, "at least one candidate is faster than the full model"
    speeds = [t["predicted_speedup"] for t in tried]
    assert speeds == sorted(speeds, reverse=True)
    assert all(t["drop"] > 0.01 + 1e-12 for t in tried[:-1])  # the search stops at the first qualifying one
    last_ok = tried[-1]["drop"] <= 0.01 + 1e-12
    assert payload["chosen_config"] == (tried[-1]["config"] if last_ok else LazyConfig.off().model_dump())
    text = _markdown(payload)
    assert payload["chosen"] in text and text.count("\n|") == len(tried) + 2


def test_answers_in_the_prompts_also_place_the_layers():
    """candidate_schedules with answer shares: every schedule of the plain search, and each also with its layers moved
    by lazy_core.profile.profiled_layers; without shares the plain search alone."""
    from lazy_core.profile import profiled_layers

    plain = candidate_schedules(30)
    good = {6: 0.05, 17: 0.05, 21: 0.05}  # only layers 6, 17 and 21 single the answers out
    shares = [{j: good.get(j, 0.9) for j in range(29)}] * 2
    placed = candidate_schedules(30, shares)
    assert placed[: len(plain) - 1] == plain[:-1] and placed[-1] == plain[-1]  # the paper's scoring stays last
    moved = [c.model_copy(update={"prune_layers": profiled_layers(c, 30, shares)}) for c in plain[:-1]]
    assert all(c in placed for c in moved)
    assert LazyConfig.default_for(30).model_copy(update={"prune_layers": [6, 17, 21]}) in placed
    assert len(placed) == len(set(map(repr, placed)))


def test_calibrate_profiles_the_samples_whose_reference_stands_in_the_prompt(tiny_tokenizer):
    model = make_tiny_model("llama", num_layers=8)
    prompts = [TEXT + f" The code of item {i} is 47{i}1. Question: the code of item {i}?" for i in range(2)]
    with_refs = [{"prompt": p, "reference": f"47{i}1"} for i, p in enumerate(prompts)]
    report = calibrate_report(model, tiny_tokenizer, with_refs, max_drop=1.0)
    assert report.answers_profiled == 2
    elsewhere = [{"prompt": p, "reference": "not in it"} for p in prompts]
    assert calibrate_report(model, tiny_tokenizer, elsewhere, max_drop=1.0).answers_profiled == 0
    given = calibrate_report(model, tiny_tokenizer, with_refs, max_drop=1.0, candidates=_cands())
    assert given.answers_profiled == 0  # the caller's candidates are tried as given
