"""Ray workers: adapt the lazy engine to one-batch-per-call actors (model loaded once per actor)."""

from workers.rouge import rouge_l_f
from workers.spec import WorkerSpec, actor_options

__all__ = ["WorkerSpec", "actor_options", "rouge_l_f"]
