"""Noticing that a request's worker is gone, from the workers' heartbeats, within seconds.

Celery on Redis has no lease a consumer can extend: an unacknowledged message comes back only
after the visibility timeout, which must be longer than the longest generation or it re-runs
generations that are still running. So the broker never re-runs anything here (the visibility
timeout exceeds the longest deadline, so a restored message has always expired). Instead each
gateway watches the requests it is waiting for:

- started: the worker named in the attempt's STARTED event must stay in its queue's live (or
  draining) set; once its heartbeat is older than the liveness window the attempt is lost;
- not started: with no live worker on the queue the caller hears UNAVAILABLE at once; a message
  that is neither in the queue nor started after a grace period was taken by a worker that died
  before starting it, and is lost too;
- attached, not started: a caller attached to a request another gateway claimed does not know
  its message. The queueing script records the attempt in the request's claim (`queued`); an
  attempt neither recorded there nor started within a liveness window was claimed by a gateway
  that died before queueing it, and is lost; so is one recorded but not started while its
  tenant's line stays empty (a worker took it and died). A started one's marker names its
  worker, whose heartbeat is then watched.

A lost attempt is re-published by the gateway under the next attempt number (`Dispatcher`).
One pipelined round trip per check serves every request in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common import fair_queue
from fleet_common.keys import attempt_started, draining_workers, live_workers, request_claim
from fleet_common.task_message import ticket_message
from gateway.request_run import NoLiveWorker, RequestRun, WorkerLost

log = logging.getLogger(__name__)


class LeaseMonitor:
    def __init__(self, redis: Redis, *, liveness_s: float, interval_s: float,
                 unstarted_grace_s: float, wait_for_workers: bool = False) -> None:
        """`wait_for_workers`: a queue without live workers keeps its requests waiting (for an
        autoscaler to start one) instead of failing them."""
        self._redis = redis
        self._wait_for_workers = wait_for_workers
        self._liveness_s = liveness_s
        self._interval_s = interval_s
        self._unstarted_grace_s = unstarted_grace_s
        self._runs: set[RequestRun] = set()
        self._top_up_script = redis.register_script(fair_queue.TOP_UP)

    def watch(self, run: RequestRun) -> None:
        self._runs.add(run)

    def unwatch(self, run: RequestRun) -> None:
        self._runs.discard(run)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._runs:
                continue
            try:
                await self.check()
            except (RedisError, OSError) as exc:
                log.warning("lease check failed: %s: %s", type(exc).__name__, exc)

    async def check(self) -> None:
        runs = [run for run in self._runs if not run.notified and not run.finished]
        if not runs:
            return
        queues = sorted({run.queue for run in runs})
        since = time.time() - self._liveness_s
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zrangebyscore(live_workers(queue), since, "+inf")
                pipe.zrangebyscore(draining_workers(queue), since, "+inf")
            replies = await pipe.execute()
        live = {q: {w.decode() for w in replies[2 * i]} for i, q in enumerate(queues)}
        draining = {q: {w.decode() for w in replies[2 * i + 1]} for i, q in enumerate(queues)}
        unstarted, attached = [], []
        for run in runs:
            if run.worker:
                if run.worker not in live[run.queue] and run.worker not in draining[run.queue]:
                    run.notify(WorkerLost(f"worker {run.worker} stopped sending heartbeats "
                                          f"while serving attempt {run.task.attempt}"))
            elif not live[run.queue]:
                if not self._wait_for_workers:
                    run.notify(NoLiveWorker(f"no live worker serves queue {run.queue}"))
            elif time.monotonic() - run.queued_at > self._unstarted_grace_s:
                if run.message:
                    unstarted.append(run)
                elif not run.queued_seen:
                    attached.append(run)
        if unstarted:
            await self._check_still_queued(unstarted)
        if attached:
            await self._check_ever_queued(attached)

    async def _check_ever_queued(self, runs: list[RequestRun]) -> None:
        """For callers attached to an attempt whose queue item they never saw. Started: the
        marker names its worker, whose heartbeat is watched from then on, as for any started
        attempt. Not started and either never queued or queued but with its tenant's line
        empty (a worker took it): lost once that lasts a liveness window."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for run in runs:
                pipe.hget(request_claim(run.scope), "queued")
                pipe.get(attempt_started(run.scope, run.task.attempt))
                pipe.llen(fair_queue.tenant_line(run.queue, fair_queue.level_of(
                    run.task.priority), run.task.tenant))
            replies = await pipe.execute()
        now = time.monotonic()
        for i, run in enumerate(runs):
            queued, marker, in_line = replies[3 * i], replies[3 * i + 1], replies[3 * i + 2]
            if marker is not None:  # "<worker> <token>" (workers.generation)
                run.queued_seen = True
                run.worker = run.worker or marker.decode().split(" ", 1)[0]
                continue
            if queued is not None and int(queued) >= run.task.attempt and in_line:
                run.unseen_since = None  # it may be waiting there
                continue
            if run.unseen_since is None:
                run.unseen_since = now
            elif now - run.unseen_since >= self._liveness_s:
                where = ("was claimed but never queued (the gateway that claimed it stopped)"
                         if queued is None or int(queued) < run.task.attempt else
                         "left its line but no worker started it")
                run.notify(WorkerLost(f"attempt {run.task.attempt} {where} within "
                                      f"{self._liveness_s:.0f} s"))

    async def _check_still_queued(self, runs: list[RequestRun]) -> None:
        """A message is taken off the queue and started within milliseconds on an idle worker,
        within seconds on a busy one; one missing from the queue and unstarted for a whole
        liveness window went down with the worker that took it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for run in runs:
                pipe.lpos(run.line, run.message)
            positions = await pipe.execute()
        now = time.monotonic()
        waiting_too_long: set[str] = set()
        for run, position in zip(runs, positions, strict=True):
            if position is not None or run.worker:
                run.unseen_since = None
                if position is not None and now - run.queued_at >= self._liveness_s:
                    waiting_too_long.add(run.queue)
                continue
            if run.unseen_since is None:
                run.unseen_since = now
            elif now - run.unseen_since >= self._liveness_s:
                run.notify(WorkerLost(f"attempt {run.task.attempt} left queue {run.queue} but "
                                      f"no worker started it within {self._liveness_s:.0f} s"))
        if waiting_too_long:
            await self._top_up(sorted(waiting_too_long))

    async def _top_up(self, queues: list[str]) -> None:
        """Requests waiting a whole liveness window may be waiting for tickets that went down
        with a worker (held by it until Redis's visibility timeout): where fewer tickets than
        items wait, one more ticket goes on the queue. A spare ticket finds nothing to take."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                await self._top_up_script(
                    keys=[fair_queue.waiting_count(queue), queue],
                    args=[ticket_message(queue, f"top-up:{uuid.uuid4().hex}")], client=pipe)
            pushed = await pipe.execute()
        for queue, added in zip(queues, pushed, strict=True):
            if added:
                log.info("queue %s: more requests wait than tickets; added one", queue)
