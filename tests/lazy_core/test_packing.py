"""Packed rows (lazy_core.packing): reviving steps of a mostly-pad batch run on the packed rows and still equal
each item run alone."""

from __future__ import annotations

from helpers import POLICIES, PRUNE, batch_vs_alone, encode

from lazy_core import LazyConfig, LazyLLM


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
