"""The autoscaling signal: how many workers each model version's queue wants, as gauges.

Queue length alone is the wrong signal: it drops to zero while every worker is busy with long
generations (the pool would scale in under load), and it misses work that has already left the
queue. The signal here is work, queued at every priority plus in flight, over what one worker
runs at once:

    desired = ceil((queued + in flight) / capacity per worker)

with the capacity the live workers publish (their heartbeat status), or `default_capacity`
while none is live, so a queue scaled to zero asks for a first worker as soon as a request
waits. Every gateway exports the same values (they read the same Redis): aggregate with max.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common import fair_queue
from fleet_common.keys import draining_workers, live_workers, worker_status
from model_registry.records import ServedModel

log = logging.getLogger(__name__)

DESIRED_WORKERS = "fleet_desired_workers"
_LABELS = ["queue", "model", "version", "pool"]
QUEUE_DEPTH = Gauge("fleet_queue_depth", "Requests waiting in a queue's lines, by priority.",
                    [*_LABELS, "priority"])
IN_FLIGHT = Gauge("fleet_queue_in_flight", "Requests the queue's workers hold.", _LABELS)
LIVE = Gauge("fleet_queue_live_workers", "Workers with a fresh heartbeat on the queue.",
             _LABELS)
CAPACITY = Gauge("fleet_queue_worker_capacity",
                 "Requests one worker of the queue runs at once well.", _LABELS)
DESIRED = Gauge(DESIRED_WORKERS, "Workers the queue's work needs: ceil((queued + in flight) / "
                "capacity per worker).", _LABELS)


@dataclass(frozen=True)
class QueueLoad:
    depths: tuple[int, ...]  # by fair_queue.LEVELS
    in_flight: int
    live: int
    capacity: int

    @property
    def desired(self) -> int:
        return math.ceil((sum(self.depths) + self.in_flight) / max(self.capacity, 1))


class AutoscaleSignal:
    def __init__(self, redis: Redis, served: Callable[[], Iterable[ServedModel]], *,
                 liveness_s: float, interval_s: float, default_capacity: int,
                 on_refresh: Callable[[], None] | None = None) -> None:
        """`on_refresh()` runs with each refresh (other gauges of the registry's state)."""
        self._redis = redis
        self._on_refresh = on_refresh
        self._served = served
        self._liveness_s = liveness_s
        self._interval_s = interval_s
        self._default_capacity = default_capacity
        self._depths = redis.register_script(fair_queue.DEPTHS)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                log.warning("autoscaling signal not refreshed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self._interval_s)

    async def refresh(self) -> dict[str, QueueLoad]:
        if self._on_refresh is not None:
            self._on_refresh()
        loads = {}
        for served in {s.queue: s for s in self._served()}.values():
            load = await self.load(served.queue)
            labels = (served.queue, served.model, served.version, served.pool)
            for level, depth in zip(fair_queue.LEVELS, load.depths, strict=True):
                QUEUE_DEPTH.labels(*labels, level).set(depth)
            IN_FLIGHT.labels(*labels).set(load.in_flight)
            LIVE.labels(*labels).set(load.live)
            CAPACITY.labels(*labels).set(load.capacity)
            DESIRED.labels(*labels).set(load.desired)
            loads[served.queue] = load
        return loads

    async def load(self, queue: str) -> QueueLoad:
        since = time.time() - self._liveness_s
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._depths(args=[fair_queue.prefix(queue)], client=pipe)
            pipe.zrangebyscore(live_workers(queue), since, "+inf")
            pipe.zrangebyscore(draining_workers(queue), since, "+inf")
            depths, live, draining = await pipe.execute()
        workers = [w.decode() for w in [*live, *draining]]
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.hmget(worker_status(worker), "tasks_in_flight", "capacity")
            statuses = await pipe.execute()
        in_flight = sum(int(held or 0) for held, _ in statuses)
        capacities = [int(cap) for (_, cap), w in zip(statuses, workers, strict=True)
                      if cap and w.encode() in live]
        capacity = round(sum(capacities) / len(capacities)) if capacities else \
            self._default_capacity
        return QueueLoad(tuple(int(d) for d in depths), in_flight, len(live), capacity)
