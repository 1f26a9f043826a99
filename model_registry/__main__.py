"""Start the registry service: `python -m model_registry [--port N] [--port-file F]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from codellama.fleet.v1 import registry_service_pb2, registry_service_pb2_grpc
from gateway.interceptors import ErrorMappingInterceptor
from model_registry.database import migrate, open_engine
from model_registry.service import RegistryServicer
from model_registry.store import RegistryStore

SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    registry_url: str = "sqlite:///var/registry.db"
    registry_host: str = "127.0.0.1"
    registry_port: int = Field(default=50061, ge=0, le=65535)
    registry_port_file: str | None = None
    checkpoint_root: str = "var/checkpoints"
    log_level: str = "INFO"


async def serve(settings: RegistrySettings, stop: asyncio.Event) -> None:
    engine = open_engine(settings.registry_url)
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(store, Path(settings.checkpoint_root)), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                        server)
    port = server.add_insecure_port(f"{settings.registry_host}:{settings.registry_port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    if settings.registry_port_file:
        staging = Path(settings.registry_port_file + ".tmp")
        staging.write_text(str(port))
        staging.rename(settings.registry_port_file)
    logging.getLogger(__name__).info("registry listening on %s:%d", settings.registry_host, port)
    try:
        await stop.wait()
    finally:
        await server.stop(grace=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model_registry", description=__doc__)
    parser.add_argument("--port", type=int, dest="registry_port")
    parser.add_argument("--port-file", dest="registry_port_file")
    parser.add_argument("--registry-url")
    overrides = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    settings = RegistrySettings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
