"""Start the registry service: `python -m model_registry [--port N] [--port-file F] [...]`.

Migrates the database, then serves RegistryService. Every setting is a `FLEET_*` environment
variable and a flag (`--help` lists them); a flag wins over its variable.

`python -m model_registry bootstrap-key [--tenant ops]` creates the first operator API key
instead (`model_registry.bootstrap_key`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from pathlib import Path

from codellama.fleet.v1 import (
    registry_service_pb2,
    registry_service_pb2_grpc,
    usage_service_pb2_grpc,
)
from fleet_common.logs import configure_logging
from fleet_common.settings.loading import load_settings
from fleet_common.settings.registry import RegistrySettings
from fleet_server.bootstrap import FleetServer, run_until_signalled
from fleet_server.call_counter import REGISTRY_REQUESTS, CallCounter
from fleet_server.metrics_http import serve_metrics
from model_registry.database import migrate, open_engine
from model_registry.service import RegistryServicer
from model_registry.store import RegistryStore
from model_registry.tenants import TenantStore
from model_registry.usage import UsageStore
from model_registry.usage_consumer import UsageConsumer
from model_registry.usage_service import SERVICE_NAME as USAGE_SERVICE
from model_registry.usage_service import UsageServicer
from model_registry.worker_liveness import WorkerLiveness

SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

__all__ = ["RegistrySettings", "main", "serve"]


async def serve(settings: RegistrySettings, stop: asyncio.Event) -> None:
    engine = open_engine(settings.registry_url)
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    workers = WorkerLiveness(settings.redis_url, settings.worker_liveness_s)
    authenticate = settings.registry_auth == "required"
    server = FleetServer([SERVICE, USAGE_SERVICE], interceptors=[CallCounter(REGISTRY_REQUESTS)])
    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(store, Path(settings.checkpoint_root), workers,
                         authenticate=authenticate), server.server)
    usage = UsageStore(engine)
    usage_service_pb2_grpc.add_UsageServiceServicer_to_server(
        UsageServicer(usage, TenantStore(store), authenticate=authenticate), server.server)
    consumer = None
    if settings.usage_accounting:  # the gateways' counts, from Redis into the database
        consumer = UsageConsumer(settings.redis_url, usage,
                                 claim_idle_s=settings.usage_claim_idle_s)
    port = await server.start(settings.registry_host, settings.registry_port,
                              port_file=settings.registry_port_file)
    logging.getLogger(__name__).info("registry listening on %s:%d (authentication %s)",
                                     settings.registry_host, port, settings.registry_auth)
    if consumer is not None:
        consumer.start()
    try:
        await stop.wait()
    finally:
        await server.stop(grace=5)
        if consumer is not None:
            await consumer.aclose()
        workers.close()
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bootstrap-key"]:
        from model_registry.bootstrap_key import main as bootstrap_key

        raise SystemExit(bootstrap_key(argv[1:]))
    settings = load_settings(RegistrySettings, argv, prog="python -m model_registry",
                             description=__doc__)
    configure_logging(settings.log_level, settings.log_format)
    run_until_signalled(functools.partial(serve, settings))


if __name__ == "__main__":
    main()
