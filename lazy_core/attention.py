"""The engine's hook into the model's attention, through transformers' official ``AttentionInterface``.

While the engine runs, ``config._attn_implementation`` points at ``"lazyllm"``: a thin function that records the
queries the scorer needs (after RoPE, after any q-norm: exactly what the model computed) and then calls the
implementation the user chose (sdpa, eager, ...) with a mask in that implementation's format. The previous value is
restored on exit, so the model is unchanged after use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lazy_core.packing import RowPacking

HOOK_NAME = "lazyllm"


@dataclass
class AttentionStep:
    """What one layer call needs beyond the model's own arguments. Passed to the layer as ``lazy_step=``."""

    inner: str  # the model's own attention implementation
    mask: torch.Tensor | None  # [B, 1, Q, K] bool (True = attend) or None for plain causal/full attention
    query_rows: torch.Tensor | None = None  # [B, W] rows whose queries the scorer wants, or None
    packing: RowPacking | None = None  # the layer runs on packed rows [1, N] (lazy_core.packing)
    captured_query: torch.Tensor | None = field(default=None, repr=False)  # [B, H, W, d] after the call


def lazy_attention(module: nn.Module, query, key, value, attention_mask, lazy_step: AttentionStep | None = None,
                   **kwargs):
    """query: [B, H, Q, d]; key/value: [B, H_kv, K, d] (the engine's cache returns every key of the layer)."""
    if lazy_step is None:  # called outside the engine (should not happen while the hook is installed)
        inner = ALL_ATTENTION_FUNCTIONS.get_interface("sdpa", None)
        return inner(module, query, key, value, attention_mask, **kwargs)
    packing = lazy_step.packing
    if lazy_step.query_rows is not None:
        laid_out = query if packing is None else packing.unpack_heads(query)  # [B, H, W, d]
        rows = lazy_step.query_rows[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[3])
        lazy_step.captured_query = laid_out.gather(2, rows)
    mask = lazy_step.mask
    kwargs.pop("sliding_window", None)  # the engine's masks already carry the window
    if packing is not None:
        return _packed_attention(query, key, value, mask, packing, kwargs.get("scaling"))
    if lazy_step.inner == "eager":
        from transformers.models.llama.modeling_llama import eager_attention_forward

        if mask is None:  # eager applies no causality of its own
            q_len, k_len = query.shape[2], key.shape[2]
            mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
        additive = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
        additive.masked_fill_(~mask, torch.finfo(query.dtype).min)
        return eager_attention_forward(module, query, key, value, additive, **kwargs)
    cpu_sdpa = query.device.type == "cpu" and lazy_step.inner == "sdpa" and kwargs.get("softcap") is None
    if cpu_sdpa and (query.shape[2] == 1 or (mask is not None and query.shape[2] <= SMALL_QUERY_ROWS)):
        return _small_query_attention(query, key, value, mask, kwargs.get("scaling"))
    if cpu_sdpa and mask is not None and query.shape[2] > 1:
        return _masked_gqa_sdpa(module, query, key, value, mask, kwargs.get("scaling"))
    if mask is not None and lazy_step.inner != "sdpa":
        # flash / flex kernels take no arbitrary boolean mask: masked steps (batch padding, revival) use sdpa.
        inner = ALL_ATTENTION_FUNCTIONS.get_interface("sdpa", None)
    else:
        inner = ALL_ATTENTION_FUNCTIONS.get_interface(lazy_step.inner, None)
    return inner(module, query, key, value, mask, **kwargs)


# A decoding step's queries on CPU (the new token, plus any revived rows under a mask): at most this many go through
# two plain matmuls instead of torch's SDPA kernel. (Without a mask, several queries need a causal mask: SDPA's.)
SMALL_QUERY_ROWS = 256


def _small_query_attention(query, key, value, mask, scaling):
    """Attention of a few queries on CPU as two batched matmuls over the shared K/V heads, softmax in fp32.

    torch's CPU SDPA kernel blocks over query rows: with one query per head it does a row's worth of work per task and
    in bf16 costs 13-20x these two products (1 query onto 4K keys, batch 1-8, 2 threads; BENCHMARKS "The CPU the job
    runs on"). The scores are computed as K·qᵀ, the keys the left operand: the cache hands K/V over as views of its
    capacity buffers (a batch stride longer than the keys), and a transposed right operand with such a stride takes
    a slow path in the CPU matmul (q·Kᵀ: 3.1x the time at batch 4, 4K keys, bf16). Where the buffer is at most
    ``CAPACITY_READ_MAX`` times the keys, both products run on the whole contiguous buffer instead, the slots past
    the keys masked (1.6-1.7x faster here; BENCHMARKS "Weight-only quantization", what bounds the step).
    query: [B, H, Q, d]; key/value: [B, H_kv, K, d]; mask: [B, 1, Q, K] bool or None (every key). Returns
    ([B, Q, H, d], None). A query row with no key to attend (a finished item's pad row) gets a uniform average, not
    NaN; its output is never used."""
    batch, heads, rows, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    whole_key, whole_value = _capacity_buffer(key), _capacity_buffer(value)
    if whole_key is not None and whole_value is not None and whole_key.shape[2] == whole_value.shape[2]:
        key, value = whole_key, whole_value  # [B, H_kv, C, d], C >= K: the slots past K are masked below
    slots = key.shape[2]
    q = query.reshape(batch, kv_heads, group * rows, dim)  # head h reads K/V head h // group
    scores = torch.matmul(key, q.transpose(2, 3)).transpose(2, 3).float().contiguous().mul_(scale)  # [B, H_kv, G*Q, C]
    low = torch.finfo(torch.float32).min
    if slots > keys:
        scores[..., keys:] = low  # exp(low - max) is exactly 0: those slots add nothing
    if mask is not None:
        scores.view(batch, kv_heads, group, rows, slots)[..., :keys].masked_fill_(~mask[:, :, None], low)
    probs = torch.softmax(scores, -1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, H_kv, G*Q, d]
    return out.view(batch, heads, rows, dim).transpose(1, 2).contiguous(), None


# A step's products run on the cache's whole buffer when it holds at most this many times the keys: a contiguous
# product of C slots cost 0.58-0.69x a product of K slots through the gappy view (4K keys, 4 items, bf16, one thread,
# this project's CPU), so it pays up to ~1.5x; a pruned layer's buffer (sized for the whole prompt) holds far more.
CAPACITY_READ_MAX = 1.5


def _capacity_buffer(t: torch.Tensor) -> torch.Tensor | None:
    """The contiguous buffer ``t`` [B, H_kv, K, d] is the first K slots of, [B, H_kv, C, d] (a
    :class:`lazy_core.cache.LayerKV` buffer, whose free slots are zeros: finite, so a masked slot's 0 weight keeps
    the sum exact), when C <= CAPACITY_READ_MAX * K; else None."""
    batch, heads, keys, dim = t.shape
    s_batch, s_head, s_key, s_dim = t.stride()
    if keys == 0 or s_dim != 1 or s_key != dim or s_head % dim:
        return None
    capacity = s_head // dim
    if capacity <= keys or capacity > CAPACITY_READ_MAX * keys or heads * capacity * dim != s_batch:
        return None
    end = t.storage_offset() + batch * s_batch  # one past the last element of the whole buffer
    if end * t.element_size() > t.untyped_storage().nbytes():
        return None
    return t.as_strided((batch, heads, capacity, dim), t.stride())


def _packed_attention(query, key, value, mask, packing: RowPacking, scaling):
    """Packed rows (lazy_core.packing): each item's rows attend its own keys, so no pad row costs a product.
    query: [1, H, N, d]; key/value: [B, H_kv, K, d]; mask: [B, 1, W, K] bool over the batch layout's rows.
    Returns ([1, N, H, d], None)."""
    outs = []
    for b, (start, count) in enumerate(zip(packing.starts, packing.counts, strict=True)):
        if count == 0:
            continue
        rows = packing.rows[start : start + count]
        item_mask = mask[b : b + 1].index_select(2, rows) if mask is not None else None  # [1, 1, count, K]
        out, _ = _small_query_attention(query[:, :, start : start + count], key[b : b + 1], value[b : b + 1],
                                        item_mask, scaling)
        outs.append(out)  # [1, count, H, d]
    return torch.cat(outs, 1), None


def _masked_gqa_sdpa(module: nn.Module, query, key, value, mask, scaling):
    """Several queries with a mask (revival, sliding windows) on CPU: torch's SDPA reads the shared K/V heads itself
    (``enable_gqa``), where transformers' sdpa would first copy K and V once per query head group (``repeat_kv``):
    3x faster at 8K keys. (On CUDA a mask with enable_gqa falls back to the math kernel, so CUDA keeps that path.)
    query: [B, H, Q, d]; key/value: [B, H_kv, K, d]; mask: [B, 1, Q, K] bool. Returns ([B, Q, H, d], None)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
    )
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def attention_hook(model: nn.Module) -> Iterator[str]:
    """Route the model's attention through :func:`lazy_attention`; yields the model's own implementation name."""
    if HOOK_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(HOOK_NAME, lazy_attention)
    config = model.config
    previous = config._attn_implementation
    if previous == HOOK_NAME:
        raise RuntimeError("the lazy engine is already running on this model (re-entrant use is not supported)")
    inner = previous or "sdpa"
    config._attn_implementation = HOOK_NAME
    try:
        yield inner
    finally:
        config._attn_implementation = previous
