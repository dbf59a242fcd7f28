"""Invariants of the lazy engine on tiny random models of every supported architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model
from pydantic import ValidationError
from transformers import GPT2Config, GPT2LMHeadModel

from lazy_core import AttentionPruner, LazyConfig, LazyLLM, RandomPruner, StaticPruner
from lazy_core.scoring import make_pruner

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door.",
    "Short prompt.",
    "A medium length prompt that talks about pruning tokens in long contexts.",
]
PRUNE = dict(prune_layers=[0, 2], keep_ratios=[0.5, 0.25], min_keep_tokens=2, keep_tail=2)


def encode(tok, prompts=PROMPTS, side="left"):
    tok.padding_side = side
    try:
        return tok(prompts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "left"


def full_last_logits(model, ids, mask):
    """Reference next-token logits of the unmodified model for each item run alone."""
    rows = []
    with torch.inference_mode():
        for b in range(ids.shape[0]):
            real = ids[b][mask[b].bool()][None]
            rows.append(model(real).logits[0, -1].float())
    return torch.stack(rows)


def batch_vs_alone(lazy, enc, max_new_tokens=10):
    """Generate the batch, then each item alone: yields (b, batch output, alone output) after checking the tokens of
    each item equal (the batch's row padded after the item's end)."""
    batch = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=max_new_tokens)
    width = enc.input_ids.shape[1]
    pad = lazy.model.config.pad_token_id
    for b in range(enc.input_ids.shape[0]):
        real = enc.input_ids[b][enc.attention_mask[b].bool()][None]
        alone = lazy.generate(real, max_new_tokens=max_new_tokens)
        mine, ref = batch.sequences[b, width:].tolist(), alone.sequences[0, real.shape[1]:].tolist()
        assert mine[: len(ref)] == ref and set(mine[len(ref):]) <= {pad}
        yield b, batch, alone


class RecordingPruner(AttentionPruner):
    """LazyLLM scoring that records what it saw and chose, per call."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def select(self, inputs, budget, forced):
        keep = super().select(inputs, budget, forced)
        self.calls.append(dict(inputs=inputs, scores=self.scores(inputs), keep=keep, budget=budget, forced=forced))
        return keep


# ---- pruning off == the model ---------------------------------------------------------------------------------------


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


# ---- scoring and selection ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scoring",
    [
        dict(query_window=1, head_reduce="mean", query_reduce="mean", pool_kernel=1),  # the paper
        dict(query_window=4, head_reduce="max", query_reduce="max", pool_kernel=3),
        dict(query_window=3, head_reduce="mean", query_reduce="mean", pool_kernel=1),
    ],
)
def test_scores_equal_eager_attention_reference(tiny_tokenizer, scoring):
    model = make_tiny_model("llama", attn="eager")
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    layer = 1
    config = LazyConfig(prune_layers=[layer], keep_ratios=[0.4], min_keep_tokens=1, keep_tail=1, **scoring)
    pruner = RecordingPruner(config)
    LazyLLM(model, config, pruner=pruner).generate(enc.input_ids, max_new_tokens=1)
    with torch.inference_mode():
        attn = model(enc.input_ids, output_attentions=True).attentions[layer].float()  # [1, H, T, T]
    window = attn[:, :, -scoring["query_window"]:, :]
    heads = window.mean(1) if scoring["head_reduce"] == "mean" else window.amax(1)
    ref = heads.mean(1) if scoring["query_reduce"] == "mean" else heads.amax(1)
    if scoring["pool_kernel"] > 1:
        k = scoring["pool_kernel"]
        ref = F.max_pool1d(ref[:, None], k, stride=1, padding=k // 2)[:, 0]
    got = pruner.calls[0]["scores"]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_kept_tokens_are_top_scored_nested_and_keep_positions(tiny_tokenizer):
    model = make_tiny_model("qwen2")
    enc = encode(tiny_tokenizer)
    config = LazyConfig(**PRUNE, query_window=2, pool_kernel=1)
    pruner = RecordingPruner(config)
    lengths = enc.attention_mask.sum(1)
    LazyLLM(model, config, pruner=pruner).generate(enc.input_ids, attention_mask=enc.attention_mask,
                                                   max_new_tokens=1)
    first, second = pruner.calls
    for call in (first, second):
        inputs, keep, scores = call["inputs"], call["keep"], call["scores"]
        for b in range(len(PROMPTS)):
            n = int(lengths[b])
            cand = inputs.candidates[b]
            kept = keep[b] & cand
            assert not bool((keep[b] & ~cand).any()), "pads or non-candidates kept"
            assert int(kept.sum()) == int(call["budget"][b].clamp(max=int(cand.sum())))
            pos = inputs.key_pos[b]
            assert bool(kept[pos == n - 1].all()), "the last token must be kept"
            forced = call["forced"][b]
            free_kept = kept & ~forced
            free_dropped = cand & ~kept
            if free_kept.any() and free_dropped.any():
                assert float(scores[b][free_kept].min()) >= float(scores[b][free_dropped].max())
    # nested: the second pruning layer sees exactly the tokens the first kept, at their original positions
    for b in range(len(PROMPTS)):
        kept_first = first["inputs"].key_pos[b][first["keep"][b]].tolist()
        seen_second = second["inputs"].key_pos[b][second["inputs"].key_valid[b]].tolist()
        assert seen_second == sorted(kept_first)


def test_pruned_prefill_equals_reference_on_kept_subset(tiny_model, tiny_tokenizer):
    """Layers after the pruning layer compute only the kept tokens, at their original positions (RoPE not
    renumbered): the same as driving the model's layers by hand on that subset."""
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    layer = 1
    config = LazyConfig(prune_layers=[layer], keep_ratios=[0.3], min_keep_tokens=1, keep_tail=1, revive=False)
    pruner = RecordingPruner(config)
    logits = LazyLLM(tiny_model, config, pruner=pruner).prefill_logits(enc.input_ids)
    kept_pos = pruner.calls[0]["inputs"].key_pos[0][pruner.calls[0]["keep"][0]].sort().values
    inner = tiny_model.model
    with torch.inference_mode():
        h = inner.embed_tokens(enc.input_ids)
        pos = torch.arange(enc.input_ids.shape[1])[None]
        for j, block in enumerate(inner.layers):
            if j == layer + 1:
                h, pos = h[:, kept_pos], pos[:, kept_pos]
            h = block(h, position_embeddings=inner.rotary_emb(h, pos), attention_mask=None)
        ref = tiny_model.lm_head(inner.norm(h[:, -1:]))[:, -1].float()
    assert kept_pos[-1] == enc.input_ids.shape[1] - 1
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)


# ---- batches ---------------------------------------------------------------------------------------------------------


# Every decoding policy behind the one contract (LazyConfig fields), each with revival that actually happens.
POLICIES = {
    "select": dict(revive_policy="select"),
    "select_cap": dict(revive_policy="select", revive_per_step=1),
    "select_hysteresis": dict(revive_policy="select", revive_hysteresis=0.5),
    "select_first_steps": dict(revive_policy="select", revive_steps=3),
    "top": dict(revive_policy="top", revive_top=6),
}
BATCH_CASES = [dict(method=m) for m in ("attention", "static", "random")] + list(POLICIES.values())


@pytest.mark.parametrize("case", BATCH_CASES, ids=["attention", "static", "random", *[f"policy_{p}" for p in POLICIES]])
def test_batch_equals_items_alone(tiny_model, tiny_tokenizer, case):
    enc = encode(tiny_tokenizer)
    config = LazyConfig(**PRUNE, **case, query_window=3, pool_kernel=3)
    lazy = LazyLLM(tiny_model, config)
    for b, batch, alone in batch_vs_alone(lazy, enc):
        assert batch.stats[b].kept_per_layer == alone.stats[0].kept_per_layer
        assert batch.stats[b].revived_tokens == alone.stats[0].revived_tokens


def test_reviving_steps_run_on_packed_rows(tiny_model, tiny_tokenizer, monkeypatch):
    """Reviving steps whose batch layout is mostly pad rows run on the packed rows (lazy_core.packing: row-wise ops on
    the real rows only, attention item by item), and every item still equals its run alone."""
    from lazy_core.packing import RowPacking

    original, used = RowPacking.of, []

    def spy(valid):
        packing = original(valid)
        used.append(packing is not None)
        return packing

    monkeypatch.setattr(RowPacking, "of", staticmethod(spy))
    enc = encode(tiny_tokenizer)
    lazy = LazyLLM(tiny_model, LazyConfig(**PRUNE, **POLICIES["top"], query_window=3, pool_kernel=3))
    for b, batch, alone in batch_vs_alone(lazy, enc, max_new_tokens=12):
        assert batch.stats[b].revived_tokens == alone.stats[0].revived_tokens
    assert any(used), "no reviving step of this batch was packed"


# ---- Aux Cache revival ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(POLICIES))
def test_each_token_computed_at_most_once_per_layer(tiny_model, tiny_tokenizer, policy):
    enc = encode(tiny_tokenizer)
    config = LazyConfig(**PRUNE, **POLICIES[policy], query_window=2)
    lazy = LazyLLM(tiny_model, config, keep_state=True)
    out = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=16, eos_token_id=[])
    state = lazy.last_state
    assert sum(s.revived_tokens for s in out.stats) > 0, "this schedule should revive tokens"
    for j, kv in enumerate(state.cache.layers):
        for b in range(len(PROMPTS)):
            positions = kv.positions[b, : kv.length][kv.valid[b, : kv.length]].tolist()
            assert len(positions) == len(set(positions)), f"a token was computed twice at layer {j}"
            assert len(positions) == int(state.cache.computed[j, b])
    for b, s in enumerate(out.stats):
        total = sum(int(state.cache.computed[j, b]) for j in range(len(state.cache.layers)))
        assert s.computed_token_fraction_total == pytest.approx(
            total / (len(state.cache.layers) * (s.prompt_tokens + s.new_tokens - 1)))


class ReviveAllPruner(AttentionPruner):
    """Prefill keeps only the tail; every decoding step selects every prompt token (so all get revived)."""

    def select(self, inputs, budget, forced):
        newest_candidate = inputs.key_pos.masked_fill(~inputs.candidates, -1).amax(1)
        decoding = bool((inputs.query_pos[:, -1] > newest_candidate).all())
        return inputs.candidates.clone() if decoding else super().select(inputs, budget, forced)


def test_revival_equals_computing_the_tokens_then(tiny_model, tiny_tokenizer):
    """Prefill keeps 10 % of the prompt after the second-to-last layer; the first decoding step selects every token,
    so every pruned token is revived from the Aux Cache and computed at the last layer at its original position.
    K/V of a layer depend only on the layer's input, which pruning at L-2 leaves exact: from then on the engine holds
    the full model's cache, so it continues (prompt + first token) exactly like the full model."""
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    n = enc.input_ids.shape[1]
    last = tiny_model.config.num_hidden_layers - 2
    config = LazyConfig(prune_layers=[last], keep_ratios=[0.1], min_keep_tokens=1, keep_tail=2)
    lazy = LazyLLM(tiny_model, config, pruner=ReviveAllPruner(config), keep_state=True)
    out = lazy.generate(enc.input_ids, max_new_tokens=8, eos_token_id=[])
    stats = out.stats[0]
    assert stats.kept_per_layer[last + 1] == max(2, -(-n // 10))
    assert stats.revived_tokens == n - stats.kept_per_layer[last + 1]
    first = out.sequences[:, : n + 1]
    ref = tiny_model.generate(first, max_new_tokens=7, do_sample=False, eos_token_id=None)
    assert out.sequences.tolist() == ref.tolist()


def test_revived_tokens_get_the_full_models_states(tiny_model, tiny_tokenizer):
    """Pruned after layer 1 and all revived at the first decoding step: layer 2's K/V (computed from the Aux Cache
    states) equal the full model's for every token."""
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    n = enc.input_ids.shape[1]
    config = LazyConfig(prune_layers=[1], keep_ratios=[0.1], min_keep_tokens=1, keep_tail=2)
    lazy = LazyLLM(tiny_model, config, pruner=ReviveAllPruner(config), keep_state=True)
    out = lazy.generate(enc.input_ids, max_new_tokens=2, eos_token_id=[])
    assert out.stats[0].revived_tokens == n - out.stats[0].kept_per_layer[2]
    with torch.inference_mode():
        ref = tiny_model(out.sequences[:, : n + 1], use_cache=True).past_key_values
    for j in range(3):
        kv = lazy.last_state.cache.layers[j]
        order = kv.positions[0, : kv.length].argsort()
        assert kv.positions[0, : kv.length][order].tolist() == list(range(n + 1))
        torch.testing.assert_close(kv.keys[0, :, : kv.length][:, order], ref.layers[j].keys[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(kv.values[0, :, : kv.length][:, order], ref.layers[j].values[0], atol=1e-5, rtol=0)


def test_revive_per_step_caps_revivals(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    steps = 8
    free = LazyLLM(tiny_llama, LazyConfig(**PRUNE)).generate(enc.input_ids, max_new_tokens=steps, eos_token_id=[])
    capped = LazyLLM(tiny_llama, LazyConfig(**PRUNE, revive_per_step=1), keep_state=True).generate(
        enc.input_ids, max_new_tokens=steps, eos_token_id=[])
    assert free.stats[0].revived_tokens > 2 * (steps - 1)
    assert 0 < capped.stats[0].revived_tokens <= 2 * (steps - 1)  # 2 pruning layers, steps - 1 decoding steps


def test_top_policy_revives_the_best_scored_and_keeps_what_it_computed(tiny_llama, tiny_tokenizer):
    """'top': after a decoding step, each pruning layer's revive_top best-scored prompt tokens have K/V at the next
    layer; and no token leaves a layer's key set (a step attends every token the layer holds)."""
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    config = LazyConfig(prune_layers=[0], keep_ratios=[0.2], min_keep_tokens=2, keep_tail=2, revive_policy="top",
                        revive_top=4)
    pruner = RecordingPruner(config)
    lazy = LazyLLM(tiny_llama, config, pruner=pruner, keep_state=True)
    out = lazy.generate(enc.input_ids, max_new_tokens=6, eos_token_id=[])
    assert out.stats[0].revived_tokens > 0
    layer1 = lazy.last_state.cache.layers[1]
    held = set(layer1.positions[0, : layer1.length][layer1.valid[0, : layer1.length]].tolist())
    decode_calls = pruner.calls[1:]  # the first call is the prefill's
    assert len(decode_calls) == 5
    for call in decode_calls:
        assert int(call["budget"][0]) == 4 and not call["forced"].any()
        top = call["inputs"].key_pos[call["keep"]].tolist()
        assert len(top) == 4 and set(top) <= held
    prefill_kept = pruner.calls[0]["inputs"].key_pos[pruner.calls[0]["keep"]].tolist()
    assert set(prefill_kept) <= held  # nothing the prefill kept was dropped by a decoding step


def test_hysteresis_and_first_steps_revive_less(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    steps = 10

    def revived(**update):
        config = LazyConfig(**PRUNE, **update)
        return LazyLLM(tiny_llama, config).generate(enc.input_ids, max_new_tokens=steps, eos_token_id=[]).stats[0]

    free, sticky, early = revived(), revived(revive_hysteresis=1.0), revived(revive_steps=2)
    assert free.revived_tokens > 0
    assert sticky.revived_tokens < free.revived_tokens
    assert 0 < early.revived_tokens < free.revived_tokens


@pytest.mark.parametrize("policy", list(POLICIES))
def test_policies_are_exact_when_pruning_is_off(tiny_model, tiny_tokenizer, policy):
    enc = encode(tiny_tokenizer)
    config = LazyConfig(prune_layers=[0, 2], keep_ratios=[1.0, 1.0], **POLICIES[policy])
    out = LazyLLM(tiny_model, config).generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=10)
    ref = tiny_model.generate(**enc, max_new_tokens=10, do_sample=False)
    assert torch.equal(out.sequences, ref)


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


def test_revive_false_prunes_prefill_only(tiny_model, tiny_tokenizer):
    enc = encode(tiny_tokenizer)
    out = LazyLLM(tiny_model, LazyConfig(**PRUNE, revive=False)).generate(
        enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8, eos_token_id=[]
    )
    assert all(s.revived_tokens == 0 and s.aux_cache_bytes == 0 for s in out.stats)


# ---- on every device this machine has (CUDA where it exists) --------------------------------------------------------

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
    lazy = LazyLLM(model, LazyConfig(**PRUNE, revive_policy="top", revive_top=6))
    for _, batch, _ in batch_vs_alone(lazy, enc):
        assert batch.sequences.device.type == device


# ---- short prompts: computed in full -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["select", "top"])
def test_prompts_under_min_prompt_tokens_are_computed_in_full(tiny_model, tiny_tokenizer, policy):
    """Per item: in a batch mixing a short and a long prompt only the long one is pruned, the short one's output is
    the unpruned model's token for token, and the batch equals its items run alone."""
    enc = encode(tiny_tokenizer)
    lengths = enc.attention_mask.sum(1).tolist()  # 94, 13 and 72 tokens
    config = LazyConfig(**PRUNE, revive_policy=policy, min_prompt_tokens=80)
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


def test_min_prompt_tokens_presets_and_validation():
    assert LazyConfig.paper(30).min_prompt_tokens == 0 and LazyConfig().min_prompt_tokens == 0
    default = LazyConfig.default_for(30)
    assert default.min_prompt_tokens > 0
    assert not default.prunes(default.min_prompt_tokens - 1) and default.prunes(default.min_prompt_tokens)
    assert default.kept_per_layer(30, default.min_prompt_tokens - 1) == [default.min_prompt_tokens - 1] * 30
    with pytest.raises(ValidationError, match="min_prompt_tokens"):
        LazyConfig(min_prompt_tokens=-1)


# ---- baselines behind the same contract -----------------------------------------------------------------------------


def test_static_prunes_once_and_random_is_seeded(tiny_llama, tiny_tokenizer):
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    n = enc.input_ids.shape[1]
    static = LazyLLM(tiny_llama, LazyConfig(**PRUNE, method="static")).generate(enc.input_ids, max_new_tokens=4)
    budget = max(2, -(-n // 4))
    assert static.stats[0].kept_per_layer == [n, budget, budget, budget]
    assert LazyConfig(**PRUNE, method="static").kept_per_layer(4, n) == [n, budget, budget, budget]
    assert static.stats[0].revived_tokens == 0
    assert isinstance(make_pruner(LazyConfig(**PRUNE, method="static")), StaticPruner)
    config = LazyConfig(**PRUNE, method="random", seed=3)
    pruner_a, pruner_b = RecordingRandom(config), RecordingRandom(config)
    LazyLLM(tiny_llama, config, pruner=pruner_a).generate(enc.input_ids, max_new_tokens=1)
    LazyLLM(tiny_llama, config, pruner=pruner_b).generate(enc.input_ids, max_new_tokens=1)
    assert torch.equal(pruner_a.keeps[0], pruner_b.keeps[0])


class RecordingRandom(RandomPruner):
    def __init__(self, config):
        super().__init__(config)
        self.keeps = []

    def select(self, inputs, budget, forced):
        keep = super().select(inputs, budget, forced)
        self.keeps.append(keep)
        return keep


# ---- stats ----------------------------------------------------------------------------------------------------------


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


# ---- generation API -------------------------------------------------------------------------------------------------


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


# ---- the model is unchanged -----------------------------------------------------------------------------------------


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


# ---- bad input ------------------------------------------------------------------------------------------------------


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


def test_default_for_scales_with_depth(tiny_llama):
    assert LazyConfig.default_for(30).prune_layers == [7, 14, 21]
    for depth in (4, 12, 24, 32, 80):
        cfg = LazyConfig.default_for(depth)
        cfg.check_depth(depth)
        assert cfg.enabled
    assert not LazyConfig.default_for(2).enabled
    LazyLLM(tiny_llama, LazyConfig.default_for(tiny_llama))


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_sliding_window_models_match_when_off(tiny_tokenizer, arch):
    """Prompts longer than the sliding window: the engine's position masks carry the window like the model's own."""
    from conftest import _common
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    torch.manual_seed(0)
    if arch == "mistral":
        config = MistralConfig(**_common(4), sliding_window=16)
    else:
        config = Qwen2Config(**_common(4), sliding_window=16, use_sliding_window=True, max_window_layers=2)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    enc = encode(tiny_tokenizer)
    lazy = LazyLLM(model, LazyConfig.off())
    out = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8)
    assert torch.equal(out.sequences, model.generate(**enc, max_new_tokens=8, do_sample=False))
    torch.testing.assert_close(lazy.prefill_logits(enc.input_ids, enc.attention_mask),
                               full_last_logits(model, enc.input_ids, enc.attention_mask), atol=1e-4, rtol=0)
    schedule = PRUNE if arch == "mistral" else {**PRUNE, "prune_layers": [0, 1]}  # qwen2 here: 0-1 global, 2-3 sliding
    pruned = LazyLLM(model, LazyConfig(**schedule)).generate(enc.input_ids, attention_mask=enc.attention_mask,
                                                             max_new_tokens=8)
    assert pruned.sequences.shape == out.sequences.shape
    if arch == "qwen2":  # a hybrid model refuses to score at a sliding layer (its last token sees only its window)
        with pytest.raises(ValueError, match=r"prune_layers \[2\] are sliding-window layers"):
            LazyLLM(model, LazyConfig(**PRUNE))


def test_held_tokens_is_what_the_caches_hold(tiny_llama):
    """LazyConfig.held_tokens (what the pipeline's batch budget counts) == the K/V rows each layer of the engine's
    cache holds, averaged over the layers, after prefill and the decoding steps that fed tokens back."""
    config = LazyConfig(prune_layers=[0, 2], keep_ratios=[0.5, 0.25], min_keep_tokens=2, revive=False)
    engine = LazyLLM(tiny_llama, config, keep_state=True)
    ids = torch.randint(3, 100, (1, 40))
    engine.generate(ids, max_new_tokens=6, eos_token_id=[])
    cache = engine.last_state.cache
    per_layer = [int(kv.valid[0, : kv.length].sum()) for kv in cache.layers]  # 40 / 20 / 20 / 10 prompt rows + 5
    held = config.held_tokens(len(per_layer), 40, 5)  # the 6th new token is never fed back
    assert held == -(-sum(per_layer) // len(per_layer)) == 23 + 5
    assert LazyConfig.off().held_tokens(4, 40, 5) == 45
    assert config.model_copy(update={"min_prompt_tokens": 41}).held_tokens(4, 40, 5) == 45  # computed in full


def test_resolve_names_the_pipelines_schedules(tiny_llama):
    """LazyConfig.resolve: what the worker and the driver's batch budget both read a `lazy` setting as."""
    assert LazyConfig.resolve("default", tiny_llama) == LazyConfig.default_for(tiny_llama)
    assert LazyConfig.resolve("default", tiny_llama.config) == LazyConfig.default_for(tiny_llama)
    assert LazyConfig.resolve("off", tiny_llama) == LazyConfig.off()
    assert LazyConfig.resolve(PRUNE, tiny_llama) == LazyConfig(**PRUNE)
    with pytest.raises(ValueError, match="lazy must be 'default', 'off'"):
        LazyConfig.resolve("fast", tiny_llama)
