"""Rollouts on both databases: canary weights, stickiness, promote, rollback, races, history,
and the live-worker check against a real Redis."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine, event, make_url

from fleet_cli.processes import free_port
from fleet_common.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    OutOfBounds,
    Unavailable,
)
from fleet_common.keys import live_workers
from model_registry.database import open_engine
from model_registry.registration import register_model
from model_registry.rollouts import FORCED_MARK, Change, RolloutStore
from model_registry.routing import pick_version
from model_registry.store import RegistryStore
from model_registry.worker_liveness import WorkerLiveness
from tests.model_registry.conftest import POSTGRES_ADMIN_URL


@pytest.fixture
def rollouts(store: RegistryStore, tiny_checkpoints: dict[str, Path]) -> RolloutStore:
    for version in ("v1", "v2"):
        register_model(store, model="m", version=version,
                       checkpoint_dir=tiny_checkpoints["infill"],
                       variant="codellama-7b-instruct", context_limit=2048)
    return RolloutStore(store)


def _served(store: RegistryStore):  # type: ignore[no-untyped-def]
    [rollout] = store.served_rollouts()
    return rollout


def test_canary_at_10_percent_gets_10_percent_of_2000_requests(
        store: RegistryStore, rollouts: RolloutStore) -> None:
    rollouts.start_canary(Change("m", "alice", "try v2"), "v2", 10)
    served = _served(store)
    picks = [pick_version(served, f"key-{i}").version for i in range(2000)]
    share = picks.count("v2") / 2000
    # binomial sd at p=0.1, n=2000 is 0.0067; 4 sd either side
    assert 0.073 <= share <= 0.127, share
    unkeyed = [pick_version(served, None).version for _ in range(2000)]
    assert 0.073 <= unkeyed.count("v2") / 2000 <= 0.127


def test_sticky_keys_keep_their_version_and_grow_with_the_weight(
        store: RegistryStore, rollouts: RolloutStore) -> None:
    rollouts.start_canary(Change("m", "alice"), "v2", 20)
    at_20 = {k: pick_version(_served(store), k).version for k in map(str, range(500))}
    assert all(pick_version(_served(store), k).version == v for k, v in at_20.items())
    rollouts.set_weight(Change("m", "alice"), 50)
    at_50 = {k: pick_version(_served(store), k).version for k in at_20}
    assert all(at_50[k] == "v2" for k, v in at_20.items() if v == "v2")


def test_rollback_sends_every_new_request_to_stable(store: RegistryStore,
                                                    rollouts: RolloutStore) -> None:
    rollouts.start_canary(Change("m", "alice"), "v2", 90)
    state = rollouts.rollback(Change("m", "bob", "error rate up"))
    assert state.candidate_version is None and state.candidate_weight == 0
    assert {pick_version(_served(store), str(k)).version for k in range(500)} == {"v1"}


def test_pause_stops_candidate_traffic_and_resume_restores_it(store: RegistryStore,
                                                              rollouts: RolloutStore) -> None:
    rollouts.start_canary(Change("m", "alice"), "v2", 100)
    rollouts.pause(Change("m", "alice"), True)
    assert pick_version(_served(store), "k").version == "v1"
    with pytest.raises(FailedPrecondition, match="already paused"):
        rollouts.pause(Change("m", "alice"), True)
    rollouts.pause(Change("m", "alice"), False)
    assert pick_version(_served(store), "k").version == "v2"


def test_promote_makes_the_candidate_stable_and_history_says_who_when_what_why(
        store: RegistryStore, rollouts: RolloutStore) -> None:
    rollouts.start_canary(Change("m", "alice", "new checkpoint"), "v2", 10)
    rollouts.set_weight(Change("m", "bob", "looks good"), 50)
    rollouts.promote(Change("m", "carol", "ship it"))
    assert store.get_version("m").version == "v2"
    events = rollouts.events("m")
    assert [(e.revision, e.action, e.actor, e.reason) for e in events] == [
        (1, "create", "operator", "first version"),
        (2, "start_canary", "alice", "new checkpoint"),
        (3, "set_weight", "bob", "looks good"),
        (4, "promote", "carol", "ship it"),
    ]
    assert (events[-1].stable_version, events[-1].candidate_version) == ("v2", None)
    assert all(e.at.tzinfo is not None for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)


@pytest.mark.parametrize(("call", "error", "needle"), [
    (lambda r: r.promote(Change("m", "a")), FailedPrecondition, "no candidate"),
    (lambda r: r.rollback(Change("m", "a")), FailedPrecondition, "no candidate"),
    (lambda r: r.set_weight(Change("m", "a"), 5), FailedPrecondition, "no candidate"),
    (lambda r: r.start_canary(Change("m", "a"), "v2", 101), OutOfBounds, "weight"),
    (lambda r: r.start_canary(Change("m", "a"), "v9", 5), Exception, "no version 'v9'"),
    (lambda r: r.start_canary(Change("m", "a"), "v1", 5), FailedPrecondition, "already"),
    (lambda r: r.start_canary(Change("m", ""), "v2", 5), InvalidArgument, "actor"),
])
def test_bad_rollout_change_writes_nothing(rollouts: RolloutStore, call, error, needle) -> None:
    before = rollouts.get("m")
    with pytest.raises(error, match=needle):
        call(rollouts)
    assert rollouts.get("m") == before
    assert len(rollouts.events("m")) == 1


def test_two_operators_racing_one_wins_the_other_gets_a_conflict(
        rollouts: RolloutStore) -> None:
    rollouts.start_canary(Change("m", "alice"), "v2", 10)
    seen = rollouts.get("m").revision
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def operator(name: str, weight: int) -> None:
        barrier.wait()
        try:
            outcomes[name] = rollouts.set_weight(
                Change("m", name, f"{name} wants {weight}", expected_revision=seen), weight)
        except Aborted as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=operator, args=(n, w))
               for n, w in (("dave", 30), ("erin", 70))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, o in outcomes.items() if not isinstance(o, Aborted)]
    losers = [o for o in outcomes.values() if isinstance(o, Aborted)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert "changed concurrently" in str(losers[0]) and "retry" in str(losers[0])
    events = rollouts.events("m")
    assert [e.action for e in events] == ["create", "start_canary", "set_weight"]
    assert events[-1].actor == winners[0]
    assert rollouts.get("m").candidate_weight == {"dave": 30, "erin": 70}[winners[0]]


def test_many_unchecked_writers_lose_no_update(rollouts: RolloutStore) -> None:
    """Without expected_revision, concurrent writers still never overwrite each other silently:
    every successful change has its own revision and history entry."""
    rollouts.start_canary(Change("m", "alice"), "v2", 1)
    successes: list[int] = []

    def writer(i: int) -> None:
        for _attempt in range(20):
            try:
                rollouts.set_weight(Change("m", f"w{i}", uuid.uuid4().hex), i + 2)
                successes.append(i)
                return
            except Aborted:
                continue

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = rollouts.events("m")
    assert len(events) == 2 + len(successes)
    assert [e.revision for e in events] == list(range(1, len(events) + 1))


def test_a_stale_expected_revision_is_a_conflict(rollouts: RolloutStore) -> None:
    rollouts.start_canary(Change("m", "alice"), "v2", 10)
    with pytest.raises(Aborted, match="changed concurrently: it is at revision 2 after "
                                      "start_canary by alice .* expected revision 1"):
        rollouts.set_weight(Change("m", "bob", expected_revision=1), 50)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_writer_holding_the_sqlite_lock_is_a_conflict(rollouts: RolloutStore,
                                                        engine: Engine) -> None:
    """SQLite's "database is locked" (after its 5 s busy timeout) is a lost race, not an outage."""
    holder = sqlite3.connect(make_url(str(engine.url)).database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Aborted, match="changed concurrently"):
            rollouts.start_canary(Change("m", "alice"), "v2", 10)
    finally:
        holder.close()
    assert len(rollouts.events("m")) == 1


def test_an_unreachable_database_is_unavailable_not_a_conflict() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = open_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/registry"
                         "?connect_timeout=5")
    try:
        with pytest.raises(Unavailable, match="registry database unavailable .*refused.*"
                                              "re-read the rollout of 'm'"):
            RolloutStore(RegistryStore(engine)).set_weight(Change("m", "alice"), 50)
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_connection_lost_mid_change_is_unavailable_not_a_conflict(
        rollouts: RolloutStore, engine: Engine) -> None:
    """The server ends the session between reading the rollout and writing it (as a restart or
    failover would); the registry then answers again, so the error must not say "changed
    concurrently"."""

    def terminate_before_the_update(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE ROLLOUTS"):
            pid = conn.connection.dbapi_connection.info.backend_pid
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))

    event.listen(engine, "before_cursor_execute", terminate_before_the_update)
    try:
        with pytest.raises(Unavailable, match="registry database unavailable"):
            rollouts.start_canary(Change("m", "alice"), "v2", 10)
    finally:
        event.remove(engine, "before_cursor_execute", terminate_before_the_update)
    state = rollouts.get("m")
    assert (state.revision, state.candidate_version) == (1, None)


# Live-worker checks: the heartbeats are in a real Redis ------------------------------------

LIVENESS_S = 5.0


@pytest.fixture
def heartbeats(redis_url: str) -> Iterator[redis.Redis]:
    """The Redis the workers' heartbeats go to, emptied for each test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def checked(store: RegistryStore, rollouts: RolloutStore, redis_url: str,
            heartbeats: redis.Redis) -> Iterator[RolloutStore]:
    """Rollouts that refuse to route to a version without a live worker."""
    workers = WorkerLiveness(redis_url, LIVENESS_S)
    yield RolloutStore(store, workers)
    workers.close()


def _heartbeat(client: redis.Redis, store: RegistryStore, version: str, age_s: float = 0.0,
               ) -> None:
    queue = store.get_version("m", version).queue
    client.zadd(live_workers(queue), {f"worker-{version}": time.time() - age_s})


SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_a_canary_without_a_live_worker_is_refused_naming_the_version_and_queue(
        checked: RolloutStore) -> None:
    with pytest.raises(FailedPrecondition, match=r"no live worker serves m@v2 \(queue "
                                                 r"fleet\.7b\.m\.v2\).*5 s.*set force"):
        checked.start_canary(Change("m", "alice"), "v2", 10)
    assert checked.get("m").revision == 1


@SQLITE_ONLY
def test_a_canary_with_a_fresh_heartbeat_starts(checked: RolloutStore, store: RegistryStore,
                                                heartbeats: redis.Redis) -> None:
    _heartbeat(heartbeats, store, "v2")
    state = checked.start_canary(Change("m", "alice", "try v2"), "v2", 10)
    assert (state.candidate_version, state.candidate_weight) == ("v2", 10)
    assert checked.events("m")[-1].reason == "try v2"


@SQLITE_ONLY
def test_a_stale_heartbeat_is_a_dead_worker(checked: RolloutStore, store: RegistryStore,
                                            heartbeats: redis.Redis) -> None:
    _heartbeat(heartbeats, store, "v2", age_s=LIVENESS_S + 1)
    _heartbeat(heartbeats, store, "v1")  # the stable version's workers do not count
    with pytest.raises(FailedPrecondition, match="no live worker serves m@v2"):
        checked.start_canary(Change("m", "alice"), "v2", 10)


@SQLITE_ONLY
def test_a_forced_canary_starts_without_a_worker_and_history_says_forced(
        checked: RolloutStore) -> None:
    state = checked.start_canary(Change("m", "alice", "warm-up"), "v2", 10, force=True)
    assert state.candidate_weight == 10
    assert checked.events("m")[-1].reason == f"{FORCED_MARK} warm-up"


@SQLITE_ONLY
def test_a_weight_above_zero_needs_a_live_worker_and_zero_does_not(
        checked: RolloutStore, store: RegistryStore, heartbeats: redis.Redis) -> None:
    _heartbeat(heartbeats, store, "v2")
    checked.start_canary(Change("m", "alice"), "v2", 10)
    heartbeats.flushdb()  # its workers die
    with pytest.raises(FailedPrecondition, match=r"m@v2 \(queue fleet\.7b\.m\.v2\)"):
        checked.set_weight(Change("m", "bob"), 50)
    assert checked.get("m").candidate_weight == 10
    assert checked.set_weight(Change("m", "bob", "drain"), 0).candidate_weight == 0
    assert checked.events("m")[-1].reason == "drain"  # nothing skipped, nothing forced
    assert checked.set_weight(Change("m", "bob"), 50, force=True).candidate_weight == 50
    assert checked.events("m")[-1].reason.startswith(FORCED_MARK)


@SQLITE_ONLY
def test_a_stale_revision_or_a_refused_change_says_so_before_workers_are_looked_for(
        checked: RolloutStore) -> None:
    with pytest.raises(FailedPrecondition, match="already the stable version"):
        checked.start_canary(Change("m", "alice"), "v1", 10)
    with pytest.raises(FailedPrecondition, match="no candidate"):
        checked.set_weight(Change("m", "alice"), 10)
    with pytest.raises(Aborted, match="changed concurrently"):
        checked.start_canary(Change("m", "alice", expected_revision=7), "v2", 10)


@SQLITE_ONLY
def test_redis_down_is_unavailable_unless_forced(store: RegistryStore,
                                                 rollouts: RolloutStore) -> None:
    workers = WorkerLiveness(f"redis://127.0.0.1:{free_port()}/0", LIVENESS_S, timeout_s=1)
    down = RolloutStore(store, workers)
    try:
        with pytest.raises(Unavailable, match=r"cannot check that m@v2 \(queue "
                                              r"fleet\.7b\.m\.v2\) has a live worker: Redis at "
                                              r"127\.0\.0\.1:\d+ did not answer.*set force"):
            down.start_canary(Change("m", "alice"), "v2", 10)
        assert down.get("m").revision == 1
        assert down.start_canary(Change("m", "alice"), "v2", 10, force=True).revision == 2
    finally:
        workers.close()


@SQLITE_ONLY
def test_a_candidate_replaced_while_its_workers_were_checked_is_a_conflict(
        store: RegistryStore, rollouts: RolloutStore, tiny_checkpoints: dict[str, Path],
        redis_url: str, heartbeats: redis.Redis) -> None:
    register_model(store, model="m", version="v3", checkpoint_dir=tiny_checkpoints["infill"],
                   variant="codellama-7b-instruct", context_limit=2048)
    rollouts.start_canary(Change("m", "alice"), "v2", 10)
    _heartbeat(heartbeats, store, "v2")
    real = WorkerLiveness(redis_url, LIVENESS_S)

    class ReplacedMeanwhile:
        liveness_s = LIVENESS_S

        def live_count(self, queue: str) -> int:
            rollouts.rollback(Change("m", "carol"))
            rollouts.start_canary(Change("m", "carol"), "v3", 1)
            return real.live_count(queue)

    try:
        with pytest.raises(Aborted, match="changed concurrently.*start_canary by carol"):
            RolloutStore(store, ReplacedMeanwhile()).set_weight(Change("m", "bob"), 90)
    finally:
        real.close()
    state = rollouts.get("m")
    assert (state.candidate_version, state.candidate_weight) == ("v3", 1)
