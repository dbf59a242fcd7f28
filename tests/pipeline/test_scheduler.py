"""pipeline.scheduler's actor pool on a local Ray with a stand-in actor: an item that keeps killing its worker fails
alone, a hung worker is found by its timeout, backpressure holds through faults (the real actor runs in
test_driver.py)."""

from __future__ import annotations

import os
import time

import ray

from pipeline.scheduler import ActorPool, BatchTask


def _flaky_actor_class():
    class Flaky:
        """Echoes ids; [666] kills its process, [777] hangs."""

        def ready(self):
            return {"pid": os.getpid()}

        def run_batch(self, input_ids, sampled, seed):
            if [666] in input_ids:
                os._exit(1)
            if [777] in input_ids:
                time.sleep(3600)
            return [{"status": "ok", "echo": ids} for ids in input_ids]

    return ray.remote(Flaky).options(max_restarts=2, max_task_retries=0, num_cpus=0)


def _drain(pool: ActorPool, deadline_s: float = 120) -> list:
    outcomes, end = [], time.monotonic() + deadline_s
    while pool.busy and time.monotonic() < end:
        outcomes += pool.step(wait_s=0.2)
        assert pool.in_flight <= pool.max_in_flight  # backpressure holds through faults
    assert not pool.busy, "pool never finished"
    return outcomes


def test_item_that_keeps_killing_its_worker_fails_alone(local_ray):
    cls = _flaky_actor_class()
    pool = ActorPool(cls.remote, num_workers=1, max_in_flight=2, max_retries=1, batch_timeout_s=60)
    try:
        pool.add(BatchTask(shard=0, positions=[0, 1, 2], input_ids=[[1], [666], [2]], sampled=False, seed=0))
        pool.add(BatchTask(shard=0, positions=[3], input_ids=[[3]], sampled=False, seed=0))
        outcomes = _drain(pool)
    finally:
        pool.shutdown()
    done = {p: o for o in outcomes for p in o.task.positions}
    assert sorted(done) == [0, 1, 2, 3]  # every item exactly once
    assert [done[p].rows[done[p].task.positions.index(p)]["echo"] for p in (0, 2, 3)] == [[1], [2], [3]]
    assert done[1].rows is None and done[1].error.startswith("worker_died") and "after 2 attempts" in done[1].error
    assert pool.replacements >= 1  # 4 deaths > max_restarts=2: the dead actor was replaced


def test_hung_worker_is_detected_by_timeout(local_ray):
    cls = _flaky_actor_class()
    pool = ActorPool(cls.remote, num_workers=1, max_in_flight=2, max_retries=1, batch_timeout_s=1.5)
    try:
        pool.add(BatchTask(shard=0, positions=[0], input_ids=[[777]], sampled=False, seed=0))
        pool.add(BatchTask(shard=0, positions=[1], input_ids=[[5]], sampled=False, seed=0))
        started = time.monotonic()
        outcomes = _drain(pool, deadline_s=60)
    finally:
        pool.shutdown()
    by_pos = {o.task.positions[0]: o for o in outcomes}
    assert by_pos[0].error.startswith("worker_hung") and by_pos[1].rows[0]["echo"] == [5]
    assert time.monotonic() - started < 45
