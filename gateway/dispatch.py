"""Putting a request on its pool's queue and reading its result stream back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common.errors import DeadlineExceeded, EngineFailure, Unavailable
from fleet_common.keys import (
    CANCEL_CHANNEL,
    GENERATE_TASK,
    cancelled_flag,
    live_workers,
)
from fleet_common.task_message import task_message
from fleet_common.wire import EventKind, GenerationTask, StreamEvent
from gateway.result_feeds import FeedDeadline, ResultFeed, ResultFeeds
from gateway.task_publisher import TaskPublisher

log = logging.getLogger(__name__)
_CANCEL_FLAG_TTL_S = 3600


@contextmanager
def _backend_errors(what: str) -> Iterator[None]:
    """Redis or broker trouble is the fleet being unavailable, not an internal error."""
    try:
        yield
    except (RedisError, KombuOperationalError, OSError) as exc:
        raise Unavailable(f"queue backend unreachable while {what}: "
                          f"{type(exc).__name__}: {exc}") from exc


class Dispatcher:
    def __init__(self, redis: Redis, *, worker_liveness_s: float) -> None:
        self._redis = redis
        self._feeds = ResultFeeds(redis)
        self._publisher = TaskPublisher(redis, add_wake=self._feeds.wake)
        self._liveness_s = worker_liveness_s
        self._live_cache: dict[str, tuple[float, int]] = {}

    def start(self) -> None:
        self._feeds.start()

    async def aclose(self) -> None:
        await self._feeds.aclose()

    async def live_worker_count(self, queue: str) -> int:
        """Workers whose heartbeat is fresh. A positive answer is cached for a second per queue;
        zero is always re-read, so a worker that just started is seen at once."""
        now = time.time()
        cached = self._live_cache.get(queue)
        if cached and now - cached[0] < 1.0:
            return cached[1]
        with _backend_errors("checking for live workers"):
            count = await self._redis.zcount(live_workers(queue), now - self._liveness_s,
                                             "+inf")
        if count:
            self._live_cache[queue] = (now, count)
        else:
            self._live_cache.pop(queue, None)
        return count

    async def submit(self, task: GenerationTask, queue: str, pool: str) -> ResultFeed:
        """Queues the task; its events arrive on the returned feed, which `events` reads and
        closes (or `release` closes, when the caller never reads it)."""
        if await self.live_worker_count(queue) == 0:
            raise Unavailable(
                f"no live worker serves {task.model}@{task.model_version} "
                f"(pool {pool}, queue {queue}); retry later"
            )
        message = task_message(GENERATE_TASK, task.request_id, (task.to_json(),), queue,
                               expires_unix=task.deadline_unix, now_unix=time.time())
        feed = self._feeds.open(task.request_id, task.deadline_unix)
        try:
            with _backend_errors(f"queueing request {task.request_id}"):
                await self._publisher.publish(queue, message)
        except asyncio.CancelledError:
            # The caller left while the task was being written: it may be queued already, and
            # no one would read its results.
            self._feeds.close(feed)
            await asyncio.shield(self._cancel_quietly(task.request_id))
            raise
        except BaseException:
            self._feeds.close(feed)
            raise
        return feed

    def release(self, feed: ResultFeed) -> None:
        self._feeds.close(feed)

    async def queue_depth(self, queue: str) -> int:
        return int(await self._redis.llen(queue))

    async def events(
        self, feed: ResultFeed, task: GenerationTask, queue: str
    ) -> AsyncIterator[StreamEvent]:
        """The request's events until its final one; DeadlineExceeded if it does not come."""
        started = False
        try:
            while True:
                with _backend_errors(f"reading the results of request {task.request_id}"):
                    event = await feed.next()
                if isinstance(event, FeedDeadline):
                    raise await self._deadline_error(task, queue, started, task.deadline_unix)
                if event.kind is EventKind.ERROR:
                    raise EngineFailure(event.data.get("message", "engine failure"))
                started = started or event.kind is EventKind.STARTED
                yield event
                if event.kind is EventKind.FINAL:
                    return
        finally:
            self._feeds.close(feed)

    async def _deadline_error(
        self, task: GenerationTask, queue: str, started: bool, deadline_unix: float
    ) -> DeadlineExceeded:
        budget = deadline_unix - task.enqueued_at_unix
        if started:
            return DeadlineExceeded(
                f"request {task.request_id} did not finish within its deadline of {budget:.2f} s"
            )
        with _backend_errors(f"inspecting queue {queue}"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.llen(queue)
                pipe.zcount(live_workers(queue), time.time() - self._liveness_s, "+inf")
                depth, live = await pipe.execute()
        return DeadlineExceeded(
            f"no worker started request {task.request_id} within its deadline of {budget:.2f} s "
            f"(queue {queue}: {depth} waiting, {live} live workers)"
        )

    async def _cancel_quietly(self, request_id: str) -> None:
        try:
            await self.cancel(request_id)
        except (RedisError, OSError):
            log.warning("could not cancel abandoned request %s", request_id, exc_info=True)

    async def cancel(self, request_id: str) -> None:
        """Stops the request wherever it is: queued (flag) or generating (abort message)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(cancelled_flag(request_id), 1, ex=_CANCEL_FLAG_TTL_S)
            pipe.publish(CANCEL_CHANNEL, request_id)
            await pipe.execute()
