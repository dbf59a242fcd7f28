"""Continuous batching (lazy_core.continuous) on tiny random models of every supported architecture, fp32: each item's
tokens and stats equal its run alone whatever slot and step it joined at, each token is computed at most once per
layer, the model is unchanged, and the slot counters and input checks."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, make_tiny_model
from helpers import POLICIES, PRUNE

from lazy_core import LazyConfig, LazyLLM
from lazy_core.engine import BatchState

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door.",
    "Short prompt.",
    "A medium length prompt that talks about pruning tokens in long contexts.",
    "Another prompt of some length that goes on for a while about nothing in particular at all, really.",
    "Tiny",
    "Pruning tokens in long contexts makes the first token come sooner, the paper says; we check it here.",
    "One more document, of middling length, to keep the slots busy.",
]
NEW = 14
GEMMA_PRUNE = dict(prune_layers=[2, 4], keep_ratios=[0.5, 0.25], min_keep_tokens=2, keep_tail=2)


def _ids(tok, prompts=PROMPTS):
    return [torch.tensor(tok(p)["input_ids"]) for p in prompts]


def _model(arch):
    return make_tiny_model(arch, num_layers=6) if arch == "gemma3" else make_tiny_model(arch)


@pytest.fixture(scope="module", params=[*ARCHS, "gemma3"])
def arch_model(request):
    return request.param, _model(request.param)


# Each item's own limit of new tokens, so that items end, and newcomers join, at different steps.
STOPS = [14, 3, 9, 1, 12, 6, 10]


def _ends_mid_way(lazy, ids, **options):
    """End-of-sequence ids that some items generate mid-way when run alone (other items may end sooner)."""
    eos = set()
    for k, x in enumerate(ids[:4]):
        row = lazy.generate(x[None], max_new_tokens=NEW, eos_token_id=[], **options).sequences[0, x.shape[0]:]
        eos.add(int(row[2 + 3 * k]))
    return sorted(eos)


def _check_equal_alone(lazy, ids, slots, eos=(), **options):
    """Each item of the stream (its own ``STOPS`` limit, ``eos`` ends) equals its run alone, tokens and stats."""
    stops = STOPS[: len(ids)]
    result = lazy.generate_continuous(ids, slots=slots, max_new_tokens=NEW, stop_after=stops, eos_token_id=list(eos),
                                      **options)
    for i, x in enumerate(ids):
        alone = lazy.generate(x[None], max_new_tokens=stops[i], eos_token_id=list(eos), **options)
        out = result.outputs[i]
        assert out.sequences.tolist() == alone.sequences.tolist(), f"item {i}"
        mine, ref = out.stats[0], alone.stats[0]
        assert mine.new_tokens == ref.new_tokens and mine.kept_per_layer == ref.kept_per_layer
        assert mine.revived_tokens == ref.revived_tokens, f"item {i}"
        assert mine.computed_token_fraction_total == pytest.approx(ref.computed_token_fraction_total, abs=0)
        assert mine.pruned == ref.pruned and mine.est_speedup == pytest.approx(ref.est_speedup)
        assert mine.kv_cache_bytes == ref.kv_cache_bytes and mine.aux_cache_bytes == ref.aux_cache_bytes
    if not eos:
        assert [o.stats[0].new_tokens for o in result.outputs] == stops
    return result


CASES = {"off": None, **POLICIES}


@pytest.mark.parametrize("case", list(CASES))
def test_each_item_equals_its_run_alone(arch_model, tiny_tokenizer, case):
    """Pruning on (every revival policy, revive_steps counted per item) and off; prompts under min_prompt_tokens
    computed in full beside pruned ones; on Gemma 3 the window (8) is shorter than the prompts."""
    arch, model = arch_model
    if CASES[case] is None:
        config = LazyConfig.off()
    else:
        config = LazyConfig(**(GEMMA_PRUNE if arch == "gemma3" else PRUNE), **CASES[case], query_window=3,
                            pool_kernel=3, min_prompt_tokens=20)
    lazy = LazyLLM(model, config)
    result = _check_equal_alone(lazy, _ids(tiny_tokenizer), slots=3)
    if CASES[case] is not None:
        pruned = [o.stats[0].pruned for o in result.outputs]
        assert any(pruned) and not all(pruned)  # "Short prompt." and "Tiny" are under the threshold


def test_items_that_end_at_their_end_of_sequence_equal_their_runs_alone(arch_model, tiny_tokenizer):
    arch, model = arch_model
    config = LazyConfig(**(GEMMA_PRUNE if arch == "gemma3" else PRUNE), **POLICIES["select"], min_prompt_tokens=20)
    lazy = LazyLLM(model, config)
    ids = _ids(tiny_tokenizer)
    _check_equal_alone(lazy, ids, slots=3, eos=_ends_mid_way(lazy, ids))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_repetition_rules_apply_per_item(tiny_tokenizer, arch):
    """repetition_penalty, no_repeat_ngram_size and min_new_tokens look at each item's own prompt and output."""
    model = _model(arch)
    prune = GEMMA_PRUNE if arch == "gemma3" else PRUNE
    lazy = LazyLLM(model, LazyConfig(**prune, **POLICIES["top"], min_prompt_tokens=20))
    _check_equal_alone(lazy, _ids(tiny_tokenizer), slots=2, repetition_penalty=1.3, no_repeat_ngram_size=3,
                       min_new_tokens=2)


@pytest.mark.parametrize("slots", [1, 2, 5, 16])
def test_any_slot_count(tiny_llama, tiny_tokenizer, slots):
    lazy = LazyLLM(tiny_llama, LazyConfig(**PRUNE, **POLICIES["select"], min_prompt_tokens=20))
    result = _check_equal_alone(lazy, _ids(tiny_tokenizer), slots=slots)
    counters = result.counters
    assert counters.slots == slots and counters.slot_steps == slots * counters.steps
    assert counters.busy_slot_steps == sum(o.stats[0].new_tokens - 1 for o in result.outputs)
    if slots == 1:
        assert counters.idle_fraction == 0.0 and counters.prefills == len(PROMPTS)


def _holds_each_token_once(state: BatchState) -> None:
    for j, kv in enumerate(state.cache.layers):
        for b in range(len(state.host_lengths)):
            positions = kv.positions[b, : kv.length][kv.valid[b, : kv.length]].tolist()
            assert len(positions) == len(set(positions)), f"a token computed twice at layer {j}"
            assert len(positions) == int(state.cache.computed[j, b]), f"row {b} layer {j}"
            assert not kv.valid[b, int(kv.fill[b]):].any(), "a slot at or past a row's fill is valid"
            assert int(kv.fill[b]) <= kv.length <= kv.keys.shape[2]


def test_each_token_is_computed_at_most_once_per_layer(tiny_llama, tiny_tokenizer, monkeypatch):
    """Every join and leave leaves each row holding its item's tokens at most once per layer, as many as it computed,
    and nothing valid past its fill; the model is unchanged after the stream."""
    place, free = BatchState.place, BatchState.free
    seen = []

    def checked_place(state, rows, source, source_rows, free_slots):
        _holds_each_token_once(source)
        place(state, rows, source, source_rows, free_slots)
        _holds_each_token_once(state)
        seen.append(sum(h > 1 for h in state.host_lengths))

    def checked_free(state, rows):
        _holds_each_token_once(state)
        free(state, rows)
        _holds_each_token_once(state)
        assert all(not state.cache.layers[j].valid[rows].any() for j in range(len(state.cache.layers)))

    monkeypatch.setattr(BatchState, "place", checked_place)
    monkeypatch.setattr(BatchState, "free", checked_free)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    attn = tiny_llama.config._attn_implementation
    lazy = LazyLLM(tiny_llama, LazyConfig(**PRUNE, **POLICIES["select"]))
    lazy.generate_continuous(_ids(tiny_tokenizer), slots=3, max_new_tokens=NEW, stop_after=STOPS, eos_token_id=[])
    assert seen and max(seen) == 3
    assert tiny_llama.config._attn_implementation == attn
    after = tiny_llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_join_writes_only_the_newcomers_rows(tiny_llama, tiny_tokenizer, monkeypatch):
    """Placing newcomers leaves every running row's K/V, positions, fill and Aux Cache entries where and as they
    were (no copy of the running set), unless a layer had to grow."""
    place = BatchState.place
    checked = []

    def spy(state, rows, source, source_rows, free_slots):
        others = [r for r in range(len(state.host_lengths)) if r not in rows and state.host_lengths[r] > 1]
        layers = state.cache.layers
        before = [(kv.keys.data_ptr(), kv.keys[others].clone(), kv.positions[others].clone(), kv.fill[others].clone())
                  for kv in layers]
        aux = {j: (state.aux.hidden[j][others].clone(), state.aux.row_of[j][others].clone()) for j in state.aux.row_of}
        place(state, rows, source, source_rows, free_slots)
        for kv, (ptr, keys, pos, fill) in zip(layers, before, strict=True):
            width = keys.shape[2]
            assert torch.equal(kv.keys[others][:, :, :width], keys) and torch.equal(kv.fill[others], fill)
            assert torch.equal(kv.positions[others][:, :width], pos)
            if kv.keys.data_ptr() == ptr:
                checked.append(len(others))
        for j, (hidden, row_of) in aux.items():
            assert torch.equal(state.aux.row_of[j][others][:, : row_of.shape[1]], row_of)
            assert torch.equal(state.aux.hidden[j][others][:, : hidden.shape[1]], hidden)

    monkeypatch.setattr(BatchState, "place", spy)
    lazy = LazyLLM(tiny_llama, LazyConfig(**PRUNE, **POLICIES["select"]))
    lazy.generate_continuous(_ids(tiny_tokenizer), slots=3, max_new_tokens=NEW, stop_after=STOPS, eos_token_id=[])
    assert checked and max(checked) == 2  # some layers took newcomers in place beside two running items


def test_the_cache_holds_what_items_keep(tiny_llama, tiny_tokenizer, monkeypatch):
    """Each layer's buffers hold what its rows keep plus the tokens still to decode, grown by at most a quarter at a
    join: not slots x the longest prompt, and the pruned layers' smaller."""
    lazy = LazyLLM(tiny_llama, LazyConfig(**PRUNE, **POLICIES["top"]))
    place = BatchState.place
    shapes = []

    def spy(state, rows, source, source_rows, free_slots):
        old = [kv.keys.shape[2] for kv in state.cache.layers]
        place(state, rows, source, source_rows, free_slots)
        for kv, src, cap in zip(state.cache.layers, source.cache.layers, old, strict=True):
            width = int(src.valid[source_rows].sum(1).max())
            assert kv.keys.shape[2] == cap or kv.keys.shape[2] <= max(width + free_slots, cap + cap // 4)
        shapes.append([kv.keys.shape[2] for kv in state.cache.layers])

    monkeypatch.setattr(BatchState, "place", spy)
    lazy.generate_continuous(_ids(tiny_tokenizer), slots=3, max_new_tokens=NEW, stop_after=STOPS, eos_token_id=[])
    assert shapes and all(s[-1] < s[0] for s in shapes)  # the pruned layers hold fewer tokens


def test_held_token_budget_limits_the_slots(tiny_llama, tiny_tokenizer):
    """A newcomer waits while the running items' held tokens plus its own pass max_held_tokens (a lone item runs)."""
    lazy = LazyLLM(tiny_llama, LazyConfig.off())
    ids = _ids(tiny_tokenizer)
    result = lazy.generate_continuous(ids, slots=4, max_held_tokens=1, max_new_tokens=4, eos_token_id=[])
    assert result.counters.prefills == len(ids) and result.counters.idle_fraction == pytest.approx(0.75)
    free = lazy.generate_continuous(ids, slots=4, max_new_tokens=4, eos_token_id=[])
    assert [o.sequences.tolist() for o in free.outputs] == [o.sequences.tolist() for o in result.outputs]


def test_sampling_runs_and_is_reproducible(tiny_llama, tiny_tokenizer):
    lazy = LazyLLM(tiny_llama, LazyConfig(**PRUNE))
    ids = _ids(tiny_tokenizer)
    runs = [lazy.generate_continuous(ids, slots=3, max_new_tokens=6, do_sample=True, seed=7) for _ in range(2)]
    assert [o.sequences.tolist() for o in runs[0].outputs] == [o.sequences.tolist() for o in runs[1].outputs]


def test_stream_yields_items_as_they_end(tiny_llama, tiny_tokenizer):
    lazy = LazyLLM(tiny_llama, LazyConfig.off())
    ids = _ids(tiny_tokenizer)
    order = [i for i, _ in lazy.stream_continuous(ids, slots=2, max_new_tokens=NEW, stop_after=STOPS,
                                                  eos_token_id=[])]
    # 0 and 1 start; 1 ends at step 2 and 2 joins; 2 ends at 10, 3 ends at its prefill, 4 joins; 0 ends at 13,
    # 5 joins and ends at 18, 6 joins; 4 ends at 21, 6 at 27
    assert order == [1, 2, 3, 0, 5, 4, 6]


def test_bad_inputs_are_refused(tiny_llama, tiny_tokenizer):
    lazy = LazyLLM(tiny_llama, LazyConfig.off())
    ids = _ids(tiny_tokenizer)
    with pytest.raises(ValueError, match="slots must be an int >= 1"):
        lazy.generate_continuous(ids, slots=0)
    with pytest.raises(ValueError, match=r"prompt 1 must be 1-D token ids"):
        lazy.generate_continuous([ids[0], ids[1][None]])
    with pytest.raises(ValueError, match="empty prompt"):
        lazy.generate_continuous([ids[0], torch.tensor([], dtype=torch.long)])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        lazy.generate_continuous([[1, 2, 100000]])
    with pytest.raises(ValueError, match="stop_after has 1 entries for 7 prompts"):
        lazy.generate_continuous(ids, stop_after=[3])
    with pytest.raises(ValueError, match=r"stop_after entries must be ints in 1..max_new_tokens \(8\)"):
        lazy.generate_continuous(ids, max_new_tokens=8, stop_after=[1, 2, 3, 4, 5, 6, 9])
    with pytest.raises(TypeError, match="unknown argument"):
        lazy.generate_continuous(ids, max_new=3)
    assert lazy.generate_continuous([]).outputs == []


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_equal_alone_on_device(tiny_tokenizer, device):
    """fp32 on every device this machine has (CUDA where it exists): each item equals its run alone."""
    model = make_tiny_model("llama").to(device)
    lazy = LazyLLM(model, LazyConfig(**PRUNE, **POLICIES["top"], min_prompt_tokens=20))
    result = _check_equal_alone(lazy, [x.to(device) for x in _ids(tiny_tokenizer)], slots=3)
    assert all(o.sequences.device.type == device for o in result.outputs)
