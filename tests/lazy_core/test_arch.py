"""Model layout (lazy_core.arch): the schedule placement helpers and the import direction arch <- config."""

from __future__ import annotations

from lazy_core import LazyConfig, arch


def test_layout_helpers_live_in_arch_which_does_not_import_config():
    """arch.py places schedules (config imports it, not the reverse): place_schedule gives default_for's layers."""
    import ast
    import inspect

    from lazy_core.config import DEFAULT_FRACTIONS, DEFAULT_RATIOS

    tree = ast.parse(inspect.getsource(arch))
    assert "lazy_core.config" not in {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert arch.place_schedule(30, DEFAULT_FRACTIONS, DEFAULT_RATIOS) == ([7, 17, 21], [0.4, 0.2, 0.1])
    assert arch.layers_at(30, DEFAULT_FRACTIONS) == LazyConfig.default_for(30).prune_layers


def test_stages_that_meet_keep_the_ratio_merge_chooses():
    """On a hybrid model two stages can snap to one global layer: ``min`` keeps the later stage's ratio, ``max`` the
    earlier's; a model where they do not meet is placed the same either way."""
    from transformers import Gemma3TextConfig

    gemma = Gemma3TextConfig(num_hidden_layers=18, sliding_window=512)  # global layers 5, 11, 17
    fractions, ratios = (8 / 30, 18 / 30, 22 / 30), (0.4, 0.2, 0.1)
    assert arch.place_schedule(gemma, fractions, ratios) == ([5, 11], [0.4, 0.1])
    assert arch.place_schedule(gemma, fractions, ratios, merge=max) == ([5, 11], [0.4, 0.2])
    assert arch.place_schedule(30, fractions, ratios, merge=max) == arch.place_schedule(30, fractions, ratios)
