"""RegistryService over real gRPC, on SQLite and PostgreSQL: statuses, races, checksums, and
canaries refused while their version has no live worker (heartbeats in a real Redis)."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import redis

from codellama.fleet.v1 import registry_service_pb2 as pb
from codellama.fleet.v1.registry_service_pb2_grpc import RegistryServiceStub
from fleet_cli.processes import free_port, spawn, wait_until
from fleet_common.keys import live_workers
from model_registry.rollouts import FORCED_MARK

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@contextmanager
def _registry(database_url: str, redis_url: str, tmp_path: Path
              ) -> Iterator[RegistryServiceStub]:
    port_file = tmp_path / "registry.port"
    proc = spawn("registry", [sys.executable, "-m", "model_registry", "--port", "0",
                              "--port-file", str(port_file)], tmp_path,
                 {"FLEET_REGISTRY_URL": database_url, "FLEET_REDIS_URL": redis_url,
                  "FLEET_REGISTRY_AUTH": "off"})  # authentication: test_registry_auth.py
    try:
        wait_until(port_file.exists, 60, "registry port", proc)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            yield RegistryServiceStub(channel)
    finally:
        proc.stop()


@pytest.fixture
def heartbeats(redis_url: str) -> Iterator[redis.Redis]:
    """The Redis the registry reads workers' heartbeats from, emptied for each test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def registry(database_url: str, redis_url: str, heartbeats: redis.Redis,
             tmp_path: Path) -> Iterator[RegistryServiceStub]:
    with _registry(database_url, redis_url, tmp_path) as stub:
        yield stub


def _worker_of(heartbeats: redis.Redis, queue: str, age_s: float = 0.0) -> None:
    """A worker's heartbeat on `queue`, `age_s` old (negative: it stays fresh that long)."""
    heartbeats.zadd(live_workers(queue), {f"worker-of-{queue}": time.time() - age_s})


def _code(call, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value.code(), caught.value.details()


def _setup(stub: RegistryServiceStub, checkpoint: Path) -> None:
    stub.RegisterCheckpoint(pb.RegisterCheckpointRequest(name="ck", directory=str(checkpoint),
                                                         actor="ops"), timeout=60)
    stub.CreateTemplateVersion(pb.CreateTemplateVersionRequest(
        name="cl-instruct", infill=True, chat_format="llama2", actor="ops"), timeout=30)
    for version in ("v1", "v2"):
        stub.CreateModelVersion(pb.CreateModelVersionRequest(
            model="m", version=version, checkpoint="ck", template_name="cl-instruct", pool="7b",
            engine=pb.EngineSettings(max_model_len=2048), actor="ops"), timeout=30)


def test_operator_workflow_and_history(registry: RegistryServiceStub, heartbeats: redis.Redis,
                                       tiny_checkpoints: dict[str, Path]) -> None:
    _setup(registry, tiny_checkpoints["infill"])
    _worker_of(heartbeats, "fleet.7b.m.v2")
    checkpoint = registry.GetCheckpoint(pb.GetCheckpointRequest(name="ck"), timeout=10).checkpoint
    assert len(checkpoint.files) >= 5 and all(len(f.sha256) == 64 for f in checkpoint.files)
    versions = registry.ListModelVersions(pb.ListModelVersionsRequest(model="m"),
                                          timeout=10).model_versions
    assert [(v.version, v.queue, v.engine.tensor_parallel_size) for v in versions] == [
        ("v1", "fleet.7b.m.v1", 1), ("v2", "fleet.7b.m.v2", 1)]
    change = pb.RolloutChange(model="m", actor="alice", reason="canary v2")
    rollout = registry.StartCanary(pb.StartCanaryRequest(change=change, candidate_version="v2",
                                                         weight=10), timeout=60).rollout
    assert (rollout.candidate_version, rollout.candidate_weight, rollout.revision) == ("v2", 10, 2)
    registry.Promote(pb.PromoteRequest(change=pb.RolloutChange(model="m", actor="bob",
                                                               reason="healthy")), timeout=10)
    events = registry.ListRolloutEvents(pb.ListRolloutEventsRequest(model="m"), timeout=10).events
    assert [(e.action, e.actor, e.reason) for e in events] == [
        ("create", "ops", "first version"), ("start_canary", "alice", "canary v2"),
        ("promote", "bob", "healthy")]
    assert registry.GetRollout(pb.GetRolloutRequest(model="m"),
                               timeout=10).rollout.stable_version == "v2"


def test_bad_input_gets_a_clear_status_and_writes_nothing(
        registry: RegistryServiceStub, tiny_checkpoints: dict[str, Path]) -> None:
    _setup(registry, tiny_checkpoints["infill"])
    change = pb.RolloutChange(model="m", actor="alice")
    cases = [
        (registry.CreateModelVersion, pb.CreateModelVersionRequest(
            model="m", version="v3", checkpoint="nope", template_name="cl-instruct", pool="7b",
            actor="a"), grpc.StatusCode.NOT_FOUND, "checkpoint 'nope'"),
        (registry.CreateModelVersion, pb.CreateModelVersionRequest(
            model="m", version="v1", checkpoint="ck", template_name="cl-instruct", pool="7b",
            actor="a"), grpc.StatusCode.ALREADY_EXISTS, "already has a version 'v1'"),
        (registry.StartCanary, pb.StartCanaryRequest(change=change, candidate_version="v2",
                                                     weight=101),
         grpc.StatusCode.INVALID_ARGUMENT, "weight: must be between 0 and 100, got 101"),
        (registry.Promote, pb.PromoteRequest(change=change), grpc.StatusCode.FAILED_PRECONDITION,
         "no candidate"),
        (registry.Promote, pb.PromoteRequest(change=pb.RolloutChange(model="m")),
         grpc.StatusCode.INVALID_ARGUMENT, "actor"),
        (registry.RegisterCheckpoint, pb.RegisterCheckpointRequest(
            name="ck", directory=str(tiny_checkpoints["infill"]), actor="a"),
         grpc.StatusCode.ALREADY_EXISTS, "already registered"),
        (registry.RegisterCheckpoint, pb.RegisterCheckpointRequest(
            name="hub", hf_repo_id="not a repo", actor="a"),
         grpc.StatusCode.INVALID_ARGUMENT, "hf_repo_id"),
        (registry.GetRollout, pb.GetRolloutRequest(model="ghost"), grpc.StatusCode.NOT_FOUND,
         "ghost"),
    ]
    for call, request, code, needle in cases:
        got, details = _code(call, request)
        assert got == code and needle in details, (got, details)
    assert registry.GetRollout(pb.GetRolloutRequest(model="m"), timeout=10).rollout.revision == 1
    assert len(registry.ListModelVersions(pb.ListModelVersionsRequest(model="m"),
                                          timeout=10).model_versions) == 2


def test_canary_on_a_checkpoint_whose_checksum_no_longer_matches_is_refused(
        registry: RegistryServiceStub, tiny_checkpoints: dict[str, Path],
        tmp_path: Path) -> None:
    copy = tmp_path / "ck-copy"
    shutil.copytree(tiny_checkpoints["infill"], copy)
    registry.RegisterCheckpoint(pb.RegisterCheckpointRequest(name="ck2", directory=str(copy),
                                                             actor="ops"), timeout=60)
    _setup(registry, tiny_checkpoints["infill"])
    registry.CreateModelVersion(pb.CreateModelVersionRequest(
        model="m", version="v3", checkpoint="ck2", template_name="cl-instruct", pool="7b",
        engine=pb.EngineSettings(max_model_len=2048), actor="ops"), timeout=30)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, details = _code(registry.StartCanary, pb.StartCanaryRequest(
        change=pb.RolloutChange(model="m", actor="alice"), candidate_version="v3", weight=5,
        force=True))  # force skips the live-worker check, never the checksums
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.safetensors" in details and "sha256" in details
    assert registry.GetRollout(pb.GetRolloutRequest(model="m"),
                               timeout=10).rollout.candidate_version == ""


def test_two_operators_racing_over_grpc(registry: RegistryServiceStub, heartbeats: redis.Redis,
                                        tiny_checkpoints: dict[str, Path]) -> None:
    _setup(registry, tiny_checkpoints["infill"])
    _worker_of(heartbeats, "fleet.7b.m.v2", age_s=-60)
    start = registry.StartCanary(pb.StartCanaryRequest(
        change=pb.RolloutChange(model="m", actor="alice"), candidate_version="v2", weight=10),
        timeout=60).rollout
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def operator(name: str, weight: int) -> None:
        barrier.wait()
        try:
            results[name] = registry.SetCanaryWeight(pb.SetCanaryWeightRequest(
                change=pb.RolloutChange(model="m", actor=name, reason="race",
                                        expected_revision=start.revision), weight=weight),
                timeout=30).rollout
        except grpc.RpcError as err:
            results[name] = err

    threads = [threading.Thread(target=operator, args=a) for a in (("dave", 30), ("erin", 70))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results.values() if isinstance(r, grpc.RpcError)]
    assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.ABORTED
    assert "changed concurrently" in errors[0].details()
    winner = next(n for n, r in results.items() if not isinstance(r, grpc.RpcError))
    events = registry.ListRolloutEvents(pb.ListRolloutEventsRequest(model="m"), timeout=10).events
    assert [(e.action, e.actor) for e in events][-1] == ("set_weight", winner)
    assert len(events) == 3


@SQLITE_ONLY
def test_a_canary_no_live_worker_serves_is_refused_unless_forced(
        registry: RegistryServiceStub, heartbeats: redis.Redis,
        tiny_checkpoints: dict[str, Path]) -> None:
    _setup(registry, tiny_checkpoints["infill"])
    _worker_of(heartbeats, "fleet.7b.m.v2", age_s=60)  # it stopped a minute ago
    _worker_of(heartbeats, "fleet.7b.m.v1")
    change = pb.RolloutChange(model="m", actor="alice", reason="v2 warm-up")
    code, details = _code(registry.StartCanary, pb.StartCanaryRequest(
        change=change, candidate_version="v2", weight=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "m@v2 (queue fleet.7b.m.v2)" in details and "force" in details, details
    assert registry.GetRollout(pb.GetRolloutRequest(model="m"), timeout=10).rollout.revision == 1

    rollout = registry.StartCanary(pb.StartCanaryRequest(
        change=change, candidate_version="v2", weight=10, force=True), timeout=60).rollout
    assert (rollout.candidate_version, rollout.candidate_weight) == ("v2", 10)
    code, details = _code(registry.SetCanaryWeight, pb.SetCanaryWeightRequest(
        change=change, weight=50))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "fleet.7b.m.v2" in details, details
    registry.SetCanaryWeight(pb.SetCanaryWeightRequest(change=change, weight=0), timeout=30)
    _worker_of(heartbeats, "fleet.7b.m.v2")  # it is back
    registry.SetCanaryWeight(pb.SetCanaryWeightRequest(change=change, weight=50), timeout=30)
    events = registry.ListRolloutEvents(pb.ListRolloutEventsRequest(model="m"), timeout=10).events
    assert [(e.action, e.candidate_weight, e.reason) for e in events[1:]] == [
        ("start_canary", 10, f"{FORCED_MARK} v2 warm-up"), ("set_weight", 0, "v2 warm-up"),
        ("set_weight", 50, "v2 warm-up")]


@SQLITE_ONLY
def test_redis_down_while_checking_for_workers_is_unavailable_unless_forced(
        database_url: str, tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    with _registry(database_url, f"redis://127.0.0.1:{free_port()}/0", tmp_path) as registry:
        _setup(registry, tiny_checkpoints["infill"])
        change = pb.RolloutChange(model="m", actor="alice")
        code, details = _code(registry.StartCanary, pb.StartCanaryRequest(
            change=change, candidate_version="v2", weight=10))
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert "m@v2 (queue fleet.7b.m.v2)" in details and "Redis" in details, details
        rollout = registry.StartCanary(pb.StartCanaryRequest(
            change=change, candidate_version="v2", weight=10, force=True), timeout=60).rollout
        assert rollout.candidate_weight == 10
