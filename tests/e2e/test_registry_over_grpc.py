"""A gateway that reads the registry through its RegistryService (FLEET_REGISTRY_URL=grpc://...):
it serves while the registry runs, and for 30 s after the registry process stops it keeps
serving from its last snapshot and stays SERVING."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_cli.processes import ManagedProcess, spawn, start_gateway, wait_until
from tests.e2e.conftest import CHAT_7B
from tests.e2e.fleet_harness import Fleet

pytestmark = pytest.mark.e2e
OUTAGE_REQUESTS = 16
REQUEST_EVERY_S = 2.0
OUTAGE_S = 30.0
OUTAGE_LOGGED = "registry refresh failed; serving the last good snapshot"


def _start_registry(fleet: Fleet, work_dir: Path) -> tuple[ManagedProcess, int]:
    """`python -m model_registry` over the fleet's SQLite registry, on a free port."""
    port_file = work_dir / "registry.port"
    proc = spawn("registry-grpc", [sys.executable, "-m", "model_registry", "--port", "0",
                                   "--port-file", str(port_file)], fleet.log_dir,
                 {"FLEET_REGISTRY_URL": fleet.registry_url, "FLEET_REGISTRY_AUTH": "off",
                  "FLEET_CHECKPOINT_ROOT": str(work_dir / "checkpoints")})
    wait_until(port_file.exists, 60, "registry port", proc)
    return proc, int(port_file.read_text())


def _complete(stub: InferenceServiceStub) -> api.CompleteResponse:
    return stub.Complete(api.CompleteRequest(
        model=CHAT_7B, prompt="def add(a, b):",
        sampling=pb.SamplingParams(max_tokens=4, temperature=0.0)), timeout=60)


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="codellama.fleet.v1.InferenceService"),
        timeout=5).status


def test_a_gateway_on_the_registry_service_serves_through_a_registry_outage(
        fleet: Fleet, tmp_path: Path) -> None:
    registry, registry_port = _start_registry(fleet, tmp_path)
    gateway: ManagedProcess | None = None
    try:
        gateway, port = start_gateway({
            "FLEET_REGISTRY_URL": f"grpc://127.0.0.1:{registry_port}",
            "FLEET_REDIS_URL": fleet.redis_url, "FLEET_WORKER_LIVENESS_S": "3",
            "FLEET_REGISTRY_REFRESH_S": "0.5"}, fleet.log_dir)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = InferenceServiceStub(channel)
        first = _complete(stub)
        assert (first.served_by.model_version, first.served_by.worker) == ("v1", "w-7b")
        assert first.usage.completion_tokens > 0
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING

        registry.stop()
        wait_until(lambda: OUTAGE_LOGGED in gateway.log_path.read_text(), 10,
                   "the gateway to notice the registry outage", gateway)
        started = time.monotonic()
        for i in range(OUTAGE_REQUESTS):
            response = _complete(stub)
            assert response.served_by.model_version == "v1", i
            assert response.usage.completion_tokens > 0, i
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING, i
            time.sleep(REQUEST_EVERY_S)
        assert time.monotonic() - started >= OUTAGE_S
        assert gateway.alive()
        assert gateway.log_path.read_text().count(OUTAGE_LOGGED) == 1
        channel.close()
    finally:
        if gateway is not None:
            gateway.stop()
        registry.stop()
