"""Usage accounting at the gateway: a `RequestObserver` that counts, per tenant, model version and
UTC day, the requests that ended with a result (and their tokens) and the requests admission
refused (by reason), and writes them about once a second to the Redis stream `fleet:usage`, from
which the registry stores them (`model_registry.usage_consumer`).

Nothing here touches the request path: `completed` and `refused` only append to memory; a
background task flushes. A request shared by several callers (one request id, maybe on several
gateways) is counted once: each flush sets `keys.usage_counted(scope)` NX in Redis, expiring
when the request's claim does, and counts only the completions it set it for.

What can be lost, never counted twice: a gateway that crashes loses what it counted since its
last flush (at most `flush_interval_s`); a flush whose dedup round trip fails in doubt may leave
a completion marked but uncounted. While Redis is down the counts wait in memory (bounded), and
a batch whose XADD failed is sent again under its own id, which the registry applies once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common.keys import USAGE_STREAM, request_scope, usage_counted
from fleet_common.usage_events import UsageBatch, UsageCounts, UsageKey, batch_fields
from fleet_common.wire import Final, GenerationTask

log = logging.getLogger(__name__)
MAX_PENDING_COMPLETIONS = 100_000
MAX_UNSENT_BATCHES = 3600
CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class _Completion:
    """A completion heard but not yet deduplicated against the other callers of its request."""

    key: UsageKey
    marker: str
    expires_at_unix: int
    prompt_tokens: int
    completion_tokens: int


def utc_day(unix: float) -> date:
    return datetime.fromtimestamp(unix, UTC).date()


class UsageRecorder:
    """`start` it on the gateway's loop, pass it to the Dispatcher's `observers`, `aclose` it
    after the server stopped (the last flush)."""

    def __init__(self, redis: Redis, *, result_retention_s: float, flush_interval_s: float = 1.0,
                 stream_max_len: int = 100_000, instance: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`result_retention_s`: the Dispatcher's, so a completion's marker expires with the
        claim of its request id (a new request under the id later is counted again)."""
        self._redis = redis
        self._retention_s = result_retention_s
        self._interval_s = flush_interval_s
        self._max_len = stream_max_len
        self._instance = instance or uuid.uuid4().hex[:12]
        self._clock = clock
        self._sequence = 0
        self._pending: deque[_Completion] = deque()
        self._counts: dict[UsageKey, UsageCounts] = {}
        self._unsent: deque[UsageBatch] = deque()
        self._dropped = 0
        self._failing = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # RequestObserver: called on the event loop, never blocks.
    def completed(self, task: GenerationTask, final: Final) -> None:
        now = self._clock()
        key = UsageKey(task.tenant, task.model, final.model_version or task.model_version,
                       utc_day(now))
        if len(self._pending) >= MAX_PENDING_COMPLETIONS:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append(_Completion(
            key, usage_counted(request_scope(task.tenant, task.request_id)),
            max(int(task.deadline_unix + self._retention_s), int(now) + 1),
            final.prompt_tokens, final.completion_tokens))

    def refused(self, task: GenerationTask, reason: str) -> None:
        key = UsageKey(task.tenant, task.model, task.model_version, utc_day(self._clock()))
        counts = self._counts.setdefault(key, UsageCounts())
        counts.refusals[reason] = counts.refusals.get(reason, 0) + 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def aclose(self) -> None:
        """Stops the flush loop, then flushes what is left (for at most a couple of seconds)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.flush()
        except TimeoutError:
            pass
        if self._pending or self._counts or self._unsent:
            log.warning("usage: stopping with counts unwritten (%d completions, %d batches)",
                        len(self._pending), len(self._unsent) + bool(self._counts))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            with contextlib.suppress(RedisError, OSError):  # flush logged it; next round retries
                await self.flush()

    async def flush(self) -> None:
        """Counts the completions no other caller counted, then writes every batch not yet
        written, oldest first. Raises the Redis error that stopped it (counts are kept)."""
        async with self._lock:
            try:
                await self._deduplicate()
                self._seal()
                while self._unsent:
                    batch = self._unsent[0]
                    await self._redis.xadd(USAGE_STREAM, batch_fields(batch),  # type: ignore[arg-type]
                                           maxlen=self._max_len, approximate=True)
                    self._unsent.popleft()
            except (RedisError, OSError) as exc:
                if not self._failing:
                    log.warning("usage: could not write to Redis (%s: %s); keeping the counts "
                                "and retrying", type(exc).__name__, exc)
                self._failing = True
                raise
            if self._failing:
                log.info("usage: writing to Redis again")
                self._failing = False
            if self._dropped:
                log.error("usage: dropped %d completions that waited past the bound of %d "
                          "while Redis was unreachable", self._dropped, MAX_PENDING_COMPLETIONS)
                self._dropped = 0

    async def _deduplicate(self) -> None:
        if not self._pending:
            return
        taken, self._pending = self._pending, deque()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for completion in taken:
                    pipe.set(completion.marker, self._instance, nx=True,
                             exat=completion.expires_at_unix)
                first = await pipe.execute()
        except BaseException:
            # Retried next flush; a marker this round did set makes that completion uncounted
            # (never counted twice).
            taken.extend(self._pending)
            while len(taken) > MAX_PENDING_COMPLETIONS:
                taken.popleft()
                self._dropped += 1
            self._pending = taken
            raise
        for completion, counted_here in zip(taken, first, strict=True):
            if counted_here:
                self._counts.setdefault(completion.key, UsageCounts()).add(UsageCounts(
                    1, completion.prompt_tokens, completion.completion_tokens))

    def _seal(self) -> None:
        """Freezes the counts so far into a batch with its own id (its content never changes,
        so writing it again cannot count anything twice)."""
        if not self._counts:
            return
        self._sequence += 1
        self._unsent.append(UsageBatch(f"{self._instance}:{self._sequence}", self._counts))
        self._counts = {}
        if len(self._unsent) > MAX_UNSENT_BATCHES:
            lost = self._unsent.popleft()
            log.error("usage: dropped batch %s (%d keys): %d batches waited for Redis",
                      lost.batch_id, len(lost.counts), MAX_UNSENT_BATCHES)
