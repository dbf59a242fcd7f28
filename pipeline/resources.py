"""What the workers are built from and how many there are: one rule for our driver and for the Ray Data stage."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import GenerationSettings
from workers.spec import WorkerSpec

# Torch threads of one CPU worker when nothing is set. Measured on 2 cores (BENCHMARKS "The CPU the job runs on"): two
# workers of one thread each beat one worker of two threads on the job; a decoding step of a small model is many small
# ops, and one process runs them one after the other whatever its threads, so more processes use the cores better.
DEFAULT_THREADS_PER_CPU_WORKER = 1
# Share of a node's memory (Ray's 'memory' resource) that the workers' model copies may take, and what one worker
# needs per byte of weights (weights + caches of a batch + activations, with room).
WORKER_MEMORY_SHARE = 0.5
WORKER_BYTES_PER_WEIGHT_BYTE = 2.0


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    use_gpu: bool
    cpus_per_worker: int  # Ray CPUs per actor; on a CPU worker also its torch threads


def plan_workers(device: str, cluster_gpus: float, node_cpus: list[float], num_workers: int | None,
                 cpus_per_worker: int | None, node_memory: list[float] | None = None,
                 model_bytes: float | None = None) -> WorkerPlan:
    """How many workers, on GPUs or not, and how many CPUs each.

    device="cuda" asks for GPUs even when none is up yet (an autoscaler adds them); "auto" uses GPUs when the cluster
    has some, one worker per GPU by default. Without GPUs the workers together take every CPU of the cluster's nodes
    (``node_cpus``: Ray's CPU count per alive node): one worker per :data:`DEFAULT_THREADS_PER_CPU_WORKER` CPUs, as
    many as the node's memory holds model copies of ``model_bytes`` (``node_memory``: Ray's memory per node; see
    :data:`WORKER_MEMORY_SHARE`), the node's CPUs split among them. Explicit settings win: ``cpus_per_worker`` alone
    fills the nodes with workers of that many threads (as many as the memory holds), ``num_workers`` alone splits the
    CPUs among that many workers, both are taken as they are."""
    use_gpu = device == "cuda" or (device == "auto" and cluster_gpus >= 1)
    if use_gpu:
        return WorkerPlan(num_workers or max(1, int(cluster_gpus)), True, 1)
    memory = list(node_memory or [])
    pairs = [(int(c), memory[i] if i < len(memory) else None) for i, c in enumerate(node_cpus) if c >= 1]
    nodes = [c for c, _ in pairs] or [1]
    held = [_copies_held(m, model_bytes) for _, m in pairs] or [_copies_held(None, None)]
    if cpus_per_worker is None:
        if num_workers is not None:
            cpus_per_worker = max(1, sum(nodes) // num_workers)
        else:
            largest = max(range(len(nodes)), key=lambda i: nodes[i])
            fit = max(1, min(nodes[largest] // DEFAULT_THREADS_PER_CPU_WORKER, held[largest]))
            cpus_per_worker = nodes[largest] // fit
        cpus_per_worker = min(cpus_per_worker, max(nodes))  # one worker's threads live on one node
    if num_workers is None:
        num_workers = max(1, sum(min(c // cpus_per_worker, h) for c, h in zip(nodes, held, strict=True)))
    return WorkerPlan(num_workers, False, cpus_per_worker)


def _copies_held(memory: float | None, model_bytes: float | None) -> int:
    """Workers whose model copies a node's memory holds (see WORKER_MEMORY_SHARE); unbounded when unknown."""
    if not memory or not model_bytes:
        return 1 << 30
    return int(WORKER_MEMORY_SHARE * memory // (WORKER_BYTES_PER_WEIGHT_BYTE * model_bytes))


def model_weight_bytes(cfg: GenerationSettings) -> float | None:
    """The model's weights in bytes in the dtype the workers load it in (estimated from its config: embeddings,
    attention and MLP matrices), or None when the config is not at hand."""
    from lazy_core import load_model_config
    from lazy_core.loading import resolve_dtype

    config = load_model_config(cfg.model)
    try:
        hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        inner = getattr(config, "intermediate_size", None) or 4 * hidden
    except AttributeError:
        return None
    tied = bool(getattr(config, "tie_word_embeddings", False))
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    linear = vocab * hidden + layers * (attention + 3 * hidden * inner)  # what quantization copies (lm_head too)
    params = vocab * hidden * (0 if tied else 1) + linear
    size = params * resolve_dtype(cfg.dtype, "cpu").itemsize
    # a quantized layer keeps its dense weight for prefill beside 1 byte (int8) per weight; int4 takes 1/2 byte where
    # it holds the layer, int8 elsewhere: counted as int8 (the upper bound)
    if cfg.quantize != "none":
        size += linear
    return float(size)


def cluster_node_cpus() -> list[float]:
    """CPUs of each alive node of the connected Ray cluster."""
    return [n.get("CPU", 0.0) for n in _alive_node_resources()]


def cluster_node_memory() -> list[float]:
    """Memory (bytes, Ray's 'memory' resource) of each alive node, in the order of :func:`cluster_node_cpus`."""
    return [n.get("memory", 0.0) for n in _alive_node_resources()]


def _alive_node_resources() -> list[dict[str, float]]:
    import ray

    return [{k: float(v) for k, v in n.get("Resources", {}).items()} for n in ray.nodes() if n.get("Alive")]


def worker_spec(cfg: GenerationSettings, plan: WorkerPlan) -> WorkerSpec:
    """The WorkerSpec of ``cfg``'s workers (torch CPU threads = the plan's CPUs per worker on a CPU worker)."""
    planned = worker_sets_slots(cfg, plan)
    return WorkerSpec(
        model=cfg.model, lazy=cfg.lazy, decoding=cfg.decoding, dtype=cfg.dtype, quantize=cfg.quantize,
        device=cfg.device,
        num_threads=None if plan.use_gpu else plan.cpus_per_worker, fallback_on_empty=cfg.fallback_on_empty,
        batching=cfg.batching, slots=None if planned else cfg.max_batch_size,
        max_held_tokens=None if planned and "max_batch_tokens" not in cfg.model_fields_set else cfg.max_batch_tokens,
        prompt_tokens=cfg.max_prompt_tokens, memory_share=cfg.gpu_memory_share, compile_step=cfg.compile_step,
    )


def worker_sets_slots(cfg: GenerationSettings, plan: WorkerPlan) -> bool:
    """GPU workers plan their slots from their memory (lazy_core.slots) unless the run sets max_batch_size."""
    return plan.use_gpu and "max_batch_size" not in cfg.model_fields_set
