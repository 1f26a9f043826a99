"""The gateway's shared result reader against a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.keys import result_stream
from fleet_common.wire import Delta, Started, StreamEvent, event_fields
from gateway.result_feeds import FeedDeadline, ResultFeeds

# A stuck read fails its test in a minute instead of holding the whole run.
pytestmark = pytest.mark.timeout(60)

# Long enough that an event waiting for the block to end would be noticed; the client's socket
# timeout stays well above it, as the gateway's own block stays under its configured timeout.
_BLOCK_MS = 4_000
_SOCKET_TIMEOUT_S = _BLOCK_MS / 1000 + 6


async def _xread_calls(redis: Redis) -> int:
    return int((await redis.info("commandstats")).get("cmdstat_xread", {}).get("calls", 0))



def _delta(i: int) -> StreamEvent:
    return StreamEvent(attempt=1, delta=Delta(choices=[pb.ChoiceDelta(token_ids=[i])]))


async def test_one_read_serves_every_open_request_in_order(redis_url: str) -> None:
    redis = Redis.from_url(redis_url, socket_timeout=_SOCKET_TIMEOUT_S)
    feeds = ResultFeeds(redis, block_ms=_BLOCK_MS)
    feeds.start()
    rids = [uuid.uuid4().hex for _ in range(20)]
    opened = [feeds.open(rid, time.time() + 60) for rid in rids]
    async with redis.pipeline(transaction=False) as pipe:
        feeds.wake(pipe)
        await pipe.execute()
    await asyncio.sleep(0.2)  # the reader now blocks on all 20 streams
    before = await _xread_calls(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for rid in rids:
            for i in range(3):
                pipe.xadd(result_stream(rid), event_fields(_delta(i)))
        await pipe.execute()
    for feed in opened:
        events = [await asyncio.wait_for(feed.next(), 10) for _ in range(3)]
        assert [e.delta.choices[0].token_ids[0] for e in events if isinstance(e, StreamEvent)] == [
            0, 1, 2]
    # 60 entries in 20 streams came back in a handful of reads, not one read per stream
    assert await _xread_calls(redis) - before <= 4
    for feed in opened:
        feeds.close(feed)
    await feeds.aclose()
    assert not await redis.exists(feeds.wake_key)
    await redis.aclose()


async def test_a_feed_opened_while_the_read_blocks_is_read_after_a_wake(redis_url: str) -> None:
    redis = Redis.from_url(redis_url, socket_timeout=_SOCKET_TIMEOUT_S)
    feeds = ResultFeeds(redis, block_ms=_BLOCK_MS)
    feeds.start()
    await asyncio.sleep(0.2)  # blocked on the wake stream alone
    rid = uuid.uuid4().hex
    feed = feeds.open(rid, time.time() + 60)
    async with redis.pipeline(transaction=False) as pipe:
        feeds.wake(pipe)
        pipe.xadd(result_stream(rid),
                  event_fields(StreamEvent(attempt=1, started=Started(worker="w"))))
        await pipe.execute()
    # Without the wake the event would wait for the block to end.
    event = await asyncio.wait_for(feed.next(), _BLOCK_MS / 1000 / 2)
    assert isinstance(event, StreamEvent) and event.started.worker == "w"
    feeds.close(feed)
    # Closing stops the reader even when redis-py swallows the cancel mid-read.
    await asyncio.wait_for(feeds.aclose(), _BLOCK_MS / 1000 + 2)
    await redis.aclose()


async def test_a_feed_hears_its_deadline_and_redis_failures(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    feeds = ResultFeeds(redis, block_ms=200)
    feed = feeds.open(uuid.uuid4().hex, time.time() + 0.1)
    assert isinstance(await asyncio.wait_for(feed.next(), 10), FeedDeadline)
    feeds.close(feed)

    broken = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    failing = ResultFeeds(broken, block_ms=200)
    failing.start()
    doomed = failing.open(uuid.uuid4().hex, time.time() + 60)
    # The reader's connection error, handed to the waiting request.
    with pytest.raises((RedisConnectionError, OSError)):
        await asyncio.wait_for(doomed.next(), 10)
    failing.close(doomed)
    await failing.aclose()
    await redis.aclose()


async def test_close_ends_a_read_that_ignores_its_cancel(redis_url: str) -> None:
    """A reader stuck in a blocking read that swallows cancels (as redis-py can) is stopped by
    disconnecting its connection, so closing the gateway never hangs."""
    redis = Redis.from_url(redis_url, socket_timeout=_SOCKET_TIMEOUT_S)
    feeds = ResultFeeds(redis, block_ms=500)
    reads_ended_by: list[str] = []

    async def stubborn_reader() -> None:
        while True:
            try:
                await redis.xread({"test:never-written": "$"}, block=0)  # blocks for ever
            except asyncio.CancelledError:
                continue  # swallowed, as the redis-py bug does
            except (RedisConnectionError, OSError) as exc:
                reads_ended_by.append(type(exc).__name__)
                return

    feeds._reader = asyncio.create_task(stubborn_reader())
    await asyncio.sleep(0.2)
    await asyncio.wait_for(feeds.aclose(), 10)
    assert feeds._reader.done() and reads_ended_by, reads_ended_by
    await redis.aclose()


async def test_a_caller_attaching_late_to_a_stream_gets_it_from_the_start(redis_url: str) -> None:
    """Two callers of one request id share one stream key: the second, opened after three
    entries, still gets all of them, and the first gets none twice."""
    redis = Redis.from_url(redis_url, socket_timeout=_SOCKET_TIMEOUT_S)
    feeds = ResultFeeds(redis, block_ms=_BLOCK_MS)
    feeds.start()
    rid = uuid.uuid4().hex
    early = feeds.open(rid, time.time() + 60)
    await feeds.wake_now()
    for i in range(3):
        await redis.xadd(result_stream(rid), event_fields(_delta(i)))
    got_early = [await asyncio.wait_for(early.next(), 5) for _ in range(3)]
    late = feeds.open(rid, time.time() + 60)
    await feeds.wake_now()
    await redis.xadd(result_stream(rid), event_fields(_delta(3)))
    got_late = [await asyncio.wait_for(late.next(), 5) for _ in range(4)]
    got_early.append(await asyncio.wait_for(early.next(), 5))

    def ids(events: list[object]) -> list[int]:
        return [e.delta.choices[0].token_ids[0] for e in events]  # type: ignore[attr-defined]

    assert ids(got_early) == ids(got_late) == [0, 1, 2, 3]
    assert early.items.empty() and late.items.empty()
    feeds.close(early)
    feeds.close(late)
    await feeds.aclose()
    await redis.aclose()


async def test_a_caller_attaching_while_a_read_is_blocked_still_gets_every_entry(
        redis_url: str) -> None:
    """The read in flight started from the first caller's position; the entry it returns must
    not move the second caller past the three entries that read never covered."""
    redis = Redis.from_url(redis_url, socket_timeout=_SOCKET_TIMEOUT_S)
    feeds = ResultFeeds(redis, block_ms=_BLOCK_MS)
    feeds.start()
    rid = uuid.uuid4().hex
    early = feeds.open(rid, time.time() + 60)
    await feeds.wake_now()
    for i in range(3):
        await redis.xadd(result_stream(rid), event_fields(_delta(i)))
    got_early = [await asyncio.wait_for(early.next(), 5) for _ in range(3)]
    await asyncio.sleep(0.2)  # the reader blocks again, from early's last entry
    late = feeds.open(rid, time.time() + 60)  # no wake: the blocked read does not know it
    await redis.xadd(result_stream(rid), event_fields(_delta(3)))
    got_late = [await asyncio.wait_for(late.next(), 5) for _ in range(4)]
    got_early.append(await asyncio.wait_for(early.next(), 5))

    def ids(events: list[object]) -> list[int]:
        return [e.delta.choices[0].token_ids[0] for e in events]  # type: ignore[attr-defined]

    assert ids(got_late) == ids(got_early) == [0, 1, 2, 3]
    await asyncio.sleep(0.3)
    assert early.items.empty() and late.items.empty()
    feeds.close(early)
    feeds.close(late)
    await feeds.aclose()
    await redis.aclose()


async def test_a_reply_read_for_a_caller_that_left_gives_the_one_left_nothing_twice(
        redis_url: str) -> None:
    """A read started from a behind caller's position; that caller leaves before the reply.
    The caller that stays, now alone on the key, must take only the entries it lacks."""
    redis = Redis.from_url(redis_url, socket_timeout=_SOCKET_TIMEOUT_S)
    feeds = ResultFeeds(redis, block_ms=_BLOCK_MS)
    rid = uuid.uuid4().hex
    key = result_stream(rid).encode()
    ids = [await redis.xadd(key, event_fields(_delta(i))) for i in range(4)]
    stayer = feeds.open(rid, time.time() + 60)
    leaver = feeds.open(rid, time.time() + 60)
    stayer.last_id = ids[1]  # stayer has had 0 and 1; leaver had nothing
    reply = await redis.xread({key: b"0-0"})
    feeds.close(leaver)
    feeds._deliver(key, b"0-0", reply[0][1])
    got = [stayer.items.get_nowait() for _ in range(stayer.items.qsize())]
    assert [e.delta.choices[0].token_ids[0] for e in got] == [2, 3]  # type: ignore[union-attr]
    feeds.close(stayer)
    await redis.aclose()
