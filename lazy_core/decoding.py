"""DecodingOptions: how a generation chooses its tokens and when it ends, written once.

``LazyLLM.generate`` takes it (its keyword arguments build one); the pipeline's ``GenerationSettings`` inherits its
fields, so a YAML file or a CLI flag sets them; a worker receives it whole in its ``WorkerSpec``. Adding a decoding
option is one field here plus its use in the engine (docs/lazy_core.md, "Decoding options").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class DecodingOptions(BaseModel):
    """Decoding of one ``generate`` call: greedy unless ``do_sample``; the logit rules act as in ``model.generate``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per item at most.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature (do_sample only).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (do_sample only).")
    seed: int | None = Field(
        0, description="Seed of sampling (do_sample only): the same seed draws the same tokens; None = a fresh seed "
        "per call. The pipeline seeds each batch from it, so reruns are reproducible.",
    )
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="As in HF generate: logits of tokens already in the prompt or the output are divided "
        "(positive) or multiplied (negative) by it; 1.0 = off.",
    )
    no_repeat_ngram_size: int = Field(
        0, ge=0, description="As in HF generate: no n-gram of this size occurs twice in prompt + output; 0 = off.",
    )
    min_new_tokens: int = Field(
        0, ge=0, description="As in HF generate: end-of-sequence is not allowed before this many new tokens.",
    )

    @model_validator(mode="before")
    @classmethod
    def _strict_ints(cls, data):
        """Token counts must be ints: 1.5 tokens is a caller's mistake, not something to round."""
        if isinstance(data, dict):
            for name in ("max_new_tokens", "no_repeat_ngram_size", "min_new_tokens"):
                value = data.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError(f"{name} must be an int, got {value!r}")
        return data


def token_chooser(options: DecodingOptions, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits [B, V] -> tokens [B]: greedy, or sampled (temperature, then nucleus ``top_p``) from one generator seeded
    by ``options.seed`` (None: a fresh seed)."""
    if not options.do_sample:
        return lambda logits: logits.argmax(-1)
    generator = torch.Generator(device=device)
    generator.manual_seed(options.seed if options.seed is not None else torch.seed())
    return lambda logits: _sample(logits, options.temperature, options.top_p, generator)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """logits: [B, V] -> [B] sampled ids (temperature, then nucleus top_p)."""
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
