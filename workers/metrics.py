"""A worker's Prometheus metrics: its requests in flight and its engine's scheduler state.

The engine's numbers come from vLLM's own stats (a stat logger vLLM calls after each engine
step), so they mean what vLLM's `vllm:num_requests_running`, `vllm:num_requests_waiting` and
`vllm:kv_cache_usage_perc` mean; vLLM's own `vllm:*` metrics are served beside them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge

IN_FLIGHT = Gauge("fleet_worker_in_flight", "Requests this worker holds (taken, not ended).",
                  ["worker", "queue"])
ENGINE_RUNNING = Gauge("fleet_engine_running_requests",
                       "Requests in the engine's running batch.", ["worker", "queue"])
ENGINE_WAITING = Gauge("fleet_engine_waiting_requests",
                       "Requests waiting in the engine's scheduler.", ["worker", "queue"])
KV_CACHE_USAGE = Gauge("fleet_engine_kv_cache_usage_ratio",
                       "Fraction of the engine's KV cache blocks in use (0..1).",
                       ["worker", "queue"])


class WorkerMetrics:
    def __init__(self, worker: str, queue: str) -> None:
        self.in_flight = IN_FLIGHT.labels(worker, queue)
        self._running = ENGINE_RUNNING.labels(worker, queue)
        self._waiting = ENGINE_WAITING.labels(worker, queue)
        self._kv = KV_CACHE_USAGE.labels(worker, queue)

    def engine_stats(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        self._running.set(running)
        self._waiting.set(waiting)
        self._kv.set(kv_cache_usage)

    def stat_logger_factory(self) -> Any:
        """A vLLM StatLoggerFactory feeding `engine_stats` (vLLM is imported only here)."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        metrics = self

        class FleetStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    metrics.engine_stats(scheduler_stats.num_running_reqs,
                                         scheduler_stats.num_waiting_reqs,
                                         scheduler_stats.kv_cache_usage)

            def log_engine_initialized(self) -> None:
                pass

        return FleetStatLogger
