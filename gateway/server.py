"""Assembles the gateway: gRPC server, services, health and reflection, background refresh."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from redis.asyncio import Redis

from codellama.fleet.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)
from fleet_server.bootstrap import FleetServer
from fleet_server.metrics_http import serve_metrics
from gateway.admission_control import admission_control_for
from gateway.auth import Authenticator
from gateway.autoscale_signal import AutoscaleSignal
from gateway.backend_health import BackendHealth
from gateway.dispatch import Dispatcher, RequestObserver
from gateway.health_reporter import HealthReporter
from gateway.job_runner import JobRunner, JobRunnerSettings
from gateway.job_service import JobServicer, JobServiceSettings
from gateway.key_ring import KeyRing
from gateway.model_directory import ModelDirectory
from gateway.prompts import PromptBuilder
from gateway.quotas import Quotas
from gateway.request_metrics import TokenMetrics, set_rollout_weights
from gateway.servicer import InferenceServicer
from gateway.settings import GatewaySettings
from gateway.tenant_policies import TenantPolicies
from gateway.usage_recorder import UsageRecorder
from model_registry.database import open_engine
from model_registry.jobs import JobStore
from model_registry.reader import open_registry_reader

log = logging.getLogger(__name__)
INFERENCE_SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
JOB_SERVICE = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


async def serve(settings: GatewaySettings, stop: asyncio.Event) -> None:
    """Runs the gateway until `stop` is set, then drains in-flight calls for a few seconds."""
    keys = KeyRing()  # the registry's API keys, refreshed with every registry poll
    policies = TenantPolicies()  # the tenants' policies, refreshed with the keys
    models = ModelDirectory(open_registry_reader(settings.registry_url,
                                                 api_key=settings.registry_api_key),
                            settings.registry_refresh_s, keys, policies)
    await models.load_at_start()
    redis = Redis.from_url(settings.redis_url, max_connections=settings.redis_max_connections,
                           socket_timeout=settings.redis_socket_timeout_s,
                           socket_connect_timeout=settings.redis_socket_connect_timeout_s)
    health = BackendHealth(settings.redis_url, serving=redis,
                           interval_s=settings.redis_probe_interval_s,
                           timeout_s=settings.redis_probe_timeout_s)
    health.start()
    observers: list[RequestObserver] = [TokenMetrics()]
    usage = None
    if settings.usage_accounting:
        usage = UsageRecorder(redis, result_retention_s=settings.result_retention_s,
                              flush_interval_s=settings.usage_flush_s,
                              stream_max_len=settings.usage_stream_max_len)
        usage.start()
        observers.append(usage)
    quotas = Quotas(redis, policies, lease_ttl_s=settings.quota_lease_ttl_s)
    dispatcher = Dispatcher(redis, worker_liveness_s=settings.worker_liveness_s,
                            result_retention_s=settings.result_retention_s,
                            lease_check_s=settings.lease_check_s,
                            admission=admission_control_for(settings, redis),
                            health=health, observers=tuple(observers),
                            weight_of=policies.weight, quotas=quotas,
                            wait_for_workers=settings.wait_for_workers)
    dispatcher.start()
    quotas.start()
    prompts = PromptBuilder(settings.limits)
    await prompts.preload(models.all_served())  # no request waits for a tokenizer to load
    auth = Authenticator(settings.api_keys, keys)
    servicer = InferenceServicer(settings, models, prompts, dispatcher, auth, policies)
    jobs = JobStore(open_engine(settings.jobs_database_url)) if settings.jobs_database_url \
        else None

    server = FleetServer(
        [INFERENCE_SERVICE, *([JOB_SERVICE] if jobs else [])],
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server.server)
    runner = None
    if jobs is not None:
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(
            jobs, auth, policies, JobServiceSettings(
                settings.limits, tuple(settings.webhook_allowed_hosts))), server.server)
        runner = JobRunner(jobs, servicer, JobRunnerSettings(
            owner=f"gateway-{socket.gethostname()}-{os.getpid()}",
            window_per_job=settings.job_window, max_in_flight=settings.job_max_in_flight,
            lease_s=settings.job_lease_s, poll_s=settings.job_poll_s,
            max_attempts=settings.job_item_max_attempts, max_deadline_s=settings.max_deadline_s,
            retention_s=settings.job_result_retention_s,
            webhook_allowed_hosts=tuple(settings.webhook_allowed_hosts)))
    port = await server.start(settings.host, settings.port, port_file=settings.port_file)
    log.info("gateway listening on %s:%d with %d models", settings.host, port, len(models.all()))
    reporter = HealthReporter(server.health, INFERENCE_SERVICE, models,
                              dispatcher.live_worker_count, interval_s=settings.lease_check_s)
    background = [asyncio.create_task(models.keep_fresh()),
                  asyncio.create_task(reporter.run_forever())]
    if runner is not None:
        runner.start()
    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port, settings.metrics_host)
        signal = AutoscaleSignal(redis, models.all_served, liveness_s=settings.worker_liveness_s,
                                 interval_s=settings.autoscale_interval_s,
                                 default_capacity=settings.autoscale_default_capacity,
                                 on_refresh=lambda: set_rollout_weights(models.rollouts()))
        background.append(asyncio.create_task(signal.run_forever()))
    try:
        await stop.wait()
    finally:
        for task in background:
            task.cancel()
        await server.stop(grace=5)
        if runner is not None:
            await runner.aclose()  # its items' leases lapse; another gateway runs them
        if usage is not None:
            await usage.aclose()  # the last flush, after the last call ended
        await dispatcher.aclose()
        await quotas.aclose()
        await health.aclose()
        await redis.aclose()
