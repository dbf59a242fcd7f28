"""LazyConfig: the pruning schedule and token-scoring settings of LazyLLM (Fu et al. 2024, §3.2–3.3).

Layer indices are 0-based decoder-layer indices. "Pruning at layer l" means: layer l runs on every token that is
alive at l, its attention (the query window's queries against all alive keys) scores the alive prompt tokens, and only
the kept ones are computed by layers l+1, l+2, ... The keep ratios are **cumulative**: ``keep_ratios[i]`` is the
fraction of the *whole prompt* still alive after ``prune_layers[i]``, so they must not increase.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PruningMethod = Literal["attention", "static", "random"]
Reduce = Literal["mean", "max"]
RevivePolicy = Literal["select", "top"]


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
        "prefill saves little time and risks the answer (BENCHMARKS.md, 'Short prompts'). 0 = prune every prompt "
        "(the paper).",
    )
    revive: bool = Field(
        True,
        description="Aux Cache revival during decoding (§3.3): a pruned token selected again by a later query is "
        "computed once from the layer where it was pruned. False = prefill-only pruning.",
    )
    revive_per_step: int | None = Field(
        None,
        ge=1,
        description="At most this many tokens revived per pruning layer per decoding step (the best-scored ones); "
        "None = every selected token (the paper). Bounds the decoding cost of revival.",
    )
    revive_policy: RevivePolicy = Field(
        "select",
        description="What a decoding step attends to after a pruning layer, and so what it revives. 'select' (the "
        "paper, §3.1): each step re-selects its own keep_ratios share of the prompt at every pruning layer and the "
        "later layers see only those; each selected token that lacks K/V there is revived (the selection churns from "
        "step to step, so most of the prompt is revived within ~100 tokens). 'top': the later layers see every token "
        "that has K/V there (what prefill kept, what was revived, what was generated), and a step revives only the "
        "pruned tokens among its revive_top best-scored ones; attention needs no mask, revival stays small.",
    )
    revive_top: int = Field(
        64,
        ge=1,
        description="With revive_policy='top': the best-scored prompt tokens (after pooling) at a pruning layer that a "
        "decoding step makes sure are computed at the next layers, reviving those that were pruned.",
    )
    revive_hysteresis: float = Field(
        0.0,
        ge=0.0,
        description="With revive_policy='select': a decoding step adds this multiple of its best score to the "
        "prompt tokens that already have K/V at the next layer before it selects, so successive steps select nearly "
        "the same set instead of churning (0 = none, the paper).",
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
    head_reduce: Reduce = Field(
        "mean", description="Aggregation of attention probabilities over heads ('mean' = paper)."
    )
    query_reduce: Reduce = Field("max", description="Aggregation over the query window's queries.")
    pool_kernel: int = Field(
        1,
        ge=1,
        description="Odd width of a 1-D max-pool over token positions applied to the scores, so a kept token keeps its "
        "neighbours (1 = no pooling, the paper).",
    )
    keep_tail: int = Field(
        1, ge=1, description="The last keep_tail prompt tokens are always kept (the last token always is)."
    )
    seed: int = Field(0, description="Seed of the 'random' method's scores.")

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
        """The evaluated default schedule, scaled to the model's depth.

        Pruning after 8/30, 15/30 and 22/30 of the depth (0-based layers 7, 14, 21 on the 30-layer default model)
        keeping 40 % / 20 % / 10 % of the prompt; scored by the last prompt token's query (the paper's query), max over
        heads, max-pooled over 31 positions so a kept token keeps its neighbours; the last 32 prompt tokens always
        kept. The schedule is the pick of ``lazy_core.calibrate(max_drop=0.01)`` on samples apart from the
        evaluation's (faster candidates lost 0.05-0.15 F1; BENCHMARKS.md, "Default schedule").

        Decoding revives with ``revive_policy="top"``, ``revive_top=128``, ``revive_steps=32`` (BENCHMARKS.md,
        "Revival policies"): each step attends every token a layer holds and, during the first 32 steps, revives the
        pruned among its 128 best-scored. On 30 passkey items (1K-8K, two seeds; answers within 32 steps) it lost 1
        of the full model's 26 passkeys, where the paper's per-step re-selection (``"select"``, the previous default)
        lost 3 while reviving ~12x more and decoding at 1.5-2.4x the full model's step; top 64 lost 2, top 32 lost 4.
        Without revival the schedule found 1 of the 17 passkeys at 1K-8K. Steps that revive carry extra rows through
        every later layer (on this CPU a small matrix product costs ~3x a vector product, and a batch runs the extra
        rows whenever one item revives): at batch 4 and 4K tokens such steps cost 1.7x the full model's, so revival
        stops after step 32 and the rest of a summary decodes on what the layers hold (0.8x the full step).

        Prompts under 1000 tokens are computed in full (``min_prompt_tokens``; BENCHMARKS.md, "Short prompts"): on
        summarization prompts of 128-512 tokens (two seeds) the pruned first token differed from the full model's on
        56-75 % of the items (8-31 % at 2K-4K) while the prefill saved at most 0.6 s on this CPU, about a tenth of
        such an item's time with a 100-token summary.
        """
        if model_depth(model_or_num_layers) < 4:
            return cls.off()
        layers, ratios = _default_layers(model_or_num_layers)
        return cls(
            prune_layers=layers,
            keep_ratios=ratios,
            min_keep_tokens=64,
            min_prompt_tokens=1000,
            revive=True,
            revive_policy="top",
            revive_top=128,
            revive_steps=32,
            query_window=1,
            head_reduce="max",
            query_reduce="max",
            pool_kernel=31,
            keep_tail=32,
        )

    @classmethod
    def paper(cls, model_or_num_layers: Any, keep_ratios: tuple[float, ...] = (0.7, 0.5, 0.3)) -> LazyConfig:
        """The paper's scoring (§3.2): last prompt token as the only query, mean over heads, no pooling, pruning
        at about 1/3, 2/3 and the end of the depth (the schedule of the prototype that DESIGN.md reports); on a
        hybrid model, at the nearest global layers."""
        layers, ratios = place_schedule(model_or_num_layers, (9 / 30, 19 / 30, 28 / 30), keep_ratios)
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

    def keep_budget(self, step: int, prompt_tokens: int) -> int:
        """Tokens of a ``prompt_tokens``-long prompt alive after pruning step ``step`` (index into prune_layers)."""
        if prompt_tokens < self.min_prompt_tokens:
            return prompt_tokens
        ratio = self.keep_ratios[step]
        if self.method == "static":
            ratio = self.keep_ratios[-1]
        budget = max(self.min_keep_tokens, math.ceil(ratio * prompt_tokens), min(self.keep_tail, prompt_tokens))
        return min(prompt_tokens, budget)

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


def model_depth(model_or_num_layers: Any) -> int:
    """The number of decoder layers of a Hugging Face model, its config, or a layer count given as an int."""
    if isinstance(model_or_num_layers, int):
        return model_or_num_layers
    config = getattr(model_or_num_layers, "config", model_or_num_layers)
    num = getattr(config, "num_hidden_layers", None)
    if not isinstance(num, int):
        raise TypeError(
            f"expected a Hugging Face model, its config or a layer count, got {type(model_or_num_layers).__name__}"
        )
    return num


def sliding_window_of(config: Any, layer: int) -> int | None:
    """The sliding window of decoder layer ``layer`` of a Hugging Face config, None for full causal attention."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if layer_types[layer] == "sliding_attention" else None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def hybrid_global_layers(sliding_windows: list[int | None]) -> list[int] | None:
    """The global (full-attention) layers of a hybrid layout, where sliding-window and global layers mix; None when
    every layer is global or every layer slides."""
    global_layers = [j for j, w in enumerate(sliding_windows) if w is None]
    return global_layers if 0 < len(global_layers) < len(sliding_windows) else None


DEFAULT_FRACTIONS = (8 / 30, 15 / 30, 22 / 30)
DEFAULT_RATIOS = (0.4, 0.2, 0.1)


def _default_layers(model_or_num_layers: Any) -> tuple[list[int], list[float]]:
    """default_for's pruning layers and cumulative keep ratios (see :func:`place_schedule`)."""
    return place_schedule(model_or_num_layers, DEFAULT_FRACTIONS, DEFAULT_RATIOS)


def place_schedule(model_or_num_layers: Any, fractions: tuple[float, ...],
                   ratios: tuple[float, ...]) -> tuple[list[int], list[float]]:
    """Pruning layers at these fractions of the depth (:func:`layers_at`) with these cumulative keep ratios. On a
    hybrid model (sliding-window and global layers) each layer moves to the nearest global layer that can prune
    (ties: the later one), and layers that meet keep the smaller ratio."""
    num = model_depth(model_or_num_layers)
    config = getattr(model_or_num_layers, "config", model_or_num_layers)
    windows = [None] * num if isinstance(config, int) else [sliding_window_of(config, j) for j in range(num)]
    usable = [j for j in hybrid_global_layers(windows) or [] if j <= num - 2]
    if not usable or len(usable) == num - 1:  # not hybrid, or every layer that can prune is global
        layers = layers_at(num, fractions)
        return layers, list(ratios[: len(layers)])
    merged: dict[int, float] = {}
    for fraction, ratio in zip(fractions, ratios, strict=False):
        layer = min(num - 2, max(0, round(fraction * num) - 1))
        snapped = min(usable, key=lambda g, layer=layer: (abs(g - layer), -g))
        merged[snapped] = min(ratio, merged.get(snapped, 1.0))
    return sorted(merged), [merged[layer] for layer in sorted(merged)]


def layers_at(model_or_num_layers: Any, fractions: tuple[float, ...]) -> list[int]:
    """0-based pruning layers at these fractions of the depth: fraction f prunes after layer round(f * L) - 1, kept
    within 0..L-2 (a pruning layer needs a layer after it); duplicates on shallow models are merged."""
    num = model_depth(model_or_num_layers)
    return sorted({min(num - 2, max(0, round(f * num) - 1)) for f in fractions})
