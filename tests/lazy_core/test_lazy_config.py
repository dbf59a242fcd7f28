"""LazyConfig (lazy_core.config): the presets (default_for, paper, off), their schedule arithmetic at a depth, and
what the pipeline reads a `lazy` setting as."""

from __future__ import annotations

import pytest
import torch
from helpers import PRUNE
from pydantic import ValidationError

from lazy_core import LazyConfig, LazyLLM
from lazy_core.revival import SelectRevival, TopRevival

# ---- presets ---------------------------------------------------------------------------------------------------------


def test_default_for_scales_with_depth(tiny_llama):
    assert LazyConfig.default_for(30).prune_layers == [7, 17, 21]
    for depth in (4, 12, 24, 32, 80):
        cfg = LazyConfig.default_for(depth)
        cfg.check_depth(depth)
        assert cfg.enabled
    assert not LazyConfig.default_for(2).enabled
    LazyLLM(tiny_llama, LazyConfig.default_for(tiny_llama))


def test_presets_choose_their_revival_policy():
    default = LazyConfig.default_for(30)
    assert default.revival == TopRevival(top=128) and default.revive and default.revive_steps == 32
    assert LazyConfig.paper(30).revival == SelectRevival() == LazyConfig.off().revival == LazyConfig().revival
    assert LazyConfig.paper(30).revive_steps is None


def test_min_prompt_tokens_presets_and_validation():
    assert LazyConfig.paper(30).min_prompt_tokens == 0 and LazyConfig().min_prompt_tokens == 0
    default = LazyConfig.default_for(30)
    assert default.min_prompt_tokens > 0
    assert not default.prunes(default.min_prompt_tokens - 1) and default.prunes(default.min_prompt_tokens)
    assert default.kept_per_layer(30, default.min_prompt_tokens - 1) == [default.min_prompt_tokens - 1] * 30
    with pytest.raises(ValidationError, match="min_prompt_tokens"):
        LazyConfig(min_prompt_tokens=-1)


def test_pool_kernels_one_odd_width_per_pruning_layer():
    config = LazyConfig(**PRUNE, pool_kernel=31, pool_kernels=[63, 15])
    assert [config.pool_at(layer) for layer in (0, 1, 2)] == [63, 31, 15]  # layer 1 does not prune: pool_kernel
    assert LazyConfig(**PRUNE, pool_kernel=31).pool_at(0) == 31
    with pytest.raises(ValidationError, match="one pool width per pruning layer"):
        LazyConfig(**PRUNE, pool_kernels=[63])
    with pytest.raises(ValidationError, match="pool_kernels must be odd"):
        LazyConfig(**PRUNE, pool_kernels=[63, 30])
    with pytest.raises(ValidationError, match="narrowest pool width"):  # a pool must still hold its own token
        LazyConfig(**PRUNE, pool_kernel=31, pool_kernels=[63, 15], pool_shift=8)
    assert LazyConfig(**PRUNE, pool_kernel=31, pool_kernels=[63, 15], pool_shift=7).pool_shift == 7


def test_decode_pool_kernel_replaces_every_layers_width_when_decoding():
    config = LazyConfig(**PRUNE, pool_kernel=31, pool_kernels=[63, 15], decode_pool_kernel=7)
    assert [config.pool_at(layer) for layer in (0, 1, 2)] == [63, 31, 15]  # prefill: the per-layer widths
    assert [config.pool_at(layer, decoding=True) for layer in (0, 1, 2)] == [7, 7, 7]
    unset = LazyConfig(**PRUNE, pool_kernel=31, pool_kernels=[63, 15])
    assert [unset.pool_at(layer, decoding=True) for layer in (0, 1, 2)] == [63, 31, 15]  # None: as prefill
    with pytest.raises(ValidationError, match="decode_pool_kernel must be odd"):
        LazyConfig(**PRUNE, decode_pool_kernel=30)
    with pytest.raises(ValidationError, match="decode_pool_kernel must be odd"):
        LazyConfig(**PRUNE, decode_pool_kernel=0)
    with pytest.raises(ValidationError, match="narrowest pool width"):  # the shift must fit decoding's pool too
        LazyConfig(**PRUNE, pool_kernel=31, decode_pool_kernel=5, pool_shift=3)
    assert LazyConfig.default_for(30).decode_pool_kernel is None


def test_rescheduled_keeps_a_per_layer_pool_wide_first():
    """rescheduled: the same scoring on other layers; a per-layer pool (BENCHMARKS.md, "A wide first pool and the first
    tokens") keeps its first width at the first layer and its last at the others, whatever the count."""
    wide_first = LazyConfig.default_for(30).model_copy(update={"pool_kernels": [63, 31, 31], "keep_head": 4})
    assert [wide_first.pool_at(layer) for layer in (6, 7, 17, 21)] == [31, 63, 31, 31]
    two = wide_first.rescheduled([5, 11], [0.4, 0.1])
    assert two.pool_kernels == [63, 31] and two.prune_layers == [5, 11] and two.keep_head == 4
    assert wide_first.rescheduled([3], [0.2]).pool_kernels == [63]
    assert LazyConfig(**PRUNE).rescheduled([1], [0.5]).pool_kernels is None
    assert LazyConfig.default_for(30).pool_kernels is None and LazyConfig.default_for(30).keep_head == 0


def test_later_start_drops_the_first_stage_only():
    """later_start: pruning from the second layer on, each later stage keeping its ratio and scoring as before (a
    per-layer pool's first width moves to the new first layer); a one-stage schedule has no later start."""
    default = LazyConfig.default_for(30)
    late = default.later_start()
    assert (late.prune_layers, late.keep_ratios) == (default.prune_layers[1:], default.keep_ratios[1:])
    assert late.model_copy(update={"prune_layers": default.prune_layers, "keep_ratios": default.keep_ratios}) == default
    wide_first = default.model_copy(update={"pool_kernels": [63, 31, 15]})
    assert wide_first.later_start().pool_kernels == [63, 15]
    with pytest.raises(ValueError, match=r"at least two pruning layers, got \[21\]"):
        late.later_start().later_start()


def test_later_start_tokens_by_prompt_length():
    """later_start_tokens: from that length on the first stage keeps every token and the later ones their ratios (the
    schedule arithmetic of later_start), shorter prompts every stage; a one-stage or static schedule is refused."""
    default = LazyConfig.default_for(30)
    by_length = default.model_copy(update={"later_start_tokens": 6000})
    late = default.later_start()
    assert by_length.kept_per_layer(30, 5999) == default.kept_per_layer(30, 5999)
    assert by_length.kept_per_layer(30, 6000) == late.kept_per_layer(30, 6000)
    assert by_length.kept_per_layer(30, 8000) == late.kept_per_layer(30, 8000) != default.kept_per_layer(30, 8000)
    assert by_length.starts_later(6000) and not by_length.starts_later(5999) and not default.starts_later(10**6)
    # the skipped stage neither scores nor drops (as under min_prompt_tokens); the later ones and shorter prompts do
    assert by_length.leaves_whole(0, 6000) and by_length.leaves_whole(2, 999)
    assert not by_length.leaves_whole(1, 6000) and not by_length.leaves_whole(0, 5999)
    assert by_length.later_start() == late  # the threshold goes with the stage it drops
    with pytest.raises(ValidationError, match="two or more stages"):
        LazyConfig(prune_layers=[3], keep_ratios=[0.5], later_start_tokens=100)
    with pytest.raises(ValidationError, match="method 'attention' or 'random'"):
        LazyConfig(**PRUNE, method="static", later_start_tokens=100)
    with pytest.raises(ValidationError, match="later_start_tokens"):
        LazyConfig(**PRUNE, later_start_tokens=0)


def test_resolve_names_the_pipelines_schedules(tiny_llama):
    """LazyConfig.resolve: what the worker and the driver's batch budget both read a `lazy` setting as."""
    assert LazyConfig.resolve("default", tiny_llama) == LazyConfig.default_for(tiny_llama)
    assert LazyConfig.resolve("default", tiny_llama.config) == LazyConfig.default_for(tiny_llama)
    assert LazyConfig.resolve("off", tiny_llama) == LazyConfig.off()
    assert LazyConfig.resolve(PRUNE, tiny_llama) == LazyConfig(**PRUNE)
    with pytest.raises(ValueError, match="lazy must be 'default', 'off'"):
        LazyConfig.resolve("fast", tiny_llama)


# ---- schedule arithmetic ---------------------------------------------------------------------------------------------


def test_held_tokens_is_what_the_caches_hold(tiny_llama):
    """LazyConfig.held_tokens (what the pipeline's batch budget counts) == the K/V rows each layer of the engine's
    cache holds, averaged over the layers, after prefill and the decoding steps that fed tokens back."""
    config = LazyConfig(prune_layers=[0, 2], keep_ratios=[0.5, 0.25], min_keep_tokens=2, revive=False)
    engine = LazyLLM(tiny_llama, config, keep_state=True)
    ids = torch.randint(3, 100, (1, 40))
    engine.generate(ids, max_new_tokens=6, eos_token_id=[])
    cache = engine.last_state.cache
    per_layer = [int(kv.valid[0, : kv.length].sum()) for kv in cache.layers]  # 40 / 20 / 20 / 10 prompt rows + 5
    held = config.held_tokens(len(per_layer), 40, 5)  # the 6th new token is never fed back
    assert held == -(-sum(per_layer) // len(per_layer)) == 23 + 5
    assert LazyConfig.off().held_tokens(4, 40, 5) == 45
    assert config.model_copy(update={"min_prompt_tokens": 41}).held_tokens(4, 40, 5) == 45  # computed in full
