"""One caller's view of a request in flight: which attempt serves it, where, since when."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from fleet_common.keys import request_scope
from fleet_common.wire import GenerationTask, Started
from gateway.result_feeds import ResultFeed


@dataclass(frozen=True)
class WorkerLost:
    """Put on a run's feed when the attempt it waits for can no longer finish."""

    reason: str
    attempt: int = 0  # the attempt it is about, stamped by `RequestRun.notify`


@dataclass(frozen=True)
class NoLiveWorker:
    """Put on a run's feed when its queue has no live worker left to start it."""

    reason: str
    attempt: int = 0  # the attempt it is about, stamped by `RequestRun.notify`


@dataclass(eq=False)
class RequestRun:
    task: GenerationTask  # the attempt now awaited
    queue: str
    pool: str
    feed: ResultFeed
    epoch: str = ""  # the claim of the request id this caller holds (request_claims)
    message: bytes = b""  # that attempt's waiting-line item, as published (found in `line`)
    line: str = ""  # the waiting line it was put in (fleet_common.fair_queue)
    worker: str = ""  # the worker serving that attempt, from its STARTED event
    started: Started | None = None  # that STARTED event
    queued_at: float = field(default_factory=time.monotonic)
    unseen_since: float | None = None  # monotonic time the message was first found unqueued
    queued_seen: bool = False  # an attached caller found the attempt started (its marker)
    notified: bool = False  # a WorkerLost/NoLiveWorker for this attempt is on the feed
    finished: bool = False  # the FINAL of the awaited attempt was read
    left: bool = False  # this caller has given up its claim
    admitted_at_unix: float = field(default_factory=time.time)  # for the deadline's budget

    @property
    def scope(self) -> str:
        return request_scope(self.task.tenant, self.task.request_id)

    @property
    def run_id(self) -> str:
        """Names this attempt: the Celery task id, the engine request id, the cancel message."""
        return f"{self.scope}#{self.task.attempt}"

    def adopt(self, task: GenerationTask, message: bytes = b"", line: str = "") -> None:
        """Await `task`'s attempt from now on."""
        self.task, self.message, self.line = task, message, line
        self.worker, self.started, self.queued_at = "", None, time.monotonic()
        self.unseen_since, self.notified, self.queued_seen = None, False, False

    def notify(self, notice: WorkerLost | NoLiveWorker) -> None:
        """Puts `notice` on the feed, once per attempt. It names the attempt: an error event
        read before it may already have moved the run on, and a notice about an attempt
        that is no longer awaited must not re-run the next one."""
        if not self.notified and not self.finished:
            self.notified = True
            self.feed.items.put_nowait(replace(notice, attempt=self.task.attempt))  # type: ignore[arg-type]
