"""How many items one model decodes at once (its slots) and how many K/V rows they may hold, from the device.

- **CPU**: :data:`CPU_SLOTS`, the measured best of a single-thread worker (BENCHMARKS.md, "Continuous batching" and
  the batch curve: a step per item costs about the same at 8 as at 4, and prefill per item more), and
  :data:`CPU_HELD_TOKENS`.
- **GPU**: what the memory left after the weights holds. Of the device's memory, ``memory_share`` may be used (as
  vLLM's ``gpu_memory_utilization``); what is in use now (the weights, the CUDA context) is taken off; each slot
  costs an item's K/V once it has decoded its tokens (:meth:`LazyConfig.held_tokens` rows per layer, both K and V),
  its Aux Cache entries (one hidden state per pruned token), and the activations of its prefill (newcomers are
  prefilled together, so up to every slot at once). Slots at most ``max_slots``.

The plan says why (``reason``), which the run report shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lazy_core.arch import model_depth, model_parts

CPU_SLOTS = 4
CPU_HELD_TOKENS = 32768
MEMORY_SHARE = 0.9
MAX_SLOTS = 256
# prefill activations per prompt token, in hidden states of the model's dtype: the residual stream and a layer's
# normed input and attention output (3 x hidden) plus the MLP's gate, up and product (3 x intermediate)
PREFILL_HIDDEN, PREFILL_INTERMEDIATE = 3, 3


@dataclass(frozen=True)
class SlotPlan:
    slots: int
    max_held_tokens: int  # K/V rows per layer the running items may hold together (LazyConfig.held_tokens summed)
    reason: str
    bytes_per_slot: int = 0  # GPU: what one slot was costed at


def bytes_per_slot(model, config, prompt_tokens: int, max_new_tokens: int) -> dict[str, int]:
    """What one item costs a GPU worker, by part: ``kv`` (every layer's K and V once ``max_new_tokens`` are decoded),
    ``aux`` (the Aux Cache: a hidden state per token pruned at each pruning layer), ``prefill`` (its activations
    while it is prefilled)."""
    parts = model_parts(model)
    layers, element = parts.num_layers, parts.dtype.itemsize
    held = config.held_tokens(layers, prompt_tokens, max_new_tokens)
    kept = config.kept_per_layer(layers, prompt_tokens)
    pruned = sum(max(kept[j] - kept[j + 1], 0) for j in range(layers - 1)) if config.revive else 0
    return {
        "kv": held * layers * 2 * parts.num_kv_heads * parts.head_dim * element,
        "aux": pruned * parts.hidden_size * element,
        "prefill": prompt_tokens * (PREFILL_HIDDEN * parts.hidden_size
                                    + PREFILL_INTERMEDIATE * model.config.intermediate_size) * element,
    }


def plan_slots(model, config, prompt_tokens: int, max_new_tokens: int, device: torch.device,
               memory_share: float = MEMORY_SHARE, max_slots: int = MAX_SLOTS,
               memory: tuple[int, int] | None = None) -> SlotPlan:
    """The slots of a worker holding ``model`` (run under ``config``) for prompts of up to ``prompt_tokens`` and
    ``max_new_tokens`` new tokens on ``device``. ``memory``: (free, total) bytes of the GPU; default: as CUDA reports
    them now (after the weights are loaded)."""
    if not 0 < memory_share <= 1:
        raise ValueError(f"memory_share must be in (0, 1], got {memory_share!r}")
    device = torch.device(device)
    held = config.held_tokens(model_depth(model), prompt_tokens, max_new_tokens)
    if device.type != "cuda":
        return SlotPlan(CPU_SLOTS, CPU_HELD_TOKENS, f"{device.type}: {CPU_SLOTS} slots, the measured best of a "
                        "single-thread CPU worker (BENCHMARKS.md, batch curve)")
    free, total = memory if memory is not None else torch.cuda.mem_get_info(device)
    usable = int(memory_share * total) - (total - free)
    parts = bytes_per_slot(model, config, prompt_tokens, max_new_tokens)
    per_slot = sum(parts.values())
    slots = max(1, min(max_slots, usable // per_slot))
    gib = 2**30
    reason = (f"{device}: {slots} slots = ({memory_share:.0%} of {total / gib:.1f} GiB - {(total - free) / gib:.1f} "
              f"GiB in use) / {per_slot / 2**20:.0f} MiB per slot (K/V {parts['kv'] / 2**20:.0f}, Aux Cache "
              f"{parts['aux'] / 2**20:.0f}, prefill {parts['prefill'] / 2**20:.0f} MiB at {prompt_tokens} + "
              f"{max_new_tokens} tokens)" + (f", capped at {max_slots}" if usable // per_slot > max_slots else "")
              + (" (the memory holds less than one: 1)" if usable < per_slot else ""))
    return SlotPlan(slots, slots * held, reason, per_slot)
