"""Logit rules (lazy_core.rules): repetition_penalty, no_repeat_ngram_size and min_new_tokens as in HF generate,
and their bad values refused."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS, PRUNE, encode

from lazy_core import LazyConfig, LazyLLM


def test_generation_rules_match_model_generate(tiny_model, tiny_tokenizer):
    """repetition_penalty, no_repeat_ngram_size and min_new_tokens as in HF generate (pruning off, left-padded
    batch); a pruned run with the rules never repeats an n-gram either."""
    enc = encode(tiny_tokenizer)
    rules = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=5)
    eos = tiny_tokenizer.eos_token_id
    out = LazyLLM(tiny_model, LazyConfig.off()).generate(
        enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=16, eos_token_id=eos, **rules)
    ref = tiny_model.generate(**enc, max_new_tokens=16, do_sample=False, eos_token_id=eos, **rules)
    assert torch.equal(out.sequences, ref)
    plain = tiny_model.generate(**enc, max_new_tokens=16, do_sample=False, eos_token_id=eos)
    assert not torch.equal(plain, ref), "the rules should change this output"
    pruned = LazyLLM(tiny_model, LazyConfig(**PRUNE)).generate(
        enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=16, eos_token_id=eos, **rules)
    width = enc.input_ids.shape[1]
    for b, row in enumerate(pruned.sequences.tolist()):
        for i in range(width, width + pruned.stats[b].new_tokens):  # each new bigram is new to prompt + output
            earlier = set(zip(row[: i - 1], row[1:i], strict=True))
            assert (row[i - 1], row[i]) not in earlier


def test_generation_rules_reject_bad_values(tiny_llama, tiny_tokenizer):
    lazy = LazyLLM(tiny_llama, LazyConfig.off())
    ids = encode(tiny_tokenizer, PROMPTS[:1]).input_ids
    for bad, match in ((dict(repetition_penalty=0.0), "repetition_penalty"),
                       (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
                       (dict(min_new_tokens=1.5), "min_new_tokens")):
        with pytest.raises(ValueError, match=match):
            lazy.generate(ids, max_new_tokens=4, **bad)
