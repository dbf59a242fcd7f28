"""Per-layer KV cache with token positions, and the Aux Cache of pruned tokens' hidden states (paper §3.3).

Every layer keeps its own key set: after pruning, layers hold different tokens. Slots are appended in chunks shared by
the batch (a chunk is padded to the longest item's count; pads are invalid slots that masks exclude). Keys are stored
after RoPE, so a token keeps its original position forever.

Each row has its own fill count (``LayerKV.fill``, on the device): a chunk's column c of row b goes to slot
``fill[b] + c``. While every row's fill is the same (a static batch: prefill, then one chunk per step) that is a plain
slice write at ``length``; once rows differ (a continuous batch's slots, :meth:`LayerKV.place`, :meth:`LayerKV.free`,
a fixed-shape step that writes only its live rows) the chunk is scattered. Slots at or past a row's fill are never
valid, so a newcomer takes a freed row without moving anyone else's K/V.
"""

from __future__ import annotations

import torch

from lazy_core.packing import RowPacking


def put_slots(buffer: torch.Tensor, cols: torch.Tensor, chunk: torch.Tensor) -> None:
    """Write column c of row b of ``chunk`` into slot ``cols[b, c]`` of ``buffer``, in place: buffer [B, H, S, d] with
    chunk [B, H, C, d], or buffer [B, S] with chunk [B, C]; cols [B, C] long. Point writes (``index_put_``): a CPU
    ``scatter_`` along the slot dim walked the whole buffer (0.75 ms against 6 us for one column, 4 rows, 2K slots)."""
    rows = torch.arange(cols.shape[0], device=cols.device)[:, None]  # [B, 1]
    if buffer.dim() == 2:
        buffer.index_put_((rows, cols), chunk)
    else:
        heads = torch.arange(buffer.shape[1], device=cols.device)[None, :, None]  # [1, H, 1]
        buffer.index_put_((rows[:, None], heads, cols[:, None]), chunk)


class LayerKV:
    """Keys/values of one layer for a batch. ``positions``/``valid`` say which token each slot holds."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, capacity: int, dtype, device) -> None:
        # free slots are zeros, never garbage: a step's attention may multiply them by an exact 0 weight
        # (lazy_core.attention._capacity_buffer), and 0 x NaN would be NaN
        self.keys = torch.zeros(batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.fill = torch.zeros(batch, dtype=torch.long, device=device)  # [B] slots written per row
        self.length = 0  # host: the most slots any row has written (>= every fill)
        self.aligned = True  # host: every row's fill == length (chunks are slice writes)

    def _grow(self, needed: int) -> None:
        capacity = self.keys.shape[2]
        if needed > capacity:  # by a quarter: a step reads the whole buffer while it is <= 1.5x the slots held
            self._resize(max(needed, capacity + capacity // 4))

    def fit(self, free: int) -> None:
        """Shrink the buffers to the slots held plus ``free``: after prefill, a pruned layer's buffer is still sized
        for the whole prompt, and a decoding step reads a buffer whole only when it is close to what it holds
        (lazy_core.attention.CAPACITY_READ_MAX)."""
        if self.length + free < self.keys.shape[2]:
            self._resize(self.length + free)

    def _resize(self, capacity: int) -> None:
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[0], old.shape[1], capacity, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        for name in ("positions", "valid"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[0], capacity)
            new[:, : self.length] = old[:, : self.length]
            setattr(self, name, new)

    def _columns(self, chunk: int) -> torch.Tensor:
        """[B, C] the slot each column of the next chunk goes to (rows not aligned)."""
        return self.fill[:, None] + torch.arange(chunk, device=self.fill.device)

    def append(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor):
        """keys/values: [B, H_kv, C, d]; positions/valid: [B, C], column c of row b at slot fill[b] + c.
        Returns every key/value of the layer, [B, H_kv, S, d]."""
        chunk = keys.shape[2]
        end = self.length + chunk
        self._grow(end)
        if self.aligned:
            self.keys[:, :, self.length : end] = keys
            self.values[:, :, self.length : end] = values
            self.positions[:, self.length : end] = positions
            self.valid[:, self.length : end] = valid
        else:
            cols = self._columns(chunk)  # [B, C]
            for buffer, part in ((self.keys, keys), (self.values, values), (self.positions, positions),
                                 (self.valid, valid)):
                put_slots(buffer, cols, part)
        self.fill += chunk
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def meta_after(self, positions: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions/validity [B, S + C] of the layer's slots once a chunk (positions/valid [B, C]) is appended."""
        return self._after("positions", positions), self.valid_after(valid)

    def valid_after(self, valid: torch.Tensor) -> torch.Tensor:
        """Validity [B, S + C] of the layer's slots once a chunk (valid [B, C]) is appended."""
        return self._after("valid", valid)

    def _after(self, name: str, chunk: torch.Tensor) -> torch.Tensor:
        """A copy of the first S + C slots of ``positions`` or ``valid`` [B, S + C] with ``chunk`` [B, C] written
        where :meth:`append` will write it."""
        if self.aligned:
            return torch.cat([getattr(self, name)[:, : self.length], chunk], 1)
        end = self.length + chunk.shape[1]
        self._grow(end)  # may replace the buffers: read them after
        out = getattr(self, name)[:, :end].clone()
        put_slots(out, self._columns(chunk.shape[1]), chunk)
        return out

    def place(self, rows: list[int], source: LayerKV, source_rows: list[int], free: int,
              counts: list[int], prefix: list[bool]) -> None:
        """Write the K/V of ``source``'s rows ``source_rows`` into this layer's rows ``rows`` (free rows of a
        continuous batch), each row's valid slots first and in their order; nobody else's slots move. The buffers
        grow (by at least a quarter) when a newcomer's slots plus ``free`` more do not fit. ``counts``/``prefix``
        (host, from :meth:`LazyKVCache.place`): per source row, its valid slots and whether they are its first ones
        (after prefill they are: one copy, no sort)."""
        width = max(counts)
        self._grow(width + free)
        for row, src, count, first in zip(rows, source_rows, counts, prefix, strict=True):
            if first:
                keys, values = source.keys[src, :, :count], source.values[src, :, :count]
                positions = source.positions[src, :count]
            else:  # valid slots first, in their order
                order = source.valid[src, : source.length].nonzero()[:, 0]
                keys, values = source.keys[src, :, order], source.values[src, :, order]
                positions = source.positions[src, order]
            self.keys[row, :, :count] = keys
            self.values[row, :, :count] = values
            self.positions[row, :count] = positions
            self.valid[row] = False
            self.valid[row, :count] = True
        self.fill[torch.tensor(rows, device=self.fill.device)] = torch.tensor(counts, device=self.fill.device)
        self.length = max(self.length, width)
        self.aligned = False

    def free(self, rows: list[int]) -> None:
        """Rows ``rows`` hold nothing any more (their item left): no slot valid, fill 0."""
        index = torch.tensor(rows, dtype=torch.long, device=self.fill.device)
        self.valid[index] = False
        self.fill[index] = 0
        self.aligned = False

    def reserve(self, free: int) -> None:
        """Room for ``free`` more slots past ``length`` (a fixed-shape step writes without growing)."""
        self._grow(self.length + free)

    def nbytes_per_item(self) -> torch.Tensor:
        """[B] bytes of valid K/V slots per item."""
        per_slot = 2 * self.keys.shape[1] * self.keys.shape[3] * self.keys.element_size()
        return self.valid[:, : self.length].sum(1) * per_slot


class LazyKVCache:
    """The ``past_key_values`` the model's attention modules see: ``update`` appends the staged chunk's K/V to the
    layer and returns all of the layer's K/V. The engine stages positions/validity of a chunk before each layer call."""

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int, dtype,
                 device) -> None:
        self.layers = [LayerKV(batch, kv_heads, head_dim, capacity, dtype, device) for _ in range(num_layers)]
        self.computed = torch.zeros(num_layers, batch, dtype=torch.long, device=device)  # token-layers per item
        self._staged: tuple[torch.Tensor, torch.Tensor] | None = None

    def stage(self, positions: torch.Tensor, valid: torch.Tensor, packing: RowPacking | None = None) -> None:
        """positions/valid: [B, C] of the chunk the next layer call computes (``packing``: it computes them as packed
        rows, whose K/V are laid out [B, C] again before they are appended)."""
        self._staged = (positions, valid, packing)

    def keys_meta(self, layer: int, positions: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions/validity [B, S + C] of the layer's key set once the chunk (positions/valid [B, C]) is appended."""
        return self.layers[layer].meta_after(positions, valid)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._staged is None:
            raise RuntimeError("LazyKVCache.update called without a staged chunk (the engine stages one per layer)")
        positions, valid, packing = self._staged
        self._staged = None
        if packing is not None:  # [1, H_kv, N, d] -> [B, H_kv, C, d]
            key_states, value_states = packing.unpack_heads(key_states), packing.unpack_heads(value_states)
        self.computed[layer_idx] += valid.sum(1)
        return self.layers[layer_idx].append(key_states, value_states, positions, valid)

    def nbytes_per_item(self) -> torch.Tensor:
        return sum(layer.nbytes_per_item() for layer in self.layers)

    def fit(self, free: int) -> None:
        """Every layer's buffers sized to what it holds plus ``free`` slots (:meth:`LayerKV.fit`)."""
        for layer in self.layers:
            layer.fit(free)

    def place(self, rows: list[int], source: LazyKVCache, source_rows: list[int], free: int) -> None:
        """Every layer's :meth:`LayerKV.place`, and the rows' computed counts. One host sync for all layers."""
        index = torch.tensor(source_rows, dtype=torch.long, device=self.computed.device)
        counts, prefix = [], []
        for src in source.layers:
            valid = src.valid[index, : src.length]  # [g, S]
            count = valid.sum(1)
            counts.append(count)
            # the valid slots are the first ``count``: as many valid among the first count as in all
            head = valid & (torch.arange(src.length, device=valid.device)[None, :] < count[:, None])
            prefix.append(head.sum(1) == count)
        counts_h, prefix_h = torch.stack(counts).tolist(), torch.stack(prefix).tolist()
        for layer, src, c, f in zip(self.layers, source.layers, counts_h, prefix_h, strict=True):
            layer.place(rows, src, source_rows, free, c, f)
        self.computed[:, rows] = source.computed[:, source_rows]
        self.sync_lengths()

    def free(self, rows: list[int]) -> None:
        for layer in self.layers:
            layer.free(rows)
        self.computed[:, rows] = 0
        self.sync_lengths()

    def sync_lengths(self) -> None:
        """Each layer's ``length`` down to its rows' largest fill (one host sync): a fixed-shape step advances it by
        one without looking, and a row that left no longer holds it up."""
        fills = torch.stack([layer.fill for layer in self.layers]).amax(1).tolist()
        for layer, fill in zip(self.layers, fills, strict=True):
            layer.length = fill


class AuxCache:
    """Hidden states of pruned tokens, per pruning layer: the output of layer l for each token alive at l but not at
    l+1. A revival at layer l reads them back and computes the token from layer l+1 on (paper §3.3, Fig. 4)."""

    def __init__(self, batch: int, hidden_size: int, max_positions: int, dtype, device) -> None:
        self.batch, self.hidden_size, self.dtype, self.device = batch, hidden_size, dtype, device
        self.max_positions = max_positions
        self.hidden: dict[int, torch.Tensor] = {}  # layer -> [B, M, D]
        self.row_of: dict[int, torch.Tensor] = {}  # layer -> [B, P] row in hidden, -1 = not held

    def _layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.hidden:
            self.hidden[layer] = torch.empty(self.batch, 0, self.hidden_size, dtype=self.dtype, device=self.device)
            self.row_of[layer] = torch.full((self.batch, self.max_positions), -1, dtype=torch.long, device=self.device)
        return self.hidden[layer], self.row_of[layer]

    def put(self, layer: int, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> None:
        """Save hidden[b, i] (hidden: [B, C, D]) for every mask[b, i] (mask/positions: [B, C])."""
        counts = mask.sum(1)
        width = int(counts.max()) if counts.numel() else 0
        if width == 0:
            return
        store, row_of = self._layer(layer)
        start = store.shape[1]
        # pack each item's masked rows to the left of a [B, width] block
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]  # masked rows first
        block = hidden.gather(1, order[..., None].expand(-1, -1, hidden.shape[2]))
        block_pos = positions.gather(1, order)
        block_ok = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
        self.hidden[layer] = torch.cat([store, block], 1)
        b_idx = torch.arange(self.batch, device=mask.device)[:, None].expand(-1, width)
        rows = (start + torch.arange(width, device=mask.device))[None, :].expand(self.batch, -1)
        row_of[b_idx[block_ok], block_pos[block_ok]] = rows[block_ok]

    def take(self, layer: int, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, C, D] of tokens at ``positions`` [B, C] where ``mask``; they leave the Aux Cache."""
        store, row_of = self._layer(layer)
        rows = row_of.gather(1, positions)
        if bool((rows[mask] < 0).any()):
            raise RuntimeError(f"Aux Cache at layer {layer} lacks a token selected for revival (engine bug)")
        safe = rows.clamp(min=0)
        out = store.gather(1, safe[..., None].expand(-1, -1, store.shape[2]))
        b_idx = torch.arange(self.batch, device=mask.device)[:, None].expand_as(positions)
        row_of[b_idx[mask], positions[mask]] = -1
        return out

    def held(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """[B, C] bool: the Aux Cache at ``layer`` holds the token at positions [B, C]."""
        if layer not in self.row_of:
            return torch.zeros_like(positions, dtype=torch.bool)
        return self.row_of[layer].gather(1, positions) >= 0

    def _widen(self, layer: int, entries: int, positions: int) -> None:
        """Room for ``entries`` hidden states per row at ``layer`` and positions up to ``positions``."""
        store, row_of = self._layer(layer)
        if entries > store.shape[1]:
            wider = store.new_zeros(self.batch, max(entries, store.shape[1] + store.shape[1] // 4), self.hidden_size)
            wider[:, : store.shape[1]] = store
            self.hidden[layer] = wider
        if positions > row_of.shape[1]:
            self.row_of[layer] = torch.nn.functional.pad(row_of, (0, positions - row_of.shape[1]), value=-1)

    def place(self, rows: list[int], source: AuxCache, source_rows: list[int]) -> None:
        """The Aux Cache entries still held by ``source``'s rows ``source_rows`` into this cache's rows ``rows``
        (free rows of a continuous batch); nobody else's entries move."""
        if source.max_positions > self.max_positions:
            self.max_positions = source.max_positions
            for layer in self.row_of:
                self._widen(layer, 0, self.max_positions)
        for layer in self.row_of:
            self.row_of[layer][rows] = -1
        for layer in sorted(source.row_of):
            self._layer(layer)
            src_store, src_row_of = source._layer(layer)
            for row, src in zip(rows, source_rows, strict=True):
                held = src_row_of[src] >= 0  # [P] by position
                positions = held.nonzero()[:, 0]
                entries = src_row_of[src, positions]
                count = positions.numel()
                if count == 0:
                    continue
                self._widen(layer, count, self.max_positions)
                self.hidden[layer][row, :count] = src_store[src, entries]
                self.row_of[layer][row, positions] = torch.arange(count, device=positions.device)

    def free(self, rows: list[int]) -> None:
        for row_of in self.row_of.values():
            row_of[rows] = -1

    def nbytes_per_item(self) -> torch.Tensor:
        total = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        for layer, row_of in self.row_of.items():
            total += (row_of >= 0).sum(1) * self.hidden_size * self.hidden[layer].element_size()
        return total
