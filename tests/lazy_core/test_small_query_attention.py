"""A decoding step's attention on CPU (lazy_core.attention._small_query_attention): the two matmuls against torch's
SDPA, and the products on the cache's whole buffer (free slots masked) against the products on the keys alone."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lazy_core.attention import CAPACITY_READ_MAX, _capacity_buffer, _small_query_attention
from lazy_core.cache import LayerKV

B, H, H_KV, D = 3, 6, 2, 16


def _layer(keys: int, capacity: int, dtype=torch.float32, seed: int = 0) -> tuple[LayerKV, torch.Tensor, torch.Tensor]:
    """A LayerKV of ``capacity`` slots holding ``keys`` random keys; returns it and the views append hands out."""
    g = torch.Generator().manual_seed(seed)
    kv = LayerKV(B, H_KV, D, capacity, dtype, "cpu")
    k, v = (torch.randn(B, H_KV, keys, D, generator=g).to(dtype) for _ in range(2))
    key, value = kv.append(k, v, torch.arange(keys).expand(B, -1), torch.ones(B, keys, dtype=torch.bool))
    return kv, key, value


def _mask(rows: int, keys: int, seed: int = 1) -> torch.Tensor:
    mask = torch.rand(B, 1, rows, keys, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask[..., -1] = True  # every row attends at least one key
    return mask


@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_the_whole_buffer_gives_what_the_keys_alone_give_and_sdpa_agrees(rows, masked):
    keys = 40
    kv, key, value = _layer(keys, capacity=50)  # 1.25x the keys: the whole buffer is read
    assert _capacity_buffer(key) is not None and _capacity_buffer(key).shape[2] == 50
    query = torch.randn(B, H, rows, D, generator=torch.Generator().manual_seed(2))
    mask = _mask(rows, keys) if masked else None
    whole, _ = _small_query_attention(query, key, value, mask, None)
    alone, _ = _small_query_attention(query, key.contiguous(), value.contiguous(), mask, None)
    assert whole.shape == (B, rows, H, D)
    torch.testing.assert_close(whole, alone, rtol=0, atol=1e-6)  # fp32: only the sums' order may differ
    reference = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(whole, reference.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_the_whole_buffer_in_bf16_stays_close():
    kv, key, value = _layer(64, capacity=80, dtype=torch.bfloat16)
    query = torch.randn(B, H, 1, D).to(torch.bfloat16)
    whole, _ = _small_query_attention(query, key, value, None, None)
    reference = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), enable_gqa=True)
    torch.testing.assert_close(whole.float(), reference.transpose(1, 2), rtol=0.02, atol=0.02)  # bf16 products


def test_capacity_buffer_only_for_a_cache_prefix_it_pays_to_read_whole():
    _, key, _ = _layer(40, capacity=50)
    assert _capacity_buffer(key).shape == (B, H_KV, 50, D)
    assert _capacity_buffer(key[1:2]).shape == (1, H_KV, 50, D)  # one item of the batch (packed rows)
    assert torch.equal(_capacity_buffer(key[1:2])[:, :, :40], key[1:2])
    _, full, _ = _layer(40, capacity=40)
    assert _capacity_buffer(full) is None  # already contiguous
    _, pruned, _ = _layer(10, capacity=int(10 * CAPACITY_READ_MAX) + 1)
    assert _capacity_buffer(pruned) is None  # a pruned layer's buffer: reading it whole costs more
    assert _capacity_buffer(key.transpose(2, 3)) is None
    assert _capacity_buffer(torch.randn(B, H_KV, 50, D)[:, :, :40:2]) is None


def test_free_slots_are_zeros_after_init_growth_and_a_join():
    kv, key, _ = _layer(40, capacity=50)
    assert not kv.keys[:, :, 40:].any() and not kv.values[:, :, 40:].any()
    ones = torch.ones(B, H_KV, 20, D)
    kv.append(ones, ones, torch.arange(20).expand(B, -1), torch.ones(B, 20, dtype=torch.bool))  # grows by 1/4
    assert kv.keys.shape[2] == 62 and not kv.keys[:, :, 60:].any() and not kv.values[:, :, 60:].any()
    kv.valid[0, :30] = False  # item 0 keeps 30 of 60
    slots, _, _ = _layer(0, capacity=10)
    slots.place([1, 0], kv, [0, 2], 5, [30, 60], [False, True])  # grows to hold 60 + 5
    assert slots.keys.shape[2] == 65 and slots.length == 60 and slots.fill.tolist()[:2] == [60, 30]
    assert torch.equal(slots.keys[1, :, :30], kv.keys[0, :, 30:60]) and torch.equal(slots.keys[0, :, :60],
                                                                                      kv.keys[2, :, :60])
    assert slots.keys.isfinite().all() and slots.values.isfinite().all()
    assert not slots.keys[:, :, 60:].any() and not slots.keys[1, :, 30:].any()  # free slots stay zeros


def test_fit_shrinks_a_buffer_to_what_it_holds_plus_the_free_slots_asked():
    kv, key, value = _layer(10, capacity=100)  # a pruned layer's buffer, sized for the whole prompt
    assert _capacity_buffer(key) is None
    kv.fit(4)
    assert kv.keys.shape[2] == kv.values.shape[2] == kv.positions.shape[1] == kv.valid.shape[1] == 14
    assert torch.equal(kv.keys[:, :, :10], key) and torch.equal(kv.values[:, :, :10], value)
    assert kv.valid[:, :10].all() and not kv.valid[:, 10:].any() and not kv.keys[:, :, 10:].any()
    kv.fit(40)  # never grows
    assert kv.keys.shape[2] == 14
    one = torch.ones(B, H_KV, 1, D)
    key, _ = kv.append(one, one, torch.full((B, 1), 10), torch.ones(B, 1, dtype=torch.bool))
    assert _capacity_buffer(key).shape[2] == 14  # now read whole
