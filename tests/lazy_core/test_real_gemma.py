"""The real Gemma 3 270M base model (hybrid attention: global layers 5, 11, 17 of 18) at 1-2K tokens, CPU, fp32."""

from __future__ import annotations

import pytest
import torch

from lazy_core import LazyConfig, LazyLLM

pytestmark = pytest.mark.slow  # the real Gemma 3 270M


@pytest.fixture(scope="module")
def real_gemma():
    from lazy_core import load_model

    return load_model("gemma3-270m", dtype="float32", device="cpu")


def test_real_gemma_loads_as_hybrid_and_matches_generate_when_off(real_gemma):
    from benchmarks.data import load_essays
    from lazy_core.arch import model_parts

    model, tok = real_gemma
    parts = model_parts(model)
    assert model.config.model_type == "gemma3_text" and parts.global_layers == [5, 11, 17]
    assert parts.sliding_windows[0] == 512 and model.config.max_position_embeddings == 32768
    assert not tok.chat_template  # the base model: completion prompts
    text = load_essays()[0][:6000]
    ids = tok(text, return_tensors="pt").input_ids[:, :1200]
    out = LazyLLM(model, LazyConfig.off()).generate(ids, max_new_tokens=8)
    ref = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(out.sequences, ref)


def test_real_gemma_finds_a_passkey_at_2k_pruned(real_gemma):
    """Completion-style passkey in real essays, ~2K tokens: the default schedule (pruning at global layers 5 and 11)
    answers as the full model does."""
    from benchmarks.data import load_essays

    model, tok = real_gemma
    essays = load_essays()
    body = tok(essays[1] + "\n\n" + essays[2], add_special_tokens=False).input_ids[:1900]
    half = len(body) // 2
    needle = tok(" The vault code chosen by Maria is 48213. ", add_special_tokens=False).input_ids
    tail = tok("\n\nQuestion: what is the vault code chosen by Maria?\nAnswer: The vault code chosen by Maria is",
               add_special_tokens=False).input_ids
    ids = torch.tensor([[tok.bos_token_id, *body[:half], *needle, *body[half:], *tail]])
    lazy = LazyLLM(model, LazyConfig.default_for(model))
    out = lazy.generate(ids, max_new_tokens=6)
    full = LazyLLM(model, LazyConfig.off()).generate(ids, max_new_tokens=6)
    answer = tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True)
    assert "48213" in tok.decode(full.sequences[0, ids.shape[1]:], skip_special_tokens=True)
    assert "48213" in answer, answer
    stats = out.stats[0]
    assert stats.pruned and stats.kept_per_layer[6] < ids.shape[1] and stats.est_speedup > 1.3


def test_real_gemma_calibrates_at_its_global_layers(real_gemma):
    """calibrate() on the real Gemma 3 270M, 2 samples of ~1.1K tokens (past the default's min_prompt_tokens, so the
    candidates prune): every candidate sits on global layers 5 and 11, LazyLLM accepts each, and with any drop
    allowed the choice is the fastest of them."""
    from benchmarks.data import load_essays
    from lazy_core import calibrate
    from lazy_core.calibrate import candidate_schedules

    model, tok = real_gemma
    essays = load_essays()
    samples = [[tok.bos_token_id, *tok(essays[k] + "\n\n" + essays[k + 1], add_special_tokens=False).input_ids[:1100]]
               for k in (3, 5)]
    candidates = candidate_schedules(model)
    assert len(candidates) > 1
    for config in candidates:
        assert set(config.prune_layers) <= {5, 11}
        LazyLLM(model, config)  # refuses a pruning layer with a sliding window
    chosen = calibrate(model, tok, samples, max_drop=1.0, max_new_tokens=4)
    assert chosen in candidates and all(chosen.prunes(len(s)) for s in samples)
