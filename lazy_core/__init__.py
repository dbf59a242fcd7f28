"""LazyLLM dynamic token pruning (Fu et al. 2024, arXiv 2407.14057) for Hugging Face decoder models."""

from lazy_core.arch import SUPPORTED_MODEL_TYPES
from lazy_core.config import LazyConfig
from lazy_core.generate import LazyLLM
from lazy_core.scoring import AttentionPruner, RandomPruner, ScoreInputs, StaticPruner, TokenPruner
from lazy_core.stats import GenerateOutput, ItemStats

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "AttentionPruner",
    "GenerateOutput",
    "ItemStats",
    "LazyConfig",
    "LazyLLM",
    "RandomPruner",
    "ScoreInputs",
    "StaticPruner",
    "TokenPruner",
]
