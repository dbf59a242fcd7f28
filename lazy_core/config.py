"""LazyConfig: the pruning schedule and token-scoring settings of LazyLLM (Fu et al. 2024, §3.2–3.3).

Layer indices are 0-based decoder-layer indices. "Pruning at layer l" means: layer l runs on every token that is
alive at l, its attention (the query window's queries against all alive keys) scores the alive prompt tokens, and only
the kept ones are computed by layers l+1, l+2, ... The keep ratios are **cumulative**: ``keep_ratios[i]`` is the
fraction of the *whole prompt* still alive after ``prune_layers[i]``, so they must not increase. What decoding revives
is ``revival``, one of the policies of :mod:`lazy_core.revival`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lazy_core.arch import hybrid_global_layers, model_depth, place_schedule, prunable_layers
from lazy_core.revival import FLAT_REVIVAL_KEYS, Revival, SelectRevival, TopRevival, revival_from_flat_keys

PruningMethod = Literal["attention", "static", "random"]
Reduce = Literal["mean", "max"]
HeadReduce = Literal["mean", "max", "kv_group"]

# Where the presets and the calibration search prune, as fractions of the depth (arch.place_schedule: the layers).
DEFAULT_FRACTIONS = (8 / 30, 18 / 30, 22 / 30)  # default_for: 0-based layers 7, 17, 21 of 30
MID14_FRACTIONS = (8 / 30, 15 / 30, 22 / 30)  # the default before the loss analysis: layers 7, 14, 21 of 30
DEFAULT_RATIOS = (0.4, 0.2, 0.1)
# default_for on a hybrid model: prompts of at least this many tokens skip the first stage (Gemma 3 270M: every stage
# holds at 4K and 6K, the first one costs answers at 8K; nothing measured between 6K and 8K)
HYBRID_LATER_START_TOKENS = 6144
LATE_FRACTIONS = (10 / 30, 17 / 30, 24 / 30)
EARLY_FRACTIONS = (3 / 30, 15 / 30, 22 / 30)
PAPER_FRACTIONS = (9 / 30, 19 / 30, 28 / 30)  # paper: about 1/3, 2/3 and the end of the depth
PLACEMENTS: dict[str, tuple[float, ...]] = {"default": DEFAULT_FRACTIONS, "late": LATE_FRACTIONS,
                                            "early": EARLY_FRACTIONS}


class LazyConfig(BaseModel):
    """Validated pruning schedule. ``LazyConfig.off()`` computes every token (the exact baseline through the same
    engine); ``LazyConfig.default_for(model)`` is the evaluated default; ``LazyConfig.paper(model)`` is the paper's
    own scoring (last token only, mean over heads, no pooling)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: PruningMethod = Field(
        "attention",
        description="How tokens are scored at a pruning layer: 'attention' (LazyLLM), 'static' (prune once, at the "
        "first pruning layer, to the last keep ratio, by that layer's attention scores; the paper's static "
        "baseline) or "
        "'random' (uniformly random scores; the paper's random-drop baseline).",
    )
    prune_layers: list[int] = Field(
        default_factory=list,
        description="0-based decoder layers after which tokens are pruned, strictly increasing. Empty = no pruning.",
    )
    keep_ratios: list[float] = Field(
        default_factory=list,
        description="Cumulative fraction of the prompt's tokens kept after each pruning layer, in (0, 1], "
        "non-increasing, one per entry of prune_layers.",
    )
    min_keep_tokens: int = Field(
        64, ge=1, description="Floor of the keep budget in tokens, whatever the ratio (never more than the prompt)."
    )
    min_prompt_tokens: int = Field(
        0,
        ge=0,
        description="Prompts shorter than this many tokens are computed in full: no pruning, no revival, the output "
        "of the unpruned model. Decided per item, so a batch may mix pruned and unpruned items. Below it the pruned "
        "prefill saves little time and risks the answer (BENCHMARKS.md, 'Short prompts: where pruning stops "
        "paying'). 0 = prune every prompt (the paper).",
    )
    later_start_tokens: int | None = Field(
        None,
        ge=1,
        description="Prompts of at least this many tokens skip the first pruning stage: its layer keeps all of "
        "their tokens and the later stages prune as scheduled (what :meth:`later_start` does, for the long prompts "
        "only; each later stage keeps its own pool width). Decided per item, so a batch may mix both. Where a model "
        "needs the whole prompt deeper on long prompts only (Gemma 3 270M: BENCHMARKS.md, 'A first stage by "
        "length'). None = every prompt takes every stage. Needs two or more stages and a method other than 'static'.",
    )
    revive: bool = Field(
        True,
        description="Aux Cache revival during decoding (§3.3): a pruned token selected again by a later query is "
        "computed once from the layer where it was pruned. False = prefill-only pruning.",
    )
    revival: Revival = Field(
        default_factory=SelectRevival,
        description="What a decoding step attends to after a pruning layer, and so what it revives: a policy of "
        "lazy_core.revival chosen by its name, with its own knobs. {'name': 'select', 'per_step', 'hysteresis'} (the "
        "paper, §3.1): each step re-selects its own keep_ratios share of the prompt at every pruning layer and the "
        "later layers see only those. {'name': 'top', 'top'}: the later layers see every token they hold, and a step "
        "revives only the pruned tokens among its top best-scored ones. The old flat keys revive_policy, revive_top, "
        "revive_per_step and revive_hysteresis are read into it.",
    )
    revive_steps: int | None = Field(
        None,
        ge=1,
        description="Revive only during the first revive_steps decoding steps; later steps score nothing and attend "
        "to every token with K/V at each layer. None = every step.",
    )
    query_window: int = Field(
        1, ge=1, description="How many of the last prompt tokens act as queries when scoring in prefill (1 = paper)."
    )
    head_reduce: HeadReduce = Field(
        "mean",
        description="Aggregation of attention probabilities over heads: 'mean' (the paper), 'max', or 'kv_group' "
        "(mean over the query heads that share a KV head, then max over the KV groups: a token that one group "
        "attends to ranks high, as if each group chose its own).",
    )
    query_reduce: Reduce = Field("max", description="Aggregation over the query window's queries.")
    pool_kernel: int = Field(
        1,
        ge=1,
        description="Odd width of a 1-D max-pool over token positions applied to the scores, so a kept token keeps its "
        "neighbours (1 = no pooling, the paper).",
    )
    pool_kernels: list[int] | None = Field(
        None,
        description="Odd pool widths per pruning layer, one per entry of prune_layers, in place of pool_kernel there "
        "(e.g. a wide pool where the budget is wide, so a long value around a peak is kept whole, and a narrow one "
        "where it is tight). None = pool_kernel at every layer.",
    )
    decode_pool_kernel: int | None = Field(
        None,
        description="Odd pool width a decoding step's new token scores with at every pruning layer (which prompt "
        "tokens it revives), in place of the prefill's width there: a wide pool that keeps a long value whole in "
        "prefill need not widen each step's revivals. None = the prefill's width at each layer.",
    )
    pool_shift: int = Field(
        0,
        ge=0,
        description="How far the pool reaches further forward than back: a scored token keeps pool_kernel // 2 + "
        "pool_shift tokens after it and pool_kernel // 2 - pool_shift before it (at most pool_kernel // 2), so the "
        "value that follows a key the question matches is kept with it (0 = centred).",
    )
    keep_tail: int = Field(
        1, ge=1, description="The last keep_tail prompt tokens are always kept (the last token always is)."
    )
    keep_head: int = Field(
        0, ge=0, description="The first keep_head prompt tokens are always kept (attention sinks); 0 = none (paper)."
    )
    seed: int = Field(0, description="Seed of the 'random' method's scores.")

    @model_validator(mode="before")
    @classmethod
    def _flat_revival_keys(cls, data: Any) -> Any:
        """Configs written before ``revival`` (result files, YAML) hold the policy as flat keys: read them into it."""
        if not isinstance(data, dict) or not any(key in data for key in FLAT_REVIVAL_KEYS):
            return data
        flat = {key: data[key] for key in FLAT_REVIVAL_KEYS if key in data}
        if "revival" in data:
            raise ValueError(
                f"give the revival policy once: revival={data['revival']!r} and the old flat keys {sorted(flat)} "
                "both set it; keep revival (e.g. revival={'name': 'top', 'top': 128}) and drop the flat keys"
            )
        rest = {key: value for key, value in data.items() if key not in FLAT_REVIVAL_KEYS}
        return {**rest, "revival": revival_from_flat_keys(flat)}

    @model_validator(mode="after")
    def _check_schedule(self) -> LazyConfig:
        if len(self.prune_layers) != len(self.keep_ratios):
            raise ValueError(
                f"prune_layers has {len(self.prune_layers)} entries but keep_ratios has {len(self.keep_ratios)}; "
                "give one cumulative keep ratio per pruning layer"
            )
        if any(layer < 0 for layer in self.prune_layers):
            raise ValueError(f"prune_layers must be >= 0 (0-based layer indices), got {self.prune_layers}")
        if any(b <= a for a, b in zip(self.prune_layers, self.prune_layers[1:], strict=False)):
            raise ValueError(f"prune_layers must be strictly increasing, got {self.prune_layers}")
        for r in self.keep_ratios:
            if not (0.0 < r <= 1.0) or math.isnan(r):
                raise ValueError(f"keep_ratios must lie in (0, 1], got {self.keep_ratios}")
        if any(b > a for a, b in zip(self.keep_ratios, self.keep_ratios[1:], strict=False)):
            raise ValueError(
                f"keep_ratios are cumulative fractions of the prompt and must not increase, got {self.keep_ratios}"
            )
        if self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be odd so the pool is centred on each token, got {self.pool_kernel}")
        if self.pool_kernels is not None:
            if len(self.pool_kernels) != len(self.prune_layers):
                raise ValueError(
                    f"pool_kernels has {len(self.pool_kernels)} entries but prune_layers has {len(self.prune_layers)}; "
                    "give one pool width per pruning layer, or None for pool_kernel at every layer"
                )
            if any(k < 1 or k % 2 == 0 for k in self.pool_kernels):
                raise ValueError(f"pool_kernels must be odd and >= 1 (centred on each token), got {self.pool_kernels}")
        if self.decode_pool_kernel is not None and (self.decode_pool_kernel < 1 or self.decode_pool_kernel % 2 == 0):
            raise ValueError(f"decode_pool_kernel must be odd and >= 1 (centred on each token), got "
                             f"{self.decode_pool_kernel}; or None for the prefill's width")
        if self.later_start_tokens is not None and (len(self.prune_layers) < 2 or self.method == "static"):
            raise ValueError(
                f"later_start_tokens={self.later_start_tokens} drops the first of {len(self.prune_layers)} pruning "
                f"stage(s) under method {self.method!r}: long prompts would not be pruned at all. It needs a schedule "
                "of two or more stages and method 'attention' or 'random'; or set min_prompt_tokens to leave long "
                "prompts whole"
            )
        narrowest = min([self.pool_kernel, *(self.pool_kernels or []), self.decode_pool_kernel or self.pool_kernel])
        if self.pool_shift > narrowest // 2:
            raise ValueError(
                f"pool_shift {self.pool_shift} moves the pool past the scored token itself: it may be at most half the "
                f"narrowest pool width ({narrowest} // 2 = {narrowest // 2}); widen the pool or shift it less"
            )
        return self

    # ---- presets -------------------------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when this config prunes anything."""
        return bool(self.prune_layers) and min(self.keep_ratios) < 1.0

    @classmethod
    def resolve(cls, spec: LazyConfig | dict[str, Any] | str, model_or_config: Any) -> LazyConfig:
        """The schedule a pipeline setting names: "default" (:meth:`default_for` the model or its config), "off", a
        LazyConfig or the dict of its fields."""
        if isinstance(spec, cls):
            return spec
        if spec == "default":
            return cls.default_for(model_or_config)
        if spec == "off":
            return cls.off()
        if isinstance(spec, dict):
            return cls(**spec)
        raise ValueError(f"lazy must be 'default', 'off', a LazyConfig or its dict, got {spec!r}")

    @classmethod
    def off(cls) -> LazyConfig:
        """No pruning: every token is computed at every layer (the exact baseline, same engine)."""
        return cls(prune_layers=[], keep_ratios=[])

    @classmethod
    def default_for(cls, model_or_num_layers: Any) -> LazyConfig:
        """The evaluated default schedule, scaled to the model's depth (:func:`~lazy_core.arch.place_schedule`).

        Prunes after 8/30, 18/30 and 22/30 of the depth (0-based layers 7, 17, 21 of 30; on a hybrid model the nearest
        global layers, where stages that meet keep the larger ratio: Gemma 3 270M keeps 40 % after layer 5 and 20 %
        after 11) keeping 40 % / 20 % / 10 % of the prompt; scores with the queries of the last 8 prompt tokens
        (the end of the question), mean over them, max over heads, max-pooled over 31 positions; always keeps the last
        32 prompt tokens. Decoding revives with ``TopRevival(top=128)`` during the first 32 steps. Prompts under 1000
        tokens are computed in full. Models with fewer than 4 layers get :meth:`off`. Why these values: BENCHMARKS.md,
        "Default schedule: how it was chosen", "Revival policies: how the decoding default was chosen", "Short prompts:
        where pruning stops paying", "RULER and entity-bound needles" (the 8-query window) and "Why the default loses
        facts" (the middle layer, where SmolLM2's attention ranks the answers better than at 14) and "A wide first
        pool and the first tokens" (a per-layer pool that keeps UUIDs whole, measured and not adopted: it revives more
        tokens in decoding and costs the job 8-12 % docs/s) and "Decoding's own pool" (the same prefill with decoding
        scoring its revivals over 31: the default's job cost, about half of the UUIDs kept, Gemma's and HotpotQA's
        targets missed) and "Stages that meet" (on Gemma the 10 % stage cost word counts and look-alike keys). On a
        hybrid model (sliding-window and global layers, whose first stage sits at an early global layer) prompts of
        ``HYBRID_LATER_START_TOKENS`` or more skip the first stage (``later_start_tokens``; BENCHMARKS.md, "A first
        stage by length": Gemma 3 270M at 8K writes runs of digits for needles the full model finds).
        """
        if model_depth(model_or_num_layers) < 4:
            return cls.off()
        layers, ratios = place_schedule(model_or_num_layers, DEFAULT_FRACTIONS, DEFAULT_RATIOS, merge=max)
        hybrid = len(prunable_layers(model_or_num_layers)) < model_depth(model_or_num_layers) - 1
        return cls(
            later_start_tokens=HYBRID_LATER_START_TOKENS if hybrid and len(layers) >= 2 else None,
            prune_layers=layers,
            keep_ratios=ratios,
            min_keep_tokens=64,
            min_prompt_tokens=1000,
            revive=True,
            revival=TopRevival(top=128),
            revive_steps=32,
            query_window=8,
            head_reduce="max",
            query_reduce="mean",
            pool_kernel=31,
            keep_tail=32,
        )

    @classmethod
    def paper(cls, model_or_num_layers: Any, keep_ratios: tuple[float, ...] = (0.7, 0.5, 0.3)) -> LazyConfig:
        """The paper's scoring (§3.2): the last prompt token as the only query, mean over heads and no pooling, no
        keep floor beyond the last token; pruning after about 1/3, 2/3 and the end of the depth (``PAPER_FRACTIONS``:
        0-based layers 8, 18, 27 of 30; on a hybrid model the nearest global layers) keeping ``keep_ratios``; revival
        by the paper's per-step selection (``SelectRevival()``). Measured as the evaluation's ``paper`` method
        (BENCHMARKS.md, "Evaluation: accuracy vs. speed on real long-context data")."""
        layers, ratios = place_schedule(model_or_num_layers, PAPER_FRACTIONS, keep_ratios)
        return cls(
            prune_layers=layers,
            keep_ratios=ratios,
            min_keep_tokens=1,
            query_window=1,
            head_reduce="mean",
            query_reduce="mean",
            pool_kernel=1,
            keep_tail=1,
        )

    # ---- schedule arithmetic -------------------------------------------------------------------------------------

    def rescheduled(self, prune_layers: list[int], keep_ratios: list[float], **changes: Any) -> LazyConfig:
        """This config's scoring on other pruning layers (validated), with any other field in ``changes``. A per-layer
        pool keeps its shape: the first pruning layer takes the first width of ``pool_kernels``, every later one the
        last (wide where the budget is)."""
        pools = self.pool_kernels
        if pools is not None:
            pools = ([pools[0]] + [pools[-1]] * (len(prune_layers) - 1))[: len(prune_layers)]
        return LazyConfig(**{**self.model_dump(), "prune_layers": prune_layers, "keep_ratios": keep_ratios,
                             "pool_kernels": pools, **changes})

    def later_start(self) -> LazyConfig:
        """This schedule without its first stage: pruning starts at its second layer, each later stage keeping what it
        kept (the first pool width of ``pool_kernels`` moves to the new first layer). The remedy where a model needs
        the whole prompt deeper than the first pruning layer (Gemma 3 270M at 8K: BENCHMARKS.md "A later first
        stage"). Raises ValueError for a schedule of fewer than two stages: it would not prune at all."""
        if len(self.prune_layers) < 2:
            raise ValueError(f"later_start needs a schedule of at least two pruning layers, got {self.prune_layers}; "
                             "LazyConfig.off() is the schedule that prunes nothing")
        return self.rescheduled(list(self.prune_layers[1:]), list(self.keep_ratios[1:]), later_start_tokens=None)

    def pool_at(self, layer: int, decoding: bool = False) -> int:
        """The max-pool width scoring uses at ``layer``: ``decode_pool_kernel`` when a decoding step scores (if set),
        else its entry of ``pool_kernels`` at a pruning layer, else ``pool_kernel``."""
        if decoding and self.decode_pool_kernel is not None:
            return self.decode_pool_kernel
        if self.pool_kernels is not None and layer in self.prune_layers:
            return self.pool_kernels[self.prune_layers.index(layer)]
        return self.pool_kernel

    def keep_budget(self, step: int, prompt_tokens: int) -> int:
        """Tokens of a ``prompt_tokens``-long prompt alive after pruning step ``step`` (index into prune_layers)."""
        if self.leaves_whole(step, prompt_tokens):
            return prompt_tokens
        ratio = self.keep_ratios[step]
        if self.method == "static":
            ratio = self.keep_ratios[-1]
        forced = min(self.keep_tail + self.keep_head, prompt_tokens)
        budget = max(self.min_keep_tokens, math.ceil(ratio * prompt_tokens), forced)
        return min(prompt_tokens, budget)

    def starts_later(self, prompt_tokens: int) -> bool:
        """True when a ``prompt_tokens``-long prompt skips the first pruning stage (``later_start_tokens``)."""
        return self.later_start_tokens is not None and prompt_tokens >= self.later_start_tokens

    def leaves_whole(self, step: int, prompt_tokens: int) -> bool:
        """True when pruning step ``step`` neither scores nor drops any token of a ``prompt_tokens``-long prompt by
        rule: the prompt is under ``min_prompt_tokens``, or long enough to skip the first stage. (A keep ratio of 1
        still scores: lazy_core.profile ranks that way.)"""
        return prompt_tokens < self.min_prompt_tokens or (step == 0 and self.starts_later(prompt_tokens))

    def prunes(self, prompt_tokens: int) -> bool:
        """True when a ``prompt_tokens``-long prompt loses any token in prefill under this schedule."""
        active = self.active_steps()
        return any(self.keep_budget(step, prompt_tokens) < prompt_tokens for step in active.values())

    def active_steps(self) -> dict[int, int]:
        """Pruning layer -> index into the schedule, for the layers that prune (static: only the first)."""
        steps = list(enumerate(self.prune_layers)) if self.enabled else []
        if self.method == "static":
            steps = steps[:1]
        return {layer: step for step, layer in steps}

    def kept_per_layer(self, num_layers: int, prompt_tokens: int) -> list[int]:
        """Tokens each layer computes in prefill for a ``prompt_tokens``-long prompt (ItemStats.kept_per_layer)."""
        active = self.active_steps()
        alive, kept = prompt_tokens, []
        for layer in range(num_layers):
            kept.append(alive)
            if layer in active:
                alive = min(alive, self.keep_budget(active[layer], prompt_tokens))
        return kept

    def held_tokens(self, num_layers: int, prompt_tokens: int, new_tokens: int) -> int:
        """K/V rows one item holds per layer, averaged over the layers, once prefill is done and ``new_tokens`` are
        decoded (revived tokens not counted): what a batch keeps of an item, so what a batch's token budget counts.
        A pruned token's Aux Cache entry (one hidden state where it was dropped) stands in for the K/V rows it left."""
        kept = self.kept_per_layer(num_layers, prompt_tokens)
        return math.ceil(sum(kept) / num_layers) + new_tokens

    def check_layers(self, sliding_windows: list[int | None]) -> None:
        """Raise ValueError if the schedule scores at a sliding-window layer of a hybrid model (one that also has
        global layers): a sliding layer's last token sees only its window, not the prompt it would rank."""
        global_layers = hybrid_global_layers(sliding_windows)
        if global_layers is None:
            return
        bad = [layer for layer in self.active_steps() if sliding_windows[layer] is not None]
        if bad:
            usable = [j for j in global_layers if j <= len(sliding_windows) - 2]
            raise ValueError(
                f"prune_layers {bad} are sliding-window layers of this hybrid model: their last token attends only "
                f"its last {sliding_windows[bad[0]]} positions and cannot score the prompt. Prune after global layers "
                f"({usable}), e.g. with LazyConfig.default_for(model)"
            )

    def check_depth(self, num_layers: int) -> None:
        """Raise ValueError if a pruning layer does not exist in a ``num_layers``-deep model."""
        bad = [layer for layer in self.prune_layers if layer > num_layers - 2]
        if bad:
            raise ValueError(
                f"prune_layers {bad} out of range for a {num_layers}-layer model: pruning after layer l needs a layer "
                f"l+1, so valid layers are 0..{num_layers - 2}"
            )
