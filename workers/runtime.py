"""The worker's engine side: one event loop thread that owns the engine and its Redis clients.

Celery runs tasks on a thread pool; each task hands its request to this loop and waits. All
requests therefore share one engine, which batches them continuously.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from redis.asyncio import Redis

from fleet_common.wire import GenerationTask, Sampling
from model_registry.records import ServedModel
from workers import background
from workers.engine import EngineClient, EngineRequest
from workers.generation import InFlight, RequestRunner
from workers.result_stream import ResultStreamWriter
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(
        self,
        settings: WorkerSettings,
        served: ServedModel,
        engine_factory: Callable[[], EngineClient],
    ) -> None:
        self._settings = settings
        self._served = served
        self._engine_factory = engine_factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-loop",
                                        daemon=True)
        self._background: list[asyncio.Task[None]] = []
        self._engine: EngineClient | None = None
        self._redis: Redis | None = None
        self._runner: RequestRunner | None = None

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
        in_flight = InFlight()
        self._runner = RequestRunner(
            engine=self._engine,
            writer=ResultStreamWriter(self._redis, ttl_s=s.stream_ttl_s, max_len=s.stream_max_len),
            redis=self._redis,
            in_flight=in_flight,
            worker_name=s.worker_name,
            pool=self._served.pool,
        )
        self._background = [
            asyncio.create_task(background.heartbeat(
                self._redis, self._served.queue, s.worker_name, s.heartbeat_interval_s,
                status=lambda: self._status(in_flight))),
            asyncio.create_task(background.listen_for_cancellations(self._redis, in_flight)),
        ]

    def _status(self, in_flight: InFlight) -> dict[str, str | int]:
        assert self._engine is not None
        return {"model": self._served.model, "model_version": self._served.version,
                "pool": self._served.pool, "tasks_in_flight": len(in_flight.generations),
                "engine_requests": self._engine.unfinished_requests()}

    @staticmethod
    async def _warm_up(engine: EngineClient) -> None:
        """One tiny request before readiness: the first request of an engine (notably with
        tensor parallelism) is far slower than the rest, and no user should pay for that."""
        request = EngineRequest(request_id="warm-up", prompt_token_ids=[1], stop_token_ids=[],
                                sampling=Sampling(max_tokens=2, ignore_eos=True))
        async for _ in engine.generate(request):
            pass

    def serve(self, task: GenerationTask) -> None:
        """Runs one request to completion; called from Celery's task threads."""
        assert self._runner is not None, "start() first"
        asyncio.run_coroutine_threadsafe(self._runner.serve(task), self._loop).result()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._redis is not None:
            await background.leave(self._redis, self._served.queue, self._settings.worker_name)
            await self._redis.aclose()
        if self._engine is not None:
            self._engine.shutdown()
