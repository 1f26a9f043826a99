"""Worker background duties: liveness heartbeats and listening for cancellations."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from redis.asyncio import Redis

from fleet_common.keys import CANCEL_CHANNEL, live_workers, worker_status
from workers.generation import InFlight

log = logging.getLogger(__name__)
_STATUS_TTL_BEATS = 5


async def heartbeat(redis: Redis, queue: str, worker: str, interval_s: float,
                    status: Callable[[], Mapping[str, str | int | float]]) -> None:
    """Keeps this worker's score in the queue's live-worker set fresh (the gateway reads it) and
    its status hash current (operators and tests read it); the hash expires if we die."""
    live_key, status_key = live_workers(queue), worker_status(worker)
    while True:
        try:
            fields = dict(status())
        except Exception:  # a status we cannot read must not make us look dead
            log.warning("reading the worker status failed", exc_info=True)
            fields = {}
        try:
            now = time.time()
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zadd(live_key, {worker: now})
                pipe.hset(status_key, mapping={**fields, "queue": queue, "updated_at": now})
                pipe.expire(status_key, max(int(interval_s * _STATUS_TTL_BEATS), 1))
                await pipe.execute()
        except Exception:  # Redis restarting: keep trying, the gateway will see us again
            log.warning("heartbeat to Redis failed", exc_info=True)
        await asyncio.sleep(interval_s)


async def leave(redis: Redis, queue: str, worker: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(live_workers(queue), worker)
        pipe.delete(worker_status(worker))
        await pipe.execute()


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
