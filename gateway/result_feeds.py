"""One reader for the result streams of every request this gateway has in flight.

A single blocking `XREAD ... STREAMS k1..kN id1..idN` serves all open requests and hands each
entry to its request's feed, so an engine step that produces N deltas costs the gateway one
Redis round trip and one reply parse, not N. A request that opens a feed while the read is
blocked would wait for the block to time out, so `submit` appends to this gateway's wake stream
in the same pipeline as the task: the blocked read returns and the next one includes the new key.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common.keys import gateway_wake_stream, result_stream
from fleet_common.wire import StreamEvent

log = logging.getLogger(__name__)
_READ_BLOCK_MS = 1000  # well under the gateway's Redis socket timeout
_READ_COUNT = 512
_RETRY_AFTER_ERROR_S = 0.2
_WAKE_MAX_LEN = 16
_WAKE_TTL_S = 3600
_CLOSE_WRITE_TIMEOUT_S = 2.0


class FeedDeadline:
    """Put on a feed when its request's deadline passes."""


@dataclass(eq=False)
class ResultFeed:
    """The events of one request, in stream order, as the shared reader finds them."""

    request_id: str
    key: bytes
    last_id: bytes = b"0-0"
    items: asyncio.Queue[StreamEvent | BaseException | FeedDeadline] = field(
        default_factory=asyncio.Queue)
    deadline_timer: asyncio.TimerHandle | None = None

    async def next(self) -> StreamEvent | FeedDeadline:
        item = await self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item


class ResultFeeds:
    def __init__(self, redis: Redis, *, instance: str | None = None,
                 block_ms: int = _READ_BLOCK_MS) -> None:
        self._redis = redis
        self._block_ms = block_ms
        self.wake_key = gateway_wake_stream(instance or uuid.uuid4().hex)
        self._wake_key_bytes = self.wake_key.encode()
        self._feeds: dict[bytes, ResultFeed] = {}
        self._reader: asyncio.Task[None] | None = None
        # An id rather than "$", so a wake written while no read is blocked is still seen.
        self._wake_last_id: bytes | str = "0-0"
        self._closing = False

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="result-feeds")

    async def aclose(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            # redis-py can swallow a cancel that lands while a reply is being read; the loop
            # then stops at the end of its current blocking read.
            await asyncio.wait({self._reader}, timeout=self._block_ms / 1000 + 1.0)
            if not self._reader.done():
                # Closing its socket ends whatever read it is stuck in.
                log.warning("result reader did not stop; disconnecting its connection")
                await self._redis.connection_pool.disconnect(inuse_connections=True)
                await asyncio.wait({self._reader}, timeout=1.0)
        try:
            async with asyncio.timeout(_CLOSE_WRITE_TIMEOUT_S):
                await self._redis.delete(self.wake_key)
        except (RedisError, OSError, TimeoutError):
            log.warning("could not delete wake stream %s", self.wake_key, exc_info=True)

    def open(self, request_id: str, deadline_unix: float) -> ResultFeed:
        """Starts collecting the request's events; the caller must `close` the feed."""
        key = result_stream(request_id).encode()
        feed = ResultFeed(request_id, key)
        loop = asyncio.get_running_loop()
        feed.deadline_timer = loop.call_later(max(deadline_unix - time.time(), 0.0),
                                              feed.items.put_nowait, FeedDeadline())
        self._feeds[key] = feed
        return feed

    def close(self, feed: ResultFeed) -> None:
        if feed.deadline_timer is not None:
            feed.deadline_timer.cancel()
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]

    def wake(self, pipe: object) -> None:
        """Adds to `pipe` (a Redis pipeline) the write that makes a blocked read start over."""
        pipe.xadd(self.wake_key, {"w": 1}, maxlen=_WAKE_MAX_LEN,  # type: ignore[attr-defined]
                  approximate=True)
        pipe.expire(self.wake_key, _WAKE_TTL_S)  # type: ignore[attr-defined]

    async def _read_forever(self) -> None:
        while not self._closing:
            streams: dict[bytes | str, bytes | str] = {self.wake_key: self._wake_last_id}
            streams.update((key, feed.last_id) for key, feed in self._feeds.items())
            try:
                reply = await self._redis.xread(streams, count=_READ_COUNT, block=self._block_ms)
            except (RedisError, OSError) as exc:
                self._fail_all(exc)
                await asyncio.sleep(_RETRY_AFTER_ERROR_S)
                continue
            for key, entries in reply or ():
                if key == self._wake_key_bytes:
                    self._wake_last_id = entries[-1][0]
                    continue
                feed = self._feeds.get(key)
                if feed is None:
                    continue
                for entry_id, fields in entries:
                    feed.last_id = entry_id
                    feed.items.put_nowait(StreamEvent.from_fields(fields))

    def _fail_all(self, exc: BaseException) -> None:
        """Every open request hears that its results cannot be read, rather than waiting."""
        log.warning("reading result streams failed: %s: %s", type(exc).__name__, exc)
        for feed in list(self._feeds.values()):
            feed.items.put_nowait(exc)
