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

from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common.errors import EngineFailure
from fleet_common.keys import gateway_wake_stream, result_stream
from fleet_common.wire import StreamEvent, event_from_fields

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

    scope: str
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
        # Several callers attached to one request each have a feed on its one stream key.
        self._feeds: dict[bytes, list[ResultFeed]] = {}
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

    def open(self, scope: str, deadline_unix: float) -> ResultFeed:
        """Starts collecting the events of the request `scope` (keys.request_scope); the
        caller must `close` the feed."""
        key = result_stream(scope).encode()
        feed = ResultFeed(scope, key)
        loop = asyncio.get_running_loop()
        feed.deadline_timer = loop.call_later(max(deadline_unix - time.time(), 0.0),
                                              feed.items.put_nowait, FeedDeadline())
        self._feeds.setdefault(key, []).append(feed)
        return feed

    def close(self, feed: ResultFeed) -> None:
        if feed.deadline_timer is not None:
            feed.deadline_timer.cancel()
        feeds = self._feeds.get(feed.key)
        if feeds is not None and feed in feeds:
            feeds.remove(feed)
            if not feeds:
                del self._feeds[feed.key]

    def wake(self, pipe: object) -> None:
        """Adds to `pipe` (a Redis pipeline) the write that makes a blocked read start over."""
        pipe.xadd(self.wake_key, {"w": 1}, maxlen=_WAKE_MAX_LEN,  # type: ignore[attr-defined]
                  approximate=True)
        pipe.expire(self.wake_key, _WAKE_TTL_S)  # type: ignore[attr-defined]

    async def wake_now(self) -> None:
        """Restarts the blocked read now (for a feed opened without a task write to carry the
        wake, as when a caller attaches to a request already running)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self.wake(pipe)
            await pipe.execute()

    async def _read_forever(self) -> None:
        while not self._closing:
            streams: dict[bytes | str, bytes | str] = {self.wake_key: self._wake_last_id}
            # A key is read from its furthest-behind feed (a caller that just attached reads
            # from the start); each feed takes only the entries it has not had.
            streams.update((key, feeds[0].last_id if len(feeds) == 1
                            else min((f.last_id for f in feeds), key=_entry_order))
                           for key, feeds in self._feeds.items())
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
                self._deliver(key, streams[key], entries)

    def _deliver(self, key: bytes, read_from: bytes | str,
                 entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Hands each feed of `key` the entries it has not had. Feeds can open or close while
        the read is blocked: a feed that opened behind `read_from` is left for the next read,
        which starts from it, rather than skipped past the entries this read did not cover."""
        feeds = self._feeds.get(key)
        if not feeds:
            return
        start = _entry_order(read_from if isinstance(read_from, bytes) else read_from.encode())
        if len(feeds) == 1 and _entry_order(feeds[0].last_id) == start:
            feed = feeds[0]  # the usual case: the read returned exactly what this feed lacks
            for entry_id, fields in entries:
                feed.last_id = entry_id
                feed.items.put_nowait(_decoded(feed, fields))
            return
        covered = [feed for feed in feeds if _entry_order(feed.last_id) >= start]
        for entry_id, fields in entries:
            order, event = _entry_order(entry_id), None
            for feed in covered:
                if order > _entry_order(feed.last_id):
                    feed.last_id = entry_id
                    event = event or _decoded(feed, fields)
                    feed.items.put_nowait(event)

    def _fail_all(self, exc: BaseException) -> None:
        """Every open request hears that its results cannot be read, rather than waiting."""
        log.warning("reading result streams failed: %s: %s", type(exc).__name__, exc)
        for feed in [feed for feeds in self._feeds.values() for feed in feeds]:
            feed.items.put_nowait(exc)


def _decoded(feed: ResultFeed, fields: dict[bytes, bytes]) -> StreamEvent | BaseException:
    """The entry's event; an entry no worker of this protocol wrote fails its request alone."""
    try:
        return event_from_fields(fields)
    except (KeyError, DecodeError) as exc:
        log.error("result stream %s holds an entry that is not a StreamEvent: %r", feed.scope,
                  fields)
        return EngineFailure(f"request {feed.scope}: the worker wrote an unreadable result "
                             f"({type(exc).__name__})")


def _entry_order(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id (b"<ms>-<seq>") as a sortable pair."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
