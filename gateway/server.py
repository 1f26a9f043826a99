"""Assembles the gateway: gRPC server, services, health and reflection, background refresh."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis

from codellama.fleet.v1 import inference_service_pb2, inference_service_pb2_grpc
from gateway.auth import Authenticator
from gateway.dispatch import Dispatcher
from gateway.interceptors import ErrorMappingInterceptor
from gateway.model_directory import ModelDirectory
from gateway.prompts import PromptBuilder
from gateway.servicer import InferenceServicer
from gateway.settings import GatewaySettings
from model_registry.database import open_engine
from model_registry.store import RegistryStore

log = logging.getLogger(__name__)
INFERENCE_SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


async def serve(settings: GatewaySettings, stop: asyncio.Event) -> None:
    """Runs the gateway until `stop` is set, then drains in-flight calls for a few seconds."""
    store = RegistryStore(open_engine(settings.registry_url))
    models = ModelDirectory(store, settings.registry_refresh_s)
    models.load()
    redis = Redis.from_url(settings.redis_url, max_connections=settings.redis_max_connections,
                           socket_timeout=settings.redis_socket_timeout_s)
    dispatcher = Dispatcher(redis, worker_liveness_s=settings.worker_liveness_s)
    dispatcher.start()
    servicer = InferenceServicer(settings, models, PromptBuilder(settings.limits), dispatcher,
                                 Authenticator(settings.api_keys))

    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()], options=[
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ])
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    for name in ("", INFERENCE_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if settings.port_file:
        staging = Path(settings.port_file + ".tmp")
        staging.write_text(str(port))
        staging.rename(settings.port_file)
    log.info("gateway listening on %s:%d with %d models", settings.host, port, len(models.all()))
    refresher = asyncio.create_task(models.keep_fresh())
    try:
        await stop.wait()
    finally:
        await health_servicer.enter_graceful_shutdown()
        refresher.cancel()
        await server.stop(grace=5)
        await dispatcher.aclose()
        await redis.aclose()
