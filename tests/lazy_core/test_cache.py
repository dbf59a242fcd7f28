"""The per-layer KV cache (lazy_core.cache): under every revival policy each layer holds a token at most once,
and its computed counts are what the stats report."""

from __future__ import annotations

import pytest
from helpers import POLICIES, PROMPTS, PRUNE, encode

from lazy_core import LazyConfig, LazyLLM


@pytest.mark.parametrize("policy", list(POLICIES))
def test_each_token_computed_at_most_once_per_layer(tiny_model, tiny_tokenizer, policy):
    enc = encode(tiny_tokenizer)
    config = LazyConfig(**PRUNE, **POLICIES[policy], query_window=2)
    lazy = LazyLLM(tiny_model, config, keep_state=True)
    out = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=16, eos_token_id=[])
    state = lazy.last_state
    assert sum(s.revived_tokens for s in out.stats) > 0, "this schedule should revive tokens"
    for j, kv in enumerate(state.cache.layers):
        for b in range(len(PROMPTS)):
            positions = kv.positions[b, : kv.length][kv.valid[b, : kv.length]].tolist()
            assert len(positions) == len(set(positions)), f"a token was computed twice at layer {j}"
            assert len(positions) == int(state.cache.computed[j, b])
    for b, s in enumerate(out.stats):
        total = sum(int(state.cache.computed[j, b]) for j in range(len(state.cache.layers)))
        assert s.computed_token_fraction_total == pytest.approx(
            total / (len(state.cache.layers) * (s.prompt_tokens + s.new_tokens - 1)))
