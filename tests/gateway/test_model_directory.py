"""The gateway's ModelDirectory over a real RegistryService: rollout changes and API keys (created
or revoked) arrive within the refresh interval, an outage keeps the last good snapshot, start-up
waits a bounded time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from codellama.fleet.v1 import registry_service_pb2 as pb
from codellama.fleet.v1.registry_service_pb2_grpc import RegistryServiceStub
from fleet_cli.processes import free_port
from fleet_common.errors import FleetError, Unauthenticated
from gateway.auth import Authenticator
from gateway.key_ring import KeyRing
from gateway.model_directory import ModelDirectory
from gateway.tenant_policies import TenantPolicies
from model_registry.api_keys import INFERENCE, OPERATOR
from model_registry.database import migrate, open_engine
from model_registry.reader import RegistryUnavailable
from model_registry.records import TenantPolicy
from model_registry.registration import register_model
from model_registry.remote import GrpcRegistryReader
from model_registry.rollouts import Change, RolloutStore
from model_registry.store import RegistryStore
from model_registry.tenants import TenantStore
from tests.support.registry_service import InProcessRegistry

LOGGER = "gateway.model_directory"


@pytest.fixture
def registry_url(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> Iterator[str]:
    """A SQLite registry with model "m": v1 stable, v2 registered but taking no traffic."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = open_engine(url)
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    for version in ("v1", "v2"):
        register_model(store, model="m", version=version, checkpoint_dir=tiny_checkpoints["infill"],
                       variant="codellama-7b-instruct", context_limit=2048)
    yield url
    engine.dispose()


def _canary_everything(registry_url: str) -> None:
    """What an operator does: v2 gets every request."""
    engine = open_engine(registry_url)
    RolloutStore(RegistryStore(engine)).start_canary(Change("m", "ops", "all in"), "v2", 100)
    engine.dispose()


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def test_a_canary_reaches_the_directory_within_the_refresh_interval(
        registry_url: str, tmp_path: Path) -> None:
    with InProcessRegistry(registry_url, tmp_path).start() as registry:
        reader = GrpcRegistryReader.from_url(registry.url, timeout_s=2)
        models = ModelDirectory(reader, refresh_s=0.3)
        await models.load_at_start(wait_s=10)
        assert models.resolve("m", "any-key").version == "v1"
        refresher = asyncio.create_task(models.keep_fresh())
        try:
            await asyncio.to_thread(_canary_everything, registry_url)
            changed = time.monotonic()
            while models.resolve("m", "any-key").version != "v2":
                assert time.monotonic() - changed < 2.0, "the canary did not arrive"
                await asyncio.sleep(0.02)
        finally:
            refresher.cancel()
            reader.close()


async def test_an_outage_keeps_the_last_good_snapshot_and_is_logged_once(
        registry_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    registry = InProcessRegistry(registry_url, tmp_path).start()
    reader = GrpcRegistryReader.from_url(registry.url, timeout_s=2)
    models = ModelDirectory(reader, refresh_s=0.1)
    try:
        await models.load_at_start(wait_s=10)
        before = models.all()
        registry.stop()
        for _ in range(5):
            assert await models.refresh() is False
            assert models.registry_outage
            assert models.all() == before and models.resolve("m").version == "v1"
        [warning] = _messages(caplog, logging.WARNING)
        assert "serving the last good snapshot (1 models)" in warning and "UNAVAILABLE" in warning

        await asyncio.to_thread(_canary_everything, registry_url)
        assert models.resolve("m", "any-key").version == "v1"
        registry.start(port=registry.port)
        back = time.monotonic()
        while not await models.refresh():
            assert time.monotonic() - back < 15, "the directory did not reconnect"
            await asyncio.sleep(0.1)
        assert not models.registry_outage
        assert models.resolve("m", "any-key").version == "v2"
        assert await models.refresh() is True
        assert len(_messages(caplog, logging.WARNING)) == 1
        [recovered] = _messages(caplog, logging.INFO)
        assert "registry answers again" in recovered
    finally:
        reader.close()
        registry.stop()


async def test_start_up_without_a_registry_fails_clearly_after_the_wait() -> None:
    reader = GrpcRegistryReader.from_url(f"grpc://127.0.0.1:{free_port()}", timeout_s=2)
    models = ModelDirectory(reader, refresh_s=0.5)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"no registry snapshot after 1.5 s \(\d+ "
                                                  r"attempts\).*cannot route.*UNAVAILABLE"):
        await models.load_at_start(wait_s=1.5)
    assert 1.5 <= time.monotonic() - started < 6
    assert models.all() == []
    reader.close()


async def test_start_up_waits_for_a_registry_that_comes_up(registry_url: str,
                                                           tmp_path: Path) -> None:
    port = free_port()
    reader = GrpcRegistryReader.from_url(f"grpc://127.0.0.1:{port}", timeout_s=2)
    models = ModelDirectory(reader, refresh_s=0.5)
    loading = asyncio.create_task(models.load_at_start(wait_s=20))
    await asyncio.sleep(1.5)
    assert not loading.done()
    with InProcessRegistry(registry_url, tmp_path).start(port=port):
        await asyncio.wait_for(loading, 15)
        assert [m.model for m in models.all()] == ["m"]
    reader.close()


def _keys(registry_url: str) -> tuple[str, str]:
    """An operator key and the gateways' own `inference` key, straight in the database."""
    engine = open_engine(registry_url)
    tenants = TenantStore(RegistryStore(engine))
    tenants.create_tenant("ops")
    tenants.create_tenant("fleet")
    _, operator = tenants.create_key("ops", "admin", [OPERATOR])
    _, gateways = tenants.create_key("fleet", "gateways", [INFERENCE])
    engine.dispose()
    return operator, gateways


def _tenant_at(auth: Authenticator, key: str) -> str:
    """The tenant `auth` authenticates `key` as, or the name of the error it refuses it with."""
    context = _Metadata((("authorization", f"Bearer {key}"),))
    try:
        return auth.tenant_of(context)  # type: ignore[arg-type]
    except FleetError as exc:
        return type(exc).__name__


class _Metadata:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


async def test_a_key_created_and_revoked_in_the_registry_reaches_two_gateways_in_seconds(
        registry_url: str, tmp_path: Path) -> None:
    operator, gateway_key = _keys(registry_url)
    with InProcessRegistry(registry_url, tmp_path, auth="required").start() as registry:
        readers = [GrpcRegistryReader.from_url(registry.url, timeout_s=2, api_key=gateway_key)
                   for _ in range(2)]
        rings = [KeyRing() for _ in readers]
        directories = [ModelDirectory(r, refresh_s=0.3, keys=k) for r, k in zip(readers, rings)]
        gateways = [Authenticator({}, ring) for ring in rings]
        for directory in directories:
            await directory.load_at_start(wait_s=10)
        refreshers = [asyncio.create_task(d.keep_fresh()) for d in directories]
        channel = grpc.insecure_channel(registry.url.removeprefix("grpc://"))
        stub, as_operator = RegistryServiceStub(channel), [("authorization", f"Bearer {operator}")]

        async def call(rpc: str, request: object) -> object:
            return await asyncio.to_thread(getattr(stub, rpc), request, timeout=10,
                                           metadata=as_operator)

        async def every_gateway_says(key: str, expected: str, within_s: float) -> float:
            started = time.monotonic()
            while any(_tenant_at(g, key) != expected for g in gateways):
                assert time.monotonic() - started < within_s, [_tenant_at(g, key)
                                                               for g in gateways]
                await asyncio.sleep(0.02)
            return time.monotonic() - started

        try:
            await call("CreateTenant", pb.CreateTenantRequest(name="acme"))
            created = await call("CreateApiKey", pb.CreateApiKeyRequest(
                tenant="acme", name="app", scopes=[pb.API_KEY_SCOPE_INFERENCE]))
            key = created.secret  # type: ignore[attr-defined]
            assert await every_gateway_says(key, "acme", within_s=2.0) < 2.0
            await call("RevokeApiKey", pb.RevokeApiKeyRequest(
                key_id=created.api_key.key_id))  # type: ignore[attr-defined]
            assert await every_gateway_says(key, "Unauthenticated", within_s=2.0) < 2.0
            assert all(_tenant_at(g, gateway_key) == "fleet" for g in gateways)
        finally:
            for task in refreshers:
                task.cancel()
            channel.close()
            for reader in readers:
                reader.close()


async def test_a_registry_outage_keeps_the_last_good_keys_and_policies(
        registry_url: str, tmp_path: Path) -> None:
    _, gateway_key = _keys(registry_url)
    engine = open_engine(registry_url)
    TenantStore(RegistryStore(engine)).update_policy("fleet", {"max_concurrent": 3,
                                                               "max_priority": "low"})
    engine.dispose()
    registry = InProcessRegistry(registry_url, tmp_path, auth="required").start()
    reader = GrpcRegistryReader.from_url(registry.url, timeout_s=2, api_key=gateway_key)
    ring, policies = KeyRing(), TenantPolicies()
    models = ModelDirectory(reader, refresh_s=0.1, keys=ring, policies=policies)
    try:
        await models.load_at_start(wait_s=10)
        fleet = TenantPolicy("fleet", max_concurrent=3, max_priority="low")
        assert policies.of("fleet") == fleet
        assert policies.of("static") == TenantPolicy("static")  # unknown: the defaults
        registry.stop()
        assert await models.refresh() is False
        assert _tenant_at(Authenticator({}, ring), gateway_key) == "fleet"
        assert policies.of("fleet") == fleet
    finally:
        reader.close()
        registry.stop()


async def test_a_gateway_whose_registry_key_is_refused_fails_at_once(
        registry_url: str, tmp_path: Path) -> None:
    _keys(registry_url)
    with InProcessRegistry(registry_url, tmp_path, auth="required").start() as registry:
        reader = GrpcRegistryReader.from_url(registry.url, timeout_s=2, api_key="clf_wrong")
        models = ModelDirectory(reader, refresh_s=0.5, keys=KeyRing())
        started = time.monotonic()
        with pytest.raises(Unauthenticated, match=r"registry 127.0.0.1:\d+: unknown API key.*"
                                                  r"\(FLEET_REGISTRY_API_KEY\)"):
            await models.load_at_start(wait_s=30)
        assert time.monotonic() - started < 5  # no retrying a key that cannot work
        reader.close()
