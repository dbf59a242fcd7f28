"""workers.spec: an actor's Ray resources, on a GPU or on CPUs."""

from __future__ import annotations

from workers import actor_options


def test_actor_options_gpu_or_cpu():
    assert actor_options(2.0, 4, 3) == {"max_restarts": 3, "max_task_retries": 0, "num_gpus": 1, "num_cpus": 1}
    assert actor_options(0.0, 4, 1) == {"max_restarts": 1, "max_task_retries": 0, "num_gpus": 0, "num_cpus": 4}
