"""DecodingOptions (lazy_core.decoding): taken by LazyLLM.generate whole or as keywords, bad options named."""

from __future__ import annotations

import pytest
import torch

from lazy_core import DecodingOptions, LazyConfig, LazyLLM


def test_generate_takes_the_options_whole_or_as_keywords(tiny_llama):
    model = tiny_llama
    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    lazy = LazyLLM(model, LazyConfig(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=2))
    options = DecodingOptions(max_new_tokens=6, repetition_penalty=1.3, no_repeat_ngram_size=2)
    whole = lazy.generate(ids, options=options, eos_token_id=[])
    keywords = lazy.generate(ids, max_new_tokens=6, repetition_penalty=1.3, no_repeat_ngram_size=2, eos_token_id=[])
    assert torch.equal(whole.sequences, keywords.sequences) and whole.sequences.shape[1] == 12 + 6
    # a keyword overrides the options it is given with
    longer = lazy.generate(ids, options=options, max_new_tokens=8, eos_token_id=[])
    assert longer.sequences.shape[1] == 12 + 8 and torch.equal(longer.sequences[:, :18], whole.sequences)
    sampled = [lazy.generate(ids, options=DecodingOptions(max_new_tokens=6, do_sample=True, seed=s), eos_token_id=[])
               for s in (3, 3, 4)]
    assert torch.equal(sampled[0].sequences, sampled[1].sequences)  # the same seed draws the same tokens


def test_bad_options_are_named(tiny_llama):
    lazy = LazyLLM(tiny_llama, LazyConfig.off())
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['max_tokens'\]"):
        lazy.generate(ids, max_tokens=3)
    with pytest.raises(TypeError, match="options must be a DecodingOptions"):
        lazy.generate(ids, None, {"max_new_tokens": 3})
    with pytest.raises(ValueError, match="max_new_tokens must be an int, got 1.5"):
        DecodingOptions(max_new_tokens=1.5)
    with pytest.raises(ValueError, match="top_p"):
        DecodingOptions(top_p=0.0)
    with pytest.raises(ValueError, match="min_new_tokens"):
        DecodingOptions(min_new_tokens=-1)
