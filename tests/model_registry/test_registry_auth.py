"""The RegistryService authenticates every call (`python -m model_registry`, SQLite and
PostgreSQL): UNAUTHENTICATED without a valid key, PERMISSION_DENIED for a write without the
operator scope, and the rollout history names the authenticated key, whatever the request says."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from codellama.fleet.v1 import registry_service_pb2 as pb
from codellama.fleet.v1.registry_service_pb2_grpc import RegistryServiceStub
from fleet_cli.processes import spawn, wait_until

SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"]
READS = {"GetCheckpoint", "ListCheckpoints", "ListTemplateVersions", "ListModelVersions",
         "GetRollout", "ListRolloutEvents", "GetServingSnapshot", "GetModelVersion",
         "GetAuthSnapshot"}
INFERENCE, OPERATOR = pb.API_KEY_SCOPE_INFERENCE, pb.API_KEY_SCOPE_OPERATOR


@dataclass
class Registry:
    stub: RegistryServiceStub
    operator_key: str  # ops/bootstrap, from `python -m model_registry bootstrap-key`

    def call(self, rpc: str, request: object, key: str | None = None) -> object:
        metadata = [("authorization", f"Bearer {key}")] if key else []
        return getattr(self.stub, rpc)(request, timeout=30, metadata=metadata)

    def refused(self, rpc: str, request: object, key: str | None = None
                ) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            self.call(rpc, request, key)
        return caught.value.code(), caught.value.details()

    def key(self, tenant: str, name: str, *scopes: int, expires_s: int = 0) -> str:
        request = pb.CreateApiKeyRequest(tenant=tenant, name=name, scopes=scopes)
        if expires_s:
            request.expires_in.CopyFrom(Duration(seconds=expires_s))
        response = self.call("CreateApiKey", request, self.operator_key)
        return response.secret  # type: ignore[attr-defined]


def _bootstrap_key(database_url: str) -> str:
    done = subprocess.run([sys.executable, "-m", "model_registry", "bootstrap-key", "--tenant",
                           "ops"], env={**os.environ, "FLEET_REGISTRY_URL": database_url},
                          capture_output=True, text=True, timeout=120, check=True)
    assert "only time it is shown" in done.stderr and "(ops/bootstrap, scope operator)" \
        in done.stderr, done.stderr
    return done.stdout.strip()


@pytest.fixture
def registry(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Registry]:
    operator_key = _bootstrap_key(database_url)
    port_file = tmp_path / "registry.port"
    proc = spawn("registry", [sys.executable, "-m", "model_registry", "--port", "0",
                              "--port-file", str(port_file)], tmp_path,
                 {"FLEET_REGISTRY_URL": database_url, "FLEET_REDIS_URL": redis_url})
    try:
        wait_until(port_file.exists, 60, "registry port", proc)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            yield Registry(RegistryServiceStub(channel), operator_key)
    finally:
        proc.stop()


def _empty_request(rpc: str) -> object:
    return getattr(pb, SERVICE.methods_by_name[rpc].input_type.name)()


def test_every_call_needs_a_valid_key_and_every_write_the_operator_scope(
        registry: Registry) -> None:
    registry.call("CreateTenant", pb.CreateTenantRequest(name="acme"), registry.operator_key)
    reader = registry.key("acme", "gateways", INFERENCE)
    revoked = registry.key("acme", "old", INFERENCE, OPERATOR)
    registry.call("RevokeApiKey", pb.RevokeApiKeyRequest(key_id=revoked.split("_")[1]),
                  registry.operator_key)
    for method in SERVICE.methods:
        rpc = method.name
        code, details = registry.refused(rpc, _empty_request(rpc))
        assert code == grpc.StatusCode.UNAUTHENTICATED, (rpc, code, details)
        assert f"RegistryService.{rpc} needs an API key" in details
        assert "authorization: Bearer <key>" in details
        code, details = registry.refused(rpc, _empty_request(rpc), "clf_not_a_key")
        assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown API key" in details, rpc
        code, details = registry.refused(rpc, _empty_request(rpc), revoked)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "(acme/old) was revoked" in details
        if rpc in READS:
            continue
        code, details = registry.refused(rpc, _empty_request(rpc), reader)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, code, details)
        assert f"RegistryService.{rpc} needs scope 'operator'" in details
        assert "(acme/gateways) has scopes: inference" in details
    # Reads need any valid key: what gateways and workers poll with.
    snapshot = registry.call("GetServingSnapshot", pb.GetServingSnapshotRequest(), reader)
    assert list(snapshot.rollouts) == []  # type: ignore[attr-defined]
    auth = registry.call("GetAuthSnapshot", pb.GetAuthSnapshotRequest(), reader)
    assert auth.authentication_required  # type: ignore[attr-defined]
    assert sorted(f"{g.tenant}/{g.key_name}" for g in auth.grants) == [  # type: ignore
        "acme/gateways", "ops/bootstrap"]


def test_the_history_names_the_authenticated_key_not_the_declared_actor(
        registry: Registry, tiny_checkpoints: dict[str, Path]) -> None:
    registry.call("CreateTenant", pb.CreateTenantRequest(name="release"), registry.operator_key)
    bot = registry.key("release", "bot", OPERATOR)
    registry.call("RegisterCheckpoint", pb.RegisterCheckpointRequest(
        name="ck", directory=str(tiny_checkpoints["infill"]), actor="mallory"), bot)
    registry.call("CreateTemplateVersion", pb.CreateTemplateVersionRequest(
        name="t", infill=True, chat_format="llama2"), bot)  # no actor needed
    for version in ("v1", "v2"):
        registry.call("CreateModelVersion", pb.CreateModelVersionRequest(
            model="m", version=version, checkpoint="ck", template_name="t", pool="7b",
            engine=pb.EngineSettings(max_model_len=2048), actor="mallory"), bot)
    registry.call("StartCanary", pb.StartCanaryRequest(
        change=pb.RolloutChange(model="m", actor="mallory", reason="try v2"),
        candidate_version="v2", weight=10, force=True), bot)
    registry.call("Promote", pb.PromoteRequest(change=pb.RolloutChange(model="m")),
                  registry.operator_key)
    events = registry.call("ListRolloutEvents", pb.ListRolloutEventsRequest(model="m"),
                           bot).events  # type: ignore[attr-defined]
    assert [(e.action, e.actor) for e in events] == [
        ("create", "release/bot"), ("start_canary", "release/bot"),
        ("promote", "ops/bootstrap")]
    keys = registry.call("ListApiKeys", pb.ListApiKeysRequest(tenant="release"),
                         registry.operator_key).api_keys  # type: ignore[attr-defined]
    assert [(k.name, k.created_by) for k in keys] == [("bot", "ops/bootstrap")]


def test_tenant_and_key_calls_refuse_bad_input_with_the_field(registry: Registry) -> None:
    op = registry.operator_key
    registry.call("CreateTenant", pb.CreateTenantRequest(name="acme", display_name="ACME"), op)
    secret = registry.key("acme", "ci", INFERENCE)
    cases = [
        ("CreateTenant", pb.CreateTenantRequest(name="acme"), grpc.StatusCode.ALREADY_EXISTS,
         "tenant 'acme' already exists"),
        ("CreateTenant", pb.CreateTenantRequest(name="ACME!"), grpc.StatusCode.INVALID_ARGUMENT,
         "name: must match"),
        ("CreateApiKey", pb.CreateApiKeyRequest(tenant="ghost", name="ci", scopes=[INFERENCE]),
         grpc.StatusCode.NOT_FOUND, "tenant 'ghost' does not exist; tenants: acme, ops"),
        ("CreateApiKey", pb.CreateApiKeyRequest(tenant="acme", name="ci", scopes=[INFERENCE]),
         grpc.StatusCode.ALREADY_EXISTS, "already has a key named 'ci'"),
        ("CreateApiKey", pb.CreateApiKeyRequest(tenant="acme", name="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "scopes: at least one is required"),
        ("CreateApiKey", pb.CreateApiKeyRequest(tenant="acme", name="x", scopes=[0]),
         grpc.StatusCode.INVALID_ARGUMENT, "scopes: unknown scope 0; scopes: API_KEY_SCOPE_"),
        ("CreateApiKey", pb.CreateApiKeyRequest(tenant="acme", name="x", scopes=[INFERENCE],
                                                expires_in=Duration(seconds=-5)),
         grpc.StatusCode.INVALID_ARGUMENT, "expires_in: must be positive"),
        ("RevokeApiKey", pb.RevokeApiKeyRequest(key_id="ci"), grpc.StatusCode.INVALID_ARGUMENT,
         "key_id: must be 16 lower-case hex digits"),
        ("RevokeApiKey", pb.RevokeApiKeyRequest(key_id="0" * 16), grpc.StatusCode.NOT_FOUND,
         "no API key has id '0000000000000000'"),
        ("ListApiKeys", pb.ListApiKeysRequest(tenant="ghost"), grpc.StatusCode.NOT_FOUND,
         "tenant 'ghost' does not exist"),
    ]
    for rpc, request, code, needle in cases:
        got, details = registry.refused(rpc, request, op)
        assert got == code and needle in details, (rpc, got, details)
    listed = registry.call("ListApiKeys", pb.ListApiKeysRequest(), op)
    assert secret.split("_")[2] not in str(listed)  # listings carry no secret
    assert [(k.tenant, k.name) for k in listed.api_keys] == [  # type: ignore[attr-defined]
        ("acme", "ci"), ("ops", "bootstrap")]


def test_an_expired_key_is_refused(registry: Registry) -> None:
    registry.call("CreateTenant", pb.CreateTenantRequest(name="acme"), registry.operator_key)
    short = registry.key("acme", "trial", INFERENCE, expires_s=1)
    assert registry.call("ListCheckpoints", pb.ListCheckpointsRequest(), short) is not None
    time.sleep(1.2)
    code, details = registry.refused("ListCheckpoints", pb.ListCheckpointsRequest(), short)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "(acme/trial) expired at" in details


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_with_authentication_off_anyone_may_call_and_says_who_they_are(
        database_url: str, redis_url: str, tmp_path: Path) -> None:
    port_file = tmp_path / "registry.port"
    proc = spawn("registry-open", [sys.executable, "-m", "model_registry", "--port", "0",
                                   "--port-file", str(port_file), "--registry-auth", "off"],
                 tmp_path, {"FLEET_REGISTRY_URL": database_url, "FLEET_REDIS_URL": redis_url})
    try:
        wait_until(port_file.exists, 60, "registry port", proc)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            stub = RegistryServiceStub(channel)
            assert stub.CreateTenant(pb.CreateTenantRequest(name="acme"),
                                     timeout=30).tenant.created_by == "unauthenticated"
            created = stub.CreateApiKey(pb.CreateApiKeyRequest(
                tenant="acme", name="ci", scopes=[INFERENCE]), timeout=30,
                metadata=[("x-fleet-actor", "alice")])
            assert created.api_key.created_by == "alice"
            auth = stub.GetAuthSnapshot(pb.GetAuthSnapshotRequest(), timeout=30)
            assert auth.authentication_required and len(auth.grants) == 1
    finally:
        proc.stop()
