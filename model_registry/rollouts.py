"""Rollout changes: canary, weight, promote, rollback, pause. Each is recorded with who, when,
what and why, and guarded by the rollout's revision so two operators cannot both win.

A change that sends requests to a candidate (start a canary, or set its weight above 0) is
refused while no worker of the candidate's queue is live, unless forced: otherwise the
candidate's share of requests would fail until someone rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from fleet_common.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfBounds,
    Unavailable,
)
from model_registry.records import RolloutEventRecord, RolloutState, ServedModel
from model_registry.schema import Rollout, RolloutEvent
from model_registry.store import RegistryStore, rollout_state


@dataclass(frozen=True)
class Change:
    model: str
    actor: str
    reason: str = ""
    expected_revision: int = 0  # 0: no check against what the caller saw


def _check_weight(weight: int) -> None:
    if not 0 <= weight <= 100:
        raise OutOfBounds("weight", weight, "between 0 and 100")


def _lost_a_race(exc: OperationalError) -> bool:
    """A concurrent writer got in the way, as opposed to the database being unreachable:
    PostgreSQL's SQLSTATE class 40 (serialization failure, deadlock) or 55P03
    (lock_not_available), SQLite's busy or locked."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    sqlite_error = getattr(exc.orig, "sqlite_errorname", None) or ""
    return (sqlstate.startswith("40") or sqlstate == "55P03"
            or sqlite_error.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")))


FORCED_MARK = "[forced past the live-worker check]"
_REASON_CHARS = 1024  # RolloutEvent.reason


class LiveWorkers(Protocol):
    """How many workers of a queue are live (`model_registry.worker_liveness`)."""

    liveness_s: float

    def live_count(self, queue: str) -> int: ...


def _need_actor(change: Change) -> None:
    if not change.actor:
        raise InvalidArgument("change.actor", "is required: say who makes the change")


def _forced(reason: str) -> str:
    return f"{FORCED_MARK} {reason}".rstrip()[:_REASON_CHARS]


class RolloutStore:
    def __init__(self, store: RegistryStore, workers: LiveWorkers | None = None) -> None:
        """Without `workers` (tools and tests with no fleet) no change checks for live
        workers."""
        self._store = store
        self._workers = workers

    def get(self, model: str) -> RolloutState:
        with self._store.transaction() as session:
            row = session.get(Rollout, model)
            if row is None:
                raise NotFound(f"model {model!r} has no rollout (register a version first)")
            return rollout_state(row)

    def events(self, model: str) -> list[RolloutEventRecord]:
        with self._store.transaction() as session:
            rows = session.scalars(select(RolloutEvent).where(RolloutEvent.model_name == model)
                                   .order_by(RolloutEvent.revision))
            return [RolloutEventRecord(
                model=r.model_name, revision=r.revision, action=r.action, actor=r.actor,
                reason=r.reason, at=r.at, stable_version=r.stable_version,
                candidate_version=r.candidate_version, candidate_weight=r.candidate_weight,
                paused=r.paused) for r in rows]

    def start_canary(self, change: Change, candidate: str, weight: int,
                     verify: Callable[[ServedModel], None] | None = None, *,
                     force: bool = False) -> RolloutState:
        """`verify` may refuse the candidate (e.g. its checkpoint files no longer match);
        `force` skips the live-worker check, not `verify`."""
        _check_weight(weight)

        def apply(state: RolloutState) -> RolloutState:
            if candidate == state.stable_version:
                raise FailedPrecondition(f"{candidate!r} is already the stable version of "
                                         f"{change.model!r}")
            return replace(state, candidate_version=candidate, candidate_weight=weight,
                           paused=False)

        return self._apply_routed(change, "start_canary", apply, force=force, verify=verify)

    def set_weight(self, change: Change, weight: int, *, force: bool = False) -> RolloutState:
        """A weight above 0 needs a live worker of the candidate, unless `force`."""
        _check_weight(weight)
        return self._apply_routed(change, "set_weight", lambda s: replace(
            self._need_candidate(s, "set a weight"), candidate_weight=weight), force=force)

    def promote(self, change: Change) -> RolloutState:
        def apply(state: RolloutState) -> RolloutState:
            state = self._need_candidate(state, "promote")
            return replace(state, stable_version=state.candidate_version or "",
                           candidate_version=None, candidate_weight=0, paused=False)

        return self._apply(change, "promote", apply)

    def rollback(self, change: Change) -> RolloutState:
        return self._apply(change, "rollback", lambda s: replace(
            self._need_candidate(s, "roll back"), candidate_version=None, candidate_weight=0,
            paused=False))

    def pause(self, change: Change, paused: bool) -> RolloutState:
        def apply(state: RolloutState) -> RolloutState:
            state = self._need_candidate(state, "pause or resume")
            if state.paused == paused:
                raise FailedPrecondition(f"the canary of {change.model!r} is already "
                                         f"{'paused' if paused else 'running'}")
            return replace(state, paused=paused)

        return self._apply(change, "pause" if paused else "resume", apply)

    @staticmethod
    def _need_candidate(state: RolloutState, what: str) -> RolloutState:
        if state.candidate_version is None:
            raise FailedPrecondition(f"model {state.model!r} has no candidate version to {what}; "
                                     "start a canary first")
        return state

    def _apply_routed(self, change: Change, action: str,
                      apply: Callable[[RolloutState], RolloutState], *, force: bool,
                      verify: Callable[[ServedModel], None] | None = None) -> RolloutState:
        """`_apply` for a change that may send requests to the candidate. It is tried on the
        current state first, so a stale revision or a refused change says so before any worker
        is looked for (and no Redis read or checksum runs inside the transaction); the change
        then applies only if the candidate is still the one checked."""
        _need_actor(change)
        with self._database_errors(change):
            current = self.get(change.model)
            if change.expected_revision and change.expected_revision != current.revision:
                raise self._conflict(change, current.revision)
            planned = apply(current)
            candidate = planned.candidate_version
            version = self._store.get_version(change.model, candidate)
        if planned.candidate_weight > 0:
            if force:
                change = replace(change, reason=_forced(change.reason))
            elif self._workers is not None:
                self._require_live_worker(version)
        if verify is not None:
            verify(version)

        def same_candidate(state: RolloutState) -> RolloutState:
            new = apply(state)
            if new.candidate_version != candidate:
                raise self._conflict(change, None)
            return new

        return self._apply(change, action, same_candidate)

    def _require_live_worker(self, version: ServedModel) -> None:
        assert self._workers is not None
        which = f"{version.model}@{version.version} (queue {version.queue})"
        try:
            live = self._workers.live_count(version.queue)
        except Unavailable as exc:
            raise Unavailable(f"cannot check that {which} has a live worker: {exc}; retry "
                              "later, or set force to skip the check") from exc
        if live == 0:
            raise FailedPrecondition(
                f"no live worker serves {which}: none has sent a heartbeat in the last "
                f"{self._workers.liveness_s:g} s, so its share of requests would fail; start "
                "its workers first, or set force to route to it anyway")

    def _apply(self, change: Change, action: str,
               apply: Callable[[RolloutState], RolloutState]) -> RolloutState:
        _need_actor(change)
        with self._database_errors(change), self._store.transaction() as session:
            row = session.get(Rollout, change.model)
            if row is None:
                raise NotFound(f"model {change.model!r} has no rollout")
            current = rollout_state(row)
            if change.expected_revision and change.expected_revision != current.revision:
                raise self._conflict(change, current.revision)
            new = apply(current)
            now = datetime.now(UTC)
            revision = current.revision + 1
            result = session.execute(
                update(Rollout)
                .where(Rollout.model_name == change.model,
                       Rollout.revision == current.revision)
                .values(stable_version=new.stable_version,
                        candidate_version=new.candidate_version,
                        candidate_weight=new.candidate_weight, paused=new.paused,
                        revision=revision, updated_at=now)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                raise self._conflict(change, None)
            session.add(RolloutEvent(
                model_name=change.model, revision=revision, action=action,
                actor=change.actor, reason=change.reason, at=now,
                stable_version=new.stable_version, candidate_version=new.candidate_version,
                candidate_weight=new.candidate_weight, paused=new.paused))
            return replace(new, revision=revision, updated_at=now)

    @contextmanager
    def _database_errors(self, change: Change) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:  # a concurrent writer took this revision's event
            raise self._conflict(change, None) from exc
        except OperationalError as exc:
            if _lost_a_race(exc):
                raise self._conflict(change, None) from exc
            first_line = str(exc.orig).partition("\n")[0]
            raise Unavailable(f"registry database unavailable ({first_line}); re-read the "
                              f"rollout of {change.model!r} to see whether the change was "
                              "applied, and retry later") from exc

    def _conflict(self, change: Change, revision: int | None) -> Aborted:
        latest = self.events(change.model)[-1:] if revision is None else \
            [e for e in self.events(change.model) if e.revision == revision]
        detail = ""
        if latest:
            e = latest[0]
            detail = (f": it is at revision {e.revision} after {e.action} by {e.actor} at "
                      f"{e.at.isoformat(timespec='seconds')}")
        expected = f" (you expected revision {change.expected_revision})" \
            if change.expected_revision else ""
        return Aborted(f"the rollout of {change.model!r} changed concurrently{detail}{expected}; "
                       "re-read it and retry")
