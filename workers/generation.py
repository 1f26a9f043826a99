"""Serving one task: engine request in, ordered stream events out, abort on cancel or deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis

from fleet_common.keys import cancelled_flag, result_stream
from fleet_common.wire import EventKind, FinishReason, GenerationTask, StreamEvent
from workers.engine import ChoiceUpdate, EngineClient, EngineRequest
from workers.result_stream import ResultStreamWriter

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """Requests this worker is serving, so a cancel message can stop the right generation.

    A request is registered before its last pre-start check, so a cancel that arrives while the
    check is on the wire is remembered rather than lost."""

    generations: dict[str, asyncio.Future[FinishReason | None] | None] = field(
        default_factory=dict)
    cancelled: set[str] = field(default_factory=set)

    def begin(self, request_id: str) -> None:
        self.generations[request_id] = None

    def attach(self, request_id: str, generation: asyncio.Future[FinishReason | None]) -> None:
        self.generations[request_id] = generation
        if request_id in self.cancelled:
            generation.cancel()

    def end(self, request_id: str) -> None:
        self.generations.pop(request_id, None)
        self.cancelled.discard(request_id)

    def cancel(self, request_id: str) -> bool:
        if request_id not in self.generations:
            return False
        self.cancelled.add(request_id)
        generation = self.generations[request_id]
        if generation is not None:
            generation.cancel()
        return True

    def was_cancelled(self, request_id: str) -> bool:
        return request_id in self.cancelled


@dataclass
class _ChoiceTotals:
    tokens: int = 0
    finish_reason: FinishReason | None = None


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
        rid = task.request_id
        self._in_flight.begin(rid)
        try:
            await self._serve(task)
        finally:
            self._in_flight.end(rid)

    async def _serve(self, task: GenerationTask) -> None:
        rid = task.request_id
        already_finished, flagged = await self._preflight(rid)
        if already_finished:
            log.info("request %s already finished by an earlier delivery; skipping", rid)
            return
        started_at = time.time()
        if started_at >= task.deadline_unix:
            await self._final(task, started_at, {}, FinishReason.DEADLINE_EXCEEDED)
            return
        if flagged or self._in_flight.was_cancelled(rid):
            await self._final(task, started_at, {}, FinishReason.CANCELLED)
            return
        totals: dict[int, _ChoiceTotals] = {}
        # The engine gets the request first; the STARTED event is written while it prefills.
        generation = asyncio.ensure_future(self._generate(task, totals))
        self._in_flight.attach(rid, generation)
        await self._writer.write(rid, EventKind.STARTED, {
            "worker": self._worker_name,
            "pool": self._pool,
            "model_version": task.model_version,
            "started_at": started_at,
            "queue_wait_ms": max(0.0, (started_at - task.enqueued_at_unix) * 1000),
        })
        try:
            override = await generation
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not generation.cancelled() or (current is not None and current.cancelling()):
                raise  # this worker is stopping, not the request being cancelled
            await self._engine.abort(rid)
            override = FinishReason.CANCELLED
        except Exception as exc:  # the engine failed; the caller must hear it, not hang
            log.exception("engine failed on request %s", rid)
            await self._writer.write(rid, EventKind.ERROR, {
                "code": "INTERNAL",
                "message": f"engine failed on request {rid}: {type(exc).__name__}: {exc}",
            })
            return
        await self._final(task, started_at, totals, override)

    async def _preflight(self, request_id: str) -> tuple[bool, bool]:
        """(an earlier delivery already finished it, it was cancelled), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(result_stream(request_id), count=1)
            pipe.exists(cancelled_flag(request_id))
            last, flagged = await pipe.execute()
        finished = bool(last) and StreamEvent.from_fields(last[0][1]).kind in (
            EventKind.FINAL, EventKind.ERROR)
        return finished, bool(flagged)

    async def _generate(
        self, task: GenerationTask, totals: dict[int, _ChoiceTotals]
    ) -> FinishReason | None:
        """Streams deltas; returns a finish reason that overrides the engine's, if any."""
        request = EngineRequest(
            request_id=task.request_id,
            prompt_token_ids=task.prompt_token_ids,
            stop_token_ids=task.stop_token_ids,
            sampling=task.sampling,
        )
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + task.deadline_unix - time.time()):
                async for batch in self._engine.generate(request):
                    await self._write_delta(task, batch, totals)
        except TimeoutError:
            await self._engine.abort(task.request_id)
            return FinishReason.DEADLINE_EXCEEDED
        return None

    async def _write_delta(
        self, task: GenerationTask, batch: list[ChoiceUpdate], totals: dict[int, _ChoiceTotals]
    ) -> None:
        deltas = []
        for update in batch:
            total = totals.setdefault(update.index, _ChoiceTotals())
            total.tokens += len(update.token_ids)
            if update.finish_reason is not None:
                total.finish_reason = update.finish_reason
            if not update.token_ids and update.finish_reason is None:
                continue
            delta = {"index": update.index, "text": update.text, "token_ids": update.token_ids}
            if update.finish_reason is not None:
                delta["finish_reason"] = update.finish_reason.value
            if update.matched_stop_sequence:
                delta["matched_stop_sequence"] = update.matched_stop_sequence
            if update.logprobs:
                delta["logprobs"] = update.logprobs
            deltas.append(delta)
        if deltas:
            await self._writer.write(task.request_id, EventKind.DELTA, {"deltas": deltas})

    async def _final(
        self,
        task: GenerationTask,
        started_at: float,
        totals: dict[int, _ChoiceTotals],
        override: FinishReason | None,
    ) -> None:
        reasons = {}
        for index in range(task.sampling.n):
            engine_reason = totals[index].finish_reason if index in totals else None
            reasons[str(index)] = (override or engine_reason or FinishReason.CANCELLED).value
        await self._writer.write(task.request_id, EventKind.FINAL, {
            "finish_reasons": reasons,
            "prompt_tokens": len(task.prompt_token_ids),
            "completion_tokens": sum(t.tokens for t in totals.values()),
            "engine_ms": (time.time() - started_at) * 1000,
            "worker": self._worker_name,
            "pool": self._pool,
            "model_version": task.model_version,
        })
