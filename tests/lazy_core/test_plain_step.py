"""The fixed-shape plain decoding step (lazy_core.plain_step) in a continuous stream, fp32: torch.compile takes it
whole (fullgraph, no graph break) as one graph for a whole stream of joins, ends and growing buffers, on every
architecture; its tokens equal the eager stream's; the model is unchanged after use."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, make_tiny_model
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import lazy_core.plain_step as plain_step
from lazy_core import LazyConfig, LazyLLM
from lazy_core.plain_step import PlainStep

# 16 prompts of mixed lengths (under and over min_prompt_tokens) and their own limits: items join and end at
# different steps, and later newcomers hold more than the first ones (the buffers grow)
LENGTHS = [30, 12, 45, 20, 8, 33, 50, 17, 25, 40, 11, 29, 36, 9, 44, 21]
STOPS = [5, 9, 3, 12, 7, 4, 10, 6, 8, 11, 2, 9, 5, 7, 3, 10]
MAX_GRAPHS = 1  # one compiled graph per stream: the buffers' slot dim is dynamic


def _prompts(vocab: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (n,), generator=gen) for n in LENGTHS]


def _config(arch: str) -> LazyConfig:
    layers = [2, 4] if arch == "gemma3" else [1, 2]
    return LazyConfig(prune_layers=layers, keep_ratios=[0.5, 0.25], min_keep_tokens=2, keep_tail=2, revive_steps=2,
                      min_prompt_tokens=20, query_window=2)


def _stream(lazy: LazyLLM, prompts, compile_step: str):
    return lazy.generate_continuous(prompts, slots=4, max_new_tokens=12, stop_after=STOPS, eos_token_id=[],
                                    compile_step=compile_step)


@pytest.mark.parametrize("arch", [*ARCHS, "gemma3"])
def test_a_stream_compiles_to_one_graph_without_breaks(arch, monkeypatch):
    """fullgraph=True (a graph break raises), dynamo's counters: no break, at most MAX_GRAPHS compilations for a
    stream whose buffers grow; tokens equal the eager stream's; the model unchanged."""
    model = make_tiny_model(arch, num_layers=6) if arch == "gemma3" else make_tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lazy = LazyLLM(model, _config(arch))
    prompts = _prompts(model.config.vocab_size)
    eager = _stream(lazy, prompts, "off")
    counter = CompileCounter()
    monkeypatch.setattr(plain_step, "BACKEND", counter)
    torch._dynamo.reset()
    counters.clear()
    compiled = _stream(lazy, prompts, "default")
    assert [o.sequences.tolist() for o in compiled.outputs] == [o.sequences.tolist() for o in eager.outputs]
    assert compiled.counters.plain_steps == eager.counters.plain_steps > 0
    assert compiled.counters.joins >= 8 and compiled.counters.steps > compiled.counters.plain_steps  # both kinds ran
    assert sum(counters["graph_break"].values()) == 0
    assert 1 <= counter.frame_count <= MAX_GRAPHS
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config._attn_implementation != "lazyllm"


def test_inductor_tokens_equal_eager(tiny_llama):
    """The real compiler (inductor, CPU C++): the same tokens and stats as the eager stream."""
    lazy = LazyLLM(tiny_llama, _config("llama"))
    prompts = _prompts(tiny_llama.config.vocab_size)
    eager = _stream(lazy, prompts, "off")
    torch._dynamo.reset()
    compiled = _stream(lazy, prompts, "default")
    for mine, ref in zip(compiled.outputs, eager.outputs, strict=True):
        assert mine.sequences.tolist() == ref.sequences.tolist()
        assert mine.stats[0].computed_token_fraction_total == ref.stats[0].computed_token_fraction_total
        assert mine.stats[0].kv_cache_bytes == ref.stats[0].kv_cache_bytes


def test_fixed_step_logits_equal_the_eager_step(tiny_llama, tiny_tokenizer):
    """One plain step over a slot state, a free row beside live ones: the live rows' logits equal the engine's eager
    decode of the same rows (fp32, tight), and the free row stays finite and holds nothing."""
    from lazy_core.attention import attention_hook
    from lazy_core.engine import BatchState

    lazy = LazyLLM(tiny_llama, _config("llama"))
    prompts = _prompts(tiny_llama.config.vocab_size)[:3]
    lengths = torch.tensor([p.shape[0] for p in prompts])
    left = torch.zeros(3, int(lengths.max()), dtype=torch.long)
    for b, p in enumerate(prompts):
        left[b, : p.shape[0]] = p
    with torch.inference_mode(), attention_hook(tiny_llama) as inner:
        group = BatchState(lazy.parts, lengths, capacity=int(lengths.max()) + 4)
        loop = lazy.prefill_loop(group, inner)
        first = loop.prefill(group, left).argmax(-1)
        slots = BatchState.slots(lazy.parts, 4)
        slots.place([0, 2, 3], group, [0, 1, 2], 4)
        step = 10  # past revive_steps: a plain step
        ref = loop.decode(group, first, lengths, torch.ones(3, dtype=torch.bool), step=step)
        tokens = torch.tensor([first[0], 0, first[1], first[2]])
        positions = torch.tensor([lengths[0], 0, lengths[1], lengths[2]])
        live = torch.tensor([True, False, True, True])
        logits = PlainStep(lazy.parts, inner)(slots, tokens, positions, live)
    torch.testing.assert_close(logits[[0, 2, 3]], ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logits).all()
    assert not any(kv.valid[1].any() for kv in slots.cache.layers)
    assert [int(kv.fill[1]) for kv in slots.cache.layers] == [0] * len(slots.cache.layers)


def test_unknown_compile_mode_is_refused(tiny_llama):
    lazy = LazyLLM(tiny_llama, LazyConfig.off())
    with pytest.raises(ValueError, match="compile must be one of"):
        PlainStep(lazy.parts, "sdpa", "fast")
