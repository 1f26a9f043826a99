"""A circuit breaker for the gateway's Redis: while Redis is known to be unreachable, new calls
are refused with UNAVAILABLE at once, without a connection attempt on the request path.

Redis is "down" from the first connection failure of a probe (refused, reset, closed) or from
the third probe in a row that timed out, until a probe succeeds. A call's connection failure
sends a probe at once rather than tripping the breaker itself: one pooled connection can be
reset while Redis is fine (seen in the CI of 2026-12-03 11:26, where two calls were refused
for a Redis that answered the next probe). A single slow reply is not an outage either: on a
loaded machine a PING can take longer than the probe's timeout while Redis is fine, and
refusing calls then would be a false alarm. The probe is a PING on a client of its own (one
connection, short connect and reply timeouts), every `interval_s` whether Redis is up or down,
so an outage is noticed even while no request is in flight and a recovery within one interval.
A down-then-up transition drops the serving client's idle connections: after a Redis restart
they are sockets to the dead process, and the first calls would fail on them.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fleet_common.errors import Unavailable

log = logging.getLogger(__name__)
BACKEND_ERRORS = (RedisError, KombuOperationalError, OSError)
SLOW_REPLIES = (RedisTimeoutError, TimeoutError)
TIMEOUTS_TO_TRIP = 3


class BackendHealth:
    def __init__(self, redis_url: str, *, serving: Redis | None = None, interval_s: float = 0.25,
                 timeout_s: float = 0.5) -> None:
        """`serving` is the client calls use: its idle connections are dropped on recovery."""
        self._probe = Redis.from_url(redis_url, socket_timeout=timeout_s,
                                     socket_connect_timeout=timeout_s, max_connections=1)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._serving = serving
        self._down_since: float | None = None  # monotonic
        self._last_error = ""
        self._timeouts_in_a_row = 0
        self._task: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[bool] | None = None  # a probe a call's failure asked for
        self._probing = asyncio.Lock()  # the probe client has one connection
        self._closing = False

    @property
    def up(self) -> bool:
        return self._down_since is None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe_forever(), name="backend-health")

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            # redis-py can swallow a cancel that lands in a command; the loop then stops after
            # its current probe, as it sees `_closing`.
            await asyncio.wait({self._task}, timeout=self._interval_s + self._timeout_s + 1.0)
        if self._checking is not None:
            self._checking.cancel()
            await asyncio.wait({self._checking}, timeout=self._timeout_s + 1.0)
        await self._probe.aclose()

    def check(self) -> None:
        """Raises Unavailable while Redis is known to be down; costs no I/O."""
        if self._down_since is None:
            return
        down_for = time.monotonic() - self._down_since
        raise Unavailable(f"queue backend (Redis) unreachable for {down_for:.1f} s "
                          f"({self._last_error}); retry later")

    def saw(self, exc: BaseException) -> asyncio.Task[bool] | None:
        """When `exc` (or what caused it) is a connection failure, probes Redis at once (the
        task returned, or the one already on its way); the probe trips the breaker if Redis is
        down."""
        cause = exc if isinstance(exc, BACKEND_ERRORS) else exc.__cause__
        if not isinstance(cause, BACKEND_ERRORS) or isinstance(cause, SLOW_REPLIES) or \
                self._down_since is not None or self._closing:
            return None
        if self._checking is None:
            self._checking = asyncio.get_running_loop().create_task(
                self._check_now(), name="backend-health-check")
        return self._checking

    async def _check_now(self) -> bool:
        try:
            return await self.probe_once()
        finally:
            self._checking = None

    def _trip(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("queue backend (Redis) unreachable, refusing new calls until it answers "
                        "again: %s", self._last_error)

    async def probe_once(self) -> bool:
        """One PING; updates the state and returns whether Redis answered."""
        if self._probing.locked():  # a probe is on the wire; it decides
            async with self._probing:
                return self._down_since is None
        async with self._probing:
            return await self._probe_unlocked()

    async def _probe_unlocked(self) -> bool:
        try:
            await self._probe.ping()
        except BACKEND_ERRORS as exc:
            if isinstance(exc, SLOW_REPLIES):
                self._timeouts_in_a_row += 1
                if self._timeouts_in_a_row < TIMEOUTS_TO_TRIP:
                    return self._down_since is None
            self._trip(exc)
            return False
        self._timeouts_in_a_row = 0
        if self._down_since is not None:
            down_for = time.monotonic() - self._down_since
            if self._serving is not None:
                try:
                    await self._serving.connection_pool.disconnect(inuse_connections=False)
                except BACKEND_ERRORS:
                    log.warning("dropping connections from before the outage failed",
                                exc_info=True)
            self._down_since = None
            log.warning("queue backend (Redis) answers again after %.1f s; accepting calls",
                        down_for)
        return True

    async def _probe_forever(self) -> None:
        while not self._closing:
            await self.probe_once()
            await asyncio.sleep(self._interval_s)
