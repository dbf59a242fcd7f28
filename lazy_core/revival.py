"""Aux Cache revival policies (Fu et al. 2024, §3.3): what a decoding step brings back after a pruning layer.

At every decoding step the engine runs a pruning layer on the step's rows, lets the new token's query score the prompt
tokens the layer holds, and calls the config's policy once (:meth:`RevivalPolicy.revive`). The policy decides which
pruned tokens the step reads back from the Aux Cache and computes from the next layer on, and which prompt tokens the
later layers may attend; it returns the step's new rows, or None to leave them as they are. A policy is a frozen
pydantic model holding only its own knobs, chosen in ``LazyConfig.revival`` by its ``name``; the knobs every policy
shares (``revive``, ``revive_steps``) stay on :class:`~lazy_core.config.LazyConfig`.

- :class:`SelectRevival` (``"select"``, the paper's per-step subsets, §3.1): each step re-selects the schedule's share
  of the prompt at each pruning layer and the later layers see only those.
- :class:`TopRevival` (``"top"``): the later layers see every token they hold, and a step revives only the pruned
  tokens among its ``top`` best-scored ones.

Before policies were objects, ``LazyConfig`` held them as flat fields (``revive_policy``, ``revive_top``,
``revive_hysteresis``, ``revive_per_step``); :func:`revival_from_flat_keys` reads those, so old result files and YAML
configs load with the meaning they had.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from lazy_core.engine import BatchState, LayerLoop
    from lazy_core.scoring import ScoreInputs


@dataclass(frozen=True)
class StepRows:
    """The rows a decoding step carries into the next layer: active revived tokens first (by position), the new token
    last."""

    hidden: torch.Tensor  # [B, R + 1, D]
    pos: torch.Tensor  # [B, R + 1]
    valid: torch.Tensor  # [B, R + 1]
    visible: torch.Tensor | None = None  # [B, P] by position: prompt tokens later layers may attend; None = all held


class RevivalPolicy(BaseModel):
    """Base of the revival policies: one method, called after each pruning layer of a reviving decoding step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def revive(self, loop: LayerLoop, state: BatchState, inputs: ScoreInputs, rows: StepRows) -> StepRows | None:
        """The step's rows for the layers after ``inputs.layer``, or None to keep ``rows``. ``inputs``: the new token's
        query against the prompt tokens the layer holds (candidates: those the step may see)."""
        raise NotImplementedError


class SelectRevival(RevivalPolicy):
    """The paper's per-step selection (§3.1, §3.3): at each pruning layer the step selects the schedule's
    ``keep_ratios`` share of the prompt tokens it sees there, as prefill does; the later layers attend only those (and
    the generated tokens). A selected token that the next layer lacks is revived; a revived token that a later step no
    longer selects goes back into the Aux Cache. Successive queries select different shares, so most of the prompt is
    revived after a few dozen steps (BENCHMARKS.md, "Revival policies: how the decoding default was chosen")."""

    name: Literal["select"] = Field("select", description="Selects this policy in LazyConfig.revival.")
    per_step: int | None = Field(
        None,
        ge=1,
        description="At most this many tokens revived per pruning layer per decoding step (the best-scored ones); "
        "None = every selected token (the paper). Bounds the decoding cost of revival.",
    )
    hysteresis: float = Field(
        0.0,
        ge=0.0,
        description="A decoding step adds this multiple of its best score to the prompt tokens that already have K/V "
        "at the next layer before it selects, so successive steps select nearly the same set instead of churning "
        "(0 = none, the paper).",
    )

    def revive(self, loop: LayerLoop, state: BatchState, inputs: ScoreInputs, rows: StepRows) -> StepRows:
        """Select the schedule's share among the prompt tokens visible at layer j; drop the active revived rows the
        new query no longer selects (into the Aux Cache at j) and add the selected tokens that layer j+1 lacks (from
        the Aux Cache at j). The selection becomes the visible set of the later layers."""
        j = inputs.layer
        if self.hysteresis > 0:  # favour what the next layer already holds: less churn, less revival
            best = loop.pruner.scores(inputs).float().masked_fill(~inputs.candidates, 0).amax(1)
            held = inputs.candidates & ~state.aux.held(j, inputs.key_pos)
            inputs = dataclasses.replace(inputs, bonus=best * self.hysteresis, bonus_slots=held)
        keep = loop.select(state, inputs)
        key_pos = inputs.key_pos
        # by position; pad slots may repeat a real slot's position, so they write into a spare last column
        width = state.max_positions
        selected = torch.zeros(keep.shape[0], width + 1, dtype=torch.bool, device=keep.device)
        selected = selected.scatter_(1, torch.where(keep, key_pos, width), keep)[:, :width]
        old_pos, old_valid, old_hidden = rows.pos[:, :-1], rows.valid[:, :-1], rows.hidden[:, :-1]
        still = old_valid & selected.gather(1, old_pos)
        state.aux.put(j, old_hidden, old_pos, old_valid & ~still)
        wanted = keep & state.aux.held(j, key_pos)  # selected, pruned at j, not active
        if self.per_step is not None:  # the best-scored per_step of them; the rest stay in the Aux Cache
            wanted = loop.best_of(state, inputs, wanted, self.per_step)
        hidden, pos, valid = loop.add_revived(state, j, wanted, key_pos, rows.hidden, rows.pos, rows.valid, still)
        return StepRows(hidden, pos, valid, selected)


class TopRevival(RevivalPolicy):
    """Revive the best-scored: the later layers attend every token they hold (what prefill kept, what was revived,
    what was generated), and a step revives only the pruned tokens among its ``top`` best-scored prompt tokens at each
    pruning layer. A step with nothing to revive is the model's own step over a smaller KV cache, at the cost of one
    host sync per pruning layer (to learn whether anything is revived)."""

    name: Literal["top"] = Field("top", description="Selects this policy in LazyConfig.revival.")
    top: int = Field(
        64,
        ge=1,
        description="The best-scored prompt tokens (after pooling) at a pruning layer that a decoding step makes sure "
        "are computed at the next layers, reviving those that were pruned.",
    )

    def revive(self, loop: LayerLoop, state: BatchState, inputs: ScoreInputs, rows: StepRows) -> StepRows | None:
        """Revive (from the Aux Cache at layer j) the pruned tokens among the step's ``top`` best-scored prompt tokens;
        rows revived at an earlier pruning layer go on. None when nothing is revived."""
        top = loop.pruner.select(dataclasses.replace(inputs, budget_bound=self.top),
                                 torch.full_like(state.lengths, self.top), torch.zeros_like(inputs.candidates))
        wanted = top & state.aux.held(inputs.layer, inputs.key_pos)
        if not bool(wanted.any()):  # one host sync per pruning layer; the common case once the step's top is computed
            return None
        hidden, pos, valid = loop.add_revived(state, inputs.layer, wanted, inputs.key_pos, rows.hidden, rows.pos,
                                              rows.valid, rows.valid[:, :-1])
        return StepRows(hidden, pos, valid, rows.visible)


Revival = Annotated[SelectRevival | TopRevival, Field(discriminator="name")]
POLICIES: dict[str, type[RevivalPolicy]] = {"select": SelectRevival, "top": TopRevival}

# The flat LazyConfig fields of old: key -> (the policy it belongs to, the policy's field, the field's old default).
FLAT_KEYS: dict[str, tuple[str, str, Any]] = {
    "revive_top": ("top", "top", 64),
    "revive_per_step": ("select", "per_step", None),
    "revive_hysteresis": ("select", "hysteresis", 0.0),
}
FLAT_REVIVAL_KEYS = ("revive_policy", *FLAT_KEYS)  # every flat key LazyConfig still reads


def revival_from_flat_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """The ``LazyConfig.revival`` dict that the old flat keys (``revive_policy`` and those of :data:`FLAT_KEYS`)
    meant. ``revive_policy`` defaults to 'select', as the flat field did. A knob of another policy than the chosen one
    had no effect then and is dropped when it holds its old default or when ``flat`` holds every flat key (an old
    ``model_dump()``, which wrote every field, inert ones included); otherwise it is a mistake: ValueError."""
    name = flat.get("revive_policy", "select")
    if name not in POLICIES:
        raise ValueError(f"revive_policy must be one of {sorted(POLICIES)}, got {name!r}")
    dumped = all(key in flat for key in FLAT_REVIVAL_KEYS)
    policy: dict[str, Any] = {"name": name}
    for key, (owner, field, old_default) in FLAT_KEYS.items():
        if key not in flat:
            continue
        value = flat[key]
        if owner == name:
            policy[field] = value
        elif value != old_default and not dumped:
            raise ValueError(
                f"{key}={value!r} only applies to revive_policy={owner!r}, but revive_policy is {name!r}"
                f"{'' if 'revive_policy' in flat else ' (the default when it is not given)'}: drop {key}, or choose "
                f"that policy, e.g. revival={{'name': {owner!r}, {field!r}: {value!r}}}"
            )
    return policy
