"""The parts of a Hugging Face decoder-only model that the lazy engine drives: embeddings, decoder layers, rotary
embedding, final norm and lm_head. The model's own modules do all the math; nothing here is copied modeling code.

Also the layout arithmetic the schedules are placed by: depth, each layer's sliding window, the global layers of a
hybrid model, and :func:`place_schedule` (fractions of the depth -> pruning layers), the one placement that
``LazyConfig.default_for``, ``LazyConfig.paper``, ``calibrate`` and the evaluation share."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


@dataclass(frozen=True)
class ModelParts:
    embed: nn.Module
    layers: list[nn.Module]
    rotary: nn.Module
    norm: nn.Module
    lm_head: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    max_positions: int
    sliding_windows: list[int | None]  # per layer; None = full causal attention
    cache_kwarg: str  # the decoder layer's name for its cache argument: "cache" (transformers >= 5.24) or older
    rope_types: list[str] | None  # per layer, the rotary embedding's layer type (Gemma 3); None = one RoPE for all
    logit_softcap: float | None = None  # final logit soft-capping (tanh), as the model's own head applies it

    def position_embeddings(self, hidden: torch.Tensor, pos: torch.Tensor) -> list:
        """Per layer, the (cos, sin) of positions ``pos`` [B, C] that the layer's attention takes (one computation
        per rotary type)."""
        if self.rope_types is None:
            return [self.rotary(hidden, pos)] * len(self.layers)
        by_type = {t: self.rotary(hidden, pos, t) for t in dict.fromkeys(self.rope_types)}
        return [by_type[t] for t in self.rope_types]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, 1, D] (the last row of each item) -> next-token logits [B, V] float32, soft-capped as the
        model's own head does."""
        logits = self.lm_head(self.norm(hidden))[:, -1].float()
        cap = self.logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    @property
    def global_layers(self) -> list[int]:
        """Layers whose attention sees the whole prefix (no sliding window)."""
        return [j for j, w in enumerate(self.sliding_windows) if w is None]

    @property
    def hybrid(self) -> bool:
        """Sliding-window and global layers mixed (Gemma 2/3 style)."""
        return hybrid_global_layers(self.sliding_windows) is not None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # the embedding's weight tells the model's device and dtype (an lm_head may hold int8 weights: lazy_core.quantize)
    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype


def model_parts(model: nn.Module) -> ModelParts:
    """Locate the modules the engine drives, or raise ValueError naming the supported architectures."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model type {model_type!r} ({type(model).__name__}) is not supported by the lazy engine; supported "
            f"families: {', '.join(SUPPORTED_MODEL_TYPES)} (decoder-only *ForCausalLM models of transformers 5.x)"
        )
    inner = getattr(model, "model", None)
    lm_head = getattr(model, "lm_head", None)
    if inner is None or lm_head is None or not hasattr(inner, "layers"):
        raise ValueError(
            f"{type(model).__name__} is not a *ForCausalLM model with .model.layers and .lm_head; load it with "
            "AutoModelForCausalLM (or lazy_core.load_model)"
        )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelParts(
        embed=inner.embed_tokens,
        layers=list(inner.layers),
        rotary=inner.rotary_emb,
        norm=inner.norm,
        lm_head=lm_head,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        hidden_size=config.hidden_size,
        max_positions=int(getattr(config, "max_position_embeddings", 0) or 0),
        sliding_windows=[sliding_window_of(config, i) for i in range(config.num_hidden_layers)],
        cache_kwarg=_cache_kwarg(inner.layers[0]),
        rope_types=_rope_types(inner.rotary_emb, config),
        logit_softcap=getattr(config, "final_logit_softcapping", None),
    )


def _cache_kwarg(layer: nn.Module) -> str:
    """transformers 5.24 renamed the decoder layers' ``past_key_values`` to ``cache`` (the old name warns, and goes
    in 5.40): pass the cache under the name this version's layer declares."""
    params = inspect.signature(layer.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _rope_types(rotary: nn.Module, config) -> list[str] | None:
    """Gemma 3's rotary embedding takes the layer type (a different base per type): the type of every layer."""
    if "layer_type" not in inspect.signature(rotary.forward).parameters:
        return None
    return list(config.layer_types)


# ---- layout: depth, windows, where a schedule's layers go ------------------------------------------------------------


def model_depth(model_or_num_layers: Any) -> int:
    """The number of decoder layers of a Hugging Face model, its config, or a layer count given as an int."""
    if isinstance(model_or_num_layers, int):
        return model_or_num_layers
    config = getattr(model_or_num_layers, "config", model_or_num_layers)
    num = getattr(config, "num_hidden_layers", None)
    if not isinstance(num, int):
        raise TypeError(
            f"expected a Hugging Face model, its config or a layer count, got {type(model_or_num_layers).__name__}"
        )
    return num


def sliding_window_of(config: Any, layer: int) -> int | None:
    """The sliding window of decoder layer ``layer`` of a Hugging Face config, None for full causal attention."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if layer_types[layer] == "sliding_attention" else None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def hybrid_global_layers(sliding_windows: list[int | None]) -> list[int] | None:
    """The global (full-attention) layers of a hybrid layout, where sliding-window and global layers mix; None when
    every layer is global or every layer slides."""
    global_layers = [j for j, w in enumerate(sliding_windows) if w is None]
    return global_layers if 0 < len(global_layers) < len(sliding_windows) else None


def place_schedule(model_or_num_layers: Any, fractions: tuple[float, ...], ratios: tuple[float, ...],
                   merge: Callable[[float, float], float] = min) -> tuple[list[int], list[float]]:
    """Pruning layers at these fractions of the depth (:func:`layers_at`) with these cumulative keep ratios. On a
    hybrid model (sliding-window and global layers) each layer moves to the nearest global layer that can prune
    (ties: the later one), and layers that meet keep ``merge`` of their ratios: ``min`` (the later stage's, the
    paper's and older schedules') or ``max`` (the earlier, gentler stage's: the default's, BENCHMARKS.md "Stages that
    meet")."""
    num = model_depth(model_or_num_layers)
    usable = prunable_layers(model_or_num_layers)
    if len(usable) == num - 1:  # not hybrid, or every layer that can prune is global
        layers = layers_at(num, fractions)
        return layers, list(ratios[: len(layers)])
    merged: dict[int, float] = {}
    for fraction, ratio in zip(fractions, ratios, strict=False):
        layer = _layer_at(fraction, num)
        snapped = min(usable, key=lambda g, layer=layer: (abs(g - layer), -g))
        merged[snapped] = merge(ratio, merged[snapped]) if snapped in merged else ratio
    return sorted(merged), [merged[layer] for layer in sorted(merged)]


def prunable_layers(model_or_num_layers: Any) -> list[int]:
    """The layers a schedule may prune after: every layer but the last; on a hybrid model (sliding-window and global
    layers) only its global ones (when it has any before the last)."""
    num = model_depth(model_or_num_layers)
    config = getattr(model_or_num_layers, "config", model_or_num_layers)
    windows = [None] * num if isinstance(config, int) else [sliding_window_of(config, j) for j in range(num)]
    usable = [j for j in hybrid_global_layers(windows) or [] if j <= num - 2]
    return usable or list(range(num - 1))


def layers_at(model_or_num_layers: Any, fractions: tuple[float, ...]) -> list[int]:
    """0-based pruning layers at these fractions of the depth, ignoring the layers' windows (use
    :func:`place_schedule` to place a schedule): fraction f prunes after layer round(f * L) - 1, kept within 0..L-2
    (a pruning layer needs a layer after it); duplicates on shallow models are merged."""
    num = model_depth(model_or_num_layers)
    return sorted({_layer_at(f, num) for f in fractions})


def _layer_at(fraction: float, num_layers: int) -> int:
    """The 0-based layer after which fraction ``fraction`` of a ``num_layers``-deep model prunes: round(f * L) - 1,
    kept within 0..L-2."""
    return min(num_layers - 2, max(0, round(fraction * num_layers) - 1))
