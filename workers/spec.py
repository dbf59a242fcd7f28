"""What a worker is built from and the Ray resources it asks for (no torch or engine import: the driver uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its engine (picklable, sent to every actor)."""

    model: str
    lazy: dict[str, Any] | str  # LazyConfig fields, "default" or "off"
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    num_threads: int | None = None  # torch CPU threads; None = leave as is
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    fallback_on_empty: bool = True  # rerun an item whose pruned output is empty with pruning off


def actor_options(cluster_gpus: float, cpus_per_worker: int, max_restarts: int) -> dict[str, Any]:
    """Ray resources of one worker: a whole GPU when the cluster has any (one model per GPU), else CPUs."""
    options: dict[str, Any] = {"max_restarts": max_restarts, "max_task_retries": 0}
    if cluster_gpus >= 1:
        options.update(num_gpus=1, num_cpus=1)
    else:
        options.update(num_gpus=0, num_cpus=cpus_per_worker)
    return options
