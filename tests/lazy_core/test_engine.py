"""The layer loop (lazy_core.engine): pruned prefill computes the kept tokens at their original positions, the
position masks carry a model's sliding window, and decoding steps ask the revival policy where they should."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS, PRUNE, RecordingPruner, encode, full_last_logits

from lazy_core import LazyConfig, LazyLLM
from lazy_core.revival import TopRevival


def test_pruned_prefill_equals_reference_on_kept_subset(tiny_model, tiny_tokenizer):
    """Layers after the pruning layer compute only the kept tokens, at their original positions (RoPE not
    renumbered): the same as driving the model's layers by hand on that subset."""
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    layer = 1
    config = LazyConfig(prune_layers=[layer], keep_ratios=[0.3], min_keep_tokens=1, keep_tail=1, revive=False)
    pruner = RecordingPruner(config)
    logits = LazyLLM(tiny_model, config, pruner=pruner).prefill_logits(enc.input_ids)
    kept_pos = pruner.calls[0]["inputs"].key_pos[0][pruner.calls[0]["keep"][0]].sort().values
    inner = tiny_model.model
    with torch.inference_mode():
        h = inner.embed_tokens(enc.input_ids)
        pos = torch.arange(enc.input_ids.shape[1])[None]
        for j, block in enumerate(inner.layers):
            if j == layer + 1:
                h, pos = h[:, kept_pos], pos[:, kept_pos]
            h = block(h, position_embeddings=inner.rotary_emb(h, pos), attention_mask=None)
        ref = tiny_model.lm_head(inner.norm(h[:, -1:]))[:, -1].float()
    assert kept_pos[-1] == enc.input_ids.shape[1] - 1
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_sliding_window_models_match_when_off(tiny_tokenizer, arch):
    """Prompts longer than the sliding window: the engine's position masks carry the window like the model's own."""
    from conftest import _common
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    torch.manual_seed(0)
    if arch == "mistral":
        config = MistralConfig(**_common(4), sliding_window=16)
    else:
        config = Qwen2Config(**_common(4), sliding_window=16, use_sliding_window=True, max_window_layers=2)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    enc = encode(tiny_tokenizer)
    lazy = LazyLLM(model, LazyConfig.off())
    out = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8)
    assert torch.equal(out.sequences, model.generate(**enc, max_new_tokens=8, do_sample=False))
    torch.testing.assert_close(lazy.prefill_logits(enc.input_ids, enc.attention_mask),
                               full_last_logits(model, enc.input_ids, enc.attention_mask), atol=1e-4, rtol=0)
    schedule = PRUNE if arch == "mistral" else {**PRUNE, "prune_layers": [0, 1]}  # qwen2 here: 0-1 global, 2-3 sliding
    pruned = LazyLLM(model, LazyConfig(**schedule)).generate(enc.input_ids, attention_mask=enc.attention_mask,
                                                             max_new_tokens=8)
    assert pruned.sequences.shape == out.sequences.shape
    if arch == "qwen2":  # a hybrid model refuses to score at a sliding layer (its last token sees only its window)
        with pytest.raises(ValueError, match=r"prune_layers \[2\] are sliding-window layers"):
            LazyLLM(model, LazyConfig(**PRUNE))


def test_the_engine_asks_the_policy_once_per_pruning_layer_and_reviving_step(tiny_llama, tiny_tokenizer,
                                                                             monkeypatch):
    """The engine's one call into the revival policy: after each pruning layer of each decoding step up to
    revive_steps, never in prefill and never after; its answer (None: nothing revived) is all the engine acts on."""
    calls = []
    original = TopRevival.revive

    def spy(self, loop, state, inputs, rows):
        revived = original(self, loop, state, inputs, rows)
        calls.append((inputs.layer, revived is None))
        return revived

    monkeypatch.setattr(TopRevival, "revive", spy)
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    config = LazyConfig(**PRUNE, revival=TopRevival(top=6), revive_steps=3)
    out = LazyLLM(tiny_llama, config).generate(enc.input_ids, max_new_tokens=8, eos_token_id=[])
    assert [layer for layer, _ in calls] == [0, 2] * 3  # steps 1-3 of the 7 decoding steps
    assert (out.stats[0].revived_tokens > 0) == (not all(none for _, none in calls))
