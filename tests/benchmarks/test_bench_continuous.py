"""benchmarks/continuous.py: the static batch's idle slot arithmetic, and both methods on a tiny model giving each
item the same tokens with the counters the report reads."""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from benchmarks.continuous import _report, run_continuous, run_static, static_idle, summary
from lazy_core import DecodingOptions, LazyConfig, LazyLLM


def test_static_idle_counts_the_rows_that_wait_for_the_longest():
    assert static_idle([5, 5, 5, 5], 4) == (16, 16)
    assert static_idle([1, 3, 5], 4) == (16, 6)  # 4 slots x 4 steps, items busy 0 + 2 + 4 of them


def test_both_methods_on_a_tiny_model():
    lazy = LazyLLM(make_tiny_model("llama"), LazyConfig(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=2))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 250, (int(n),), generator=g).tolist() for n in (40, 38, 30, 30, 22, 12, 9)]
    options = DecodingOptions(max_new_tokens=8)
    static = run_static(lazy, prompts, 3, options)
    cont = run_continuous(lazy, prompts, 3, options, max_held_tokens=10_000)
    assert static["tokens"] == cont["tokens"] and len(cont["tokens"]) == len(prompts)
    assert cont["busy_slot_steps"] == static["busy_slot_steps"] == sum(len(t) - 1 for t in cont["tokens"])
    rounds = [{"static": summary(static), "continuous": summary(cont), "same_tokens": len(prompts)}]
    settings = {"papers": 7, "prompt_tokens": 40, "max_new_tokens": 8, "slots": 3, "dtype": "float32", "threads": 1,
                "lazy": "custom"}
    text = _report(rounds, settings)
    assert "| continuous |" in text and "7 of 7" in text


def test_generate_batch_peer_gives_each_prompt_its_greedy_tokens():
    """transformers' generate_batch on a tiny model: one output per prompt, in input order, the unpruned model's
    greedy tokens (compared with our engine with pruning off)."""
    from conftest import make_tiny_tokenizer

    from benchmarks.continuous import run_generate_batch

    model = make_tiny_model("llama")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 250, (int(n),), generator=g).tolist() for n in (30, 12, 21)]
    peer = run_generate_batch(model, make_tiny_tokenizer(), prompts, 6)
    ours = LazyLLM(model, LazyConfig.off()).generate_continuous(prompts, max_new_tokens=6)
    assert peer["tokens"] == [o.sequences[0, len(p):].tolist() for o, p in zip(ours.outputs, prompts, strict=True)]


def test_step_profile_times_each_variant():
    from benchmarks.continuous import step_profile

    lazy = LazyLLM(make_tiny_model("llama"), LazyConfig(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=2,
                                                        revival={"name": "top", "top": 4}, revive_steps=3))
    g = torch.Generator().manual_seed(2)
    profile = step_profile(lazy, [torch.randint(3, 250, (n,), generator=g).tolist() for n in (30, 24)], reps=2)
    assert set(profile) == {"no row revives ms", "one row revives ms", "every row revives ms", "join ms"}
    assert all(v > 0 for v in profile.values())
