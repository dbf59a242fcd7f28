"""What a worker is built from and the Ray resources it asks for (the driver uses it: configs only, no model code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lazy_core.config import LazyConfig
from lazy_core.decoding import DecodingOptions


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its engine (picklable, sent to every actor)."""

    model: str
    lazy: LazyConfig | Literal["default", "off"] = "default"  # resolved against the loaded model (LazyConfig.resolve)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)  # each batch draws from its own seed
    dtype: str = "auto"  # "auto" (lazy_core.precision) | "float32" | "bfloat16" | "float16"
    quantize: str = "none"  # "auto" | "none" | "int8" | "int4" (lazy_core.quantize; the pipeline's default is "auto")
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    num_threads: int | None = None  # torch CPU threads; None = leave as is
    fallback_on_empty: bool = True  # rerun an item whose pruned output is empty with pruning off
    batching: Literal["continuous", "static"] = "static"  # a call's items as one stream through the slots, or a batch
    slots: int | None = 4  # items decoded at once (continuous), the batch size a static batch is counted against
    # (idle slots); None = planned from the device (lazy_core.slots: 4 on a CPU, what the memory holds on a GPU)
    max_held_tokens: int | None = None  # continuous: the running items' held tokens at most (LazyConfig.held_tokens);
    # with slots=None, the plan's
    prompt_tokens: int = 4096  # the longest prompt a task may carry (what a planned slot is costed at)
    memory_share: float = 0.9  # planned slots: the share of a GPU's memory the worker may use (lazy_core.slots)
    compile_step: str = "off"  # continuous: how plain decoding steps run (lazy_core.plain_step.COMPILE_MODES)


def actor_options(cluster_gpus: float, cpus_per_worker: int, max_restarts: int) -> dict[str, Any]:
    """Ray resources of one worker: a whole GPU when the cluster has any (one model per GPU), else CPUs."""
    options: dict[str, Any] = {"max_restarts": max_restarts, "max_task_retries": 0}
    if cluster_gpus >= 1:
        options.update(num_gpus=1, num_cpus=1)
    else:
        options.update(num_gpus=0, num_cpus=cpus_per_worker)
    return options
