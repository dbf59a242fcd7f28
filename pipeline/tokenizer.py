"""The driver's tokenizer: loaded without the model weights (the driver tokenizes, bucketing needs lengths)."""

from __future__ import annotations

import os
from typing import Any

from pipeline.config import DEFAULT_MODEL


def load_tokenizer(model: str) -> Any:
    """The tokenizer of ``model``: the embedded default (prepared in lazy_core's cache), a local HF directory, or an
    HF id available offline. Pads on the left like lazy_core.load_model."""
    from transformers import AutoTokenizer

    if model == DEFAULT_MODEL:
        from lazy_core.loading import default_model_dir

        source = str(default_model_dir())
    else:
        source = os.path.expanduser(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot load the tokenizer of model {model!r} ({exc}); give a local HF model directory, an HF id already "
            f"in the local cache, or the embedded default {DEFAULT_MODEL!r}"
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
