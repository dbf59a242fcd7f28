"""The attention hook (lazy_core.attention): the model is unchanged after use, its attention implementation
restored even when a generation fails."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model
from helpers import PRUNE, encode

from lazy_core import AttentionPruner, LazyConfig, LazyLLM


def test_model_unchanged_after_use(tiny_tokenizer):
    model = make_tiny_model("qwen3")
    enc = encode(tiny_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model.generate(**enc, max_new_tokens=6, do_sample=False)
    impl = model.config._attn_implementation
    LazyLLM(model, LazyConfig(**PRUNE)).generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=6)

    class Boom(AttentionPruner):
        def select(self, inputs, budget, forced):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        LazyLLM(model, LazyConfig(**PRUNE), pruner=Boom(LazyConfig(**PRUNE))).generate(enc.input_ids, max_new_tokens=2)
    assert model.config._attn_implementation == impl
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.generate(**enc, max_new_tokens=6, do_sample=False), ref)
