"""The pruning contract (lazy_core.scoring): LazyLLM's attention scores against an eager-attention reference, the
kept set is the top-scored within each budget, and the static and random baselines behind the same contract."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model
from helpers import PROMPTS, PRUNE, RecordingPruner, encode

from lazy_core import LazyConfig, LazyLLM, RandomPruner, StaticPruner
from lazy_core.scoring import make_pruner

# ---- LazyLLM's attention scores and the kept set ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "scoring",
    [
        dict(query_window=1, head_reduce="mean", query_reduce="mean", pool_kernel=1),  # the paper
        dict(query_window=4, head_reduce="max", query_reduce="max", pool_kernel=3),
        dict(query_window=3, head_reduce="mean", query_reduce="mean", pool_kernel=1),
        dict(query_window=2, head_reduce="kv_group", query_reduce="mean", pool_kernel=1),  # 4 heads, 2 KV heads
        dict(query_window=2, head_reduce="max", query_reduce="mean", pool_kernel=5, pool_shift=2),  # reaching ahead
    ],
)
def test_scores_equal_eager_attention_reference(tiny_tokenizer, scoring):
    model = make_tiny_model("llama", attn="eager")
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    layer = 1
    config = LazyConfig(prune_layers=[layer], keep_ratios=[0.4], min_keep_tokens=1, keep_tail=1, **scoring)
    pruner = RecordingPruner(config)
    LazyLLM(model, config, pruner=pruner).generate(enc.input_ids, max_new_tokens=1)
    with torch.inference_mode():
        attn = model(enc.input_ids, output_attentions=True).attentions[layer].float()  # [1, H, T, T]
    window = attn[:, :, -scoring["query_window"]:, :]
    if scoring["head_reduce"] == "kv_group":  # query heads 0, 1 read KV head 0; heads 2, 3 read KV head 1
        heads = torch.stack([window[:, 0:2].mean(1), window[:, 2:4].mean(1)]).amax(0)
    else:
        heads = window.mean(1) if scoring["head_reduce"] == "mean" else window.amax(1)
    ref = heads.mean(1) if scoring["query_reduce"] == "mean" else heads.amax(1)
    if scoring["pool_kernel"] > 1:  # token i takes the best score of the tokens j whose pool reaches it
        k, shift = scoring["pool_kernel"], scoring.get("pool_shift", 0)
        n = ref.shape[1]
        reaches = [[j for j in range(n) if j + shift - k // 2 <= i <= j + shift + k // 2] for i in range(n)]
        ref = torch.stack([torch.stack([max(ref[0, j] for j in js) for js in reaches])])
    got = pruner.calls[0]["scores"]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_pool_kernels_pool_each_pruning_layer_by_its_own_width(tiny_tokenizer):
    """pool_kernels: each pruning layer's scores are those of a single-width config of that layer's width, on the same
    inputs (a wide pool where the budget is wide, the narrow one elsewhere)."""
    model = make_tiny_model("llama")
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    config = LazyConfig(**PRUNE, query_window=2, pool_kernel=1, pool_kernels=[5, 3])
    pruner = RecordingPruner(config)
    LazyLLM(model, config, pruner=pruner).generate(enc.input_ids, max_new_tokens=1)
    assert [call["inputs"].layer for call in pruner.calls] == PRUNE["prune_layers"]
    for call, width in zip(pruner.calls, [5, 3], strict=True):
        alone = make_pruner(LazyConfig(**PRUNE, query_window=2, pool_kernel=width)).scores(call["inputs"])
        narrow = make_pruner(LazyConfig(**PRUNE, query_window=2, pool_kernel=1)).scores(call["inputs"])
        torch.testing.assert_close(call["scores"], alone, atol=0, rtol=0)
        assert not torch.equal(call["scores"], narrow)  # the pool acted


@pytest.mark.parametrize("decode_pool", [None, 1])
def test_decode_pool_kernel_pools_only_decodings_scores(tiny_tokenizer, decode_pool):
    """decode_pool_kernel: a decoding step's new token scores its revivals with that width at every pruning layer;
    prefill keeps the per-layer widths (None: decoding pools as prefill does, layer by layer)."""
    from lazy_core import TopRevival

    model = make_tiny_model("llama")
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    scoring = dict(**PRUNE, query_window=2, revive=True, revival=TopRevival(top=6))
    config = LazyConfig(**scoring, pool_kernel=1, pool_kernels=[5, 3], decode_pool_kernel=decode_pool)
    pruner = RecordingPruner(config)
    LazyLLM(model, config, pruner=pruner).generate(enc.input_ids, max_new_tokens=3)
    prefill = [call for call in pruner.calls if not call["inputs"].decoding]
    decoding = [call for call in pruner.calls if call["inputs"].decoding]
    assert [call["inputs"].layer for call in prefill] == PRUNE["prune_layers"]
    assert len(decoding) == 2 * len(PRUNE["prune_layers"])  # two decoding steps after the first token
    for call in prefill + decoding:
        layer_width = dict(zip(PRUNE["prune_layers"], [5, 3], strict=True))[call["inputs"].layer]
        width = decode_pool if call["inputs"].decoding and decode_pool is not None else layer_width
        alone = make_pruner(LazyConfig(**scoring, pool_kernel=width)).scores(call["inputs"])
        torch.testing.assert_close(call["scores"], alone, atol=0, rtol=0)
        if width != layer_width:  # the decoding pool acted in place of the layer's
            wide = make_pruner(LazyConfig(**scoring, pool_kernel=layer_width)).scores(call["inputs"])
            assert not torch.equal(call["scores"], wide)


def test_kept_tokens_are_top_scored_nested_and_keep_positions(tiny_tokenizer):
    model = make_tiny_model("qwen2")
    enc = encode(tiny_tokenizer)
    config = LazyConfig(**PRUNE, query_window=2, pool_kernel=1)
    pruner = RecordingPruner(config)
    lengths = enc.attention_mask.sum(1)
    LazyLLM(model, config, pruner=pruner).generate(enc.input_ids, attention_mask=enc.attention_mask,
                                                   max_new_tokens=1)
    first, second = pruner.calls
    for call in (first, second):
        inputs, keep, scores = call["inputs"], call["keep"], call["scores"]
        for b in range(len(PROMPTS)):
            n = int(lengths[b])
            cand = inputs.candidates[b]
            kept = keep[b] & cand
            assert not bool((keep[b] & ~cand).any()), "pads or non-candidates kept"
            assert int(kept.sum()) == int(call["budget"][b].clamp(max=int(cand.sum())))
            pos = inputs.key_pos[b]
            assert bool(kept[pos == n - 1].all()), "the last token must be kept"
            forced = call["forced"][b]
            free_kept = kept & ~forced
            free_dropped = cand & ~kept
            if free_kept.any() and free_dropped.any():
                assert float(scores[b][free_kept].min()) >= float(scores[b][free_dropped].max())
    # nested: the second pruning layer sees exactly the tokens the first kept, at their original positions
    for b in range(len(PROMPTS)):
        kept_first = first["inputs"].key_pos[b][first["keep"][b]].tolist()
        seen_second = second["inputs"].key_pos[b][second["inputs"].key_valid[b]].tolist()
        assert seen_second == sorted(kept_first)


def test_keep_head_keeps_the_first_tokens_within_the_budget(tiny_tokenizer):
    model = make_tiny_model("llama")
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    config = LazyConfig(prune_layers=[0, 2], keep_ratios=[0.3, 0.1], min_keep_tokens=1, keep_tail=2, keep_head=3)
    pruner = RecordingPruner(config)
    LazyLLM(model, config, pruner=pruner).generate(enc.input_ids, max_new_tokens=1)
    n = enc.input_ids.shape[1]
    for call in pruner.calls:
        pos = call["inputs"].key_pos[0]
        kept = set(pos[call["keep"][0]].tolist())
        assert {0, 1, 2, n - 2, n - 1} <= kept, "the first keep_head and last keep_tail tokens are always kept"
        assert len(kept) == int(call["budget"][0])
    assert len(pruner.calls) == 2
    assert config.keep_budget(1, n) == max(5, -(-n // 10)), "the budget's floor counts head and tail"


# ---- baselines behind the same contract ------------------------------------------------------------------------------


def test_static_prunes_once_and_random_is_seeded(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    n = enc.input_ids.shape[1]
    static = LazyLLM(tiny_llama, LazyConfig(**PRUNE, method="static")).generate(enc.input_ids, max_new_tokens=4)
    budget = max(2, -(-n // 4))
    assert static.stats[0].kept_per_layer == [n, budget, budget, budget]
    assert LazyConfig(**PRUNE, method="static").kept_per_layer(4, n) == [n, budget, budget, budget]
    assert static.stats[0].revived_tokens == 0
    assert isinstance(make_pruner(LazyConfig(**PRUNE, method="static")), StaticPruner)
    config = LazyConfig(**PRUNE, method="random", seed=3)
    pruner_a, pruner_b = RecordingRandom(config), RecordingRandom(config)
    LazyLLM(tiny_llama, config, pruner=pruner_a).generate(enc.input_ids, max_new_tokens=1)
    LazyLLM(tiny_llama, config, pruner=pruner_b).generate(enc.input_ids, max_new_tokens=1)
    assert torch.equal(pruner_a.keeps[0], pruner_b.keeps[0])


class RecordingRandom(RandomPruner):
    def __init__(self, config):
        super().__init__(config)
        self.keeps = []

    def select(self, inputs, budget, forced):
        keep = super().select(inputs, budget, forced)
        self.keeps.append(keep)
        return keep
