"""Slots planned from the device (lazy_core.slots): a CPU gets the measured 4; a GPU what its memory left after the
weights holds at the item's cost (K/V, Aux Cache, prefill activations), bounded, and the reason says so."""

from __future__ import annotations

import pytest
import torch

from lazy_core import LazyConfig
from lazy_core.slots import CPU_HELD_TOKENS, CPU_SLOTS, MAX_SLOTS, bytes_per_slot, plan_slots

GIB = 2**30


def test_a_cpu_gets_the_measured_slots(tiny_llama):
    plan = plan_slots(tiny_llama, LazyConfig.default_for(tiny_llama), 4096, 128, torch.device("cpu"))
    assert (plan.slots, plan.max_held_tokens) == (CPU_SLOTS, CPU_HELD_TOKENS)
    assert "measured" in plan.reason


def test_a_gpu_gets_what_its_free_memory_holds(tiny_llama):
    config = LazyConfig(prune_layers=[1, 2], keep_ratios=[0.5, 0.25], min_keep_tokens=2)
    parts = bytes_per_slot(tiny_llama, config, 4096, 128)
    per_slot = sum(parts.values())
    total, used = 80 * GIB, 10 * GIB
    plan = plan_slots(tiny_llama, config, 4096, 128, torch.device("cuda", 0), memory_share=0.5,
                      memory=(total - used, total), max_slots=10**9)
    assert plan.slots == (int(0.5 * total) - used) // per_slot
    assert plan.max_held_tokens == plan.slots * config.held_tokens(4, 4096, 128)
    assert plan.bytes_per_slot == per_slot and f"{plan.slots} slots" in plan.reason


def test_pruning_makes_a_slot_cheaper_and_revival_costs_its_aux_cache(tiny_llama):
    full = bytes_per_slot(tiny_llama, LazyConfig.off(), 4096, 128)
    pruned = LazyConfig(prune_layers=[1, 2], keep_ratios=[0.5, 0.25], min_keep_tokens=2)
    lazy = bytes_per_slot(tiny_llama, pruned, 4096, 128)
    assert lazy["kv"] < full["kv"] and full["aux"] == 0 and lazy["aux"] > 0
    no_revival = bytes_per_slot(tiny_llama, pruned.model_copy(update={"revive": False}), 4096, 128)
    assert no_revival["aux"] == 0


def test_slots_are_bounded(tiny_llama):
    config = LazyConfig.off()
    huge = plan_slots(tiny_llama, config, 64, 8, "cuda", memory=(1000 * GIB, 1000 * GIB))
    assert huge.slots == MAX_SLOTS and "capped" in huge.reason
    tiny = plan_slots(tiny_llama, config, 4096, 128, "cuda", memory=(1, 1000))
    assert tiny.slots == 1 and "less than one" in tiny.reason
    with pytest.raises(ValueError, match="memory_share"):
        plan_slots(tiny_llama, config, 64, 8, "cuda", memory_share=1.5, memory=(GIB, GIB))
