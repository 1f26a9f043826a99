"""Rollouts on both databases: canary weights, stickiness, promote, rollback, races, history."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from fleet_common.errors import Aborted, FailedPrecondition, InvalidArgument, OutOfRange
from model_registry.registration import register_model
from model_registry.rollouts import Change, RolloutStore
from model_registry.routing import pick_version
from model_registry.store import RegistryStore


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
    (lambda r: r.start_canary(Change("m", "a"), "v2", 101), OutOfRange, "weight"),
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
