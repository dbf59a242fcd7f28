"""The driver's tokenizer: lazy_core.load_tokenizer (same name resolution as the workers' load_model, no weights)."""

from __future__ import annotations

from typing import Any

from lazy_core import load_tokenizer as _load


def load_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` (embedded default, local HF dir, or HF id available offline), left padding."""
    return _load(model)
