"""lazy_core.profile: what each layer's attention ranks, and the placement it suggests."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from lazy_core import LazyConfig, LazyLLM
from lazy_core.profile import (
    every_layer,
    layer_hits,
    prefill_ranks,
    profiled_layers,
    scoring_only,
    worst_rank_shares,
)

CONFIG = LazyConfig(prune_layers=[1, 3], keep_ratios=[0.5, 0.25], min_keep_tokens=4, query_window=4,
                    head_reduce="max", query_reduce="mean", pool_kernel=3, keep_tail=2)


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama", num_layers=6).float()


def _ids(n: int = 80) -> torch.Tensor:
    return torch.randint(3, 200, (1, n), generator=torch.Generator().manual_seed(0))


def test_ranks_are_the_pruners_choice(model):
    """At each pruning layer the positions ranked below the budget are exactly those the next layer holds."""
    ids = _ids()
    pruner = prefill_ranks(model, CONFIG, ids)
    lazy = LazyLLM(model, CONFIG, keep_state=True)
    lazy.generate(ids, max_new_tokens=1, eos_token_id=[])
    assert sorted(pruner.ranks) == [1, 3] and pruner.budgets == {1: 40, 3: 20}
    assert len(pruner.ranks[3]) == 40  # layer 3 ranks what layer 1 kept
    for layer, ranks in pruner.ranks.items():
        kv = lazy.last_state.cache.layers[layer + 1]
        held = set(kv.positions[0, : kv.length][kv.valid[0, : kv.length]].tolist())
        assert {p for p, r in ranks.items() if r < pruner.budgets[layer]} == held
    assert max(pruner.ranks[1][78], pruner.ranks[1][79]) < 2  # the forced tail of 2 ranks first


def test_scoring_only_ranks_the_whole_prompt_at_every_layer(model):
    full = prefill_ranks(model, scoring_only(CONFIG, 80), _ids())
    assert sorted(full.ranks) == [1, 3] and full.budgets == {1: 80, 3: 79}
    assert all(sorted(r.values()) == list(range(80)) for r in full.ranks.values())
    every = prefill_ranks(model, every_layer(CONFIG, model, 80), _ids())
    assert sorted(every.ranks) == [0, 1, 2, 3, 4]  # every layer but the last
    assert every.ranks[3] == full.ranks[3]  # nothing pruned before: the same attention, the same ranks


def test_every_layer_pools_each_layer_as_the_config_does(model):
    """A per-layer pool (pool_kernels) carries over: the pruning layers keep theirs, the others take pool_kernel."""
    config = LazyConfig(**{**CONFIG.model_dump(), "pool_kernels": [5, 1]})
    every = every_layer(config, model, 80)
    assert [every.pool_at(layer) for layer in range(5)] == [3, 5, 3, 1, 3]
    assert every_layer(CONFIG, model, 80).pool_kernels is None


def test_worst_rank_shares_and_hits(model):
    ids = _ids()[0].tolist()
    (shares,) = worst_rank_shares(model, CONFIG, ids, [[10, 11, 12]])
    ranks = prefill_ranks(model, every_layer(CONFIG, model, 80), torch.tensor([ids])).ranks
    assert shares == {layer: max(r[10], r[11], r[12]) / 80 for layer, r in ranks.items()}
    answers = [{0: 0.05, 1: 0.5}, {0: 0.3, 1: 0.1}]
    assert layer_hits(answers, 0.2) == {0: 0.5, 1: 0.5} and layer_hits(answers, 0.4) == {0: 1.0, 1: 0.5}
    assert layer_hits([], 0.4) == {}


def test_profiled_layers_moves_each_layer_to_where_answers_rank_high():
    config = LazyConfig(prune_layers=[7, 14, 21], keep_ratios=[0.4, 0.2, 0.1])
    good = {6: 0.1, 7: 0.1, 14: 0.5, 17: 0.15, 21: 0.05}  # layer 14 ranks the answer low, 17 high enough for 20 %
    answers = [{j: good.get(j, 0.9) for j in range(29)}] * 3
    assert profiled_layers(config, 30, answers) == [7, 17, 21]  # 6 and 7 tie: the layer stays
    assert profiled_layers(config, 30, answers, reach=2) == [7, 14, 21]  # 17 out of reach: nothing better at 12-16
    shifted = [{**a, 7: 0.9} for a in answers]
    assert profiled_layers(config, 30, shifted) == [6, 17, 21]
    assert profiled_layers(config, 30, []) == [7, 14, 21]
    crowded = [{j: (0.0 if j == 8 else 0.9) for j in range(29)}]  # one layer best for every stage: kept in order
    assert profiled_layers(LazyConfig(prune_layers=[7, 9], keep_ratios=[0.4, 0.2]), 30, crowded) == [8, 9]
