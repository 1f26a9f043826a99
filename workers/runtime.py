"""The worker's engine side: one event loop thread that owns the engine and its Redis clients.

Celery runs tasks on a thread pool; each task hands its request to this loop and waits. All
requests therefore share one engine, which batches them continuously.

Stopping is a drain (`begin_drain`, on SIGTERM). The worker moves at once from its queue's live
set to its draining set: gateways admit nothing more on its account, while the leases of the
requests it holds stay valid. Celery meanwhile stops consuming, puts the messages it received
but did not start back on the queue (as `serve` does with any it is still handed), and waits
for the running ones. Requests still running after `drain_grace_s` are evicted: they end with
UNAVAILABLE and the gateway re-runs them on another worker. `stop` then leaves both sets and
shuts the engine down. A lost engine takes the same path with no grace, and asks the worker to
exit with ENGINE_LOST_EXIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery.exceptions import Reject
from redis.asyncio import Redis

from fleet_common.fair_queue import HELD_BACK, FairTaker
from fleet_common.wire import GenerationTask, Sampling
from model_registry.records import ServedModel
from workers import background
from workers.engine import EngineClient, EngineRequest
from workers.generation import InFlight, RequestRunner
from workers.metrics import WorkerMetrics
from workers.result_stream import ResultStreamWriter
from workers.settings import WorkerSettings
from workers.slots import TenantSlots

log = logging.getLogger(__name__)

ENGINE_LOST_EXIT = 4
STOP_MARGIN_S = 30.0  # for `stop` (leaving Redis, shutting the engine down) after the drain
_EVICT_SWEEP_S = 0.2
_END_WAIT_S = 10.0  # for evicted requests to write their UNAVAILABLE
_LEAVE_WAIT_S = 5.0
_HELD_BACK_RETRY_S = 0.02  # a thread holding a reserve slot asks again this often


def _keep_running(exit_code: int) -> None:
    """The default `request_exit`: nothing to stop."""


class WorkerRuntime:
    def __init__(
        self,
        settings: WorkerSettings,
        served: ServedModel,
        engine_factory: Callable[[], EngineClient],
        request_exit: Callable[[int], None] = _keep_running,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """`request_exit(code)` asks whatever calls `serve` to stop and the process to exit with
        `code`; it is called from the engine loop's thread when the engine is lost."""
        self._settings = settings
        self._served = served
        self._engine_factory = engine_factory
        self._request_exit = request_exit
        self._metrics = metrics
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-loop",
                                        daemon=True)
        self._in_flight = InFlight()
        self._presence = background.PresenceControl()
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[Any]] = []
        self._drain: asyncio.Task[None] | None = None
        self._grace_cut = asyncio.Event()
        self._refusing = False  # a plain flag: begin_drain may run in a signal handler
        self.exit_code = 0  # ENGINE_LOST_EXIT once the engine is lost
        self._engine: EngineClient | None = None
        self._redis: Redis | None = None
        self._runner: RequestRunner | None = None
        self._taker: FairTaker | None = None
        self._slots = TenantSlots(settings.open_slots if settings.fair_share_reserve else 0)

    def start(self) -> None:
        """Creates the engine (blocking until it is loaded) and starts heartbeats."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()

    async def _start(self) -> None:
        s = self._settings
        self._engine = self._engine_factory()
        await self._engine.check_health()
        await self._warm_up(self._engine)
        self._redis = Redis.from_url(s.redis_url, max_connections=s.concurrency + 8)
        in_flight = self._in_flight
        self._taker = FairTaker(self._redis, self._served.queue)
        self._runner = RequestRunner(
            engine=self._engine,
            writer=ResultStreamWriter(self._redis, ttl_s=s.stream_ttl_s, max_len=s.stream_max_len),
            redis=self._redis,
            in_flight=in_flight,
            worker_name=s.worker_name,
            pool=self._served.pool,
        )
        self._heartbeat = asyncio.create_task(background.heartbeat(
            self._redis, self._served.queue, s.worker_name, s.heartbeat_interval_s,
            status=lambda: self._status(in_flight), control=self._presence))
        self._background = [
            asyncio.create_task(background.listen_for_cancellations(self._redis, in_flight)),
            asyncio.create_task(self._watch_engine()),
        ]

    def _status(self, in_flight: InFlight) -> dict[str, str | int]:
        assert self._engine is not None
        s = self._settings
        if self._metrics is not None:
            self._metrics.in_flight.set(len(in_flight.generations))
        return {"model": self._served.model, "model_version": self._served.version,
                "pool": self._served.pool, "tasks_in_flight": len(in_flight.generations),
                "engine_requests": self._engine.unfinished_requests(),
                "capacity": s.published_capacity}

    @staticmethod
    async def _warm_up(engine: EngineClient) -> None:
        """One tiny request before readiness: the first request of an engine (notably with
        tensor parallelism) is far slower than the rest, and no user should pay for that."""
        request = EngineRequest(request_id="warm-up", prompt_token_ids=[1], stop_token_ids=[],
                                sampling=Sampling(max_tokens=2, ignore_eos=True, n=1,
                                                  top_p=1.0, repetition_penalty=1.0))
        async for _ in engine.generate(request):
            pass

    def serve(self, task: GenerationTask) -> None:
        """Runs one request to completion; called from Celery's task threads. A draining worker
        refuses new requests: Reject puts the message back on the queue for another worker.

        Celery hands over messages until its consumer loop sees the shutdown (well within a
        second). A message that the Redis transport's pending BRPOP takes after that waits in
        the socket until the drain ends and the connection closes, which restores it; the
        gateway re-runs such an attempt sooner, as one that left the queue unstarted."""
        assert self._runner is not None, "start() first"
        if self._refusing:
            raise Reject(f"worker {self._settings.worker_name} is draining", requeue=True)
        asyncio.run_coroutine_threadsafe(self._serve_in_slot(task, occupy=True),
                                         self._loop).result()

    def take_and_serve(self) -> None:
        """Runs a ticket: takes the queue's next request in priority and fair order
        (`fleet_common.fair_queue`) and serves it. A draining worker takes nothing and puts the
        ticket back; a spare ticket (no request waits) ends at once."""
        assert self._taker is not None and self._runner is not None, "start() first"
        if self._refusing:
            raise Reject(f"worker {self._settings.worker_name} is draining", requeue=True)
        task = asyncio.run_coroutine_threadsafe(self._take(), self._loop).result()
        if task is HELD_BACK:
            raise Reject(f"worker {self._settings.worker_name} is draining", requeue=True)
        if isinstance(task, GenerationTask):
            asyncio.run_coroutine_threadsafe(self._serve_in_slot(task), self._loop).result()

    async def _take(self) -> GenerationTask | str | None:
        """The next request, in a slot of its tenant; None when none waits. A thread whose
        only slot left is a reserve one asks again until a request may take it (or an open slot
        frees); HELD_BACK if the worker starts draining meanwhile."""
        assert self._taker is not None
        while True:
            async with self._slots.choosing():
                open_slots, running = self._slots.limits()
                task = await self._taker.take(open_slots=open_slots, running=running)
                if isinstance(task, GenerationTask):
                    self._slots.occupy(task.tenant)
                if task is not HELD_BACK:
                    return task
            await asyncio.sleep(_HELD_BACK_RETRY_S)
            if self._refusing:
                return HELD_BACK

    async def _serve_in_slot(self, task: GenerationTask, *, occupy: bool = False) -> None:
        assert self._runner is not None
        if occupy:
            self._slots.occupy(task.tenant)
        try:
            await self._runner.serve(task)
        finally:
            self._slots.release(task.tenant)

    def begin_drain(self, *, immediate: bool = False) -> None:
        """Starts the drain (module docstring); `immediate` evicts every request now rather
        than after the grace. Idempotent; it only schedules work on the engine loop, so it is
        safe in a signal handler and from any thread."""
        self._refusing = True
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._begin_drain, immediate)

    def _begin_drain(self, immediate: bool) -> None:
        self._refusing = True
        if immediate:
            self._grace_cut.set()
        if self._drain is None:
            self._presence.set(background.Presence.DRAINING)
            self._drain = asyncio.create_task(self._drain_in_flight())

    async def _drain_in_flight(self) -> None:
        grace_s = 0.0 if self._grace_cut.is_set() else self._settings.drain_grace_s
        log.info("draining: out of the live set; %d requests in flight have %.0f s to finish",
                 len(self._in_flight.generations), grace_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._grace_cut.wait(), grace_s)
        while True:  # until `stop`: Celery may still hand over a request it had received
            evicted = [run_id for run_id in list(self._in_flight.generations)
                       if not self._in_flight.was_evicted(run_id) and self._in_flight.evict(run_id)]
            if evicted:
                log.warning("drain grace over: %d requests end with UNAVAILABLE, for the gateway "
                            "to re-run elsewhere: %s", len(evicted), ", ".join(evicted))
            await asyncio.sleep(_EVICT_SWEEP_S)

    async def _watch_engine(self) -> None:
        assert self._engine is not None
        reason = await background.engine_lost(self._engine, self._settings.heartbeat_interval_s)
        log.error("the engine is lost (%s: %s): ending %d requests with UNAVAILABLE, then exiting "
                  "with code %d", type(reason).__name__, reason, len(self._in_flight.generations),
                  ENGINE_LOST_EXIT)
        self.exit_code = ENGINE_LOST_EXIT
        self._begin_drain(immediate=True)
        self._request_exit(ENGINE_LOST_EXIT)
        await self._requests_ended(_END_WAIT_S)
        await self._leave()
        await asyncio.sleep(STOP_MARGIN_S)  # `stop` cancels this unless the worker is stuck
        log.critical("still running %.0f s after the engine was lost; exiting now", STOP_MARGIN_S)
        os._exit(ENGINE_LOST_EXIT)

    async def _requests_ended(self, timeout_s: float) -> bool:
        deadline = self._loop.time() + timeout_s
        while self._in_flight.generations:
            if self._loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _leave(self) -> None:
        """Out of both worker sets; the heartbeat does it, being the sets' only writer."""
        self._presence.set(background.Presence.GONE)
        if self._heartbeat is not None and not self._heartbeat.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat, _LEAVE_WAIT_S)

    def stop(self) -> None:
        """Once Celery has stopped calling `serve`: leaves both worker sets, then shuts the engine
        down. A request still in flight (Celery stopped abnormally) is evicted first."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=STOP_MARGIN_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _stop(self) -> None:
        if self._in_flight.generations:
            self._begin_drain(immediate=True)
            if not await self._requests_ended(_END_WAIT_S):
                log.warning("stopping with %d requests still in flight",
                            len(self._in_flight.generations))
        tasks = [*self._background, *([self._drain] if self._drain is not None else [])]
        for task in tasks:
            task.cancel()
        # redis-py can swallow a cancel that lands inside a command: bounded waits only.
        if tasks:
            await asyncio.wait(tasks, timeout=_END_WAIT_S)
        await self._leave()
        stuck = asyncio.all_tasks() - {asyncio.current_task()}  # requests eviction did not end
        for task in stuck:
            task.cancel()  # their `serve` callers get CancelledError instead of waiting forever
        if stuck:
            await asyncio.wait(stuck, timeout=_END_WAIT_S)
        if self._redis is not None:
            await self._redis.aclose()
        if self._engine is not None:
            log.info("shutting the engine down")
            try:
                self._engine.shutdown()
            except Exception:  # a lost engine may fail to shut down; we are exiting anyway
                log.warning("engine shutdown failed", exc_info=True)
