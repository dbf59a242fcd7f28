"""pipeline.bucketing: token-budget batches of similar lengths, padding waste, and the per-item cost of
pipeline.batch_cost that lets more pruned items fit a budget."""

from __future__ import annotations

import random

import pytest

from pipeline import PipelineConfig
from pipeline.bucketing import bucket_by_length, padding_waste


def test_bucketing_groups_similar_lengths_within_budget():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(10, 20), rng.randint(500, 520)]) for _ in range(60)]
    buckets = bucket_by_length(lengths, max_batch_tokens=2000, max_batch_size=8)
    assert sorted(i for b in buckets for i in b.indices) == list(range(60))  # every item exactly once
    for b in buckets:
        assert len(b.indices) <= 8 and (b.padded_tokens <= 2000 or len(b.indices) == 1)
    straddling = [b for b in buckets if len({lengths[i] > 100 for i in b.indices}) > 1]
    assert len(straddling) <= 1  # short and long prompts meet in one batch at most, at the boundary
    in_order = [lengths[i : i + 8] for i in range(0, 60, 8)]  # batches of 8 in input order, no bucketing
    unbucketed_waste = 1 - sum(map(sum, in_order)) / sum(max(b) * len(b) for b in in_order)
    assert _waste(buckets) < 0.1 < unbucketed_waste


def test_bucketing_oversized_item_alone_and_deterministic():
    buckets = bucket_by_length([5, 300, 5, 5], max_batch_tokens=100, max_batch_size=8)
    assert buckets[0].indices == (1,)
    assert buckets[1].indices == (0, 2, 3)
    assert buckets == bucket_by_length([5, 300, 5, 5], max_batch_tokens=100, max_batch_size=8)


def test_padding_waste_math():
    buckets = bucket_by_length([10, 5], max_batch_tokens=100, max_batch_size=2)
    assert _waste(buckets) == pytest.approx(1 - 15 / 20)
    assert padding_waste(0, 0) == 0.0  # no batches: no padding


def _waste(buckets):
    return padding_waste(sum(b.real_tokens for b in buckets), sum(b.padded_tokens for b in buckets))


def test_bucketing_counts_what_a_batch_holds(tiny_model_dir):
    """With a cost per item (the tokens the schedule keeps), more pruned items fit the same budget than padded
    prompts would; the driver's cost follows the config's schedule and model depth."""
    from pipeline.batch_cost import item_cost

    lengths = [1000] * 8
    assert [len(b.indices) for b in bucket_by_length(lengths, 4000, 8)] == [4, 4]
    assert [len(b.indices) for b in bucket_by_length(lengths, 4000, 8, cost=lambda n: n // 2)] == [8]
    lazy = dict(prune_layers=[0], keep_ratios=[0.25], min_keep_tokens=1)  # tiny model: 4 layers, 1000 | 250 x 3
    cost = item_cost(PipelineConfig(input="i", output="o", model=str(tiny_model_dir), lazy=lazy, max_new_tokens=10))
    assert cost(1000) == -(-(1000 + 3 * 250) // 4) + 10
    off = item_cost(PipelineConfig(input="i", output="o", model=str(tiny_model_dir), lazy="off", max_new_tokens=10))
    assert off(1000) == 1010
