"""Serving one task: engine request in, ordered stream events out, abort on cancel or deadline.

Every event carries the task's attempt number, so the gateway can tell a live attempt's events
from a stale one's; every key is the request's tenant scope (`keys.request_scope`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.keys import (
    attempt_started,
    cancelled_flag,
    request_claim,
    request_scope,
    result_stream,
)
from fleet_common.logs import bind_request
from fleet_common.wire import (
    Delta,
    Error,
    ErrorCode,
    Final,
    GenerationTask,
    Started,
    StreamEvent,
    event_from_fields,
    is_terminal,
)
from fleet_server import tracing
from workers.engine import (
    ChoiceUpdate,
    EngineClient,
    EngineRequest,
    EngineRequestRejected,
    EngineUnavailable,
)
from workers.result_stream import Fence, Fenced, ResultStreamWriter

log = logging.getLogger(__name__)
_ATTEMPT_MARKER_SLACK_S = 60

# vLLM's priority scheduling runs lower numbers first.
ENGINE_PRIORITY = {pb.PRIORITY_HIGH: 0, pb.PRIORITY_NORMAL: 1, pb.PRIORITY_UNSPECIFIED: 1,
                   pb.PRIORITY_LOW: 2}


@dataclass
class InFlight:
    """Attempts this worker is serving, by run id (`scope#attempt`, as the gateway's cancel
    message names them), so a cancel stops the right one.

    A request is registered before its last pre-start check, so a cancel that arrives while the
    check is on the wire is remembered rather than lost."""

    generations: dict[str, asyncio.Future[int] | None] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    evicted: set[str] = field(default_factory=set)

    def begin(self, run_id: str) -> None:
        self.generations[run_id] = None

    def attach(self, run_id: str, generation: asyncio.Future[int]) -> None:
        self.generations[run_id] = generation
        if run_id in self.cancelled or run_id in self.evicted:
            generation.cancel()

    def end(self, run_id: str) -> None:
        self.generations.pop(run_id, None)
        self.cancelled.discard(run_id)
        self.evicted.discard(run_id)

    def cancel(self, run_id: str) -> bool:
        if run_id not in self.generations:
            return False
        self.cancelled.add(run_id)
        generation = self.generations[run_id]
        if generation is not None:
            generation.cancel()
        return True

    def was_cancelled(self, run_id: str) -> bool:
        return run_id in self.cancelled

    def evict(self, run_id: str) -> bool:
        """Stops an attempt this worker will not finish (it is draining or lost its engine): it
        ends with UNAVAILABLE, on which the gateway re-runs it on another worker."""
        if run_id not in self.generations:
            return False
        self.evicted.add(run_id)
        generation = self.generations[run_id]
        if generation is not None:
            generation.cancel()
        return True

    def was_evicted(self, run_id: str) -> bool:
        return run_id in self.evicted


@dataclass
class _ChoiceTotals:
    tokens: int = 0
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED


class RequestRunner:
    def __init__(
        self,
        *,
        engine: EngineClient,
        writer: ResultStreamWriter,
        redis: Redis,
        in_flight: InFlight,
        worker_name: str,
        pool: str,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._redis = redis
        self._in_flight = in_flight
        self._worker_name = worker_name
        self._pool = pool

    async def serve(self, task: GenerationTask) -> None:
        scope = request_scope(task.tenant, task.request_id)
        run_id = f"{scope}#{task.attempt}"
        self._in_flight.begin(run_id)
        bind_request(task.request_id, task.tenant)
        try:
            with tracing.span("worker generate", kind=tracing.SpanKind.CONSUMER,
                              parent_carrier=task.trace_context, attributes={
                                  "fleet.worker": self._worker_name, "fleet.pool": self._pool,
                                  "fleet.model_version": task.model_version,
                                  "fleet.attempt": task.attempt, "fleet.tenant": task.tenant,
                                  "fleet.request_id": task.request_id,
                                  "fleet.queue_wait_ms": max(
                                      0.0, (time.time() - task.enqueued_at_unix) * 1000)}):
                await self._serve(task, scope, run_id)
        except Fenced:
            log.warning("request %s attempt %d: another run owns its stream now (Redis lost "
                        "this run's marker or a re-run took it); stopped without writing",
                        scope, task.attempt)
        finally:
            self._in_flight.end(run_id)

    async def _serve(self, task: GenerationTask, scope: str, run_id: str) -> None:
        fence = Fence(attempt_started(scope, task.attempt),
                      f"{self._worker_name} {uuid.uuid4().hex}")
        skip, flagged = await self._preflight(scope, task.attempt, task.deadline_unix, fence)
        if skip:
            log.info("request %s attempt %d: %s; skipping", scope, task.attempt, skip)
            return
        started_at = time.time()
        if started_at >= task.deadline_unix:
            await self._final(task, scope, fence, started_at, {},
                              pb.FINISH_REASON_DEADLINE_EXCEEDED)
            return
        if flagged or self._in_flight.was_cancelled(run_id):
            await self._final(task, scope, fence, started_at, {}, pb.FINISH_REASON_CANCELLED)
            return
        log.info("request %s attempt %d starting (trace %s)", scope, task.attempt,
                 task.trace_context.get("traceparent", "-"))
        totals: dict[int, _ChoiceTotals] = {}
        engine_id = run_id
        # The engine gets the request first; the STARTED event is written while it prefills.
        generation = asyncio.ensure_future(self._generate(task, scope, fence, engine_id, totals))
        self._in_flight.attach(run_id, generation)
        try:
            await self._write(scope, fence, StreamEvent(attempt=task.attempt, started=Started(
                worker=self._worker_name, pool=self._pool, model_version=task.model_version,
                queue_wait_ms=max(0.0, (started_at - task.enqueued_at_unix) * 1000))))
            override = await generation
        except Fenced:
            generation.cancel()
            await self._engine.abort(engine_id)
            raise
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not generation.cancelled() or (current is not None and current.cancelling()):
                raise  # this worker is stopping, not the request being cancelled
            if self._in_flight.was_evicted(run_id) and not self._in_flight.was_cancelled(run_id):
                await self._evicted(task, scope, fence, engine_id)
                return
            await self._engine.abort(engine_id)
            override = pb.FINISH_REASON_CANCELLED
        except EngineRequestRejected as exc:
            await self._error(task, scope, fence, ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
                              f"the engine refused request {task.request_id}: {exc}")
            return
        except RedisError as exc:  # writing the stream failed: Redis, not the engine
            log.warning("lost Redis while serving %s: %s: %s", scope, type(exc).__name__, exc)
            await self._engine.abort(engine_id)
            await self._error(task, scope, fence, ErrorCode.ERROR_CODE_UNAVAILABLE,
                              f"worker {self._worker_name} lost Redis while serving request "
                              f"{task.request_id}; the request may be retried")
            return
        except EngineUnavailable as exc:
            log.error("engine unavailable while serving %s: %s", scope, exc)
            await self._error(task, scope, fence, ErrorCode.ERROR_CODE_UNAVAILABLE,
                              f"worker {self._worker_name} lost its engine while serving "
                              f"request {task.request_id}; the request may be retried")
            return
        except Exception as exc:  # the engine failed; the caller must hear it, not hang
            log.exception("engine failed on request %s", scope)
            await self._error(task, scope, fence, ErrorCode.ERROR_CODE_INTERNAL,
                              f"engine failed on request {task.request_id}: "
                              f"{type(exc).__name__}: {exc}")
            return
        await self._final(task, scope, fence, started_at, totals, override)

    async def _preflight(self, scope: str, attempt: int, deadline_unix: float,
                         fence: Fence) -> tuple[str, bool]:
        """(why to skip this attempt, or "", whether it was cancelled), in one round trip.

        Skipped: an attempt that finished; a stale attempt (a gateway has re-run the request
        under a later number); and an attempt another delivery already started. The broker can
        deliver one message twice (kombu restores the unacknowledged messages of a consumer
        whose connection dropped, running ones included), so each attempt is claimed with
        SET NX before it runs: an attempt runs at most once, and if the worker that claimed it
        dies, the gateway re-runs the request as the next attempt. The claim holds this run's
        token, which fences every write of the run (`result_stream`)."""
        marker_ttl = max(int(deadline_unix - time.time()), 0) + _ATTEMPT_MARKER_SLACK_S
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(result_stream(scope), count=1)
            pipe.get(cancelled_flag(scope))
            pipe.hget(request_claim(scope), "attempt")
            pipe.set(fence.marker, fence.token, nx=True, ex=marker_ttl)
            last, flag, current, claimed = await pipe.execute()
        if last:
            event = event_from_fields(last[0][1])
            if is_terminal(event) and event.attempt >= attempt:
                return f"attempt {event.attempt} already finished", False
        if current is not None and int(current) > attempt:
            return f"stale: attempt {int(current)} now serves the request", False
        if not claimed:
            return "another delivery of this attempt already started it", False
        return "", flag is not None and int(flag) >= attempt

    async def _generate(self, task: GenerationTask, scope: str, fence: Fence, engine_id: str,
                        totals: dict[int, _ChoiceTotals]) -> int:
        """Streams deltas; returns a finish reason that overrides the engine's (or UNSPECIFIED)."""
        request = EngineRequest(
            request_id=engine_id,
            prompt_token_ids=list(task.prompt_token_ids),
            stop_token_ids=list(task.stop_token_ids),
            sampling=task.sampling,
            priority=ENGINE_PRIORITY.get(task.priority, 1),
        )
        loop = asyncio.get_running_loop()
        with tracing.span("engine generate", attributes={
                "gen_ai.system": "vllm", "gen_ai.request.model": task.model,
                "gen_ai.request.max_tokens": task.sampling.max_tokens,
                "gen_ai.usage.input_tokens": len(task.prompt_token_ids),
                "fleet.engine_priority": request.priority}) as span:
            try:
                async with asyncio.timeout_at(loop.time() + task.deadline_unix - time.time()):
                    async for batch in self._engine.generate(request):
                        await self._write_delta(task, scope, fence, batch, totals)
            except TimeoutError:
                await self._engine.abort(engine_id)
                return pb.FINISH_REASON_DEADLINE_EXCEEDED
            finally:
                if span is not None:
                    span.set_attribute("gen_ai.usage.output_tokens",
                                       sum(t.tokens for t in totals.values()))
        return pb.FINISH_REASON_UNSPECIFIED

    async def _write_delta(self, task: GenerationTask, scope: str, fence: Fence,
                           batch: list[ChoiceUpdate], totals: dict[int, _ChoiceTotals]) -> None:
        choices = []
        for update in batch:
            total = totals.setdefault(update.index, _ChoiceTotals())
            total.tokens += len(update.token_ids)
            if update.finish_reason:
                total.finish_reason = update.finish_reason
            if not update.token_ids and not update.finish_reason:
                continue
            choices.append(pb.ChoiceDelta(
                index=update.index, text=update.text, token_ids=update.token_ids,
                finish_reason=update.finish_reason,
                matched_stop_sequence=update.matched_stop_sequence, logprobs=update.logprobs))
        if choices:
            await self._write(scope, fence, StreamEvent(attempt=task.attempt,
                                                 delta=Delta(choices=choices)))

    async def _final(self, task: GenerationTask, scope: str, fence: Fence, started_at: float,
                     totals: dict[int, _ChoiceTotals], override: int) -> None:
        reasons = []
        for index in range(task.sampling.n):
            engine_reason = totals[index].finish_reason if index in totals else 0
            reasons.append(override or engine_reason or pb.FINISH_REASON_CANCELLED)
        await self._write(scope, fence, StreamEvent(attempt=task.attempt, final=Final(
            finish_reasons=reasons,
            prompt_tokens=len(task.prompt_token_ids),
            completion_tokens=sum(t.tokens for t in totals.values()),
            engine_ms=(time.time() - started_at) * 1000,
            worker=self._worker_name,
            pool=self._pool,
            model_version=task.model_version,
        )))

    async def _evicted(self, task: GenerationTask, scope: str, fence: Fence,
                       engine_id: str) -> None:
        try:
            await self._engine.abort(engine_id)
        except Exception:  # a lost engine cannot abort; the request must still be ended
            log.warning("aborting evicted request %s failed", scope, exc_info=True)
        await self._error(task, scope, fence, ErrorCode.ERROR_CODE_UNAVAILABLE,
                          f"worker {self._worker_name} stopped before finishing request "
                          f"{task.request_id}; the request may be retried")

    async def _error(self, task: GenerationTask, scope: str, fence: Fence, code: int,
                     message: str) -> None:
        await self._write(scope, fence, StreamEvent(attempt=task.attempt,
                                             error=Error(code=code, message=message)))

    async def _write(self, scope: str, fence: Fence, event: StreamEvent) -> None:
        await self._writer.write(scope, event, fence)
