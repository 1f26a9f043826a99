"""An API key's lifecycle across two gateway processes on one registry service (authenticating,
over gRPC): created, it works at both within the refresh interval; revoked, both refuse it with
UNAUTHENTICATED within seconds, without a restart. The gateways need Redis and the registry, no
worker: ListModels authenticates and answers from the registry snapshot."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import registry_service_pb2 as pb
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from codellama.fleet.v1.registry_service_pb2_grpc import RegistryServiceStub
from fleet_cli.processes import ManagedProcess, spawn, start_gateway, wait_until
from model_registry.api_keys import INFERENCE, OPERATOR
from model_registry.database import migrate, open_engine
from model_registry.registration import register_model
from model_registry.store import RegistryStore
from model_registry.tenants import TenantStore

REFRESH_S = 0.5


def _status(stub: InferenceServiceStub, key: str) -> grpc.StatusCode:
    try:
        stub.ListModels(api.ListModelsRequest(), timeout=10,
                        metadata=[("authorization", f"Bearer {key}")])
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, tiny_checkpoints: dict[str, Path]
          ) -> Iterator[tuple[RegistryServiceStub, str, list[InferenceServiceStub]]]:
    """A registry service with model "m", an operator key, and two gateways reading it."""
    database = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = open_engine(database)
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    register_model(store, model="m", version="v1", checkpoint_dir=tiny_checkpoints["infill"],
                   variant="codellama-7b-instruct", context_limit=2048)
    tenants = TenantStore(store)
    for tenant in ("ops", "fleet"):
        tenants.create_tenant(tenant)
    _, operator = tenants.create_key("ops", "admin", [OPERATOR])
    _, gateway_key = tenants.create_key("fleet", "gateways", [INFERENCE])
    engine.dispose()
    port_file = tmp_path / "registry.port"
    processes: list[ManagedProcess] = [spawn(
        "registry", [sys.executable, "-m", "model_registry", "--port", "0", "--port-file",
                     str(port_file)], tmp_path, {"FLEET_REGISTRY_URL": database})]
    channels: list[grpc.Channel] = []
    try:
        wait_until(port_file.exists, 60, "registry port", processes[0])
        registry = f"127.0.0.1:{port_file.read_text()}"
        env = {"FLEET_REGISTRY_URL": f"grpc://{registry}", "FLEET_REGISTRY_API_KEY": gateway_key,
               "FLEET_REDIS_URL": redis_url, "FLEET_REGISTRY_REFRESH_S": str(REFRESH_S)}
        gateways = []
        for _ in range(2):
            process, port = start_gateway(env, tmp_path / "logs")
            processes.append(process)
            channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
            gateways.append(InferenceServiceStub(channels[-1]))
        channels.append(grpc.insecure_channel(registry))
        yield RegistryServiceStub(channels[-1]), operator, gateways
    finally:
        for channel in channels:
            channel.close()
        for process in reversed(processes):
            process.stop()


def test_a_key_works_at_both_gateways_and_its_revocation_reaches_both_in_seconds(
        fleet: tuple[RegistryServiceStub, str, list[InferenceServiceStub]]) -> None:
    registry, operator, gateways = fleet
    as_operator = [("authorization", f"Bearer {operator}")]
    assert [_status(g, "clf_nobody") for g in gateways] == [grpc.StatusCode.UNAUTHENTICATED] * 2
    registry.CreateTenant(pb.CreateTenantRequest(name="acme"), timeout=10, metadata=as_operator)
    created = registry.CreateApiKey(pb.CreateApiKeyRequest(
        tenant="acme", name="app", scopes=[pb.API_KEY_SCOPE_INFERENCE]), timeout=10,
        metadata=as_operator)
    jobs_only = registry.CreateApiKey(pb.CreateApiKeyRequest(
        tenant="acme", name="batch", scopes=[pb.API_KEY_SCOPE_JOBS]), timeout=10,
        metadata=as_operator).secret

    started = time.monotonic()
    wait_until(lambda: all(_status(g, created.secret) == grpc.StatusCode.OK for g in gateways),
               4 * REFRESH_S + 2, "the new key to work at both gateways")
    assert time.monotonic() - started < 4 * REFRESH_S + 2
    response = gateways[1].ListModels(api.ListModelsRequest(), timeout=10,
                                      metadata=[("authorization", f"Bearer {created.secret}")])
    assert [m.name for m in response.models] == ["m"]
    assert [_status(g, jobs_only) for g in gateways] == [grpc.StatusCode.PERMISSION_DENIED] * 2

    registry.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=created.api_key.key_id), timeout=10,
                          metadata=as_operator)
    revoked = time.monotonic()
    wait_until(lambda: all(_status(g, created.secret) == grpc.StatusCode.UNAUTHENTICATED
                           for g in gateways),
               4 * REFRESH_S + 2, "the revoked key to be refused at both gateways")
    assert time.monotonic() - revoked < 4 * REFRESH_S + 2
    with pytest.raises(grpc.RpcError) as caught:
        gateways[0].ListModels(api.ListModelsRequest(), timeout=10,
                               metadata=[("authorization", f"Bearer {created.secret}")])
    assert "unknown or revoked API key" in caught.value.details()
