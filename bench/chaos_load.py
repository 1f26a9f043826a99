"""Driving the chaos run's calls: a fixed number of client threads take calls in order, as far as
the released segments allow, and keep each call's outcome and its result stream as Redis held it
when the call ended (a Redis restart empties Redis, so streams are read as the run goes).

A call still running `timeout + LOST_MARGIN_S` after it started is lost: gRPC's own deadline
would have ended it, so only a hung client library or gateway keeps it open that long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from bench.chaos_calls import Call, Outcome
from fleet_common.keys import request_scope, result_stream
from fleet_common.wire import event_from_fields

LOST_MARGIN_S = 30.0


@dataclass(frozen=True)
class StreamEntry:
    """One event of a request's result stream; `ms` is Redis's clock at the write."""

    ms: int
    attempt: int
    kind: str  # started, delta, final or error
    worker: str = ""  # started only
    tokens: int = 0  # delta only


@dataclass
class Captured:
    outcome: Outcome
    stream: list[StreamEntry] = field(default_factory=list)
    stream_read: bool = False


def read_stream(redis_url: str, request_id: str, tenant: str = "") -> list[StreamEntry]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
    entries = []
    for entry_id, fields in client.xrange(result_stream(request_scope(tenant, request_id))):
        event = event_from_fields(fields)
        kind = event.WhichOneof("event") or ""
        entries.append(StreamEntry(
            ms=int(entry_id.split(b"-")[0]), attempt=event.attempt, kind=kind,
            worker=event.started.worker if kind == "started" else "",
            tokens=sum(len(c.token_ids) for c in event.delta.choices) if kind == "delta" else 0))
    return entries


class Load:
    """Runs `calls` on `concurrency` threads; `release` lets the next calls start."""

    def __init__(self, calls: list[Call], run: Callable[[Call], Outcome], redis_url: str, *,
                 concurrency: int, timeout_s: float) -> None:
        self._calls = calls
        self._run = run
        self._redis_url = redis_url
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._cond = threading.Condition()
        self._released = 0
        self._next = 0
        self._closed = False
        self._started: dict[int, float] = {}  # in flight: call index -> time.monotonic()
        self.captured: dict[int, Captured] = {}

    @property
    def ended(self) -> int:
        with self._cond:
            return len(self.captured)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._started)

    def start(self) -> None:
        for i in range(self._concurrency):
            threading.Thread(target=self._client, name=f"chaos-client-{i}", daemon=True).start()

    def release(self, count: int) -> None:
        with self._cond:
            self._released = min(self._released + count, len(self._calls))
            self._cond.notify_all()

    def pause(self) -> int:
        """Stops new calls from starting; returns how many released calls were held back (give
        them back with `release`)."""
        with self._cond:
            held = self._released - self._next
            self._released = self._next
            return held

    def close(self) -> None:
        """No more calls start; those in flight are left to end (or to be declared lost)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take(self) -> Call | None:
        with self._cond:
            while self._next >= self._released:
                if self._closed or self._released >= len(self._calls):
                    return None
                self._cond.wait()
            if self._closed:
                return None
            call = self._calls[self._next]
            self._next += 1
            self._started[call.index] = time.monotonic()
            return call

    def _client(self) -> None:
        while (call := self._take()) is not None:
            captured = Captured(self._run(call))
            try:
                captured.stream = read_stream(self._redis_url, call.request_id)
                captured.stream_read = True
            except redis.RedisError:
                pass
            with self._cond:
                if call.index in self._started:  # not declared lost meanwhile
                    del self._started[call.index]
                    self.captured[call.index] = captured
                    self._cond.notify_all()

    def _declare_lost(self) -> None:
        limit = time.monotonic() - self._timeout_s - LOST_MARGIN_S
        with self._cond:
            for index, started in list(self._started.items()):
                if started < limit:
                    del self._started[index]
                    call = self._calls[index]
                    self.captured[index] = Captured(Outcome(
                        call, code="LOST", lost=True, started_unix=time.time()
                        - (time.monotonic() - started), ended_unix=time.time()))
                    self._cond.notify_all()

    def wait_ended(self, count: int, timeout_s: float) -> bool:
        """Waits until `count` calls have ended (lost ones included)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._declare_lost()
            with self._cond:
                if len(self.captured) >= count:
                    return True
                self._cond.wait(timeout=0.1)
        return False
