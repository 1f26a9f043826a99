"""Puts requests in their queues' fair waiting lines (`fleet_common.fair_queue`), many per Redis
round trip.

Requests admitted while a write is on the wire wait for it to return and then go out together:
one pipeline with one enqueue script call per request (its item, its ticket) and one wake of the
result reader. An idle gateway therefore writes each request at once, and a busy one pays
redis-py's per-command cost once per batch rather than once per request (the auto-pipelining of
ioredis / Lettuce).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from fleet_common.fair_queue import ENQUEUE

_MAX_BATCH = 256


@dataclass(frozen=True)
class FairEntry:
    """One request for its queue's waiting lines: `fair_queue.enqueue_keys` / `enqueue_args`."""

    keys: list[str]
    args: list[bytes | str | int]


@dataclass(frozen=True)
class _Pending:
    entry: FairEntry
    written: asyncio.Future[None]


class TaskPublisher:
    def __init__(self, redis: Redis, *, add_wake: Callable[[object], None],
                 max_batch: int = _MAX_BATCH) -> None:
        """`add_wake(pipe)` adds the write that restarts the gateway's blocked result read."""
        self._redis = redis
        self._enqueue = redis.register_script(ENQUEUE)
        self._add_wake = add_wake
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches_written = 0

    async def publish(self, entry: FairEntry) -> None:
        """Returns once the request waits in its line; raises what Redis raised otherwise."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        written.add_done_callback(_mark_retrieved)
        self._pending.append(_Pending(entry, written))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="task-publisher")
        # Shielded: a caller that gives up cannot take the other requests' write down with it.
        await asyncio.shield(written)

    async def _write_all(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self._max_batch]
                del self._pending[:self._max_batch]
                await self._write(batch)
        finally:
            self._writer = None
            stranded, self._pending = self._pending, []
            _fail(stranded, ConnectionError("the task publisher stopped before writing"))

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                self._add_wake(pipe)
                for item in batch:
                    await self._enqueue(keys=item.entry.keys, args=item.entry.args, client=pipe)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - every waiting request hears it, none hangs
            _fail(batch, exc)
            return
        except BaseException:
            _fail(batch, ConnectionError("the task publisher stopped while writing"))
            raise
        self.batches_written += 1
        for item in batch:
            if not item.written.done():
                item.written.set_result(None)


def _fail(items: list[_Pending], exc: BaseException) -> None:
    for item in items:
        if not item.written.done():
            item.written.set_exception(exc)


def _mark_retrieved(written: asyncio.Future[None]) -> None:
    """A caller that gave up never reads its future; its error is not news to log."""
    if not written.cancelled():
        written.exception()
