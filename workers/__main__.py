"""Start a worker: `python -m workers --model NAME [--model-version V] [...]`.

Loads the model version from the registry, starts its engine, then consumes that version's
queue with a thread pool whose threads all feed the one engine. Every setting is a `FLEET_*`
environment variable and a flag (`--help` lists them); a flag wins over its variable.
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import signals
from celery.worker import state as celery_state

from fleet_common.celery_app import make_celery_app
from fleet_common.logs import configure_logging
from fleet_common.settings.loading import load_settings
from fleet_server import tracing
from fleet_server.metrics_http import serve_metrics
from model_registry.reader import open_registry_reader
from model_registry.records import ServedModel
from model_registry.verification import CheckpointCorrupted, verify_before_load
from workers.engine import EngineConfig, VllmEngine
from workers.metrics import WorkerMetrics
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings
from workers.tasks import register_tasks


def engine_config(served: ServedModel, settings: WorkerSettings) -> EngineConfig:
    """The engine for one model version: the registry's engine settings, this host's sizing."""
    return EngineConfig(
        checkpoint_dir=served.checkpoint_dir,
        tensor_parallel_size=served.tensor_parallel_size,
        max_model_len=served.context_limit,
        dtype=served.dtype,
        enforce_eager=settings.enforce_eager,
        max_num_seqs=settings.max_num_seqs,
        kv_cache_gib=settings.kv_cache_gib,
        quantization=served.quantization or None,
        log_stats=settings.metrics_port is not None,
    )


def stop_consuming(exit_code: int) -> None:
    """Starts the Celery worker's warm shutdown, exiting with `exit_code`, as its SIGTERM
    handler does: by setting the flag its consumer loop polls. Safe from any thread."""
    celery_state.should_stop = exit_code


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(WorkerSettings, argv, prog="python -m workers", description=__doc__)
    configure_logging(settings.log_level, settings.log_format)
    tracing.configure("codellama-fleet-worker")
    if not settings.model:
        raise SystemExit("--model (or FLEET_MODEL) is required")
    log = logging.getLogger("workers")
    registry = open_registry_reader(settings.registry_url, api_key=settings.registry_api_key)
    try:
        served = registry.get_version(settings.model, settings.model_version)
        checkpoint = registry.get_checkpoint(served.checkpoint)
    finally:
        registry.close()
    try:
        verify_before_load(Path(served.checkpoint_dir), checkpoint.files,
                           check_hashes=settings.verify_checksums,
                           allow_unrecorded=settings.allow_unrecorded_checkpoint)
    except CheckpointCorrupted as exc:
        log.error("%s@%s: %s", served.model, served.version, exc)
        raise SystemExit(3) from exc
    config = engine_config(served, settings)
    metrics = WorkerMetrics(settings.worker_name, served.queue)
    stat_loggers = [metrics.stat_logger_factory()] if config.log_stats else None
    runtime = WorkerRuntime(settings, served, lambda: VllmEngine(config, stat_loggers),
                            request_exit=stop_consuming, metrics=metrics)
    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    runtime.start()
    log.info(
        "engine ready: %s@%s (pool %s, TP %d) consuming %s",
        served.model, served.version, served.pool, served.tensor_parallel_size, served.queue,
    )
    app = make_celery_app(settings.redis_url, visibility_timeout_s=settings.visibility_timeout_s)
    register_tasks(app, runtime)
    try:
        worker = app.Worker(
            pool="threads",
            concurrency=settings.concurrency,
            queues=[served.queue],
            hostname=f"{settings.worker_name}@{served.queue}",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=settings.log_level,
        )
        # Sent by Celery's SIGTERM (warm) and SIGQUIT (cold) handlers before it stops consuming.
        signals.worker_shutting_down.connect(
            lambda how="Warm", **_: runtime.begin_drain(immediate=how == "Cold"), weak=False)
        worker.start()
    finally:
        runtime.stop()
        tracing.shutdown()
    if worker.exitcode or runtime.exit_code:
        raise SystemExit(worker.exitcode or runtime.exit_code)


if __name__ == "__main__":
    main()
