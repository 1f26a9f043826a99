"""A fleet of its own for the failure tests: one model, two workers the tests may kill, and a
gateway with two tenants. Its own package, so its engines start after the main end-to-end
fleet's have stopped."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.fleet_harness import Fleet, new_fleet
from tests.support.redis_server import RedisServer, redis_server, throwaway_redis

MODEL = "tiny-7b-failures"
WORKERS = ("wf-1", "wf-2")
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}


@pytest.fixture(scope="package")
def failures_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    """The fleet's own redis-server, which a test may kill and start again on its port; None
    where the tests use FLEET_TEST_REDIS_URL (no redis-server installed)."""
    if shutil.which("redis-server") is None:
        yield None
        return
    with redis_server(tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="package")
def failures_redis_url(tmp_path_factory: pytest.TempPathFactory,
                       failures_redis: RedisServer | None) -> Iterator[str]:
    if failures_redis is not None:
        yield failures_redis.url
        return
    with throwaway_redis(tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory, failures_redis_url: str,
          tiny_checkpoints: dict[str, Path]) -> Iterator[Fleet]:
    fleet = new_fleet(tmp_path_factory.mktemp("failures"), failures_redis_url)
    fleet.register(MODEL, tiny_checkpoints["infill"], variant="codellama-7b-instruct",
                   context_limit=2048)
    try:
        for name in WORKERS:
            fleet.spawn_worker(name, MODEL)
        for name in WORKERS:
            fleet.wait_for_worker(name, MODEL)
        fleet.start_gateway({"FLEET_API_KEYS": json.dumps(KEYS)})
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(autouse=True)
def redis_running_after_each_test(failures_redis: RedisServer | None) -> Iterator[None]:
    """A test that kills the fleet's Redis and fails before starting it again must fail
    alone, not every test after it (CI of 2026-12-03 11:26: nine tests refused for a Redis
    left down)."""
    yield
    if failures_redis is not None and (failures_redis.process is None
                                       or not failures_redis.process.alive()):
        failures_redis.start()


def ensure_workers(fleet: Fleet) -> None:
    """Restarts any of the two workers a test killed, so each test starts with both."""
    dead = [name for name in WORKERS if not fleet.workers[name].alive()]
    for name in dead:
        fleet.workers[name].stop()
        fleet.spawn_worker(name, MODEL)
    for name in dead:
        fleet.wait_for_worker(name, MODEL)
