"""Aux Cache revival (lazy_core.revival): both policies (select, top) and their knobs, revived tokens get the full
model's states, exactness with pruning off, and configs written with the old flat revive_* keys."""

from __future__ import annotations

import pytest
import torch
from helpers import POLICIES, PROMPTS, PRUNE, RecordingPruner, encode
from pydantic import ValidationError

from lazy_core import AttentionPruner, LazyConfig, LazyLLM
from lazy_core.revival import SelectRevival, TopRevival

# ---- revived tokens are computed as the full model would -------------------------------------------------------------


class ReviveAllPruner(AttentionPruner):
    """Prefill keeps only the tail; every decoding step selects every prompt token (so all get revived)."""

    def select(self, inputs, budget, forced):
        newest_candidate = inputs.key_pos.masked_fill(~inputs.candidates, -1).amax(1)
        decoding = bool((inputs.query_pos[:, -1] > newest_candidate).all())
        return inputs.candidates.clone() if decoding else super().select(inputs, budget, forced)


def test_revival_equals_computing_the_tokens_then(tiny_model, tiny_tokenizer):
    """Prefill keeps 10 % of the prompt after the second-to-last layer; the first decoding step selects every token,
    so every pruned token is revived from the Aux Cache and computed at the last layer at its original position.
    K/V of a layer depend only on the layer's input, which pruning at L-2 leaves exact: from then on the engine holds
    the full model's cache, so it continues (prompt + first token) exactly like the full model."""
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    n = enc.input_ids.shape[1]
    last = tiny_model.config.num_hidden_layers - 2
    config = LazyConfig(prune_layers=[last], keep_ratios=[0.1], min_keep_tokens=1, keep_tail=2)
    lazy = LazyLLM(tiny_model, config, pruner=ReviveAllPruner(config), keep_state=True)
    out = lazy.generate(enc.input_ids, max_new_tokens=8, eos_token_id=[])
    stats = out.stats[0]
    assert stats.kept_per_layer[last + 1] == max(2, -(-n // 10))
    assert stats.revived_tokens == n - stats.kept_per_layer[last + 1]
    first = out.sequences[:, : n + 1]
    ref = tiny_model.generate(first, max_new_tokens=7, do_sample=False, eos_token_id=None)
    assert out.sequences.tolist() == ref.tolist()


def test_revived_tokens_get_the_full_models_states(tiny_model, tiny_tokenizer):
    """Pruned after layer 1 and all revived at the first decoding step: layer 2's K/V (computed from the Aux Cache
    states) equal the full model's for every token."""
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    n = enc.input_ids.shape[1]
    config = LazyConfig(prune_layers=[1], keep_ratios=[0.1], min_keep_tokens=1, keep_tail=2)
    lazy = LazyLLM(tiny_model, config, pruner=ReviveAllPruner(config), keep_state=True)
    out = lazy.generate(enc.input_ids, max_new_tokens=2, eos_token_id=[])
    assert out.stats[0].revived_tokens == n - out.stats[0].kept_per_layer[2]
    with torch.inference_mode():
        ref = tiny_model(out.sequences[:, : n + 1], use_cache=True).past_key_values
    for j in range(3):
        kv = lazy.last_state.cache.layers[j]
        order = kv.positions[0, : kv.length].argsort()
        assert kv.positions[0, : kv.length][order].tolist() == list(range(n + 1))
        torch.testing.assert_close(kv.keys[0, :, : kv.length][:, order], ref.layers[j].keys[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(kv.values[0, :, : kv.length][:, order], ref.layers[j].values[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_policies_are_exact_when_pruning_is_off(tiny_model, tiny_tokenizer, policy):
    enc = encode(tiny_tokenizer)
    config = LazyConfig(prune_layers=[0, 2], keep_ratios=[1.0, 1.0], **POLICIES[policy])
    out = LazyLLM(tiny_model, config).generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=10)
    ref = tiny_model.generate(**enc, max_new_tokens=10, do_sample=False)
    assert torch.equal(out.sequences, ref)


# ---- each policy's knobs ---------------------------------------------------------------------------------------------


def test_revive_per_step_caps_revivals(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    steps = 8
    free = LazyLLM(tiny_llama, LazyConfig(**PRUNE)).generate(enc.input_ids, max_new_tokens=steps, eos_token_id=[])
    capped = LazyLLM(tiny_llama, LazyConfig(**PRUNE, revival=SelectRevival(per_step=1)), keep_state=True).generate(
        enc.input_ids, max_new_tokens=steps, eos_token_id=[])
    assert free.stats[0].revived_tokens > 2 * (steps - 1)
    assert 0 < capped.stats[0].revived_tokens <= 2 * (steps - 1)  # 2 pruning layers, steps - 1 decoding steps


def test_top_policy_revives_the_best_scored_and_keeps_what_it_computed(tiny_llama, tiny_tokenizer):
    """'top': after a decoding step, each pruning layer's TopRevival.top best-scored prompt tokens have K/V at the next
    layer; and no token leaves a layer's key set (a step attends every token the layer holds)."""
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    config = LazyConfig(prune_layers=[0], keep_ratios=[0.2], min_keep_tokens=2, keep_tail=2,
                        revival=TopRevival(top=4))
    pruner = RecordingPruner(config)
    lazy = LazyLLM(tiny_llama, config, pruner=pruner, keep_state=True)
    out = lazy.generate(enc.input_ids, max_new_tokens=6, eos_token_id=[])
    assert out.stats[0].revived_tokens > 0
    layer1 = lazy.last_state.cache.layers[1]
    held = set(layer1.positions[0, : layer1.length][layer1.valid[0, : layer1.length]].tolist())
    decode_calls = pruner.calls[1:]  # the first call is the prefill's
    assert len(decode_calls) == 5
    for call in decode_calls:
        assert int(call["budget"][0]) == 4 and not call["forced"].any()
        top = call["inputs"].key_pos[call["keep"]].tolist()
        assert len(top) == 4 and set(top) <= held
    prefill_kept = pruner.calls[0]["inputs"].key_pos[pruner.calls[0]["keep"]].tolist()
    assert set(prefill_kept) <= held  # nothing the prefill kept was dropped by a decoding step


def test_hysteresis_and_first_steps_revive_less(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    steps = 10

    def revived(**update):
        config = LazyConfig(**PRUNE, **update)
        return LazyLLM(tiny_llama, config).generate(enc.input_ids, max_new_tokens=steps, eos_token_id=[]).stats[0]

    free, sticky, early = revived(), revived(revival=SelectRevival(hysteresis=1.0)), revived(revive_steps=2)
    assert free.revived_tokens > 0
    assert sticky.revived_tokens < free.revived_tokens
    assert 0 < early.revived_tokens < free.revived_tokens


def test_revive_false_prunes_prefill_only(tiny_model, tiny_tokenizer):
    enc = encode(tiny_tokenizer)
    out = LazyLLM(tiny_model, LazyConfig(**PRUNE, revive=False)).generate(
        enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8, eos_token_id=[]
    )
    assert all(s.revived_tokens == 0 and s.aux_cache_bytes == 0 for s in out.stats)


# ---- configs written before LazyConfig.revival -----------------------------------------------------------------------


def test_old_flat_revival_keys_load_with_their_meaning():
    """Configs written before LazyConfig.revival (result files, YAML) hold the policy as flat keys: each loads as the
    policy it meant, and so does an old full model_dump() (every key, the other policy's inert); a knob of the other
    policy given by hand is refused with the fix."""
    assert LazyConfig(revive_policy="top", revive_top=6) == LazyConfig(revival=TopRevival(top=6))
    assert LazyConfig(revival={"name": "top", "top": 6}) == LazyConfig(revival=TopRevival(top=6))  # YAML's form
    assert LazyConfig(revive_policy="top").revival == TopRevival(top=64)
    assert LazyConfig(revive_per_step=1, revive_hysteresis=0.5).revival == SelectRevival(per_step=1, hysteresis=0.5)
    assert LazyConfig(revive_policy="select", revive_top=64).revival == SelectRevival()  # revive_top's old default
    old_dump = dict(method="attention", prune_layers=[7, 14, 21], keep_ratios=[0.4, 0.2, 0.1], min_keep_tokens=64,
                    min_prompt_tokens=1000, revive=True, revive_per_step=None, revive_policy="top", revive_top=128,
                    revive_hysteresis=0.0, revive_steps=32, query_window=1, head_reduce="max", query_reduce="max",
                    pool_kernel=31, keep_tail=32, seed=0)
    # the default's scoring until its 8-query window, and its middle layer until the loss analysis
    before = {"query_window": 1, "query_reduce": "max", "prune_layers": [7, 14, 21]}
    assert LazyConfig(**old_dump) == LazyConfig.default_for(30).model_copy(update=before)
    assert LazyConfig(**{**old_dump, "revive_policy": "select"}).revival == SelectRevival()  # top 128 was inert
    with pytest.raises(ValueError, match=r"revive_top=6 only applies to revive_policy='top'.*'name': 'top', 'top': 6"):
        LazyConfig(revive_policy="select", revive_top=6)
    with pytest.raises(ValueError, match="revive_hysteresis=0.5 only applies to revive_policy='select'"):
        LazyConfig(revive_policy="top", revive_hysteresis=0.5)
    with pytest.raises(ValueError, match=r"revive_policy is 'select' \(the default when it is not given\)"):
        LazyConfig(revive_top=6)
    with pytest.raises(ValueError, match="give the revival policy once"):
        LazyConfig(revival=TopRevival(), revive_top=6)
    with pytest.raises(ValueError, match=r"revive_policy must be one of \['select', 'top'\]"):
        LazyConfig(revive_policy="all")
    with pytest.raises(ValidationError, match="per_step"):
        LazyConfig(revival={"name": "top", "per_step": 2})  # each policy holds only its own knobs
    default = LazyConfig.default_for(30)
    assert LazyConfig.model_validate_json(default.model_dump_json()) == default == LazyConfig(**default.model_dump())
