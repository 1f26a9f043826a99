"""A candidate without a live worker leaves its share of requests to the stable version: unit
tests of the choice, and the choice over the real Dispatcher's live-worker counts in Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from fleet_common.keys import live_workers
from gateway.dispatch import Dispatcher
from gateway.model_directory import ModelDirectory
from gateway.version_choice import VersionChoice
from model_registry.records import RolloutState, ServedModel, ServedRollout

LOGGER = "gateway.version_choice"


def _version(version: str) -> ServedModel:
    return ServedModel(model="m", version=version, pool="7b", checkpoint="ck",
                       checkpoint_dir="/nowhere", template="t@1", chat_format="llama2",
                       chat_template="", supports_infill=True, context_limit=2048,
                       tensor_parallel_size=1, dtype="auto")


STABLE, CANDIDATE = _version("v1"), _version("v2")


def _rollout(weight: int = 100, paused: bool = False) -> ServedRollout:
    state = RolloutState(model="m", stable_version="v1", candidate_version="v2",
                         candidate_weight=weight, paused=paused, revision=2,
                         updated_at=datetime.now(UTC))
    return ServedRollout(state=state, stable=STABLE, candidate=CANDIDATE)


class Workers:
    """Live-worker counts per queue, recording what was asked."""

    def __init__(self, **live: int) -> None:
        self.live = {_version(v).queue: n for v, n in live.items()}
        self.asked: list[str] = []

    async def live_worker_count(self, queue: str) -> int:
        self.asked.append(queue)
        return self.live.get(queue, 0)


class Snapshot:
    """A registry reader holding one rollout."""

    def __init__(self, rollout: ServedRollout) -> None:
        self._rollout = rollout

    def served_rollouts(self) -> list[ServedRollout]:
        return [self._rollout]


def _directory(rollout: ServedRollout) -> ModelDirectory:
    directory = ModelDirectory(Snapshot(rollout), refresh_s=3600)  # type: ignore[arg-type]
    directory.load()
    return directory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_picked_candidate_without_a_live_worker_is_served_by_stable() -> None:
    workers = Workers(v1=2, v2=0)
    served = await _directory(_rollout()).resolve_serving("m", "key", workers)
    assert served.version == "v1" and served.queue == STABLE.queue
    assert workers.asked == [CANDIDATE.queue, STABLE.queue]


async def test_with_neither_live_the_candidate_stays_so_its_submit_says_unavailable() -> None:
    served = await _directory(_rollout()).resolve_serving("m", "key", Workers(v1=0, v2=0))
    assert served.version == "v2"


async def test_a_live_candidate_is_served_and_stable_is_not_asked_about() -> None:
    workers = Workers(v1=0, v2=1)
    assert (await _directory(_rollout()).resolve_serving("m", "key", workers)).version == "v2"
    assert workers.asked == [CANDIDATE.queue]


@pytest.mark.parametrize("rollout", [_rollout(weight=0), _rollout(paused=True)])
async def test_a_stable_pick_asks_about_no_worker(rollout: ServedRollout) -> None:
    workers = Workers()
    assert (await _directory(rollout).resolve_serving("m", "key", workers)).version == "v1"
    assert workers.asked == []


async def test_a_dead_candidate_is_not_asked_about_again_until_the_window_passes() -> None:
    clock = Clock()
    choice = VersionChoice(dead_for_s=1.0, clock=clock)
    workers = Workers(v1=1, v2=0)
    for _ in range(5):
        assert (await choice.serving(_rollout(), CANDIDATE, workers)).version == "v1"
    assert workers.asked.count(CANDIDATE.queue) == 1
    workers.live[CANDIDATE.queue] = 1  # its worker starts
    clock.now += 1.5
    assert (await choice.serving(_rollout(), CANDIDATE, workers)).version == "v2"
    assert workers.asked.count(CANDIDATE.queue) == 2


async def test_fallbacks_are_logged_at_most_once_a_minute_with_their_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    choice = VersionChoice(dead_for_s=0.0, log_every_s=60.0, clock=clock)
    workers = Workers(v1=1, v2=0)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):
        await choice.serving(_rollout(), CANDIDATE, workers)
    clock.now += 61
    await choice.serving(_rollout(), CANDIDATE, workers)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    dead = f"m: candidate v2 has no live worker (queue {CANDIDATE.queue})"
    assert messages == [f"{dead}; 1 request(s) served by stable v1 instead",
                        f"{dead}; 3 request(s) in the last 61 s served by stable v1 instead"]


# Over the real Dispatcher and Redis ------------------------------------------------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


async def _zcounts(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_zcount", {}).get("calls", 0))


async def test_over_the_dispatcher_a_dead_candidate_falls_back_and_a_live_one_costs_no_read(
        redis: Redis) -> None:
    dispatcher = Dispatcher(redis, worker_liveness_s=5.0)
    choice = VersionChoice(dead_for_s=0.0)
    try:
        await redis.zadd(live_workers(STABLE.queue), {"w-v1": time.time()})
        await redis.zadd(live_workers(CANDIDATE.queue), {"w-v2": time.time() - 60})  # dead
        assert (await choice.serving(_rollout(), CANDIDATE, dispatcher)).version == "v1"

        await redis.zadd(live_workers(CANDIDATE.queue), {"w-v2": time.time()})
        await redis.config_resetstat()
        assert (await choice.serving(_rollout(), CANDIDATE, dispatcher)).version == "v2"
        await dispatcher.live_worker_count(CANDIDATE.queue)  # what the request's submit asks
        assert await _zcounts(redis) == 1
    finally:
        await dispatcher.aclose()
