"""Start a worker: `python -m workers --model NAME [--model-version V] [...]`.

Loads the model version from the registry, starts its engine, then consumes that version's
queue with a thread pool whose threads all feed the one engine.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fleet_common.celery_app import make_celery_app
from model_registry.database import open_engine
from model_registry.records import ServedModel
from model_registry.store import RegistryStore
from workers.engine import EngineConfig, VllmEngine
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings
from workers.tasks import register_tasks
from workers.verification import CheckpointCorrupted, verify_before_load


def parse_overrides(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--model-version")
    parser.add_argument("--redis-url")
    parser.add_argument("--registry-url")
    parser.add_argument("--worker-name")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--enforce-eager", action="store_true", default=None)
    parser.add_argument("--kv-cache-gib", type=int)
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


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
    )


def main(argv: list[str] | None = None) -> None:
    settings = WorkerSettings(**parse_overrides(argv))  # type: ignore[arg-type]
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.model:
        raise SystemExit("--model (or FLEET_MODEL) is required")
    log = logging.getLogger("workers")
    store = RegistryStore(open_engine(settings.registry_url))
    served = store.get_version(settings.model, settings.model_version)
    checkpoint = store.get_checkpoint(served.checkpoint)
    try:
        verify_before_load(Path(served.checkpoint_dir), checkpoint.files,
                           check_hashes=settings.verify_checksums,
                           allow_unrecorded=settings.allow_unrecorded_checkpoint)
    except CheckpointCorrupted as exc:
        log.error("%s@%s: %s", served.model, served.version, exc)
        raise SystemExit(3) from exc
    config = engine_config(served, settings)
    runtime = WorkerRuntime(settings, served, lambda: VllmEngine(config))
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
        worker.start()
    finally:
        runtime.stop()


if __name__ == "__main__":
    main()
