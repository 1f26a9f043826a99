"""Admission control: each model version's queue is bounded, and a request that could not be
served within its deadline is refused at once instead of being queued to time out.

What the gateway knows of a queue it reads in one pipelined Redis round trip, reused for
`refresh_s` (every request in that window costs a dictionary lookup):

- the live and draining workers (the heartbeat sets `fleet:workers:<queue>` and
  `fleet:draining:<queue>`);
- the messages waiting: the length of the queue's list and of kombu's priority lists
  (`KOMBU_PRIORITY_STEPS`; priority 0 is the plain list, which is where the gateway publishes);
- each of those workers' `capacity` and `tasks_in_flight` from its status hash
  (`fleet:worker:<name>`, refreshed every heartbeat).

From that: *depth* = waiting + in flight + what this gateway admitted since the read - what it
saw finish since;
*capacity* = the capacities of the live workers that are not draining, summed; *bound* =
capacity x (1 + queue factor), or the queue's fixed bound. A depth at the bound is refused,
except for a tenant still under its fair share of the waiting room (bound - capacity, divided
among the tenants with requests waiting) while another tenant holds more than its share: one
tenant's flood must not lock the others out (up to HARD_BOUND_FACTOR x the bound). The fair
lines' per-tenant lengths are read in the same round trip.

The service time is learned from the FINAL events this gateway forwards: moving averages of a
queue's engine time per request (`engine_ms`: the engine taking the request -> its last token)
and of its completion tokens. A request that finds every slot taken waits for
depth - capacity + 1 departures, which come at capacity / service time per second, and then
runs for the service time, shortened in proportion when it asks for fewer tokens than the
average request produced:

    wait = (ahead + 1) x service / capacity

where *ahead* is what the fair lines will start first: all that wait, or, with several tenants
waiting, at most the tenant's own waiting requests once per tenant (`QueueLoad.ahead_of`).
    finish = wait + service x min(1, max_tokens x n / mean completion tokens)

A request whose estimated finish is past its remaining deadline is refused too: queued, it
would take a slot only to end in DEADLINE_EXCEEDED. A request that finds a free slot is never
refused on the estimate (nobody is ahead of it; whether it fits its deadline is its own
business). Every refusal is `ResourceExhausted` naming the queue, the depth, the bound and the
estimate, with `retry_after_s` = the estimated time until it would be admitted.

Limits, on purpose: a queue with a live worker that publishes no capacity (a worker from
before this) is unbounded unless it has a fixed bound; until a request has finished on a
queue only the bound applies; the check runs before the request id is claimed, so a refusal
costs no Redis call at all, and a re-sent id is counted as a new request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common import fair_queue
from fleet_common.errors import ResourceExhausted, Unavailable
from fleet_common.keys import draining_workers, live_workers, worker_status
from fleet_common.wire import Final, GenerationTask
from gateway.settings import GatewaySettings

#: kombu's Redis transport (kombu.transport.redis: PRIORITY_STEPS, Channel.sep, _q_for_pri)
#: keeps priority 0 on the queue's own list and each other step on `<queue><sep><step>`.
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
#: A queue at its bound still admits tenants under their fair share, up to this x the bound.
HARD_BOUND_FACTOR = 2
KOMBU_PRIORITY_SEP = "\x06\x16"
#: Weight of each new FINAL in the moving averages: about the last ten requests count.
EWMA_WEIGHT = 0.1
#: Retry delay when nothing has finished on the queue yet, so no service time is known.
UNKNOWN_RETRY_S = 1.0
#: Refusals are logged per queue at most this often, as a count.
LOG_EVERY_S = 10.0

log = logging.getLogger(__name__)


def waiting_lists(queue: str) -> tuple[str, ...]:
    """The Redis lists that hold `queue`'s waiting messages, one per kombu priority step."""
    return tuple(queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}"
                 for step in KOMBU_PRIORITY_STEPS)


@dataclass
class QueueLoad:
    """One read of a queue, plus what this gateway has admitted to it since."""

    read_at: float  # the controller's clock
    waiting: int
    in_flight: int
    capacity: int  # of the live workers that are not draining; 0 when any of them is unknown
    live_workers: int
    without_capacity: tuple[str, ...]  # live workers whose status names no capacity
    admitted_since: int = 0
    departed_since: int = 0  # requests this gateway saw finish since the read
    # Requests waiting in each tenant's fair lines (quoted tenant names), and those this
    # gateway admitted per tenant since the read.
    tenants_waiting: dict[str, int] = field(default_factory=dict)
    tenants_admitted: dict[str, int] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return max(self.waiting + self.in_flight + self.admitted_since - self.departed_since, 0)

    def waiting_of(self, tenant: str) -> int:
        key = quote(tenant, safe="")
        return self.tenants_waiting.get(key, 0) + self.tenants_admitted.get(key, 0)

    def active_tenants(self, tenant: str) -> int:
        """Tenants with requests waiting, counting `tenant`."""
        names = {t for t, n in self.tenants_waiting.items() if n}
        names |= {t for t, n in self.tenants_admitted.items() if n}
        return len(names | {quote(tenant, safe="")})

    def fair_share(self, tenant: str, waiting_room: int) -> int:
        """The part of the waiting room that is `tenant`'s when all waiting tenants share it."""
        return max(waiting_room // self.active_tenants(tenant), 1)

    def hogged_by_other(self, tenant: str, share: int) -> bool:
        """Whether another tenant holds more than `share` of the waiting room."""
        own = quote(tenant, safe="")
        others = (set(self.tenants_waiting) | set(self.tenants_admitted)) - {own}
        return any(self.tenants_waiting.get(t, 0) + self.tenants_admitted.get(t, 0) > share
                   for t in others)

    def ahead_of(self, tenant: str, capacity: int) -> int:
        """Requests the fair lines will start before a new request of `tenant`: at most its own
        waiting ones once per active tenant (equal weights), never more than all that wait."""
        everyone = max(self.depth - capacity, 0)
        if not self.tenants_waiting:  # no fair lines to go by: first come, first served
            return everyone
        tenants = self.active_tenants(tenant)
        return min(everyone, self.waiting_of(tenant) * tenants + tenants - 1)


@dataclass
class ServiceTime:
    """Moving averages over a queue's finished requests."""

    seconds: float
    tokens: float

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds += EWMA_WEIGHT * (seconds - self.seconds)
        self.tokens += EWMA_WEIGHT * (tokens - self.tokens)

    def of(self, asked_tokens: int) -> float:
        """The expected engine time of a request that asks for up to `asked_tokens`."""
        if self.tokens <= 0:
            return self.seconds
        return self.seconds * min(1.0, asked_tokens / self.tokens)


def _workers(load: QueueLoad) -> str:
    return f"{load.live_workers} live worker{'s' if load.live_workers != 1 else ''}"


def _int(value: bytes | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


class AdmissionControl:
    """`admit` before a task is queued (raises ResourceExhausted); `served` on its FINAL."""

    def __init__(self, redis: Redis, *, liveness_s: float, queue_factor: float = 2.0,
                 bounds: Mapping[str, int] | None = None, refresh_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._tenant_depths = redis.register_script(fair_queue.TENANT_DEPTHS)
        self._liveness_s = liveness_s
        self._factor = queue_factor
        self._bounds = dict(bounds or {})
        self._refresh_s = refresh_s
        self._clock = clock
        self._loads: dict[str, QueueLoad] = {}
        self._reading: dict[str, asyncio.Lock] = {}
        self._workers: dict[str, tuple[str, ...]] = {}  # per queue, as of the last read
        self._service: dict[str, ServiceTime] = {}
        self._unlogged: dict[str, int] = {}  # refusals per queue since the last log line
        self._logged_at: dict[str, float] = {}
        self.round_trips = 0
        self.refusals: dict[str, int] = {}

    def bound(self, queue: str, capacity: int) -> int | None:
        """Most requests `queue` may hold waiting + running; None: unbounded."""
        fixed = self._bounds.get(queue)
        if fixed is not None:
            return fixed
        return math.ceil(capacity * (1 + self._factor)) if capacity > 0 else None

    def service_time(self, queue: str) -> ServiceTime | None:
        return self._service.get(queue)

    def served(self, queue: str, final: Final) -> None:
        """A request of `queue` finished: it no longer counts in the queue's depth, and its
        engine time updates the queue's service time."""
        load = self._loads.get(queue)
        if load is not None:
            load.departed_since += 1
        seconds = final.engine_ms / 1000
        if seconds <= 0:
            return
        current = self._service.get(queue)
        if current is None:
            self._service[queue] = ServiceTime(seconds, final.completion_tokens)
        else:
            current.add(seconds, final.completion_tokens)

    async def admit(self, task: GenerationTask, queue: str) -> None:
        """Counts `task` in its queue, or raises ResourceExhausted saying why and when to retry."""
        load = await self.load(queue)
        depth, capacity = load.depth, load.capacity
        bound = self.bound(queue, capacity)
        service = self._service.get(queue)
        per_departure = service.seconds / capacity if service and capacity else None
        tenant = task.tenant
        if bound is not None and depth >= bound and not self._within_share(load, tenant, bound):
            self._count_refusal(queue, load, bound)
            if per_departure is None:
                retry, wait = UNKNOWN_RETRY_S, "unknown (no request has finished on it yet)"
            else:
                retry = (depth - bound + 1) * per_departure
                wait = f"{max(depth - capacity + 1, 0) * per_departure:.2f} s"
            raise ResourceExhausted(
                f"queue {queue} is full: {depth} requests waiting or running, bound {bound} "
                f"({self._bound_origin(queue, load)}); estimated wait {wait}; "
                f"retry in {max(retry, self._refresh_s):.2f} s",
                retry_after_s=max(retry, self._refresh_s), reason="queue_full")
        if service is not None and per_departure is not None and depth >= capacity:
            wait_s = (load.ahead_of(tenant, capacity) + 1) * per_departure
            run_s = service.of(task.sampling.max_tokens * max(task.sampling.n, 1))
            remaining = task.deadline_unix - time.time()
            if wait_s + run_s > remaining:
                self._count_refusal(queue, load, bound)
                retry = max(wait_s + run_s - max(remaining, 0.0), self._refresh_s)
                raise ResourceExhausted(
                    f"queue {queue} would not serve the request within its deadline: {depth} "
                    f"requests waiting or running for a capacity of {capacity} "
                    f"({_workers(load)}); "
                    f"estimated wait {wait_s:.2f} s + service {run_s:.2f} s = "
                    f"{wait_s + run_s:.2f} s, remaining deadline {max(remaining, 0.0):.2f} s; "
                    f"retry in {retry:.2f} s", retry_after_s=retry, reason="wait_past_deadline")
        load.admitted_since += 1
        key = quote(tenant, safe="")
        load.tenants_admitted[key] = load.tenants_admitted.get(key, 0) + 1

    def _within_share(self, load: QueueLoad, tenant: str, bound: int) -> bool:
        """At the bound, a tenant still under its fair share of the waiting room is admitted
        while another tenant holds more than its own share: one tenant filling the queue must
        not lock the others out. The queue then holds at most HARD_BOUND_FACTOR x its bound."""
        if load.depth >= bound * HARD_BOUND_FACTOR:
            return False
        share = load.fair_share(tenant, max(bound - load.capacity, 1))
        return load.waiting_of(tenant) < share and load.hogged_by_other(tenant, share)

    def _count_refusal(self, queue: str, load: QueueLoad, bound: int | None) -> None:
        self.refusals[queue] = self.refusals.get(queue, 0) + 1
        self._unlogged[queue] = self._unlogged.get(queue, 0) + 1
        now = self._clock()
        since = now - self._logged_at.get(queue, -LOG_EVERY_S)
        if since >= LOG_EVERY_S:
            log.warning("queue %s: refused %d requests in the last %.0f s (now %d waiting or "
                        "running, capacity %d, bound %s)", queue, self._unlogged[queue],
                        min(since, LOG_EVERY_S), load.depth, load.capacity, bound)
            self._unlogged[queue], self._logged_at[queue] = 0, now

    def _bound_origin(self, queue: str, load: QueueLoad) -> str:
        if queue in self._bounds:
            return "fixed for this queue"
        return (f"capacity {load.capacity} of {_workers(load)} x (1 + queue factor "
                f"{self._factor:g})")

    async def load(self, queue: str) -> QueueLoad:
        """The queue's load, read again when the last read is `refresh_s` old; concurrent
        callers share one read."""
        load = self._loads.get(queue)
        if load is not None and self._clock() - load.read_at < self._refresh_s:
            return load
        lock = self._reading.setdefault(queue, asyncio.Lock())
        async with lock:
            load = self._loads.get(queue)
            if load is None or self._clock() - load.read_at >= self._refresh_s:
                load = self._loads[queue] = await self._read(queue)
        return load

    async def _read(self, queue: str) -> QueueLoad:
        known = self._workers.get(queue, ())
        since = time.time() - self._liveness_s
        lists = waiting_lists(queue)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(live_workers(queue), since, "+inf")
                pipe.zrangebyscore(draining_workers(queue), since, "+inf")
                for name in lists:
                    pipe.llen(name)
                for worker in known:
                    pipe.hmget(worker_status(worker), "capacity", "tasks_in_flight")
                await self._tenant_depths(args=[fair_queue.prefix(queue)], client=pipe)
                replies = await pipe.execute()
            flat = replies.pop()
            tenants_waiting = {flat[i].decode(): int(flat[i + 1])
                               for i in range(0, len(flat), 2)}
            self.round_trips += 1
            live = [w.decode() for w in replies[0]]
            draining = {w.decode() for w in replies[1]}
            waiting = sum(int(n) for n in replies[2:2 + len(lists)])
            statuses = dict(zip(known, replies[2 + len(lists):]))
            new = [w for w in (*live, *sorted(draining)) if w not in statuses]
            if new:  # workers that joined since the last read: rare, one more round trip
                async with self._redis.pipeline(transaction=False) as pipe:
                    for worker in new:
                        pipe.hmget(worker_status(worker), "capacity", "tasks_in_flight")
                    statuses.update(zip(new, await pipe.execute()))
                self.round_trips += 1
        except (RedisError, OSError) as exc:
            raise Unavailable(f"queue backend unreachable while reading the load of queue "
                              f"{queue}: {type(exc).__name__}: {exc}") from exc
        serving = [w for w in live if w not in draining]
        self._workers[queue] = (*serving, *sorted(draining))
        in_flight = sum(_int(statuses[w][1]) or 0 for w in self._workers[queue])
        capacities = {w: _int(statuses[w][0]) for w in serving}
        without = tuple(w for w, c in capacities.items() if not c)
        capacity = 0 if without else sum(c or 0 for c in capacities.values())
        return QueueLoad(self._clock(), waiting, in_flight, capacity, len(serving), without,
                         tenants_waiting=tenants_waiting)


def admission_control_for(settings: GatewaySettings, redis: Redis) -> AdmissionControl | None:
    """The gateway's admission control as its settings say; None when it is switched off."""
    if not settings.admission_control:
        return None
    return AdmissionControl(redis, liveness_s=settings.worker_liveness_s,
                            queue_factor=settings.admission_queue_factor,
                            bounds=settings.admission_queue_bounds,
                            refresh_s=settings.admission_refresh_s)
