"""LazyLLM dynamic token pruning (Fu et al. 2024, arXiv 2407.14057) for Hugging Face decoder models.

``LazyLLM(model, LazyConfig.default_for(model)).generate(...)`` prunes the prompt progressively in prefill and
revives pruned tokens from the Aux Cache while decoding; ``load_model`` gives the embedded default model or any local
Hugging Face dir; ``calibrate`` picks a schedule for a new model from a user's own samples.
"""

from lazy_core.arch import SUPPORTED_MODEL_TYPES
from lazy_core.calibrate import calibrate
from lazy_core.config import LazyConfig
from lazy_core.continuous import ContinuousResult, SlotCounters
from lazy_core.decoding import DecodingOptions
from lazy_core.generate import LazyLLM
from lazy_core.loading import DEFAULT_MODEL, load_model, load_model_config, load_tokenizer
from lazy_core.revival import SelectRevival, TopRevival
from lazy_core.scoring import AttentionPruner, RandomPruner, ScoreInputs, StaticPruner, TokenPruner
from lazy_core.stats import GenerateOutput, ItemStats

__all__ = [
    "DEFAULT_MODEL",
    "SUPPORTED_MODEL_TYPES",
    "AttentionPruner",
    "ContinuousResult",
    "DecodingOptions",
    "GenerateOutput",
    "ItemStats",
    "LazyConfig",
    "LazyLLM",
    "RandomPruner",
    "ScoreInputs",
    "SlotCounters",
    "SelectRevival",
    "StaticPruner",
    "TokenPruner",
    "TopRevival",
    "calibrate",
    "load_model",
    "load_model_config",
    "load_tokenizer",
]
