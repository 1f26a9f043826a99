"""The chaos run's faults: a seeded plan (which faults, in which order, at which point of the
load) and their injection into the running fleet, each followed by its recovery.

The load is cut into one segment per fault plus a fault-free tail. A fault fires at a random
point of its segment (after a random share of the segment's calls has ended, plus a random
delay), while the segment's other calls are in flight; the next segment is released once the
fleet has recovered (both workers in the live set again). So every fault meets load, no fault
meets a fleet still recovering from the last one, and one worker is alive at any time.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from bench.chaos_fleet import WORKERS, ChaosFleet
from bench.chaos_load import Load
from fleet_common.keys import worker_status

log = logging.getLogger(__name__)
RECOVERY_TIMEOUT_S = 120.0
PROBE_BUDGET_S = 90.0
OUTAGE_OPEN_S = 0.5


class FaultKind(enum.StrEnum):
    SIGKILL = "sigkill"
    DRAIN = "sigterm-drain"
    REDIS = "redis-restart"


@dataclass(frozen=True)
class PlannedFault:
    kind: FaultKind
    segment: int
    after_ended: int  # fires once this many calls (of the whole run) have ended ...
    delay_s: float  # ... and this long after that
    redis_down_s: float = 0.0


@dataclass
class FaultRecord:
    """What happened when a fault was injected; times are unix seconds (Redis's clock too)."""

    kind: FaultKind
    segment: int
    worker: str = ""
    at_unix: float = 0.0
    recovered_unix: float = 0.0
    in_flight_calls: int = 0  # calls of the run in flight when it fired
    victim_tasks: int = -1  # the victim's tasks in flight by its last heartbeat (-1: unknown)
    detail: dict[str, float | int | str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    segments: list[int]  # number of calls per segment; segment i + 1 starts after fault i
    faults: list[PlannedFault]


def plan(requests: int, kills: int, rng: random.Random, *, drain: bool = True,
         redis_restart: bool = True) -> Plan:
    kinds = [FaultKind.SIGKILL] * kills
    kinds += [FaultKind.DRAIN] * int(drain) + [FaultKind.REDIS] * int(redis_restart)
    rng.shuffle(kinds)
    count = len(kinds) + 1
    if requests < 4 * count:
        raise ValueError(f"{requests} requests are too few for {len(kinds)} faults "
                         f"(at least {4 * count})")
    segments = [requests // count + (1 if i < requests % count else 0) for i in range(count)]
    faults, ended_before = [], 0
    for i, kind in enumerate(kinds):
        share = rng.uniform(0.15, 0.5)
        faults.append(PlannedFault(
            kind=kind, segment=i, after_ended=ended_before + int(segments[i] * share),
            delay_s=round(rng.uniform(0.0, 1.5), 2),
            redis_down_s=round(rng.uniform(1.0, 3.0), 2) if kind is FaultKind.REDIS else 0.0))
        ended_before += segments[i]
    return Plan(segments, faults)


class FaultInjector:
    """Injects one planned fault and brings the fleet back to two live workers."""

    def __init__(self, fleet: ChaosFleet, load: Load, rng: random.Random,
                 probe: Callable[[], bool]) -> None:
        self._fleet = fleet
        self._load = load
        self._rng = rng
        self._probe = probe

    def inject(self, planned: PlannedFault, in_flight_calls: int) -> FaultRecord:
        record = FaultRecord(planned.kind, planned.segment, in_flight_calls=in_flight_calls)
        if planned.kind is FaultKind.REDIS:
            self._redis_restart(planned, record)
        else:
            self._worker_fault(planned, record)
        log.info("fault %s %s done: %s", record.kind, record.worker, record.detail)
        return record

    def _tasks_of(self) -> dict[str, int]:
        client = redis.Redis.from_url(self._fleet.redis_url, socket_timeout=2)
        tasks = {}
        for name in WORKERS:
            value = client.hget(worker_status(name), "tasks_in_flight")
            tasks[name] = int(value) if value is not None else -1
        return tasks

    def _victim(self) -> tuple[str, int]:
        """A random worker among those serving something (any worker if none is)."""
        tasks = self._tasks_of()
        busy = [name for name in WORKERS if tasks[name] > 0]
        victim = self._rng.choice(busy or list(WORKERS))
        return victim, tasks[victim]

    def _worker_fault(self, planned: PlannedFault, record: FaultRecord) -> None:
        fleet = self._fleet
        # Never the last live worker: both must heartbeat (a busy one may be a beat late).
        fleet.wait_all_live(RECOVERY_TIMEOUT_S)
        record.worker, record.victim_tasks = self._victim()
        if planned.kind is FaultKind.SIGKILL:
            record.at_unix = fleet.sigkill_worker(record.worker)
        else:
            record.at_unix = fleet.sigterm_worker(record.worker)
            grace = fleet.timings.drain_grace_s
            code = fleet.wait_exit(record.worker, grace + 30)
            record.detail["exit_code"] = code
            record.detail["drain_s"] = round(time.time() - record.at_unix, 2)
            if code is None:
                record.detail["outcome"] = f"still running {grace + 30:g} s after SIGTERM"
        record.detail["restart_s"] = round(fleet.restart_worker(record.worker), 1)
        record.recovered_unix = fleet.wait_all_live(RECOVERY_TIMEOUT_S)

    def _redis_restart(self, planned: PlannedFault, record: FaultRecord) -> None:
        fleet = self._fleet
        record.at_unix = fleet.kill_redis()
        # Calls starting in the first moments of the outage must fail fast; after that the
        # callers hold back until Redis is back, so the outage does not eat the segment.
        time.sleep(OUTAGE_OPEN_S)
        held = self._load.pause()
        time.sleep(max(planned.redis_down_s - OUTAGE_OPEN_S, 0.0))
        back = fleet.restart_redis()
        record.detail["down_s"] = round(back - record.at_unix, 2)
        record.recovered_unix = fleet.wait_all_live(RECOVERY_TIMEOUT_S, beat_since=back)
        record.detail["workers_live_after_s"] = round(record.recovered_unix - back, 2)
        deadline = time.monotonic() + PROBE_BUDGET_S
        probes = 0
        while time.monotonic() < deadline:
            probes += 1
            if self._probe():
                record.detail["first_ok_call_after_s"] = round(time.time() - back, 2)
                break
            time.sleep(1.0)
        else:
            record.detail["first_ok_call_after_s"] = None
        record.detail["probes"] = probes
        record.detail["calls_held_back"] = held
        self._load.release(held)
