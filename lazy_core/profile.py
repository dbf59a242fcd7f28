"""Where a model's attention singles out the answer: per layer, how high the full model's attention, scored as a
:class:`~lazy_core.config.LazyConfig` scores, ranks the tokens of answers that stand in their prompts.

A pruning layer keeps a share of the prompt by its attention there, so it can only keep an answer that layer ranks
high; layers differ a lot (on SmolLM2-135M the needles of RULER rank in the top 10 % at layers 7 and 21 for 31 and 35
of 41 answers, at layer 14 for 26, at layer 11 for 3: BENCHMARKS.md, "Why the default loses facts"). ``layer_hits``
measures it on a model and its prompts; ``profiled_layers`` moves each pruning layer of a schedule to the nearby
layer that keeps the most answers whole at its keep ratio (``calibrate`` does when its samples' references stand in
their prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lazy_core.arch import model_depth, prunable_layers
from lazy_core.config import LazyConfig
from lazy_core.generate import LazyLLM
from lazy_core.scoring import AttentionPruner, ScoreInputs


class RankingPruner(AttentionPruner):
    """The attention pruner, recording at each layer it scores (batch 1) the rank of every scored prompt position
    (0 = best; the forced tail first). Only the last call per layer is kept: run it on a prefill (one new token) to get
    the prefill's ranks."""

    def __init__(self, config: LazyConfig) -> None:
        super().__init__(config)
        self.ranks: dict[int, dict[int, int]] = {}  # layer -> position -> rank among the scored candidates
        self.budgets: dict[int, int] = {}
        self.state: Any = None  # the prefilled BatchState, when prefill_ranks keeps it

    def scores(self, inputs: ScoreInputs) -> torch.Tensor:
        self._scored = super().scores(inputs)  # [B, S]: what select ranks, kept so it is computed once
        return self._scored

    def select(self, inputs: ScoreInputs, budget: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        keep = super().select(inputs, budget, forced)
        score = self._scored.float().masked_fill(~inputs.candidates, float("-inf"))
        score = score.masked_fill(forced & inputs.candidates, float("inf"))[0]
        order = torch.sort(score, descending=True, stable=True).indices[: int(inputs.candidates[0].sum())]
        self.ranks[inputs.layer] = {int(inputs.key_pos[0, s]): r for r, s in enumerate(order.tolist())}
        self.budgets[inputs.layer] = int(budget[0])
        return keep


def prefill_ranks(model: Any, config: LazyConfig, ids: torch.Tensor, keep_state: bool = False) -> RankingPruner:
    """Ranks of every prompt position at each pruning layer of ``config`` in the prefill of ``ids`` [1, T];
    ``keep_state``: the prefilled state (each layer's kept set) as ``pruner.state``."""
    pruner = RankingPruner(config)
    lazy = LazyLLM(model, config, pruner=pruner, keep_state=keep_state)
    lazy.generate(ids, max_new_tokens=1, eos_token_id=[])
    pruner.state = lazy.last_state if keep_state else None
    return pruner


def scoring_only(config: LazyConfig, prompt_tokens: int) -> LazyConfig:
    """``config`` scoring at every one of its pruning layers but keeping every token there, except one at the last
    (a schedule that drops nothing is not run as one): each layer ranks what the full model's attention ranks."""
    ratios = [1.0] * (len(config.keep_ratios) - 1) + [(prompt_tokens - 1.5) / prompt_tokens]
    return LazyConfig(**{**config.model_dump(), "min_prompt_tokens": 0, "later_start_tokens": None,
                         "keep_ratios": ratios})


def every_layer(config: LazyConfig, model_or_num_layers: Any, prompt_tokens: int) -> LazyConfig:
    """``config``'s scoring at every layer a schedule may prune after (:func:`~lazy_core.arch.prunable_layers`),
    keeping (almost) every token: what each layer's attention ranks, with nothing pruned before it. Each layer pools
    as ``config`` pools there (``pool_at``)."""
    layers = prunable_layers(model_or_num_layers)
    pools = [config.pool_at(layer) for layer in layers] if config.pool_kernels is not None else None
    return scoring_only(LazyConfig(**{**config.model_dump(), "prune_layers": layers, "pool_kernels": pools,
                                      "keep_ratios": [1.0] * len(layers)}), prompt_tokens)


def answer_positions(tokenizer: Any, prompt_ids: Sequence[int], answer: str) -> list[int]:
    """The positions of ``answer``'s tokens in the prompt (its first occurrence, tokenized with and without a leading
    space); empty when it does not stand in the prompt as tokens."""
    for text in (f" {answer}", answer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(len(prompt_ids) - len(ids) + 1):
            if ids and list(prompt_ids[start : start + len(ids)]) == ids:
                return list(range(start, start + len(ids)))
    return []


def worst_rank_shares(model: Any, config: LazyConfig, prompt_ids: Sequence[int],
                      answers: Sequence[Sequence[int]]) -> list[dict[int, float]]:
    """Per answer (its token positions in the prompt): per prunable layer, the rank of its worst-ranked token as a
    share of the prompt (0 = the very top). A layer keeping a share r of the prompt keeps the answer whole when this
    is below r."""
    ids = torch.tensor([list(prompt_ids)])  # [1, T]
    ranks = prefill_ranks(model, every_layer(config, model, ids.shape[1]), ids).ranks
    return [{layer: max(r[p] for p in positions) / ids.shape[1] for layer, r in sorted(ranks.items())}
            for positions in answers if positions]


def layer_hits(shares: Sequence[dict[int, float]], share: float) -> dict[int, float]:
    """Per layer: the fraction of the answers (``worst_rank_shares`` of each) a layer keeping ``share`` of the prompt
    keeps whole."""
    layers = sorted({layer for answer in shares for layer in answer})
    return {layer: sum(a[layer] < share for a in shares) / len(shares) for layer in layers} if shares else {}


def profiled_layers(config: LazyConfig, model_or_num_layers: Any, shares: Sequence[dict[int, float]],
                    reach: int | None = None) -> list[int]:
    """``config``'s pruning layers, each moved to the prunable layer within ``reach`` of it (default: a tenth of the
    depth, at least 1) that keeps the most answers whole at the layer's keep ratio (ties: the layer itself, then the
    earlier, cheaper one), in order and leaving room for the layers after it. Unchanged without answers."""
    if not shares or not config.prune_layers:
        return list(config.prune_layers)
    depth = model_depth(model_or_num_layers)
    reach = max(1, round(depth / 10)) if reach is None else reach
    usable = prunable_layers(model_or_num_layers)
    chosen: list[int] = []
    for i, (layer, ratio) in enumerate(zip(config.prune_layers, config.keep_ratios, strict=True)):
        later = len(config.prune_layers) - i - 1
        options = [j for j in usable if abs(j - layer) <= reach and (not chosen or j > chosen[-1])
                   and sum(k > j for k in usable) >= later]
        if not options:
            return list(config.prune_layers)  # no room to move: keep the schedule as it is
        hits = layer_hits(shares, ratio)
        chosen.append(max(options, key=lambda j, hits=hits, own=layer: (hits.get(j, 0.0), j == own, -j)))
    return chosen
