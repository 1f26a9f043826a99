"""Health that tells the truth about serving: per model, whether any worker can run it.

Health service names:
- "" is the gateway process itself (SERVING while it runs; liveness probes use it);
- `codellama.fleet.v1.InferenceService` is SERVING while at least one served model has a live
  worker (readiness: a gateway that can serve nothing says so);
- `codellama.fleet.v1.InferenceService/<model>` is SERVING while that model's stable version
  (or its canary) has a live worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health, health_pb2
from redis.exceptions import RedisError

from fleet_common.errors import Unavailable
from gateway.model_directory import ModelDirectory

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_service_name(service: str, model: str) -> str:
    return f"{service}/{model}"


class HealthReporter:
    def __init__(self, health_servicer: health.aio.HealthServicer, service: str,
                 models: ModelDirectory, live_workers: Callable[[str], Awaitable[int]], *,
                 interval_s: float) -> None:
        self._health = health_servicer
        self._service = service
        self._models = models
        self._live_workers = live_workers
        self._interval_s = interval_s
        self._last: dict[str, int] = {}

    async def run_forever(self) -> None:
        while True:
            try:
                await self.report()
            except (RedisError, OSError, Unavailable) as exc:
                log.warning("health: cannot read worker liveness (%s); reporting NOT_SERVING",
                            exc)
                await self._set_all(NOT_SERVING)
            await asyncio.sleep(self._interval_s)

    async def report(self) -> None:
        queues_by_model: dict[str, set[str]] = {}
        for served in self._models.all_served():
            queues_by_model.setdefault(served.model, set()).add(served.queue)
        any_serving = False
        for model, queues in sorted(queues_by_model.items()):
            counts = [await self._live_workers(queue) for queue in sorted(queues)]
            serving = any(counts)
            any_serving = any_serving or serving
            await self._set(model_service_name(self._service, model),
                            SERVING if serving else NOT_SERVING)
        await self._set(self._service, SERVING if any_serving else NOT_SERVING)

    async def _set_all(self, status: int) -> None:
        for name in list(self._last):
            await self._set(name, status)

    async def _set(self, name: str, status: int) -> None:
        if self._last.get(name) != status:
            log.info("health %s: %s", name, health_pb2.HealthCheckResponse.ServingStatus.Name(
                status))
            self._last[name] = status
            await self._health.set(name, status)
