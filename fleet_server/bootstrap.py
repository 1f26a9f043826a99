"""The one way a fleet gRPC server starts and stops.

`FleetServer` is a `grpc.aio` server with the error mapping, the health service and reflection;
`start` binds, reports SERVING and writes the port file; `stop` reports NOT_SERVING to every
health watcher, then lets in-flight calls finish. `run_until_signalled` runs a role's `serve`
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fleet_server.interceptor import ErrorMappingInterceptor

SERVING = health_pb2.HealthCheckResponse.SERVING


def write_port_file(path: Path, port: int) -> None:
    """Writes `port` so that a reader never sees a partial file: a temporary file, renamed."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(str(port))
    staging.replace(path)


class FleetServer:
    """Add the role's services to `server` before `start`. `health` is the health servicer, for
    a role that reports a service's health apart from the server's."""

    def __init__(self, services: Sequence[str], *,
                 options: Sequence[tuple[str, Any]] = (),
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        """`interceptors` run before the error mapping (which turns FleetErrors into
        statuses), so they see each call's final status."""
        self.services = tuple(services)
        # so_reuseport 0: a second server on a taken port fails instead of sharing it.
        self.server = grpc.aio.server(interceptors=[*interceptors, ErrorMappingInterceptor()],
                                      options=[("grpc.so_reuseport", 0), *options])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)

    async def start(self, host: str, port: int, *, port_file: str | Path | None = None) -> int:
        """Binds host:port (0 picks a free port), starts, reports SERVING for the server ("")
        and each service, then writes the bound port to `port_file`; returns the bound port."""
        bound = self.server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise RuntimeError(f"could not bind {host}:{port}")
        await self.server.start()
        for name in ("", *self.services):
            await self.health.set(name, SERVING)
        if port_file:
            write_port_file(Path(port_file), bound)
        return bound

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING to health checks and watchers, then `grace` seconds for calls in flight."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs `serve(stop)` in a new event loop; SIGTERM or SIGINT sets `stop`."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(main())
