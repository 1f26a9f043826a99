"""Rollouts through the real gateway and workers: canary split, stickiness, rollback, and a
worker that refuses a corrupted checkpoint."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest
import redis

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_cli.processes import start_gateway
from fleet_common.keys import live_workers
from model_registry.rollouts import Change, RolloutStore
from tests.e2e.conftest import CANARY, CONTEXT_LIMIT
from tests.e2e.fleet_harness import Fleet

pytestmark = pytest.mark.e2e
GATEWAY_SEES_CHANGE_S = 1.5  # the test gateway refreshes every 0.5 s


def _preview_version(fleet: Fleet, key: str) -> str:
    return fleet.stub().PreviewPrompt(api.PreviewPromptRequest(
        model=CANARY, prompt="def f():", options=pb.RequestOptions(routing_key=key)),
        timeout=10).model_version


def test_canary_split_stickiness_and_rollback_through_the_fleet(fleet: Fleet) -> None:
    rollouts = RolloutStore(fleet.store)
    rollouts.start_canary(Change(CANARY, "alice", "e2e canary"), "v2", 10)
    time.sleep(GATEWAY_SEES_CHANGE_S)

    versions = [_preview_version(fleet, f"user-{i}") for i in range(2000)]
    share = versions.count("v2") / 2000
    assert 0.073 <= share <= 0.127, f"candidate share {share:.3f} at weight 10"
    assert {_preview_version(fleet, "user-7") for _ in range(20)} == {versions[7]}

    rollouts.set_weight(Change(CANARY, "alice", "widen"), 50)
    time.sleep(GATEWAY_SEES_CHANGE_S)
    stub = fleet.stub()
    seen = set()
    for i in range(12):
        key = f"gen-{i}"
        expected = _preview_version(fleet, key)
        response = stub.Complete(api.CompleteRequest(
            model=CANARY, prompt="def f():", options=pb.RequestOptions(routing_key=key),
            sampling=pb.SamplingParams(max_tokens=4, temperature=0.0)), timeout=60)
        assert response.served_by.model_version == expected
        assert response.served_by.worker == f"w-canary-{expected}"
        seen.add(expected)
    assert seen == {"v1", "v2"}
    _tenant_is_the_sticky_key_without_a_routing_key(fleet)

    rollouts.rollback(Change(CANARY, "bob", "candidate misbehaves"))
    time.sleep(GATEWAY_SEES_CHANGE_S)
    assert {_preview_version(fleet, f"user-{i}") for i in range(300)} == {"v1"}
    for i in range(6):
        response = stub.Complete(api.CompleteRequest(
            model=CANARY, prompt="x", options=pb.RequestOptions(routing_key=f"user-{i}"),
            sampling=pb.SamplingParams(max_tokens=2)), timeout=60)
        assert response.served_by.worker == "w-canary-v1"
    assert [e.action for e in rollouts.events(CANARY)] == [
        "create", "start_canary", "set_weight", "rollback"]


def _tenant_is_the_sticky_key_without_a_routing_key(fleet: Fleet) -> None:
    """With API keys on, a caller's tenant picks its version as a routing key would."""
    tenants = {f"key-{i}": f"team-{i}" for i in range(16)}
    env = {"FLEET_REGISTRY_URL": fleet.registry_url, "FLEET_REDIS_URL": fleet.redis_url,
           "FLEET_API_KEYS": json.dumps(tenants), "FLEET_REGISTRY_REFRESH_S": "0.5"}
    gateway, port = start_gateway(env, fleet.log_dir)
    try:
        stub = InferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        def version(key: str, routing_key: str = "") -> str:
            return stub.PreviewPrompt(api.PreviewPromptRequest(
                model=CANARY, prompt="def f():", options=pb.RequestOptions(
                    routing_key=routing_key)), timeout=10,
                metadata=(("authorization", f"Bearer {key}"),)).model_version

        by_tenant = {tenant: version(key) for key, tenant in tenants.items()}
        assert set(by_tenant.values()) == {"v1", "v2"}, by_tenant  # at weight 50
        for key, tenant in tenants.items():
            assert version(key) == by_tenant[tenant] == _preview_version(fleet, tenant)
        # An explicit routing key still wins over the tenant.
        other = next(t for t, v in by_tenant.items() if v != by_tenant["team-0"])
        assert version("key-0", routing_key=other) == by_tenant[other]
    finally:
        gateway.stop()


def test_worker_refuses_a_corrupted_checkpoint_and_never_becomes_ready(
        fleet: Fleet, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "corrupt"
    shutil.copytree(tiny_checkpoints["infill"], copy)
    served = fleet.register("tiny-corrupt", copy, variant="codellama-7b",
                            context_limit=CONTEXT_LIMIT)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[4096] ^= 0x01  # one bit, same size: only the checksum can tell
    weights.write_bytes(bytes(data))

    worker = fleet.spawn_worker("w-corrupt", "tiny-corrupt")
    worker.process.wait(timeout=120)
    assert worker.process.returncode == 3
    log = worker.log_path.read_text()
    assert "model.safetensors" in log and "sha256" in log and "will not load it" in log
    assert "engine ready" not in log
    client = redis.Redis.from_url(fleet.redis_url)
    assert client.zscore(live_workers(served.queue), "w-corrupt") is None


def test_worker_refuses_a_checkpoint_without_checksums(
        fleet: Fleet, tiny_checkpoints: dict[str, Path]) -> None:
    """As left by the migration from the first schema: a checkpoint row with no file rows."""
    from sqlalchemy import delete, select

    from model_registry.schema import Checkpoint, CheckpointFileRow

    served = fleet.register("tiny-unrecorded", tiny_checkpoints["infill"],
                            variant="codellama-7b", context_limit=CONTEXT_LIMIT)
    with fleet.store.transaction() as session:
        checkpoint_id = session.scalar(select(Checkpoint.id).where(
            Checkpoint.name == served.checkpoint))
        session.execute(delete(CheckpointFileRow).where(
            CheckpointFileRow.checkpoint_id == checkpoint_id))

    refused = fleet.spawn_worker("w-unrecorded", "tiny-unrecorded")
    assert refused.process.wait(timeout=120) == 3
    assert "no file sizes or sha256" in refused.log_tail(), refused.log_tail()
    assert not redis.Redis.from_url(fleet.redis_url).zscore(live_workers(served.queue),
                                                            "w-unrecorded")
