"""Scheduling batches on a pool of Ray actors: backpressure, hang detection, bounded retries, actor replacement.

Failure model (Ray issues #62746, #59986: jobs die waiting on a dead or hung worker forever):
- a worker that dies (OOM kill, segfault, ``ray.kill``) fails its in-flight calls with ``RayActorError``; Ray restarts
  it (``max_restarts``); the batch is resubmitted, at most ``max_retries`` times, then split into single items, each
  with its own retries, so an item that keeps killing its worker ends as one error row and never loops;
- a call running longer than ``batch_timeout_s`` is a hang: the worker is killed (and restarted), the batch retried;
- after a failure the worker gets a cheap probe; until it answers no work goes to it; a worker that cannot be reached
  any more (restarts exhausted) is replaced by a fresh actor, a bounded number of times per run.
A ``RayTaskError`` (an exception raised inside the worker's method) is a bug, not a fault: it stops the job.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

log = logging.getLogger("pipeline")


@dataclass
class BatchTask:
    """One batch of one shard: ``positions`` index the shard's rows, ``input_ids`` the prompts in the same order."""

    shard: int
    positions: list[int]
    input_ids: list[list[int]]
    sampled: bool
    seed: int
    attempts: int = 0


@dataclass
class Outcome:
    """A finished task: ``rows`` from the worker, or ``error`` (the reason) when it was given up."""

    task: BatchTask
    rows: list[dict[str, Any]] | None
    error: str | None


@dataclass
class _Running:
    ref: Any
    task: BatchTask
    started_at: float | None  # None while queued behind another call on the same actor


@dataclass
class _Slot:
    actor: Any
    queue: deque[_Running] = field(default_factory=deque)
    probe: Any = None  # ObjectRef of a ready() call while the actor is suspect
    probe_started: float = 0.0
    killed_for_hang: bool = False


class ActorPool:
    """``num_workers`` actors of ``actor_cls`` (a ``ray.remote`` class with ``ready()`` and ``run_batch()``)."""

    def __init__(
        self,
        make_actor: Callable[[], Any],
        num_workers: int,
        max_in_flight: int,
        max_retries: int,
        batch_timeout_s: float,
        max_replacements: int | None = None,
        ready_timeout_s: float = 1800.0,
    ) -> None:
        self.make_actor = make_actor
        self.max_in_flight = max_in_flight
        self.per_actor = max(1, -(-max_in_flight // num_workers))
        self.max_retries = max_retries
        self.batch_timeout_s = batch_timeout_s
        self.max_replacements = max_replacements if max_replacements is not None else 4 * num_workers + 4
        self.replacements = 0
        self.retries = 0
        self.failures_seen = 0
        self.pending: deque[BatchTask] = deque()
        self.slots = [_Slot(actor=make_actor()) for _ in range(num_workers)]
        self._wait_ready(ready_timeout_s)

    # ---- public --------------------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(len(s.queue) for s in self.slots)

    @property
    def has_room(self) -> bool:
        """Backpressure: the caller adds work only while this is true."""
        return len(self.pending) + self.in_flight < self.max_in_flight

    @property
    def busy(self) -> bool:
        return bool(self.pending) or self.in_flight > 0

    def add(self, task: BatchTask) -> None:
        self.pending.append(task)

    def step(self, wait_s: float = 1.0) -> list[Outcome]:
        """Submit what fits, wait up to ``wait_s`` for something to finish, handle faults; return finished tasks."""
        self._submit()
        refs = [r.ref for s in self.slots for r in s.queue] + [s.probe for s in self.slots if s.probe is not None]
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s, fetch_local=True)
        ready_set = set(ready)
        outcomes: list[Outcome] = []
        now = time.monotonic()
        for slot in self.slots:
            if slot.probe is not None and slot.probe in ready_set:
                self._finish_probe(slot)
            for running in [r for r in slot.queue if r.ref in ready_set]:  # queue order: the head first
                if running in slot.queue:  # a fault earlier in this loop may have requeued the rest
                    slot.queue.remove(running)
                    outcomes.extend(self._finish(slot, running))
            if slot.queue and slot.queue[0].started_at is None:
                slot.queue[0].started_at = now
        self._check_hangs(time.monotonic())
        return outcomes

    def shutdown(self) -> None:
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)
        self.slots = []

    # ---- internals -----------------------------------------------------------------------------------------------

    def _wait_ready(self, timeout_s: float) -> None:
        """Block until every actor has loaded its model; a constructor error (bad model name...) stops the job."""
        refs = [s.actor.ready.remote() for s in self.slots]
        try:
            infos = ray.get(refs, timeout=timeout_s)
        except GetTimeoutError as exc:
            self.shutdown()
            raise TimeoutError(
                f"workers did not load the model within {timeout_s:.0f}s; check the cluster has the resources "
                "asked for (num_workers, cpus_per_worker / GPUs)"
            ) from exc
        except RayActorError as exc:
            self.shutdown()
            raise RuntimeError(f"a worker failed to start: {exc}") from exc
        for info in infos:
            log.info("worker_ready %s", info)
        self.worker_infos: list[dict[str, Any]] = list(infos)  # what each first actor reported (device, dtype...)

    @property
    def size(self) -> int:
        """Workers in the pool."""
        return len(self.slots)

    def _submit(self) -> None:
        while self.pending:
            healthy = [s for s in self.slots if s.probe is None and len(s.queue) < self.per_actor]
            if not healthy:
                return
            slot = min(healthy, key=lambda s: len(s.queue))
            task = self.pending.popleft()
            ref = slot.actor.run_batch.remote(task.input_ids, task.sampled, task.seed)
            slot.queue.append(_Running(ref, task, time.monotonic() if not slot.queue else None))

    def _finish(self, slot: _Slot, running: _Running) -> list[Outcome]:
        try:
            rows = ray.get(running.ref)
        except RayTaskError:
            raise  # an exception inside run_batch is a bug: stop the job, loudly
        except RayActorError as exc:
            return self._on_fault(slot, running, f"worker_died: {type(exc).__name__}")
        if len(rows) != len(running.task.positions):
            raise RuntimeError(f"worker returned {len(rows)} rows for a batch of {len(running.task.positions)}")
        return [Outcome(running.task, rows, None)]

    def _on_fault(self, slot: _Slot, running: _Running, reason: str) -> list[Outcome]:
        """Requeue, split or give up on the task of a call that died with its worker."""
        self.failures_seen += 1
        if slot.killed_for_hang:
            reason = f"worker_hung: batch ran longer than batch_timeout_s={self.batch_timeout_s:g}"
        if slot.probe is None:
            slot.probe = slot.actor.ready.remote()
            slot.probe_started = time.monotonic()
        # calls queued behind this one died with the worker or will run on its restarted self: resubmit them
        # uncharged (their results, if any, are ignored) once the worker answers its probe
        for other in slot.queue:
            self.pending.appendleft(other.task)
        slot.queue.clear()
        task = running.task
        if running.started_at is None:  # it was only queued behind the failing call: not its fault
            self.pending.appendleft(task)
            return []
        task.attempts += 1
        if task.attempts <= self.max_retries:
            self.retries += 1
            log.warning("batch_retry shard=%d items=%d attempt=%d reason=%s", task.shard, len(task.positions),
                        task.attempts, reason)
            self.pending.appendleft(task)
            return []
        if len(task.positions) > 1:
            log.warning("batch_split shard=%d items=%d reason=%s", task.shard, len(task.positions), reason)
            for pos, ids in zip(reversed(task.positions), reversed(task.input_ids), strict=True):
                self.pending.appendleft(BatchTask(task.shard, [pos], [ids], task.sampled, task.seed))
            return []
        log.error("item_failed shard=%d position=%d reason=%s", task.shard, task.positions[0], reason)
        return [Outcome(task, None, f"{reason} (after {task.attempts} attempts)")]

    def _finish_probe(self, slot: _Slot) -> None:
        try:
            ray.get(slot.probe)
        except RayActorError:
            self._replace(slot, "unreachable after a fault")
            return
        slot.probe = None
        slot.killed_for_hang = False

    def _check_hangs(self, now: float) -> None:
        for slot in self.slots:
            head = slot.queue[0] if slot.queue else None
            if head is not None and head.started_at is not None and not slot.killed_for_hang:
                if now - head.started_at > self.batch_timeout_s:
                    log.error("worker_hung shard=%d items=%d after %.0fs: killing it", head.task.shard,
                              len(head.task.positions), now - head.started_at)
                    slot.killed_for_hang = True
                    ray.kill(slot.actor, no_restart=False)
            if slot.probe is not None and now - slot.probe_started > self.batch_timeout_s:
                self._replace(slot, "did not come back within batch_timeout_s")

    def _replace(self, slot: _Slot, why: str) -> None:
        if self.replacements >= self.max_replacements:
            raise RuntimeError(
                f"workers keep dying ({self.replacements} replaced, last one {why}); see the worker logs "
                "(ray logs) for the cause, e.g. out of memory"
            )
        self.replacements += 1
        log.warning("worker_replaced reason=%s", why)
        ray.kill(slot.actor, no_restart=True)
        slot.actor = self.make_actor()
        slot.probe = slot.actor.ready.remote()
        slot.probe_started = time.monotonic()
        slot.killed_for_hang = False
        for running in slot.queue:  # calls on the old actor are lost; requeue them without charging them
            self.pending.appendleft(running.task)
        slot.queue.clear()
