"""pipeline.prompts: text validation, middle truncation, prompts through the chat template, the baseline sample, the
prompt limit fitted to the model's context."""

from __future__ import annotations

import pytest

from pipeline import PipelineConfig
from pipeline.prompts import build_prompt_ids, is_sampled, prepare_row, truncate_middle, validate_text


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null_text"),
        ("", "empty_text"),
        ("  \n\t", "empty_text"),
        (7, "non_string_text"),
        ("x" * 11, "huge_text"),
    ],
)
def test_validate_text_reasons(value, reason):
    assert validate_text(value, "text", max_chars=10).startswith(reason + ":")


def test_validate_text_accepts_text():
    assert validate_text("fine", "text", max_chars=10) is None


def test_truncate_middle_keeps_both_ends():
    ids = list(range(10))
    assert truncate_middle(ids, 5) == [0, 1, 2, 8, 9]
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert truncate_middle(ids, 10) == ids


def test_prompt_goes_through_chat_template(tiny_tokenizer):
    cfg = PipelineConfig(input="a", output="b", task="qa", max_prompt_tokens=10_000)
    ids = build_prompt_ids(tiny_tokenizer, cfg, "the doc", "why?")
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<s>user\n") and text.endswith("<s>assistant\n")
    assert "the doc" in text and "Question: why?" in text
    raw = PipelineConfig(input="a", output="b", task="T: {text}", chat_template=False)
    assert tiny_tokenizer.decode(build_prompt_ids(tiny_tokenizer, raw, "abc", None)) == "T: abc"


def test_over_length_truncates_middle_or_errors(tiny_tokenizer):
    long_text = "word " * 200
    cut = PipelineConfig(input="a", output="b", max_prompt_tokens=64)
    prepared = prepare_row(tiny_tokenizer, cut, long_text, None)
    assert prepared.error is None and len(prepared.input_ids) == 64 and prepared.prompt_tokens > 1000
    full = build_prompt_ids(tiny_tokenizer, cut, long_text, None)
    assert prepared.input_ids == full[:32] + full[-32:]
    strict = PipelineConfig(input="a", output="b", max_prompt_tokens=64, truncate="error")
    refused = prepare_row(tiny_tokenizer, strict, long_text, None)
    assert refused.input_ids is None and refused.error.startswith("over_length:")


def test_baseline_sample_is_deterministic_and_near_rate():
    ids = [f"doc-{i}" for i in range(4000)]
    picked = [i for i in ids if is_sampled(i, 0.1)]
    assert picked == [i for i in ids if is_sampled(i, 0.1)]
    assert 0.08 < len(picked) / len(ids) < 0.12
    assert not any(is_sampled(i, 0.0) for i in ids[:50]) and all(is_sampled(i, 1.0) for i in ids[:50])


def test_prompt_limit_fits_the_model_context(tiny_model_dir):
    from pipeline.prompts import context_length, effective_prompt_limit

    assert context_length(str(tiny_model_dir)) == 2048  # max_position_embeddings of the tiny Llama
    assert effective_prompt_limit(8192, 64, 2048) == 1984
    assert effective_prompt_limit(1000, 64, 2048) == 1000
    assert effective_prompt_limit(1000, 64, None) == 1000
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        effective_prompt_limit(1000, 2040, 2048)
