"""Model layout (lazy_core.arch): the schedule placement helpers and the import direction arch <- config."""

from __future__ import annotations

from lazy_core import LazyConfig


def test_layout_helpers_live_in_arch_which_does_not_import_config():
    """arch.py places schedules (config imports it, not the reverse): place_schedule gives default_for's layers."""
    import ast
    import inspect

    from lazy_core import arch
    from lazy_core.config import DEFAULT_FRACTIONS, DEFAULT_RATIOS

    tree = ast.parse(inspect.getsource(arch))
    assert "lazy_core.config" not in {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert arch.place_schedule(30, DEFAULT_FRACTIONS, DEFAULT_RATIOS) == ([7, 17, 21], [0.4, 0.2, 0.1])
    assert arch.layers_at(30, DEFAULT_FRACTIONS) == LazyConfig.default_for(30).prune_layers
