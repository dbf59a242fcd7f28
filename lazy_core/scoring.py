"""The pruning contract: score the candidate tokens at a pruning layer, keep the top of a budget.

One base class holds the generic select-the-top-k logic (budgets, the always-kept tail, pads never kept); a method is a
``scores`` function. ``AttentionPruner`` is LazyLLM (paper §3.2); ``StaticPruner`` and ``RandomPruner`` are the paper's
baselines (§5: static pruning, random token drop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lazy_core.config import LazyConfig


@dataclass
class ScoreInputs:
    """Everything a scorer may look at, at one pruning layer. S = key slots of the layer, W = query window."""

    layer: int
    query: torch.Tensor  # [B, H, W, d] queries after RoPE (as the model computed them)
    query_pos: torch.Tensor  # [B, W] their positions
    query_valid: torch.Tensor  # [B, W] False for pad queries (items shorter than the window)
    keys: torch.Tensor  # [B, H_kv, S, d] the layer's keys after RoPE
    key_pos: torch.Tensor  # [B, S]
    key_valid: torch.Tensor  # [B, S] False for pad slots
    candidates: torch.Tensor  # [B, S] prompt tokens that may be kept or dropped
    scaling: float  # softmax scale of the model's attention
    window: int | None  # sliding window of this layer, None = full causal
    position_bound: int  # every key position is below it (the batch's capacity): sizes tensors without a host sync
    budget_bound: int | None = None  # >= every budget of the call, known on the host (saves a sync); None = compute
    bonus: torch.Tensor | None = None  # [B] added to the scores of the slots in bonus_slots before ranking
    bonus_slots: torch.Tensor | None = None  # [B, S]
    decoding: bool = False  # a decoding step's new token scores (which tokens to revive), not prefill's last ones


class TokenPruner:
    """Base: ``select`` keeps, per item, ``budget`` candidates with the highest ``scores`` (forced ones first)."""

    revives = True  # whether decoding re-scores and revives (the baselines prune once, in prefill)

    def __init__(self, config: LazyConfig) -> None:
        self.config = config

    def scores(self, inputs: ScoreInputs) -> torch.Tensor:  # [B, S], higher = more important
        raise NotImplementedError

    def select(self, inputs: ScoreInputs, budget: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        """budget: [B] tokens to keep; forced: [B, S] always kept. Returns keep [B, S] (a subset of candidates)."""
        candidates = inputs.candidates
        score = self.scores(inputs).float()
        if inputs.bonus is not None:
            score = score + inputs.bonus_slots * inputs.bonus[:, None]
        score = score.masked_fill(~candidates, float("-inf")).masked_fill(forced & candidates, float("inf"))
        k = torch.minimum(budget, candidates.sum(1))
        bound = inputs.budget_bound
        k_max = min(bound, candidates.shape[1]) if bound is not None else (int(k.max()) if k.numel() else 0)
        keep = torch.zeros_like(candidates)
        if k_max == 0:
            return keep
        # ties (max-pooling makes many) go to the earlier position, whatever the slot layout or batch padding:
        # order slots by position, then stable-sort by score
        by_pos = torch.sort(inputs.key_pos.masked_fill(~candidates, torch.iinfo(torch.long).max), dim=1,
                            stable=True).indices
        ranked = torch.sort(score.gather(1, by_pos), dim=1, descending=True, stable=True).indices[:, :k_max]
        top = by_pos.gather(1, ranked)  # [B, k_max] slot indices
        take = torch.arange(k_max, device=k.device)[None, :] < k[:, None]
        return keep.scatter(1, top, take)


def attention_probs(inputs: ScoreInputs) -> torch.Tensor:
    """Softmax attention of each window query over the layer's keys, [B, H, W, S] (float32), in O(W·S·H·d).

    GQA/MQA: query head h reads KV head h // (H / H_kv), as in the model. Pad queries get all-zero rows.
    """
    q, keys = inputs.query, inputs.keys
    b, h, w, d = q.shape
    kv_heads, s = keys.shape[1], keys.shape[2]
    group = h // kv_heads
    logits = torch.matmul(q.reshape(b, kv_heads, group * w, d).float(), keys.float().transpose(-1, -2))
    logits = logits.view(b, h, w, s) * inputs.scaling
    kpos, qpos = inputs.key_pos[:, None, None, :], inputs.query_pos[:, None, :, None]
    allowed = inputs.key_valid[:, None, None, :] & (kpos <= qpos)
    if inputs.window is not None:
        allowed = allowed & (kpos > qpos - inputs.window)
    qvalid = inputs.query_valid[:, None, :, None]
    allowed = allowed | ~qvalid  # keep pad rows finite; zeroed below
    probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    return probs * qvalid


class AttentionPruner(TokenPruner):
    """LazyLLM (§3.2): importance = attention the last prompt token(s) pay each token, aggregated over heads and the
    query window, optionally max-pooled over neighbouring positions. With query_window=1, head_reduce='mean',
    pool_kernel=1 this is exactly the paper's score."""

    def scores(self, inputs: ScoreInputs) -> torch.Tensor:
        cfg = self.config
        probs = attention_probs(inputs)  # [B, H, W, S]
        if cfg.head_reduce == "kv_group":  # query heads h of one KV head are h // group: mean within, max across
            b, h, w, s = probs.shape
            kv_heads = inputs.keys.shape[1]
            per_query = probs.view(b, kv_heads, h // kv_heads, w, s).mean(2).amax(1)  # [B, W, S]
        else:
            per_query = probs.mean(1) if cfg.head_reduce == "mean" else probs.amax(1)  # [B, W, S]
        if cfg.query_reduce == "max":
            score = per_query.amax(1)
        else:
            count = inputs.query_valid.sum(1).clamp(min=1)
            score = per_query.sum(1) / count[:, None]
        score = score * inputs.candidates
        kernel = cfg.pool_at(inputs.layer, inputs.decoding)
        if kernel > 1:  # over token positions, so the result does not depend on the cache's slot order
            dense = torch.zeros(score.shape[0], inputs.position_bound, dtype=score.dtype, device=score.device)
            dense.scatter_reduce_(1, inputs.key_pos, score * inputs.key_valid, reduce="amax")
            if cfg.pool_shift:  # a score at position j reaches j + shift - kernel // 2 ... j + shift + kernel // 2
                back, ahead = kernel // 2 + cfg.pool_shift, kernel // 2 - cfg.pool_shift
                padded = F.pad(dense[:, None], (back, ahead), value=float("-inf"))
                dense = F.max_pool1d(padded, kernel, stride=1)[:, 0]
            else:
                dense = F.max_pool1d(dense[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
            score = dense.gather(1, inputs.key_pos)
        return score


class StaticPruner(AttentionPruner):
    """Static pruning baseline: prune once, at the first pruning layer, to the last keep ratio; never revive."""

    revives = False


class RandomPruner(TokenPruner):
    """Random token drop baseline: uniformly random scores (seeded per layer); never revive."""

    revives = False

    def scores(self, inputs: ScoreInputs) -> torch.Tensor:
        # one random number per (layer, position): an item's scores do not depend on its batch
        gen = torch.Generator().manual_seed(self.config.seed * 1000 + inputs.layer)
        table = torch.rand(int(inputs.key_pos.max()) + 1, generator=gen).to(inputs.key_pos.device)
        return table[inputs.key_pos]


def make_pruner(config: LazyConfig) -> TokenPruner:
    return {"attention": AttentionPruner, "static": StaticPruner, "random": RandomPruner}[config.method](config)
