"""LazyLLM's generation API (lazy_core.generate) on tiny random models of every supported architecture: pruning off
== model.generate, a batch == its items alone, short prompts computed in full, sampling, log-likelihood, stats
and input checks."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model
from helpers import POLICIES, PROMPTS, PRUNE, batch_vs_alone, encode, full_last_logits
from pydantic import ValidationError
from transformers import GPT2Config, GPT2LMHeadModel

from lazy_core import LazyConfig, LazyLLM

# ---- pruning off == the model ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_off_matches_model_generate_and_logits(tiny_model, tiny_tokenizer, side):
    enc = encode(tiny_tokenizer, side=side)
    lazy = LazyLLM(tiny_model, LazyConfig.off())
    out = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=12)
    if side == "left":  # HF generate only supports left padding for decoder-only models
        ref = tiny_model.generate(**enc, max_new_tokens=12, do_sample=False)
        assert torch.equal(out.sequences, ref)
    else:
        for b in range(len(PROMPTS)):
            real = enc.input_ids[b][enc.attention_mask[b].bool()][None]
            ref = tiny_model.generate(real, max_new_tokens=12, do_sample=False)
            assert out.sequences[b, enc.input_ids.shape[1]:].tolist() == ref[0, real.shape[1]:].tolist()
    logits = lazy.prefill_logits(enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(logits, full_last_logits(tiny_model, enc.input_ids, enc.attention_mask), atol=1e-4,
                               rtol=0)
    assert all(s.computed_token_fraction == 1.0 and s.est_speedup == 1.0 for s in out.stats)


def test_off_matches_eager_model(tiny_tokenizer):
    model = make_tiny_model("llama", attn="eager")
    enc = encode(tiny_tokenizer)
    out = LazyLLM(model, LazyConfig.off()).generate(enc.input_ids, attention_mask=enc.attention_mask,
                                                    max_new_tokens=8)
    assert torch.equal(out.sequences, model.generate(**enc, max_new_tokens=8, do_sample=False))


# ---- batches ---------------------------------------------------------------------------------------------------------


BATCH_CASES = [dict(method=m) for m in ("attention", "static", "random")] + list(POLICIES.values())


@pytest.mark.parametrize("case", BATCH_CASES, ids=["attention", "static", "random", *[f"policy_{p}" for p in POLICIES]])
def test_batch_equals_items_alone(tiny_model, tiny_tokenizer, case):
    enc = encode(tiny_tokenizer)
    config = LazyConfig(**PRUNE, **case, query_window=3, pool_kernel=3)
    lazy = LazyLLM(tiny_model, config)
    for b, batch, alone in batch_vs_alone(lazy, enc):
        assert batch.stats[b].kept_per_layer == alone.stats[0].kept_per_layer
        assert batch.stats[b].revived_tokens == alone.stats[0].revived_tokens


# ---- on every device this machine has (CUDA where it exists) ---------------------------------------------------------


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_invariants_on_device(tiny_tokenizer, device):
    """Pruning off == model.generate token for token and a pruned batch == its items alone, on ``device`` (fp32:
    exact on CPU and on CUDA; benchmarks/gpu.py checks bf16 on real shapes)."""
    model = make_tiny_model("llama").to(device)
    enc = encode(tiny_tokenizer).to(device)
    off = LazyLLM(model, LazyConfig.off()).generate(enc.input_ids, attention_mask=enc.attention_mask,
                                                     max_new_tokens=10)
    assert torch.equal(off.sequences, model.generate(**enc, max_new_tokens=10, do_sample=False))
    lazy = LazyLLM(model, LazyConfig(**PRUNE, **POLICIES["top"]))
    for _, batch, _ in batch_vs_alone(lazy, enc):
        assert batch.sequences.device.type == device


# ---- short prompts: computed in full ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["select", "top"])
def test_prompts_under_min_prompt_tokens_are_computed_in_full(tiny_model, tiny_tokenizer, policy):
    """Per item: in a batch mixing a short and a long prompt only the long one is pruned, the short one's output is
    the unpruned model's token for token, and the batch equals its items run alone."""
    enc = encode(tiny_tokenizer)
    lengths = enc.attention_mask.sum(1).tolist()  # 94, 13 and 72 tokens
    config = LazyConfig(**PRUNE, revival={"name": policy}, min_prompt_tokens=80)
    lazy = LazyLLM(tiny_model, config)
    for b, out, alone in batch_vs_alone(lazy, enc):
        n = lengths[b]
        real = enc.input_ids[b][enc.attention_mask[b].bool()][None]
        assert [s.pruned for s in out.stats] == [length >= 80 for length in lengths] == [True, False, False]
        if n < 80:
            assert out.stats[b].kept_per_layer == [n] * 4 and out.stats[b].revived_tokens == 0
            full = tiny_model.generate(real, max_new_tokens=10, do_sample=False)
            assert alone.sequences.tolist() == full.tolist()
            assert alone.stats[0].est_speedup == 1.0 and not alone.stats[0].pruned
    assert out.stats[0].kept_per_layer[-1] < lengths[0]


@pytest.mark.parametrize("policy", ["select", "top"])
def test_long_prompts_skip_the_first_stage(tiny_model, tiny_tokenizer, policy):
    """later_start_tokens, per item: in a batch of 94-, 13- and 72-token prompts with the threshold at 72, the two long
    ones are generated as LazyConfig.later_start() generates them and the short one as the whole schedule, token for
    token and layer for layer; the batch equals its items alone."""
    enc = encode(tiny_tokenizer)
    lengths = enc.attention_mask.sum(1).tolist()
    config = LazyConfig(**PRUNE, revival={"name": policy}, later_start_tokens=72)
    late = LazyLLM(tiny_model, config.later_start())
    whole = LazyLLM(tiny_model, config.model_copy(update={"later_start_tokens": None}))
    for b, out, alone in batch_vs_alone(LazyLLM(tiny_model, config), enc):
        n = lengths[b]
        real = enc.input_ids[b][enc.attention_mask[b].bool()][None]
        ref = (late if n >= 72 else whole).generate(real, max_new_tokens=10)
        assert alone.sequences.tolist() == ref.sequences.tolist()
        assert alone.stats[0].kept_per_layer == ref.stats[0].kept_per_layer == out.stats[b].kept_per_layer
        assert alone.stats[0].revived_tokens == ref.stats[0].revived_tokens
        first = config.keep_budget(0, n)
        assert out.stats[b].kept_per_layer[1] == (n if n >= 72 else first) and first == (n if n >= 72 else (n + 1) // 2)
    assert [s.pruned for s in out.stats] == [True, True, True]


def test_a_pruned_empty_output_is_the_full_models_under_the_threshold(empty_case):
    """The pruned prefill picks end-of-sequence first on this prompt (an empty output); with the prompt under
    min_prompt_tokens it is computed in full and matches model.generate."""
    from conftest import EMPTY_LAZY
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(empty_case["path"]).eval()
    ids = torch.tensor([empty_case["ids"]])
    pruned = LazyLLM(model, LazyConfig(**EMPTY_LAZY)).generate(ids, max_new_tokens=8)
    assert pruned.stats[0].new_tokens == 1 and pruned.sequences[0, -1] == empty_case["lazy_first"]
    guard = LazyConfig(**EMPTY_LAZY, min_prompt_tokens=ids.shape[1] + 1)
    guarded = LazyLLM(model, guard).generate(ids, max_new_tokens=8)
    ref = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert guarded.sequences.tolist() == ref.tolist() and ref[0, ids.shape[1]] == empty_case["full_first"]
    assert not guarded.stats[0].pruned and pruned.stats[0].pruned
    # the threshold counts the whole prompt: at exactly min_prompt_tokens it prunes again
    at = LazyLLM(model, LazyConfig(**EMPTY_LAZY, min_prompt_tokens=ids.shape[1])).generate(ids, max_new_tokens=8)
    assert at.stats[0].pruned and at.sequences.tolist() == pruned.sequences.tolist()


# ---- stats -----------------------------------------------------------------------------------------------------------


def test_stats_follow_the_schedule(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer)
    out = LazyLLM(tiny_llama, LazyConfig(**PRUNE)).generate(enc.input_ids, attention_mask=enc.attention_mask,
                                                            max_new_tokens=5, eos_token_id=[])
    for b, s in enumerate(out.stats):
        n = int(enc.attention_mask[b].sum())
        b1, b2 = max(2, -(-n // 2)), max(2, -(-n // 4))
        assert s.prompt_tokens == n and s.new_tokens == 5
        assert s.kept_per_layer == [n, b1, b1, b2] == LazyConfig(**PRUNE).kept_per_layer(4, n)
        assert s.computed_token_fraction == pytest.approx((n + 2 * b1 + b2) / (4 * n))
        assert s.est_speedup > 1.0
        assert s.ttft_s > 0 and s.decode_s > 0 and s.kv_cache_bytes > 0


# ---- generation API --------------------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_eos_pads(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer)
    lazy = LazyLLM(tiny_llama, LazyConfig(**PRUNE))
    kw = dict(attention_mask=enc.attention_mask, max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9)
    a = lazy.generate(enc.input_ids, seed=7, **kw).sequences
    b = lazy.generate(enc.input_ids, seed=7, **kw).sequences
    assert torch.equal(a, b)
    greedy = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8)
    nucleus = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8, do_sample=True,
                            top_p=1e-6, seed=1)
    assert torch.equal(greedy.sequences, nucleus.sequences)
    width = enc.input_ids.shape[1]
    rows = greedy.sequences[:, width:].tolist()
    # an item and a step whose token has not appeared before in that item: it becomes the stop token
    b, k = next((b, k) for b, row in enumerate(rows) for k in range(1, len(row)) if row[k] not in row[:k])
    stop = rows[b][k]
    out = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8, eos_token_id=stop,
                        pad_token_id=0)
    row = out.sequences[b, width:].tolist()
    assert row[: k + 1] == rows[b][: k + 1]
    assert all(t == 0 for t in row[k + 1:])
    assert out.stats[b].new_tokens == k + 1


def test_loglikelihood_matches_full_model(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer, PROMPTS[:2])
    conts = [[40, 41, 42], [50]]
    got = LazyLLM(tiny_llama, LazyConfig.off()).loglikelihood(enc.input_ids, enc.attention_mask, conts)
    for b, cont in enumerate(conts):
        real = enc.input_ids[b][enc.attention_mask[b].bool()].tolist()
        ids = torch.tensor([real + cont])
        with torch.inference_mode():
            logp = torch.log_softmax(tiny_llama(ids).logits[0].double(), -1)
        ref = sum(float(logp[len(real) - 1 + i, t]) for i, t in enumerate(cont))
        assert got[b] == pytest.approx(ref, abs=1e-4)


# ---- bad input -------------------------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(tiny_llama, tiny_tokenizer):
    lazy = LazyLLM(tiny_llama, LazyConfig(**PRUNE))
    enc = encode(tiny_tokenizer)
    with pytest.raises(ValueError, match="empty prompt"):
        lazy.generate(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty prompt at batch index"):
        lazy.generate(enc.input_ids, attention_mask=torch.cat([enc.attention_mask[:2], enc.attention_mask[2:] * 0]))
    with pytest.raises(ValueError, match="shape of input_ids"):
        lazy.generate(enc.input_ids, attention_mask=enc.attention_mask[:, 1:])
    holes = enc.attention_mask.clone()
    holes[0, -3] = 0
    with pytest.raises(ValueError, match="holes"):
        lazy.generate(enc.input_ids, attention_mask=holes)
    with pytest.raises(ValueError, match="longer than the model's context"):
        lazy.generate(torch.full((1, 2049), 5))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        lazy.generate(torch.full((1, 2040), 5), max_new_tokens=20)
    with pytest.raises(ValueError, match="max_new_tokens"):
        lazy.generate(enc.input_ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        lazy.generate(torch.full((1, 4), 10_000))
    with pytest.raises(ValueError, match="temperature"):
        lazy.generate(enc.input_ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValidationError, match=r"keep_ratios must lie in \(0, 1\]"):
        LazyConfig(prune_layers=[1], keep_ratios=[1.5])
    with pytest.raises(ValidationError, match=r"keep_ratios must lie in \(0, 1\]"):
        LazyConfig(prune_layers=[1], keep_ratios=[0.0])
    with pytest.raises(ValidationError, match="one cumulative keep ratio per pruning layer"):
        LazyConfig(prune_layers=[1, 2], keep_ratios=[0.5])
    with pytest.raises(ValidationError, match="must not increase"):
        LazyConfig(prune_layers=[1, 2], keep_ratios=[0.2, 0.5])
    with pytest.raises(ValueError, match=r"out of range for a 4-layer model: .* valid layers are 0..2"):
        LazyLLM(tiny_llama, LazyConfig(prune_layers=[3], keep_ratios=[0.5]))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ValueError, match="llama, mistral, qwen2, qwen3"):
        LazyLLM(gpt2, LazyConfig.off())
