"""Hybrid attention (Gemma 3: sliding-window and global layers): the engine's invariants on a tiny random Gemma 3
whose window is shorter than the prompts, and the default schedule on the 270M model's layout.
The real Gemma 3 270M: test_real_gemma.py."""

from __future__ import annotations

import pytest
import torch
from conftest import GEMMA_GLOBAL, make_tiny_model

from lazy_core import LazyConfig, LazyLLM
from lazy_core.config import HYBRID_LATER_START_TOKENS
from lazy_core.revival import TopRevival

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door.",
    "Short prompt here.",
    "A medium length prompt that talks about pruning tokens in long contexts.",
]


PRUNE = dict(prune_layers=[2, 4], keep_ratios=[0.5, 0.25], min_keep_tokens=2, keep_tail=2,
             revival=TopRevival(top=6))


@pytest.fixture(scope="module")
def gemma():
    return make_tiny_model("gemma3", num_layers=6)


def _encode(tok, prompts=PROMPTS):
    return tok(prompts, return_tensors="pt", padding=True)


def test_tiny_gemma_is_hybrid_and_default_prunes_at_global_layers(gemma):
    from lazy_core.arch import model_parts

    parts = model_parts(gemma)
    assert parts.global_layers == [2, 4] == list(GEMMA_GLOBAL) and parts.hybrid and parts.rope_types is not None
    assert parts.sliding_windows[0] == 8
    default = LazyConfig.default_for(gemma)
    assert default.prune_layers == [2, 4]  # layers 1, 2, 3 of 6 moved to the nearest global layers
    LazyLLM(gemma, default)
    with pytest.raises(ValueError, match=r"prune_layers \[1\] are sliding-window layers .* global layers \(\[2, 4\]\)"):
        LazyLLM(gemma, LazyConfig(prune_layers=[1, 2], keep_ratios=[0.5, 0.25]))


def test_real_gemma_default_schedule_sits_on_global_layers():
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig(num_hidden_layers=18, sliding_window=512)  # the 270M model's layout
    assert [j for j, t in enumerate(config.layer_types) if t == "full_attention"] == [5, 11, 17]
    default = LazyConfig.default_for(config)
    # the 20 % and 10 % stages (layers 17 and 21 of 30) meet at layer 11: the larger ratio is kept (BENCHMARKS.md,
    # "Stages that meet"); the paper's stages keep the smaller, as measured
    assert default.prune_layers == [5, 11] and default.keep_ratios == [0.4, 0.2]
    # long prompts skip the first stage (BENCHMARKS.md, "A first stage by length"); full-attention models never do
    assert default.later_start_tokens == HYBRID_LATER_START_TOKENS
    assert LazyConfig.default_for(30).later_start_tokens is None
    assert default.kept_per_layer(18, 8000)[6] == 8000 and default.kept_per_layer(18, 6000)[6] == 2400
    default.check_layers([None if t == "full_attention" else 512 for t in config.layer_types])
    paper = LazyConfig.paper(config)  # the paper's scoring, at the nearest global layers too
    assert paper.prune_layers == [5, 11] and paper.keep_ratios == [0.7, 0.3] and paper.head_reduce == "mean"
    assert LazyConfig.paper(30).prune_layers == [8, 18, 27]  # full-attention models: unchanged


def test_long_prompts_skip_the_first_stage_on_a_hybrid_model(gemma, tiny_tokenizer):
    """later_start_tokens on tiny Gemma 3 (global layers 2 and 4): in one batch the prompts at or past the threshold
    are generated as later_start() generates them alone, the others as the whole schedule, token for token and layer
    for layer."""
    enc = _encode(tiny_tokenizer)
    lengths = enc.attention_mask.sum(1).tolist()
    threshold = sorted(lengths)[1]  # the middle prompt and the longest start later, the shortest does not
    config = LazyConfig(**PRUNE, later_start_tokens=threshold)
    late = LazyLLM(gemma, config.later_start())
    whole = LazyLLM(gemma, config.model_copy(update={"later_start_tokens": None}))
    out = LazyLLM(gemma, config).generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8,
                                          eos_token_id=[])
    width = enc.input_ids.shape[1]
    for b, n in enumerate(lengths):
        real = enc.input_ids[b][enc.attention_mask[b].bool()][None]
        ref = (late if n >= threshold else whole).generate(real, max_new_tokens=8, eos_token_id=[])
        assert out.sequences[b, width:].tolist() == ref.sequences[0, n:].tolist()
        assert out.stats[b].kept_per_layer == ref.stats[0].kept_per_layer
        assert out.stats[b].kept_per_layer[3] == (n if n >= threshold else config.keep_budget(0, n))


def test_pruning_off_matches_model_generate(gemma, tiny_tokenizer):
    enc = _encode(tiny_tokenizer)
    ref = gemma.generate(**enc, max_new_tokens=12, do_sample=False)
    for config in (LazyConfig.off(), LazyConfig(**{**PRUNE, "keep_ratios": [1.0, 1.0]})):
        out = LazyLLM(gemma, config).generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=12)
        assert torch.equal(out.sequences, ref)


def test_batch_equals_items_alone_and_revival_once_per_layer(gemma, tiny_tokenizer):
    enc = _encode(tiny_tokenizer)
    lazy = LazyLLM(gemma, LazyConfig(**PRUNE), keep_state=True)
    batch = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=12, eos_token_id=[])
    state = lazy.last_state
    for j, kv in enumerate(state.cache.layers):
        for b in range(len(PROMPTS)):
            positions = kv.positions[b, : kv.length][kv.valid[b, : kv.length]].tolist()
            assert len(positions) == len(set(positions)), f"a token was computed twice at layer {j}"
    assert batch.stats[0].kept_per_layer[3] < batch.stats[0].prompt_tokens
    width = enc.input_ids.shape[1]
    for b in range(len(PROMPTS)):
        real = enc.input_ids[b][enc.attention_mask[b].bool()][None]
        alone = lazy.generate(real, max_new_tokens=12, eos_token_id=[])
        assert batch.sequences[b, width:].tolist() == alone.sequences[0, real.shape[1]:].tolist()
        assert batch.stats[b].revived_tokens == alone.stats[0].revived_tokens


def test_pruned_prefill_keeps_the_sliding_window_by_position(gemma, tiny_tokenizer):
    """After pruning at global layer 2, sliding layer 3 attends each kept token to the kept tokens within 8
    positions: its next-token logits equal a reference that runs the model's own layers with that mask."""
    from lazy_core.arch import model_parts

    enc = _encode(tiny_tokenizer, PROMPTS[:1])
    ids = enc.input_ids
    config = LazyConfig(prune_layers=[2], keep_ratios=[0.5], min_keep_tokens=2, keep_tail=2)
    lazy = LazyLLM(gemma, config, keep_state=True)
    logits = lazy.prefill_logits(ids)
    kept = lazy.last_state.cache.layers[3]
    keep_pos = kept.positions[0, : kept.length][kept.valid[0, : kept.length]]  # the tokens layers 3.. computed
    parts = model_parts(gemma)
    with torch.inference_mode():
        hidden = parts.embed(ids)
        pos = torch.arange(ids.shape[1])[None]
        for j, layer in enumerate(parts.layers):
            if j == 3:
                hidden, pos = hidden[:, keep_pos], pos[:, keep_pos]
            cos_sin = parts.position_embeddings(hidden, pos)[j]
            q, k = pos[0][:, None], pos[0][None, :]
            allowed = k <= q
            if parts.sliding_windows[j] is not None:
                allowed &= k > q - parts.sliding_windows[j]
            mask = torch.where(allowed, 0.0, float("-inf"))[None, None]
            hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin)
        ref = parts.lm_head(parts.norm(hidden))[:, -1].float()
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)


def test_model_unchanged_after_use(gemma, tiny_tokenizer):
    before = {k: v.clone() for k, v in gemma.state_dict().items()}
    impl = gemma.config._attn_implementation
    LazyLLM(gemma, LazyConfig(**PRUNE)).generate(_encode(tiny_tokenizer).input_ids, max_new_tokens=4)
    assert gemma.config._attn_implementation == impl
    assert all(torch.equal(before[k], v) for k, v in gemma.state_dict().items())
