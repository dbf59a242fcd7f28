"""The driver's tokenizer: lazy_core.load_tokenizer (same name resolution as the workers' load_model, no weights)."""

from __future__ import annotations

from typing import Any

from lazy_core import load_model_config
from lazy_core import load_tokenizer as _load


def load_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` (embedded default, local HF dir, or HF id available offline), left padding."""
    return _load(model)


def context_length(model: str) -> int | None:
    """``max_position_embeddings`` of the model's config (``lazy_core.load_model_config``: the workers' name
    resolution, no weights read); None when there is no config or it has none (a tokenizer-only directory: the
    workers' model load is what fails then, with its own error)."""
    value = getattr(load_model_config(model), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def effective_prompt_limit(config_max: int, max_new_tokens: int, context: int | None) -> int:
    """Prompts must leave room for the new tokens inside the model's context window."""
    if context is None:
        return config_max
    room = context - max_new_tokens
    if room < 16:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves {room} prompt tokens in the model's {context}-token context; "
            "lower max_new_tokens"
        )
    return min(config_max, room)


def fit_to_context(cfg: Any) -> Any:
    """The PipelineConfig the prompts are planned with: max_prompt_tokens capped so prompt + new tokens fit the
    model's context (a property of the model, which the config hash already covers)."""
    limit = effective_prompt_limit(cfg.max_prompt_tokens, cfg.max_new_tokens, context_length(cfg.model))
    return cfg.model_copy(update={"max_prompt_tokens": limit})
