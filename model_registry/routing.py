"""Which model version serves a request, given the rollout and a routing key."""

from __future__ import annotations

import hashlib
import uuid

from model_registry.records import ServedModel, ServedRollout

BUCKETS = 10_000


def bucket_of(model: str, key: str) -> int:
    """A stable bucket in [0, BUCKETS): the same model and key always land in the same one."""
    digest = hashlib.sha256(f"{model}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def pick_version(rollout: ServedRollout, routing_key: str | None) -> ServedModel:
    """The candidate for `candidate_weight` percent of keys, the stable version otherwise.

    With a key, the choice is sticky while the weight holds (and a key that got the candidate
    keeps it when the weight grows). Without one, every request is drawn afresh.
    """
    state = rollout.state
    if rollout.candidate is None or state.paused or state.candidate_weight <= 0:
        return rollout.stable
    key = routing_key or uuid.uuid4().hex
    threshold = state.candidate_weight * BUCKETS // 100
    return rollout.candidate if bucket_of(state.model, key) < threshold else rollout.stable
