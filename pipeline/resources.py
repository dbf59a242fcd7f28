"""What the workers are built from and how many there are: one rule for our driver and for the Ray Data stage."""

from __future__ import annotations

from pipeline.config import GenerationSettings
from workers.spec import WorkerSpec


def plan_workers(device: str, cluster_gpus: float, num_workers: int | None) -> tuple[int, bool]:
    """(workers, one GPU each?). device="cuda" asks for GPUs even when none is up yet (an autoscaler adds them);
    "auto" uses GPUs when the cluster has some; the default count is one per GPU, else 1."""
    use_gpu = device == "cuda" or (device == "auto" and cluster_gpus >= 1)
    return num_workers or (max(1, int(cluster_gpus)) if use_gpu else 1), use_gpu


def worker_spec(cfg: GenerationSettings, use_gpu: bool) -> WorkerSpec:
    """The WorkerSpec of ``cfg``'s workers (torch CPU threads = cpus_per_worker on a CPU worker)."""
    lazy = cfg.lazy if isinstance(cfg.lazy, str) else cfg.lazy.model_dump()
    return WorkerSpec(
        model=cfg.model, lazy=lazy, dtype=cfg.dtype, device=cfg.device,
        num_threads=None if use_gpu else cfg.cpus_per_worker, max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
        repetition_penalty=cfg.repetition_penalty, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        min_new_tokens=cfg.min_new_tokens, fallback_on_empty=cfg.fallback_on_empty,
    )
