"""Serving one task: engine request in, ordered stream events out, abort on cancel or deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis

from fleet_common.keys import cancelled_flag
from fleet_common.wire import EventKind, FinishReason, GenerationTask
from workers.engine import ChoiceUpdate, EngineClient, EngineRequest
from workers.result_stream import ResultStreamWriter

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """Requests this worker is generating, so a cancel message can abort the right one."""

    cancel_events: dict[str, asyncio.Event] = field(default_factory=dict)

    def cancel(self, request_id: str) -> bool:
        event = self.cancel_events.get(request_id)
        if event is None:
            return False
        event.set()
        return True


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
        if await self._writer.has_final(rid):
            log.info("request %s already finished by an earlier delivery; skipping", rid)
            return
        started_at = time.time()
        if started_at >= task.deadline_unix:
            await self._final(task, started_at, {}, FinishReason.DEADLINE_EXCEEDED)
            return
        if await self._redis.exists(cancelled_flag(rid)):
            await self._final(task, started_at, {}, FinishReason.CANCELLED)
            return
        await self._writer.write(rid, EventKind.STARTED, {
            "worker": self._worker_name,
            "pool": self._pool,
            "model_version": task.model_version,
            "started_at": started_at,
            "queue_wait_ms": max(0.0, (started_at - task.enqueued_at_unix) * 1000),
        })
        cancel = asyncio.Event()
        self._in_flight.cancel_events[rid] = cancel
        totals: dict[int, _ChoiceTotals] = {}
        override: FinishReason | None = None
        try:
            override = await self._generate(task, cancel, totals)
        except Exception as exc:  # the engine failed; the caller must hear it, not hang
            log.exception("engine failed on request %s", rid)
            await self._writer.write(rid, EventKind.ERROR, {
                "code": "INTERNAL",
                "message": f"engine failed on request {rid}: {type(exc).__name__}: {exc}",
            })
            return
        finally:
            self._in_flight.cancel_events.pop(rid, None)
        await self._final(task, started_at, totals, override)

    async def _generate(
        self, task: GenerationTask, cancel: asyncio.Event, totals: dict[int, _ChoiceTotals]
    ) -> FinishReason | None:
        """Streams deltas; returns a finish reason that overrides the engine's, if any."""
        request = EngineRequest(
            request_id=task.request_id,
            prompt_token_ids=task.prompt_token_ids,
            stop_token_ids=task.stop_token_ids,
            sampling=task.sampling,
        )
        updates = self._engine.generate(request).__aiter__()
        cancel_wait = asyncio.ensure_future(cancel.wait())
        try:
            while True:
                remaining = task.deadline_unix - time.time()
                step = asyncio.ensure_future(updates.__anext__())
                done, _ = await asyncio.wait(
                    {step, cancel_wait}, timeout=max(remaining, 0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if step not in done:
                    step.cancel()
                    await self._engine.abort(task.request_id)
                    return FinishReason.CANCELLED if cancel.is_set() else (
                        FinishReason.DEADLINE_EXCEEDED
                    )
                try:
                    batch = step.result()
                except StopAsyncIteration:
                    return None
                await self._write_delta(task, batch, totals)
        finally:
            cancel_wait.cancel()

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
