"""Writes requests' events to their Redis Streams, where the gateway (or a later watcher) reads.

Writes from all in-flight requests that arrive in the same event-loop turn go to Redis in one
pipelined round trip: at 32 concurrent requests an engine step yields 32 deltas, and sending
them one by one would cost 32 round trips per step.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from fleet_common.keys import result_stream
from fleet_common.wire import StreamEvent, event_fields


class ResultStreamWriter:
    def __init__(self, redis: Redis, *, ttl_s: int, max_len: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._max_len = max_len
        self._pending: list[tuple[str, dict[bytes, bytes], bool, asyncio.Future[None]]] = []

    async def write(self, scope: str, event: StreamEvent) -> None:
        """Returns once the event is in Redis. Events of one request keep their order because
        each request awaits its previous write before making the next."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        self._pending.append((result_stream(scope), event_fields(event),
                              not event.HasField("delta"), written))
        await asyncio.shield(written)

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        commands: list[int] = []  # index into batch of each pipelined command
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for i, (key, fields, refresh_expiry, _) in enumerate(batch):
                    pipe.xadd(key, fields, maxlen=self._max_len, approximate=True)
                    commands.append(i)
                    if refresh_expiry:
                        pipe.expire(key, self._ttl_s)
                        commands.append(i)
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every writer of the batch hears it
            results = [exc] * len(commands)
        errors: dict[int, BaseException] = {}
        for i, result in zip(commands, results, strict=True):
            if isinstance(result, BaseException):
                errors.setdefault(i, result)
        for i, (*_, written) in enumerate(batch):
            if i in errors:
                written.set_exception(errors[i])
            else:
                written.set_result(None)
