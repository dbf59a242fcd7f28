"""LazyLLM dynamic token pruning (Fu et al. 2024, arXiv 2407.14057) for Hugging Face decoder models."""

from lazy_core.config import LazyConfig
from lazy_core.stats import GenerateOutput, ItemStats

__all__ = ["GenerateOutput", "ItemStats", "LazyConfig"]
