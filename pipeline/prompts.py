"""Prompts: task templates through the tokenizer's chat template, row validation, middle truncation, and the prompt
limit fitted to the model's context."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, TypeVar

from lazy_core import load_model_config
from pipeline.config import GenerationSettings, PipelineConfig

SettingsT = TypeVar("SettingsT", bound=GenerationSettings)

TASK_TEMPLATES = {
    "summarize": "Summarize the following text in a few sentences.\n\n{text}",
    "qa": "Answer the question using the text below. Answer briefly.\n\n{text}\n\nQuestion: {question}",
}


@dataclass
class Prepared:
    """One row turned into token ids, or the reason it cannot be run."""

    input_ids: list[int] | None  # prompt after truncation; None on error
    prompt_tokens: int | None  # before truncation
    error: str | None  # "<reason>: <detail>" when the row is an error row


def template_for(config: PipelineConfig) -> str:
    return TASK_TEMPLATES.get(config.task, config.task)


def check_chat_template(tokenizer: Any, config: PipelineConfig) -> None:
    """Refuse to start when a chat template is asked for and the tokenizer has none (no silent fallback)."""
    if config.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer of model {config.model!r} has no chat template; set chat_template=False to feed the raw "
            "task prompt, or use an instruct model"
        )


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


def fit_to_context(cfg: SettingsT) -> SettingsT:
    """The config the prompts are planned with: max_prompt_tokens capped so prompt + new tokens fit the model's
    context (a property of the model, which the config hash already covers)."""
    limit = effective_prompt_limit(cfg.max_prompt_tokens, cfg.max_new_tokens, context_length(cfg.model))
    return cfg.model_copy(update={"max_prompt_tokens": limit})


def validate_text(value: Any, column: str, max_chars: int) -> str | None:
    """The reason a text cell cannot be run, or None when it can."""
    if value is None:
        return f"null_{column}: column {column!r} is null"
    if not isinstance(value, str):
        return f"non_string_{column}: column {column!r} holds {type(value).__name__}, expected a string"
    if not value.strip():
        return f"empty_{column}: column {column!r} is empty or whitespace only"
    if len(value) > max_chars:
        return f"huge_{column}: column {column!r} has {len(value)} characters, more than max_text_chars={max_chars}"
    return None


def build_prompt_ids(tokenizer: Any, config: PipelineConfig, text: str, question: str | None) -> list[int]:
    """Token ids of the full prompt for one row (chat template applied when configured)."""
    user = template_for(config).format_map({"text": text, "question": question or ""})
    if not config.chat_template:
        return list(tokenizer(user, add_special_tokens=True)["input_ids"])
    messages = []
    if config.system_prompt:
        messages.append({"role": "system", "content": config.system_prompt})
    messages.append({"role": "user", "content": user})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def truncate_middle(ids: list[int], max_tokens: int) -> list[int]:
    """Keep the first ceil(max/2) and the last floor(max/2) tokens: instruction head and question tail survive
    (LongBench's truncation)."""
    if len(ids) <= max_tokens:
        return ids
    head = (max_tokens + 1) // 2
    tail = max_tokens - head
    return ids[:head] + (ids[-tail:] if tail else [])


def prepare_row(tokenizer: Any, config: PipelineConfig, text: Any, question: Any) -> Prepared:
    """Validate, build, tokenize and (maybe) truncate one row."""
    error = validate_text(text, config.text_column, config.max_text_chars)
    if error is None and config.needs_question:
        error = validate_text(question, config.question_column, config.max_text_chars)
    if error is not None:
        return Prepared(None, None, error)
    try:
        ids = build_prompt_ids(tokenizer, config, text, question)
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # e.g. a template with an unknown {field}
        return Prepared(None, None, f"prompt_error: {type(exc).__name__}: {exc}")
    full = len(ids)
    if full > config.max_prompt_tokens:
        if config.truncate == "error":
            return Prepared(
                None, full, f"over_length: prompt has {full} tokens, more than max_prompt_tokens="
                f"{config.max_prompt_tokens} (set truncate='middle' to cut the middle)"
            )
        ids = truncate_middle(ids, config.max_prompt_tokens)
    return Prepared(ids, full, None)


def is_sampled(item_id: Any, rate: float) -> bool:
    """Deterministic baseline sample: a hash of the id maps to [0, 1) and is compared with the rate."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(str(item_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < rate
