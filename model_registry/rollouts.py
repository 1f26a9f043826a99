"""Rollout changes: canary, weight, promote, rollback, pause. Each is recorded with who, when,
what and why, and guarded by the rollout's revision so two operators cannot both win."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from fleet_common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, OutOfRange
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
        raise OutOfRange("weight", weight, "between 0 and 100")


class RolloutStore:
    def __init__(self, store: RegistryStore) -> None:
        self._store = store

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
                     verify: Callable[[ServedModel], None] | None = None) -> RolloutState:
        """`verify` may refuse the candidate (e.g. its checkpoint files no longer match)."""
        _check_weight(weight)
        version = self._store.get_version(change.model, candidate)
        if verify is not None:
            verify(version)

        def apply(state: RolloutState) -> RolloutState:
            if candidate == state.stable_version:
                raise FailedPrecondition(f"{candidate!r} is already the stable version of "
                                         f"{change.model!r}")
            return replace(state, candidate_version=candidate, candidate_weight=weight,
                           paused=False)

        return self._apply(change, "start_canary", apply)

    def set_weight(self, change: Change, weight: int) -> RolloutState:
        _check_weight(weight)
        return self._apply(change, "set_weight", lambda s: replace(
            self._need_candidate(s, "set a weight"), candidate_weight=weight))

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

    def _apply(self, change: Change, action: str,
               apply: Callable[[RolloutState], RolloutState]) -> RolloutState:
        if not change.actor:
            raise InvalidArgument("change.actor", "is required: say who makes the change")
        try:
            with self._store.transaction() as session:
                row = session.get(Rollout, change.model)
                if row is None:
                    raise NotFound(f"model {change.model!r} has no rollout")
                current = rollout_state(row)
                if change.expected_revision and change.expected_revision != current.revision:
                    raise self._conflict(change, current.revision)
                new = apply(current)
                now = datetime.now(timezone.utc)
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
        except (IntegrityError, OperationalError) as exc:
            raise self._conflict(change, None) from exc

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
