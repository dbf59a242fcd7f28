"""Per-item statistics of one generation and the FLOP model behind ``est_speedup``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class ItemStats:
    """What one prompt of a batch cost. Times are per batch (the items of a batch share one prefill)."""

    prompt_tokens: int
    new_tokens: int = 0
    ttft_s: float = 0.0  # prefill + first token
    decode_s: float = 0.0  # the remaining decode steps
    pruned: bool = False  # some layer computed fewer than all prompt tokens in prefill
    kept_per_layer: list[int] = field(default_factory=list)  # tokens computed at each layer during prefill
    computed_token_fraction: float = 1.0  # Σ_l kept_per_layer[l] / (L · prompt_tokens)
    computed_token_fraction_total: float = 1.0  # the same over every token fed to the model (prefill + decode)
    revived_tokens: int = 0  # Aux-Cache revivals: (token, pruning layer) pairs brought back during decoding
    est_speedup: float = 1.0  # FLOP model: full prefill cost / this prefill's cost (attention + linear terms)
    kv_cache_bytes: int = 0  # K/V bytes held for this item at the end of generation
    aux_cache_bytes: int = 0  # Aux Cache hidden states held for this item at the end of generation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerateOutput:
    """Like Hugging Face ``generate``: ``sequences`` is the input followed by the new tokens."""

    sequences: torch.Tensor  # [B, T + new] LongTensor; padded with pad_token_id after EOS
    stats: list[ItemStats]


@dataclass(frozen=True)
class FlopModel:
    """Forward FLOPs of a decoder stack, split in per-token linear work and per-(query, key) attention work."""

    linear_per_token: float  # q/k/v/o projections + MLP of one token at one layer
    attn_per_pair: float  # q·k and p·v of one (query, key) pair at one layer, all heads

    @classmethod
    def from_config(cls, config: Any) -> FlopModel:
        hidden = config.hidden_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        inter = config.intermediate_size
        proj = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o and k, v
        mlp = 3 * hidden * inter  # gate, up, down
        return cls(linear_per_token=2.0 * (proj + mlp), attn_per_pair=2.0 * 2 * heads * head_dim)

    def causal_layer(self, tokens: int) -> float:
        """A causal layer over ``tokens`` tokens that all attend to each other's predecessors."""
        return tokens * self.linear_per_token + tokens * (tokens + 1) / 2 * self.attn_per_pair

    def prefill(self, kept_per_layer: list[int]) -> float:
        """A prefill whose layer l computes kept_per_layer[l] tokens (nested kept sets, causal among themselves)."""
        return sum(self.causal_layer(k) for k in kept_per_layer)

    def score_pairs(self, pairs: float) -> float:
        """The extra q·k work of scoring ``pairs`` (query, key) pairs at pruning layers."""
        return pairs * self.attn_per_pair / 2
