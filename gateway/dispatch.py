"""Putting a request on its version's queue, reading its result stream back, and re-running it
on another worker when the one serving it is lost (see `gateway.leases`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common import fair_queue
from fleet_common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EngineFailure,
    FleetError,
    InvalidArgument,
    Unavailable,
)
from fleet_common.keys import (
    CANCEL_CHANNEL,
    cancelled_flag,
    live_workers,
    request_claim,
    request_scope,
)
from fleet_common.task_message import ticket_message
from fleet_common.wire import ErrorCode, Final, GenerationTask, StreamEvent
from fleet_server import tracing
from gateway.admission_control import AdmissionControl
from gateway.backend_health import BackendHealth
from gateway.leases import LeaseMonitor
from gateway.quotas import Quotas
from gateway.request_claims import ClaimKind, RequestClaims
from gateway.request_run import NoLiveWorker, RequestRun, WorkerLost
from gateway.result_feeds import FeedDeadline, ResultFeeds
from gateway.task_publisher import FairEntry, TaskPublisher

log = logging.getLogger(__name__)
_CANCEL_FLAG_TTL_S = 3600
MAX_ATTEMPTS = 4  # the first run and three re-runs
_LIVE_WORKER_POLL_S = 0.25


@contextmanager
def _backend_errors(what: str) -> Iterator[None]:
    """Redis or broker trouble is the fleet being unavailable, not an internal error."""
    try:
        yield
    except (RedisError, KombuOperationalError, OSError) as exc:
        raise Unavailable(f"queue backend unreachable while {what}: "
                          f"{type(exc).__name__}: {exc}") from exc


class TaskDispatcher(Protocol):
    """What the servicer needs of a dispatcher (Redis and Celery here; a fake in unit tests)."""

    async def submit(self, task: GenerationTask, queue: str, pool: str, *,
                     fingerprint: str) -> RequestRun: ...

    def events(self, run: RequestRun) -> AsyncIterator[StreamEvent]: ...

    async def abandon(self, run: RequestRun) -> None: ...

    async def hand_over(self, run: RequestRun) -> None: ...

    async def finish(self, run: RequestRun) -> None: ...

    async def live_worker_count(self, queue: str) -> int: ...


class RequestObserver(Protocol):
    """Hears how the requests this gateway takes end (usage accounting). Called on the event
    loop; must not block. Every caller of a request shared under one id reports `completed`,
    so an observer that counts requests counts each scope once."""

    def completed(self, task: GenerationTask, final: Final) -> None: ...

    def refused(self, task: GenerationTask, reason: str) -> None: ...


def refusal_reason(exc: FleetError) -> str:
    """A short name for why a request was refused: the error's `reason` where it names one
    (a quota, a queue bound), else its kind."""
    return getattr(exc, "reason", "") or type(exc).__name__


class Dispatcher:
    """Publishes tasks on their version's Celery queue and reads their result streams."""

    def __init__(self, redis: Redis, *, worker_liveness_s: float,
                 result_retention_s: float = 3600.0, lease_check_s: float = 0.5,
                 admission: AdmissionControl | None = None,
                 health: BackendHealth | None = None,
                 observers: tuple[RequestObserver, ...] = (),
                 weight_of: Callable[[str], int] = lambda tenant: 1,
                 wait_for_workers: bool = False,
                 quotas: Quotas | None = None) -> None:
        """`weight_of(tenant)`: the tenant's fair-share weight (TenantPolicy.weight).
        `quotas`: the tenants' request quotas (None: none are enforced)."""
        self._redis = redis
        self._quotas = quotas
        self._weight_of = weight_of
        self._observers = observers
        self._health = health  # None: no circuit breaker, every call tries Redis
        self._admission = admission  # None: every request with a live worker is queued
        self._feeds = ResultFeeds(redis)
        self._publisher = TaskPublisher(redis, add_wake=self._feeds.wake)
        self._claims = RequestClaims(redis)
        self._wait_for_workers = wait_for_workers
        self._leases = LeaseMonitor(redis, liveness_s=worker_liveness_s,
                                    interval_s=lease_check_s,
                                    unstarted_grace_s=max(2 * lease_check_s, 1.0),
                                    wait_for_workers=wait_for_workers)
        self._liveness_s = worker_liveness_s
        self._retention_s = result_retention_s
        self._live_cache: dict[str, tuple[float, int]] = {}
        self._lease_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._feeds.start()
        self._lease_task = asyncio.create_task(self._leases.run_forever(), name="leases")

    async def aclose(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
            # redis-py can swallow a cancel that lands inside a command; do not wait forever.
            await asyncio.wait({self._lease_task}, timeout=2.0)
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

    async def submit(self, task: GenerationTask, queue: str, pool: str, *,
                     fingerprint: str) -> RequestRun:
        """Claims the request id and queues the task, or attaches to the same request already
        under that id. Its events arrive through `events`; `finish` (or `abandon`) ends it.
        While Redis is known to be down the call is refused at once (`BackendHealth`)."""
        if self._health is None:
            return await self._submit(task, queue, pool, fingerprint=fingerprint)
        self._health.check()
        try:
            return await self._submit(task, queue, pool, fingerprint=fingerprint)
        except Unavailable as exc:
            self._health.saw(exc)
            raise

    async def _submit(self, task: GenerationTask, queue: str, pool: str, *,
                      fingerprint: str) -> RequestRun:
        try:
            await self._admit(task, queue, pool)
        except FleetError as exc:
            for observer in self._observers:
                observer.refused(task, refusal_reason(exc))
            raise
        return await self._claim_and_queue(task, queue, pool, fingerprint=fingerprint)

    async def _admit(self, task: GenerationTask, queue: str, pool: str) -> None:
        """Raises the FleetError that refuses `task`, if any does."""
        if not self._wait_for_workers and await self.live_worker_count(queue) == 0:
            raise Unavailable(
                f"no live worker serves {task.model}@{task.model_version} "
                f"(pool {pool}, queue {queue}); retry later"
            )
        if self._admission is not None:
            await self._admission.admit(task, queue)
        if self._quotas is not None:
            # Last, so that nothing after it refuses the request. A caller that then attaches
            # to the generation under its id, or whose claim is refused, was charged nothing
            # (the quota charges each generation once: gateway.quotas); the lease is ended by
            # whichever caller leaves last (_leave).
            await self._quotas.admit(task)

    async def _claim_and_queue(self, task: GenerationTask, queue: str, pool: str, *,
                               fingerprint: str) -> RequestRun:
        scope = request_scope(task.tenant, task.request_id)
        ttl = task.deadline_unix - time.time() + self._retention_s
        with _backend_errors(f"claiming request id {task.request_id}"):
            claim = await self._claims.claim(scope, fingerprint, int(ttl))
        if claim.kind is ClaimKind.CONFLICT:
            raise AlreadyExists(
                f"options.request_id {task.request_id!r} is already used by a different "
                "request; use a new id, or send the same request to get its result")
        attempt = _with_attempt(task, claim.attempt)
        run = RequestRun(attempt, queue, pool, self._feeds.open(scope, task.deadline_unix),
                         epoch=claim.epoch)
        try:
            if claim.kind is ClaimKind.NEW:
                await self._publish(run, attempt)
            else:
                log.info("request %s: attached to its running or finished generation "
                         "(attempt %d)", run.scope, claim.attempt)
                run.adopt(attempt)
                with _backend_errors(f"attaching to request {task.request_id}"):
                    await self._feeds.wake_now()
        except asyncio.CancelledError:
            # The caller left while the task was being written: it may be queued already, and
            # no one would read its results.
            await asyncio.shield(self.abandon(run))
            raise
        except BaseException:
            await asyncio.shield(self.abandon(run))
            raise
        self._leases.watch(run)
        return run

    async def _publish(self, run: RequestRun, task: GenerationTask) -> None:
        """Puts the attempt in its tenant's waiting line of its queue, with its ticket; the
        task carries the publish span's trace context to the worker."""
        with tracing.span(f"publish {run.queue}", kind=tracing.SpanKind.PRODUCER, attributes={
                "messaging.system": "redis", "messaging.destination.name": run.queue,
                "fleet.attempt": task.attempt}):
            tracing.inject(task.trace_context)
            level = fair_queue.level_of(task.priority)
            item = fair_queue.item_of(task)
            ticket = ticket_message(run.queue, f"{run.scope}#{task.attempt}")
            run.adopt(task, item, fair_queue.tenant_line(run.queue, level, task.tenant))
            entry = FairEntry(
                fair_queue.enqueue_keys(run.queue, level, task.tenant, request_claim(run.scope)),
                fair_queue.enqueue_args(task.tenant, self._weight_of(task.tenant), item, ticket,
                                        task.attempt))
            with _backend_errors(f"queueing request {task.request_id}"):
                await self._publisher.publish(entry)

    async def events(self, run: RequestRun) -> AsyncIterator[StreamEvent]:
        """The request's events until its final one; DeadlineExceeded if it does not come.
        Events of an attempt other than the awaited one are a stale writer's and are skipped;
        a lost attempt is re-run (the new attempt's events follow, from its STARTED)."""
        task = run.task
        while True:
            with _backend_errors(f"reading the results of request {task.request_id}"):
                item = await run.feed.next()
            if isinstance(item, FeedDeadline):
                raise await self._deadline_error(run)
            if isinstance(item, WorkerLost | NoLiveWorker) and item.attempt < run.task.attempt:
                log.info("request %s: ignoring a notice about superseded attempt %d "
                         "(awaiting %d): %s", run.scope, item.attempt, run.task.attempt,
                         item.reason)
                continue
            if isinstance(item, NoLiveWorker):
                raise Unavailable(f"request {task.request_id} was not started: {item.reason}; "
                                  "retry later")
            if isinstance(item, WorkerLost):
                await self._rerun(run, item.reason)
                continue
            event = item
            if event.attempt < run.task.attempt:
                log.info("request %s: ignoring an event of stale attempt %d (awaiting %d)",
                         run.scope, event.attempt, run.task.attempt)
                continue
            if event.attempt > run.task.attempt:  # another caller's gateway re-ran it
                run.adopt(_with_attempt(run.task, event.attempt))
            kind = event.WhichOneof("event")
            if kind == "error":
                if event.error.code == ErrorCode.ERROR_CODE_UNAVAILABLE:
                    await self._rerun(run, event.error.message)
                    continue
                raise error_of(event.error.code, event.error.message)
            if kind == "started":
                run.worker, run.started = event.started.worker, event.started
            yield event
            if kind == "final":
                run.finished = True
                if self._admission is not None:
                    self._admission.served(run.queue, event.final)
                for observer in self._observers:
                    observer.completed(run.task, event.final)
                if self._quotas is not None:
                    await self._quotas.settle(run.task, event.final)
                return

    async def _rerun(self, run: RequestRun, reason: str) -> None:
        """Queues the next attempt (unless another caller's gateway already did)."""
        task = run.task
        if task.attempt >= MAX_ATTEMPTS:
            raise Unavailable(f"request {task.request_id}: {reason}; gave up after "
                              f"{task.attempt} attempts; the request may be retried")
        if time.time() >= task.deadline_unix:
            raise DeadlineExceeded(f"request {task.request_id}: {reason}, and its deadline "
                                   "passed before it could be re-run")
        self._live_cache.pop(run.queue, None)
        if not self._wait_for_workers and not await self._await_live_worker(run.queue, task):
            raise Unavailable(f"request {task.request_id}: {reason}; no live worker of queue "
                              f"{run.queue} is left to re-run it; the request may be retried")
        with _backend_errors(f"re-running request {task.request_id}"):
            attempt, advanced = await self._claims.next_attempt(run.scope, task.attempt)
        next_task = _with_attempt(task, attempt or task.attempt + 1)
        next_task.enqueued_at_unix = time.time()
        if advanced or attempt == 0:
            log.warning("request %s: %s; re-running it as attempt %d", run.scope, reason,
                        next_task.attempt)
            await self._publish(run, next_task)
        else:
            run.adopt(next_task)

    async def _await_live_worker(self, queue: str, task: GenerationTask) -> bool:
        """Whether a worker of `queue` is live, or becomes live within one liveness window (or
        before the task's deadline): on a busy machine a heartbeat can be a beat late, and a
        restarted worker takes its place within seconds."""
        give_up = min(time.time() + self._liveness_s, task.deadline_unix)
        while not await self.live_worker_count(queue):
            if time.time() >= give_up:
                return False
            await asyncio.sleep(_LIVE_WORKER_POLL_S)
        return True

    async def _deadline_error(self, run: RequestRun) -> DeadlineExceeded:
        task = run.task
        budget = task.deadline_unix - run.admitted_at_unix
        if run.started is not None:
            where = run.started
            return DeadlineExceeded(
                f"request {task.request_id} did not finish within its deadline of {budget:.2f} s "
                f"(attempt {task.attempt} on worker {where.worker}, pool {where.pool}, "
                f"{task.model}@{where.model_version}, after {where.queue_wait_ms:.0f} ms queued)")
        with _backend_errors(f"inspecting queue {run.queue}"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.llen(run.queue)
                pipe.zcount(live_workers(run.queue), time.time() - self._liveness_s, "+inf")
                depth, live = await pipe.execute()
        return DeadlineExceeded(
            f"no worker started request {task.request_id} within its deadline of {budget:.2f} s "
            f"(queue {run.queue}: {depth} waiting, {live} live workers)"
        )

    async def finish(self, run: RequestRun) -> None:
        """The caller is done: a request that ended with its result keeps its claim (a retry
        under the id gets the same result); one that did not frees the id."""
        await self._leave(run, forget=not run.finished, cancel_if_last=False)

    async def hand_over(self, run: RequestRun) -> None:
        """For a caller this gateway stops waiting for while the request goes on (a job item on
        a gateway stopping gracefully): the claim keeps the request, so the next caller of the
        same request under its id attaches to the generation instead of starting it again."""
        await self._leave(run, forget=False, cancel_if_last=False)

    async def abandon(self, run: RequestRun) -> None:
        """For a caller that leaves before the result (gone, deadline, error): cancels the
        request unless other callers are attached to it. A Redis error is logged, so it cannot
        replace the status the caller is about to get."""
        await self._leave(run, forget=True, cancel_if_last=True)

    async def _leave(self, run: RequestRun, *, forget: bool, cancel_if_last: bool) -> None:
        self._feeds.close(run.feed)
        self._leases.unwatch(run)
        if run.left:
            return
        run.left = True
        try:
            async with asyncio.timeout(2.0):
                left = await self._claims.leave(run.scope, run.epoch, forget=forget)
                if cancel_if_last and left == 0:
                    await self.cancel(run)
        except (RedisError, OSError, TimeoutError):
            log.warning("request %s: could not %s", run.scope,
                        "cancel it" if cancel_if_last else "release its claim", exc_info=True)
        if self._quotas is not None:
            # After the claim, whose caller count tells the last caller (who ends the lease and
            # refunds tokens never settled) from the others; logs its own errors.
            await self._quotas.leave(run.task)

    async def cancel(self, run: RequestRun) -> None:
        """Stops the awaited attempt wherever it is: queued (flag) or generating (message)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(cancelled_flag(run.scope), run.task.attempt, ex=_CANCEL_FLAG_TTL_S)
            pipe.publish(CANCEL_CHANNEL, run.run_id)
            await pipe.execute()


def _with_attempt(task: GenerationTask, attempt: int) -> GenerationTask:
    copy = GenerationTask()
    copy.CopyFrom(task)
    copy.attempt = attempt
    return copy


def error_of(code: int, message: str) -> FleetError:
    """The domain error a worker's ERROR event stands for."""
    if code == ErrorCode.ERROR_CODE_INVALID_ARGUMENT:
        return InvalidArgument("request", message)
    if code == ErrorCode.ERROR_CODE_UNAVAILABLE:
        return Unavailable(message)
    return EngineFailure(message or "engine failure")
