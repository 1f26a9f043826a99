"""Worker background duties: heartbeats into its queue's worker sets, listening for
cancellations, and noticing that the engine died."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping

from redis.asyncio import Redis

from fleet_common.keys import CANCEL_CHANNEL, draining_workers, live_workers, worker_status
from workers.engine import EngineClient
from workers.generation import InFlight

log = logging.getLogger(__name__)
_STATUS_TTL_BEATS = 5


class Presence(enum.Enum):
    """Which of its queue's worker sets a worker heartbeats into."""

    LIVE = "live"  # gateways admit requests to the queue on its account
    DRAINING = "draining"  # finishes what it holds (its leases stay valid), takes nothing new
    GONE = "gone"  # in neither set: it holds nothing and stops beating


class PresenceControl:
    """The heartbeat's presence, changed by the runtime; a change is written at once.

    The heartbeat is the only writer of the worker sets, so a move from the live set to the
    draining set cannot race a beat that re-adds the worker to the live set."""

    def __init__(self) -> None:
        self.presence = Presence.LIVE
        self._changed = asyncio.Event()

    def set(self, presence: Presence) -> None:
        if presence is not self.presence and self.presence is not Presence.GONE:
            self.presence = presence
            self._changed.set()

    async def wait(self, timeout_s: float) -> None:
        """Returns after `timeout_s` or as soon as the presence changes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        self._changed.clear()


async def heartbeat(redis: Redis, queue: str, worker: str, interval_s: float,
                    status: Callable[[], Mapping[str, str | int | float]],
                    control: PresenceControl | None = None) -> None:
    """Keeps this worker's score fresh in the queue's live or draining set (the gateways read
    them) and its status hash current (operators and tests read it); the hash expires if we
    die. Returns once the presence is GONE, after removing the worker from both sets."""
    control = control or PresenceControl()
    live_key, draining_key = live_workers(queue), draining_workers(queue)
    status_key = worker_status(worker)
    while control.presence is not Presence.GONE:
        presence = control.presence
        try:
            fields = dict(status())
        except Exception:  # a status we cannot read must not make us look dead
            log.warning("reading the worker status failed", exc_info=True)
            fields = {}
        try:
            now = time.time()
            async with redis.pipeline(transaction=False) as pipe:
                if presence is Presence.LIVE:
                    pipe.zadd(live_key, {worker: now})
                else:  # in that order, so a gateway never finds it in neither set
                    pipe.zadd(draining_key, {worker: now})
                    pipe.zrem(live_key, worker)
                pipe.hset(status_key, mapping={**fields, "queue": queue,
                                               "presence": presence.value, "updated_at": now})
                pipe.expire(status_key, max(int(interval_s * _STATUS_TTL_BEATS), 1))
                await pipe.execute()
        except Exception:  # Redis restarting: keep trying, the gateway will see us again
            log.warning("heartbeat to Redis failed", exc_info=True)
            # Idle pooled connections to a Redis that restarts are dead sockets, each failing
            # its next command: a task's pre-start check would fail and be acknowledged.
            with contextlib.suppress(Exception):
                await redis.connection_pool.disconnect(inuse_connections=False)
        await control.wait(interval_s)
    try:
        await leave(redis, queue, worker)
    except Exception:  # Redis down: our entries go stale, which gateways read as gone
        log.warning("leaving the worker sets failed", exc_info=True)


async def leave(redis: Redis, queue: str, worker: str) -> None:
    """Removes the worker from both of its queue's sets and deletes its status hash."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(live_workers(queue), worker)
        pipe.zrem(draining_workers(queue), worker)
        pipe.delete(worker_status(worker))
        await pipe.execute()


async def engine_lost(engine: EngineClient, interval_s: float) -> BaseException:
    """Returns, with the reason, once the engine fails its health check (vLLM's is a flag read,
    so checking every heartbeat costs nothing)."""
    while True:
        try:
            await engine.check_health()
        except Exception as exc:  # whatever the reason, this engine serves nothing more
            log.exception("the engine failed its health check")
            return exc
        await asyncio.sleep(interval_s)


async def listen_for_cancellations(redis: Redis, in_flight: InFlight) -> None:
    """Aborts in-flight requests named on the cancel channel (the gateway publishes there)."""
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CANCEL_CHANNEL)
            async for message in pubsub.listen():
                request_id = message["data"].decode()
                if in_flight.cancel(request_id):
                    log.info("cancelling request %s", request_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("cancel listener lost Redis; resubscribing", exc_info=True)
            await asyncio.sleep(1)
        finally:
            await pubsub.aclose()
