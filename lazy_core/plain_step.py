"""A plain decoding step with fixed shapes and no host sync: what ``torch.compile(fullgraph=True)`` takes whole on a
CPU and CUDA graphs can replay on a GPU.

"Plain": no row of the step revives (every row is past its ``revive_steps``, or its schedule does not prune, or
revival is off), so each row is one new token attending every slot its row holds at every layer. The step runs over
a slot-resident :class:`~lazy_core.engine.BatchState` (:meth:`BatchState.slots`): every row, live or free, computes;
shapes depend only on the slot count and each layer's buffer capacity, never on the tokens.

Per layer: the new token's position and validity are written at the row's fill count (point writes,
:func:`lazy_core.cache.put_slots`, not a slice at a host index), the mask is the layer's validity (free rows attend
every slot: finite garbage, never used), its sliding window from positions; the model's own decoder layer computes,
its attention through the engine's hook (:mod:`lazy_core.attention`), its K/V written into the same slot
(:class:`_SlotWriter`); then each live row's fill and computed count advance by one. From the embedding to float32
logits (soft-capped as the model's head does); the logit rules (:class:`lazy_core.rules.SlotRules`, on the device)
and the token choice follow outside the graph (:mod:`lazy_core.continuous`).

The host side (:meth:`PlainStep.__call__`): room for one more slot in every layer, the buffers' slot dim marked
dynamic for the compiler (a layer's buffer grows when a newcomer or a revival needs more; with the dim static each
growth was a recompilation, 3-5 per 16-prompt test stream; dynamic, one graph serves the whole stream, as the tests
assert), and ``length`` (the host's bound on the fills) advanced by one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lazy_core.arch import ModelParts
from lazy_core.attention import AttentionStep
from lazy_core.cache import put_slots

COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
BACKEND = "inductor"  # torch.compile's backend (tests count graphs with dynamo's CompileCounter here)


class _SlotWriter:
    """The ``past_key_values`` of a plain step's layer calls: writes the step's K/V [S, H_kv, 1, d] at each row's
    slot ``at`` [S] of the layer's buffers and returns the whole buffers [S, H_kv, C, d]."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], at: list[torch.Tensor]) -> None:
        self.keys, self.values, self.at = keys, values, at

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values, at = self.keys[layer_idx], self.values[layer_idx], self.at[layer_idx][:, None]  # at: [S, 1]
        put_slots(keys, at, key_states)
        put_slots(values, at, value_states)
        return keys, values


def plain_step(parts: ModelParts, inner: str, tokens: torch.Tensor, positions: torch.Tensor, live: torch.Tensor,
               keys: list[torch.Tensor], values: list[torch.Tensor], key_pos: list[torch.Tensor],
               key_valid: list[torch.Tensor], fill: list[torch.Tensor], computed: torch.Tensor) -> torch.Tensor:
    """One plain step over every slot. tokens/positions/live: [S]; per layer j: keys/values [S, H_kv, C_j, d],
    key_pos [S, C_j] long, key_valid [S, C_j] bool, fill [S] long (updated in place); computed [L, S] (in place).
    Returns logits [S, V] float32."""
    hidden = parts.embed(tokens[:, None])  # [S, 1, D]
    pos = positions[:, None]  # [S, 1]
    cos_sin = parts.position_embeddings(hidden, pos)
    writer = _SlotWriter(keys, values, fill)
    idle = ~live[:, None]  # [S, 1]
    step = live.long()
    for j, layer in enumerate(parts.layers):
        at = fill[j][:, None]  # [S, 1]
        put_slots(key_pos[j], at, pos)
        put_slots(key_valid[j], at, live[:, None])
        allowed = key_valid[j]
        window = parts.sliding_windows[j]
        if window is not None:
            allowed = allowed & (key_pos[j] > pos - window)
        mask = (allowed | idle)[:, None, None, :]  # [S, 1, 1, C_j]
        hidden = layer(hidden, attention_mask=None, position_embeddings=cos_sin[j],
                       lazy_step=AttentionStep(inner=inner, mask=mask), **{parts.cache_kwarg: writer})
        fill[j].add_(step)
    computed.add_(step[None, :])
    return parts.logits(hidden)


class PlainStep:
    """The plain step of one model, eager or compiled (``compile``: one of :data:`COMPILE_MODES`, 'off' = eager).
    ``inner``: the model's own attention implementation (what :func:`lazy_core.attention.attention_hook` yields)."""

    def __init__(self, parts: ModelParts, inner: str, compile: str = "off") -> None:
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
        self.parts, self.inner, self.compile = parts, inner, compile
        fn: Callable = plain_step
        if compile != "off":
            fn = torch.compile(plain_step, fullgraph=True, mode=compile, backend=BACKEND)
        self._fn = fn

    def __call__(self, state, tokens: torch.Tensor, positions: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """state: a slot-resident BatchState; tokens/positions/live: [S]. Returns logits [S, V] float32."""
        layers = state.cache.layers
        for layer in layers:
            layer.reserve(1)
            if self.compile != "off":  # a buffer's slot dim is dynamic: one that grows is the same graph
                for t, dim in ((layer.keys, 2), (layer.values, 2), (layer.positions, 1), (layer.valid, 1)):
                    torch._dynamo.mark_dynamic(t, dim)
        logits = self._fn(self.parts, self.inner, tokens, positions, live,
                          [kv.keys for kv in layers], [kv.values for kv in layers],
                          [kv.positions for kv in layers], [kv.valid for kv in layers], [kv.fill for kv in layers],
                          state.cache.computed)
        for layer in layers:
            layer.length += 1
            layer.aligned = False
        return logits
