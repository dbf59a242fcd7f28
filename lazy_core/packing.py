"""Packed rows: a decoding step's valid rows of every item in one row sequence, for the steps that revive.

A reviving step carries, per item, its revived tokens and its new token through the layers after a pruning layer. In
the batch layout [B, W] every item is padded to the widest one: at batch 8 and 4K tokens three of four rows are pads
(measured: 32-67 rows wide, 7-21 of them real). Norms, projections and the MLP act row by row, so they run on the
packed rows [1, N] (N = the real rows of the whole batch); attention, the one op that mixes rows, runs item by item on
each item's own rows against its own keys (:func:`lazy_core.attention.lazy_attention`). The cache keeps the batch
layout: K/V are unpacked before they are appended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Pack a reviving step's rows when at most this share of the batch layout's rows is real.
PACK_BELOW = 0.75


@dataclass(frozen=True)
class RowPacking:
    """Where the valid rows of a [B, W] layout go in the packed [1, N] sequence (item by item, in row order)."""

    flat: torch.Tensor  # [N] index into the B * W rows
    rows: torch.Tensor  # [N] row (0..W-1) of each packed row in its item
    counts: tuple[int, ...]  # per item, its packed rows (host: what attention slices by)
    batch: int
    width: int

    @classmethod
    def of(cls, valid: torch.Tensor) -> RowPacking | None:
        """valid: [B, W]. The packing of its rows, or None when packing would not pay (one item, one row each, or
        most rows real). One host sync (the per-item counts), done where the rows change."""
        batch, width = valid.shape
        if batch == 1 or width == 1:
            return None
        counts = valid.sum(1).tolist()
        if sum(counts) > PACK_BELOW * batch * width:
            return None
        flat = valid.reshape(-1).nonzero()[:, 0]
        return cls(flat=flat, rows=flat % width, counts=tuple(counts), batch=batch, width=width)

    @property
    def starts(self) -> list[int]:
        out, total = [], 0
        for c in self.counts:
            out.append(total)
            total += c
        return out

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """t: [B, W, ...] -> [1, N, ...]."""
        return t.reshape(self.batch * self.width, *t.shape[2:]).index_select(0, self.flat)[None]

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        """t: [1, N, ...] -> [B, W, ...], zeros in the pad rows (finite: pad rows are computed on, never used)."""
        out = t.new_zeros(self.batch * self.width, *t.shape[2:])
        out.index_copy_(0, self.flat, t[0])
        return out.view(self.batch, self.width, *t.shape[2:])

    def unpack_heads(self, t: torch.Tensor) -> torch.Tensor:
        """t: [1, H, N, d] (attention's head-major layout) -> [B, H, W, d]."""
        return self.unpack(t.transpose(1, 2)).transpose(1, 2)
