"""The layer loop: prefill with progressive pruning (paper §3.2) and decode steps with Aux Cache revival (§3.3).

It drives the model's own decoder layers, rotary embedding, final norm and lm_head; the model's attention runs through
:mod:`lazy_core.attention`, the K/V through :class:`lazy_core.cache.LazyKVCache`. Rows of a batch are laid out
left-aligned and right-padded at every layer (each item keeps its own tokens), so prefill needs no mask at all: the
causal kernel is exact for real rows and pads only ever follow them. Decoding steps that revive tokens, or that see pad
slots, get a mask built from positions (key position <= query position).

This module knows nothing of tokenization, sampling or timing (see :mod:`lazy_core.generate`).
"""

from __future__ import annotations

import dataclasses

import torch

from lazy_core.arch import ModelParts
from lazy_core.attention import AttentionStep
from lazy_core.cache import AuxCache, LazyKVCache
from lazy_core.config import LazyConfig
from lazy_core.scoring import ScoreInputs, TokenPruner, make_pruner


def position_mask(q_pos, q_valid, k_pos, k_valid, window: int | None) -> torch.Tensor:
    """[B, 1, Q, K] bool: query i may attend key j iff j is a real slot at or before i (and inside the window).
    Pad query rows may attend anything, which keeps them finite; their outputs are never used."""
    allowed = k_valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])
    if window is not None:
        allowed = allowed & (k_pos[:, None, :] > q_pos[:, :, None] - window)
    return (allowed | ~q_valid[:, :, None])[:, None]


def _pack(mask: torch.Tensor, *tensors: torch.Tensor, key: torch.Tensor | None = None):
    """Move the rows where ``mask`` [B, C] to the front of each item (ordered by ``key``, default row order), and cut
    to the longest item. Returns the packed tensors and the new validity [B, C']."""
    count = mask.sum(1)
    width = int(count.max()) if count.numel() else 0
    order_key = key if key is not None else torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    big = torch.iinfo(torch.long).max
    order = torch.sort(torch.where(mask, order_key, big), dim=1, stable=True).indices[:, :width]
    out = []
    for t in tensors:
        index = order if t.dim() == 2 else order[..., None].expand(-1, -1, t.shape[2])
        out.append(t.gather(1, index))
    valid = torch.arange(width, device=mask.device)[None, :] < count[:, None]
    return out, valid


class BatchState:
    """Caches and counters of one batch during one generation."""

    def __init__(self, parts: ModelParts, lengths: torch.Tensor, capacity: int) -> None:
        batch = lengths.shape[0]
        self.lengths = lengths  # [B] prompt tokens per item
        self.cache = LazyKVCache(parts.num_layers, batch, parts.num_kv_heads, parts.head_dim, capacity, parts.dtype,
                                 parts.device, max_positions=capacity)
        self.aux = AuxCache(batch, parts.hidden_size, capacity, parts.dtype, parts.device)
        self.revived = torch.zeros(batch, dtype=torch.long, device=parts.device)
        self.kept_per_layer: torch.Tensor | None = None  # [L, B] after prefill
        self.score_pairs = torch.zeros(batch, dtype=torch.float64)  # query·key pairs scored in prefill


class LayerLoop:
    """Runs prefill and decode steps of a batch through the model's layers under a :class:`LazyConfig`."""

    def __init__(self, parts: ModelParts, config: LazyConfig, inner_attention: str,
                 pruner: TokenPruner | None = None) -> None:
        self.parts = parts
        self.config = config
        self.inner = inner_attention
        self.pruner = pruner if pruner is not None else make_pruner(config)
        self.prune_step = config.active_steps()  # layer -> index into the schedule
        self.revive = config.revive and self.pruner.revives and bool(self.prune_step)
        self.scaling = parts.layers[0].self_attn.scaling

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _run_layer(self, state: BatchState, j: int, hidden, pos, valid, mask, cos_sin, query_rows=None):
        """hidden: [B, C, D] at positions pos [B, C] (cos_sin: the rotary embedding of pos) ->
        ([B, C, D], captured queries [B, H, W, d] or None)."""
        step = AttentionStep(inner=self.inner, mask=mask, query_rows=query_rows)
        state.cache.stage(pos, valid)
        out = self.parts.layers[j](
            hidden, attention_mask=None, position_embeddings=cos_sin, past_key_values=state.cache, lazy_step=step
        )
        return out, step.captured_query

    def _window_active(self, j: int, max_pos: int) -> int | None:
        window = self.parts.sliding_windows[j]
        return window if window is not None and max_pos >= window else None

    def _select(self, state: BatchState, j: int, query, query_pos, query_valid, live, visible=None):
        """Score the layer's prompt tokens (those in ``visible`` [B, P] by position, if given) with the captured
        queries; returns keep [B, S] over the layer's slots and the scorer's inputs."""
        step = self.prune_step[j]
        kv = state.cache.layers[j]
        key_pos, key_valid = kv.positions[:, : kv.length], kv.valid[:, : kv.length]
        lengths = state.lengths
        candidates = key_valid & (key_pos < lengths[:, None]) & live[:, None]
        if visible is not None:
            candidates = candidates & visible.gather(1, key_pos)
        inputs = ScoreInputs(
            layer=j, query=query, query_pos=query_pos, query_valid=query_valid, keys=kv.keys[:, :, : kv.length],
            key_pos=key_pos, key_valid=key_valid, candidates=candidates, scaling=self.scaling,
            window=self._window_active(j, int(query_pos.max()) + 1),
        )
        budget = torch.tensor([self.config.keep_budget(step, int(n)) for n in lengths.tolist()], device=lengths.device)
        forced = candidates & (key_pos >= (lengths - self.config.keep_tail)[:, None])
        return self.pruner.select(inputs, budget, forced), inputs

    # ---- prefill -------------------------------------------------------------------------------------------------

    def prefill(self, state: BatchState, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, T] left-aligned (item b's tokens at 0..n_b-1). Returns last-token logits [B, V] (float32)."""
        parts, lengths = self.parts, state.lengths
        batch, width = input_ids.shape
        pos = torch.arange(width, device=input_ids.device).expand(batch, width)
        valid = pos < lengths[:, None]
        hidden = parts.embed(input_ids)  # [B, T, D]
        window_cols = torch.arange(self.config.query_window, device=input_ids.device)
        kept = []
        cos_sin = parts.rotary(hidden, pos)  # recomputed only when the rows change (after pruning)
        for j in range(parts.num_layers):
            window = self._window_active(j, width)
            mask = position_mask(pos, valid, pos, valid, window) if window is not None else None
            query_rows = query_valid = None
            if j in self.prune_step:
                count = valid.sum(1)
                raw = count[:, None] - self.config.query_window + window_cols  # [B, W] last W real rows
                query_valid = raw >= 0
                query_rows = raw.clamp(min=0)
            hidden, query = self._run_layer(state, j, hidden, pos, valid, mask, cos_sin, query_rows)
            kept.append(valid.sum(1))
            if j not in self.prune_step:
                continue
            everyone = torch.ones_like(lengths, dtype=torch.bool)
            keep, _ = self._select(state, j, query, pos.gather(1, query_rows), query_valid, everyone)
            state.score_pairs += (query_valid.sum(1) * valid.sum(1)).double().cpu()
            if self.revive:
                state.aux.put(j, hidden, pos, valid & ~keep)
            (hidden, pos), valid = _pack(keep, hidden, pos)
            cos_sin = parts.rotary(hidden, pos)
        state.kept_per_layer = torch.stack(kept)  # [L, B]
        last = (valid.sum(1) - 1)[:, None, None].expand(-1, 1, hidden.shape[2])
        return self._logits(hidden.gather(1, last))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, 1, D] -> [B, V] float32."""
        return self.parts.lm_head(self.parts.norm(hidden))[:, -1].float()

    # ---- decode --------------------------------------------------------------------------------------------------

    def decode(self, state: BatchState, tokens: torch.Tensor, positions: torch.Tensor, live: torch.Tensor):
        """One step. tokens/positions/live: [B] (finished items are fed a pad and not counted). Returns [B, V].

        At each pruning layer the new token's query re-scores the prompt tokens it saw at that layer and, as in
        prefill, the layers after it see only the selected ones (plus the generated tokens): each step picks its own
        nested subsets of the prompt (§3.1). A selected token that the next layer lacks is read from the Aux Cache
        and computed from there on, with the new token (§3.3). Revived rows come first (by position), the new token
        is always the last row. Without revival, every step sees the tokens the prefill kept.
        """
        hidden = self.parts.embed(tokens[:, None])  # [B, 1, D]
        pos, valid = positions[:, None], live[:, None]
        cos_sin = self.parts.rotary(hidden, pos)
        visible = None  # [B, P] by position: prompt tokens this step selected at the last pruning layer
        span = int(positions.max()) + 1  # positions this step can reach (for sliding windows)
        for j in range(self.parts.num_layers):
            k_pos, k_valid = state.cache.keys_meta(j, pos, valid)
            if visible is not None:
                k_valid = k_valid & (visible.gather(1, k_pos) | (k_pos >= state.lengths[:, None]))
            window = self._window_active(j, span)
            plain = hidden.shape[1] == 1 and window is None and bool(k_valid[live].all())
            mask = None if plain else position_mask(pos, valid, k_pos, k_valid, window)
            scoring = self.revive and j in self.prune_step
            rows = torch.full_like(pos[:, -1:], hidden.shape[1] - 1) if scoring else None
            hidden, query = self._run_layer(state, j, hidden, pos, valid, mask, cos_sin, rows)
            if scoring:
                hidden, pos, valid, visible = self._revive(state, j, query, hidden, pos, valid, live, visible)
                cos_sin = self.parts.rotary(hidden, pos)
        return self._logits(hidden[:, -1:])

    def _revive(self, state: BatchState, j: int, query, hidden, pos, valid, live, visible):
        """After layer j: select among the prompt tokens visible at j; drop active revived rows the new query no
        longer selects (into the Aux Cache at j) and add the selected tokens that layer j+1 lacks (from the Aux
        Cache at j). Returns the new active rows and the new visible set [B, P]."""
        keep, inputs = self._select(state, j, query, pos[:, -1:], live[:, None], live, visible)
        kv = state.cache.layers[j]
        key_pos = kv.positions[:, : kv.length]
        selected = torch.zeros_like(state.cache.present[j])  # [B, P] by position
        rows = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)
        selected[rows[keep], key_pos[keep]] = True
        old_pos, old_valid, old_hidden = pos[:, :-1], valid[:, :-1], hidden[:, :-1]
        still = old_valid & selected.gather(1, old_pos)
        state.aux.put(j, old_hidden, old_pos, old_valid & ~still)
        wanted = keep & state.aux.held(j, key_pos)  # selected, pruned at j, not active
        cap = self.config.revive_per_step
        if cap is not None:  # the best-scored `cap` of them; the rest stay in the Aux Cache
            limited = dataclasses.replace(inputs, candidates=wanted)
            wanted = TokenPruner.select(self.pruner, limited, torch.full_like(state.lengths, cap),
                                        torch.zeros_like(wanted))
        (new_pos,), new_valid = _pack(wanted, key_pos)
        state.revived += new_valid.sum(1)
        new_hidden = state.aux.take(j, new_pos, new_valid)
        (act_hidden, act_pos), act_valid = _pack(
            torch.cat([still, new_valid], 1),
            torch.cat([old_hidden, new_hidden], 1),
            torch.cat([old_pos, new_pos], 1),
            key=torch.cat([old_pos, new_pos], 1),
        )
        return (
            torch.cat([act_hidden, hidden[:, -1:]], 1),
            torch.cat([act_pos, pos[:, -1:]], 1),
            torch.cat([act_valid, valid[:, -1:]], 1),
            selected,
        )
