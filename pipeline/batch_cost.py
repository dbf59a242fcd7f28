"""What a batch holds per item: batches are sized by the tokens the workers' schedule keeps of a prompt (pruned K/V
and Aux Cache, plus the new tokens), not by the padded prompt."""

from __future__ import annotations

import functools
from collections.abc import Callable

from lazy_core import LazyConfig, load_model_config
from lazy_core.arch import model_depth
from pipeline.config import GenerationSettings


def item_cost(cfg: GenerationSettings) -> Callable[[int], int]:
    """prompt length -> tokens a batch holds for an item of that length under ``cfg``'s model and schedule
    (:meth:`lazy_core.LazyConfig.held_tokens`); prompt + new tokens when the model's config is not at hand."""
    lazy = cfg.lazy if isinstance(cfg.lazy, str) else cfg.lazy.model_dump_json()
    return _cost(cfg.model, lazy, cfg.max_new_tokens)


@functools.lru_cache(maxsize=32)
def _cost(model: str, lazy: str, new_tokens: int) -> Callable[[int], int]:
    model_config = load_model_config(model)
    if model_config is None:
        return lambda n: n + new_tokens
    named = lazy in ("default", "off")  # the key is a name or a LazyConfig's JSON (hashable for the cache)
    schedule = LazyConfig.resolve(lazy if named else LazyConfig.model_validate_json(lazy), model_config)
    layers = model_depth(model_config)
    return functools.lru_cache(maxsize=4096)(lambda n: schedule.held_tokens(layers, n, new_tokens))
