"""The layer loop: prefill with progressive pruning (paper §3.2) and decode steps with Aux Cache revival (§3.3).

It drives the model's own decoder layers, rotary embedding, final norm and lm_head; the model's attention runs through
:mod:`lazy_core.attention`, the K/V through :class:`lazy_core.cache.LazyKVCache`. Rows of a batch are laid out
left-aligned and right-padded at every layer (each item keeps its own tokens), so prefill needs no mask at all: the
causal kernel is exact for real rows and pads only ever follow them. Decoding steps that revive tokens, or that see pad
slots, get a mask built from positions (key position <= query position). What a decoding step revives after a pruning
layer is the config's policy (:mod:`lazy_core.revival`); the helpers it uses (``select``, ``best_of``,
``add_revived``) are here.

This module knows nothing of tokenization, sampling or timing (see :mod:`lazy_core.generate`).
"""

from __future__ import annotations

import dataclasses

import torch

from lazy_core.arch import ModelParts
from lazy_core.attention import AttentionStep
from lazy_core.cache import AuxCache, LazyKVCache
from lazy_core.config import LazyConfig
from lazy_core.packing import RowPacking
from lazy_core.revival import StepRows
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
                                 parts.device)
        self.aux = AuxCache(batch, parts.hidden_size, capacity, parts.dtype, parts.device)
        self.revived = torch.zeros(batch, dtype=torch.long, device=parts.device)
        self.kept_per_layer: torch.Tensor | None = None  # [L, B] after prefill
        self.score_pairs = torch.zeros(batch, dtype=torch.float64)  # query·key pairs scored in prefill
        # One item: no cache ever holds a pad slot (chunks are as wide as the item's rows), so a step's single query
        # attends every slot and needs no mask at all.
        self.dense = batch == 1
        self.max_positions = capacity
        self._budgets: dict[int, torch.Tensor] = {}
        self._budget_max: dict[int, int] = {}
        self._pruning: frozenset[int] | None = None
        self.host_lengths: list[int] = lengths.tolist()  # one sync per batch: what the loops size things by
        self.longest = max(self.host_lengths)
        # per item: its schedule prunes it (False: computed in full; its steps never score, and it is counted as
        # unscored, as when it runs alone)
        self.prunes: list[bool] = [True] * batch

    @classmethod
    def slots(cls, parts: ModelParts, slots: int) -> BatchState:
        """An empty state of ``slots`` rows that items are placed into (:meth:`place`) and freed from (:meth:`free`)
        one by one: a continuous batch whose rows stay where they are (lazy_core.continuous). Every row is free."""
        out = cls(parts, torch.ones(slots, dtype=torch.long, device=parts.device), capacity=1)
        out.kept_per_layer = torch.zeros(parts.num_layers, slots, dtype=torch.long, device=parts.device)
        out.dense = False  # rows hold what their own items keep, with free slots between: always masked
        out.prunes = [False] * slots
        return out

    def place(self, rows: list[int], source: BatchState, source_rows: list[int], free: int) -> None:
        """Move the items ``source_rows`` of ``source`` (a newcomers' prefill) into the free rows ``rows``, with
        everything each has (K/V, Aux Cache entries, counters), leaving every other row untouched: a join costs what
        the newcomers write. ``free``: K/V slots each layer must have room for past the newcomers' (the tokens they
        will decode)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.lengths.device)
        src = torch.tensor(source_rows, dtype=torch.long, device=self.lengths.device)
        self.cache.place(rows, source.cache, source_rows, free)
        self.aux.place(rows, source.aux, source_rows)
        self.lengths[index] = source.lengths[src]
        self.revived[index] = source.revived[src]
        self.kept_per_layer[:, index] = source.kept_per_layer[:, src]
        self.score_pairs[index.cpu()] = source.score_pairs[src.cpu()]
        self.max_positions = max(self.max_positions, source.max_positions)
        for row, s in zip(rows, source_rows, strict=True):
            self.host_lengths[row] = source.host_lengths[s]
            self.prunes[row] = source.prunes[s]
        self._reset_sizes()

    def free(self, rows: list[int]) -> None:
        """Rows ``rows`` are empty again (their items left): nothing of theirs is attended, scored or revived."""
        index = torch.tensor(rows, dtype=torch.long, device=self.lengths.device)
        self.cache.free(rows)
        self.aux.free(rows)
        self.lengths[index] = 1
        self.revived[index] = 0
        for row in rows:
            self.host_lengths[row] = 1
            self.prunes[row] = False
        self._reset_sizes()

    def _reset_sizes(self) -> None:
        self._budgets, self._budget_max, self._pruning = {}, {}, None
        self.longest = max(self.host_lengths)

    def budget(self, config: LazyConfig, step: int) -> torch.Tensor:
        """[B] tokens kept after pruning step ``step`` (index into the schedule), computed once per batch."""
        if step not in self._budgets:
            sizes = [config.keep_budget(step, n) for n in self.host_lengths]
            self._budgets[step] = torch.tensor(sizes, device=self.lengths.device)
            self._budget_max[step] = max(sizes)
        return self._budgets[step]

    def budget_max(self, config: LazyConfig, step: int) -> int:
        """max of :meth:`budget`, on the host."""
        self.budget(config, step)
        return self._budget_max[step]

    def pruning_layers(self, config: LazyConfig) -> frozenset[int]:
        """The pruning layers where some row may lose tokens, computed once per batch on the host: a stage that leaves
        every row whole by rule (``LazyConfig.leaves_whole``: each prompt too short to prune, or long enough to skip
        the first stage) neither scores nor packs in prefill, and no decoding step revives there."""
        if self._pruning is None:
            self._pruning = frozenset(j for j, step in config.active_steps().items()
                                      if not all(config.leaves_whole(step, n) for n in self.host_lengths))
        return self._pruning


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
        # reviving steps run the layers on packed rows where attention takes the engine's small-query CPU path
        attn = parts.layers[0].self_attn
        softcap = getattr(attn, "attn_logit_softcapping", None) or getattr(attn.config, "attn_logit_softcapping", None)
        self.packable = parts.device.type == "cpu" and inner_attention == "sdpa" and softcap is None

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _run_layer(self, state: BatchState, j: int, hidden, pos, valid, mask, cos_sin, query_rows=None,
                   packing: RowPacking | None = None):
        """hidden: [B, C, D] at positions pos [B, C] (cos_sin: per layer, the rotary embedding of pos, or of the
        packed rows under ``packing``) -> ([B, C, D], captured queries [B, H, W, d] or None)."""
        step = AttentionStep(inner=self.inner, mask=mask, query_rows=query_rows, packing=packing)
        state.cache.stage(pos, valid, packing)
        out = self.parts.layers[j](
            hidden if packing is None else packing.pack(hidden), attention_mask=None,
            position_embeddings=cos_sin[j], lazy_step=step, **{self.parts.cache_kwarg: state.cache},
        )
        return (out if packing is None else packing.unpack(out)), step.captured_query

    def _rows_changed(self, hidden, pos, valid):
        """After a revival changed a step's rows [B, C]: their packing (or None) and the rotary embeddings the layers
        take, of the packed rows when packed."""
        packing = RowPacking.of(valid) if self.packable else None
        if packing is None:
            return None, self.parts.position_embeddings(hidden, pos)
        return packing, self.parts.position_embeddings(packing.pack(hidden), packing.pack(pos))

    def _window_active(self, j: int, max_pos: int) -> int | None:
        window = self.parts.sliding_windows[j]
        return window if window is not None and max_pos >= window else None

    def _score_inputs(self, state: BatchState, j: int, query, query_pos, query_valid, live, span: int,
                      visible=None, decoding: bool = False) -> ScoreInputs:
        """What the scorer sees at layer j: the layer's prompt slots (those in ``visible`` [B, P] by position, if
        given, of the items in ``live`` [B]) against the captured queries [B, H, W, d] at query_pos/query_valid [B, W].
        ``span``: positions the queries can reach (for a sliding window); ``decoding``: a decoding step scores."""
        kv = state.cache.layers[j]
        key_pos, key_valid = kv.positions[:, : kv.length], kv.valid[:, : kv.length]
        candidates = key_valid & (key_pos < state.lengths[:, None]) & live[:, None]
        if visible is not None:
            candidates = candidates & visible.gather(1, key_pos)
        return ScoreInputs(
            layer=j, query=query, query_pos=query_pos, query_valid=query_valid, keys=kv.keys[:, :, : kv.length],
            key_pos=key_pos, key_valid=key_valid, candidates=candidates, scaling=self.scaling,
            window=self._window_active(j, span), position_bound=state.max_positions, decoding=decoding,
        )

    def select(self, state: BatchState, inputs: ScoreInputs) -> torch.Tensor:
        """keep [B, S] over the layer's slots: the schedule's budget of the best-scored candidates (head and tail
        forced)."""
        step = self.prune_step[inputs.layer]
        tail = inputs.key_pos >= (state.lengths - self.config.keep_tail)[:, None]
        forced = inputs.candidates & (tail | (inputs.key_pos < self.config.keep_head))
        inputs = dataclasses.replace(inputs, budget_bound=state.budget_max(self.config, step))
        return self.pruner.select(inputs, state.budget(self.config, step), forced)

    def best_of(self, state: BatchState, inputs: ScoreInputs, wanted: torch.Tensor, count: int) -> torch.Tensor:
        """[B, S]: the ``count`` best-scored slots among ``wanted`` [B, S] of each item, by the base class's top-k
        (no forced tail, whatever the pruner's own ``select`` does)."""
        limited = dataclasses.replace(inputs, candidates=wanted, budget_bound=count)
        return TokenPruner.select(self.pruner, limited, torch.full_like(state.lengths, count), torch.zeros_like(wanted))

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
        cos_sin = parts.position_embeddings(hidden, pos)  # recomputed only when the rows change (after pruning)
        pruning = state.pruning_layers(self.config)
        for j in range(parts.num_layers):
            window = self._window_active(j, width)
            mask = position_mask(pos, valid, pos, valid, window) if window is not None else None
            query_rows = query_valid = None
            if j in pruning:
                count = valid.sum(1)
                raw = count[:, None] - self.config.query_window + window_cols  # [B, W] last W real rows
                query_valid = raw >= 0
                query_rows = raw.clamp(min=0)
            hidden, query = self._run_layer(state, j, hidden, pos, valid, mask, cos_sin, query_rows)
            kept.append(valid.sum(1))
            if j not in pruning:
                continue
            everyone = torch.ones_like(lengths, dtype=torch.bool)
            inputs = self._score_inputs(state, j, query, pos.gather(1, query_rows), query_valid, everyone, width)
            keep = self.select(state, inputs)
            scored = (query_valid.sum(1) * valid.sum(1)).double().cpu()
            state.score_pairs += scored * torch.tensor(state.prunes, dtype=torch.float64)
            if self.revive:
                state.aux.put(j, hidden, pos, valid & ~keep)
            (hidden, pos), valid = _pack(keep, hidden, pos)
            cos_sin = parts.position_embeddings(hidden, pos)
        state.kept_per_layer = torch.stack(kept)  # [L, B]
        state.cache.fit(max(state.max_positions - width, 0))  # the pruned layers' buffers: what they keep + decoding
        last = (valid.sum(1) - 1)[:, None, None].expand(-1, 1, hidden.shape[2])
        return self.parts.logits(hidden.gather(1, last))

    # ---- decode --------------------------------------------------------------------------------------------------

    def decode(self, state: BatchState, tokens: torch.Tensor, positions: torch.Tensor, live: torch.Tensor,
               step: int | list[int] = 1) -> torch.Tensor:
        """Decoding step ``step`` (1 = the step after the first token), or one step number per row (host ints: the
        rows of a continuous batch joined at different steps). tokens/positions/live: [B] (finished items are fed a
        pad and not counted). Returns [B, V].

        At each pruning layer the new token's query scores the prompt tokens the layer holds, and a selected token
        that the next layer lacks is read from the Aux Cache and computed from there on with the new token (§3.3).
        What "selected" means, and what the later layers see, is the policy ``config.revival``
        (:mod:`lazy_core.revival`). Revived rows come first (by position), the new token is always the last row.
        Without revival (or past ``revive_steps``), every step sees the tokens each layer holds.
        """
        hidden = self.parts.embed(tokens[:, None])  # [B, 1, D]
        pos, valid = positions[:, None], live[:, None]
        cos_sin = self.parts.position_embeddings(hidden, pos)
        visible = None  # [B, P] by position: prompt tokens later layers may attend (set by the policy), None = all
        steps = [step] * len(state.host_lengths) if isinstance(step, int) else step
        span = max(n + s for n, s in zip(state.host_lengths, steps, strict=True))  # positions are lengths + step - 1
        rows_reviving = self.reviving_rows(state, steps)
        reviving = any(rows_reviving)
        scored = live  # [B] rows whose new token scores and revives at the pruning layers
        if reviving and not all(rows_reviving):
            scored = live & torch.tensor(rows_reviving, device=live.device)
        packing = None  # set once revived rows widen the step (lazy_core.packing)
        pruned = state.pruning_layers(self.config)  # where some row may have lost tokens: nothing else revives
        for j in range(self.parts.num_layers):
            mask = self._decode_mask(state, j, pos, valid, visible, self._window_active(j, span))
            scoring = reviving and j in pruned
            rows = torch.full_like(pos[:, -1:], hidden.shape[1] - 1) if scoring else None
            hidden, query = self._run_layer(state, j, hidden, pos, valid, mask, cos_sin, rows, packing)
            if not scoring:
                continue
            inputs = self._score_inputs(state, j, query, pos[:, -1:], scored[:, None], scored, span, visible,
                                        decoding=True)
            revived = self.config.revival.revive(self, state, inputs, StepRows(hidden, pos, valid, visible))
            if revived is None:  # the rows stay as they are
                continue
            hidden, pos, valid, visible = revived.hidden, revived.pos, revived.valid, revived.visible
            if visible is not None and scored is not live:  # a row that does not revive sees all it holds
                visible = visible | ~scored[:, None]
            packing, cos_sin = self._rows_changed(hidden, pos, valid)
        return self.parts.logits(hidden[:, -1:])

    def reviving_rows(self, state: BatchState, steps: list[int]) -> list[bool]:
        """Per row at decoding step ``steps[b]``: whether its new token scores and revives at the pruning layers
        (revival on, its schedule prunes it, within ``revive_steps``). A step where none does is plain
        (:mod:`lazy_core.plain_step`)."""
        limit = self.config.revive_steps
        return [self.revive and (limit is None or s <= limit) and state.prunes[b] for b, s in enumerate(steps)]

    def _decode_mask(self, state: BatchState, j: int, pos, valid, visible, window: int | None):
        """[B, 1, Q, S + Q] bool for the step's rows pos/valid [B, Q] against layer j's keys once the rows are
        appended, or None where each item's one query may attend every slot (the fast path of every plain step)."""
        if pos.shape[1] == 1 and visible is None and window is None:
            if state.dense:
                return None
            # batch pads and finished items leave invalid slots: mask them, nothing else (a finished or free row
            # attends every slot, so that it stays finite; its output is never used)
            return (state.cache.layers[j].valid_after(valid) | ~valid)[:, None, None]
        k_pos, k_valid = state.cache.keys_meta(j, pos, valid)
        if visible is not None:
            k_valid = k_valid & (visible.gather(1, k_pos) | (k_pos >= state.lengths[:, None]))
        return position_mask(pos, valid, k_pos, k_valid, window)

    def add_revived(self, state: BatchState, j: int, wanted, key_pos, hidden, pos, valid, still):
        """Rows for layer j+1: the active revived rows still wanted (``still`` [B, R]) and the Aux Cache states at j of
        the slots in ``wanted`` [B, S] (positions key_pos [B, S]), by position, then the new token's row."""
        (new_pos,), new_valid = _pack(wanted, key_pos)
        state.revived += new_valid.sum(1)
        new_hidden = state.aux.take(j, new_pos, new_valid)
        old_pos = pos[:, :-1]
        (act_hidden, act_pos), act_valid = _pack(
            torch.cat([still, new_valid], 1),
            torch.cat([hidden[:, :-1], new_hidden], 1),
            torch.cat([old_pos, new_pos], 1),
            key=torch.cat([old_pos, new_pos], 1),
        )
        return (
            torch.cat([act_hidden, hidden[:, -1:]], 1),
            torch.cat([act_pos, pos[:, -1:]], 1),
            torch.cat([act_valid, valid[:, -1:]], 1),
        )
