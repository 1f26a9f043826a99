"""Names of everything the gateway and the workers share in Redis."""

from __future__ import annotations

GENERATE_TASK = "fleet.generate"
CANCEL_CHANNEL = "fleet:cancel"


def queue_name(pool: str, model: str, version: str) -> str:
    """The Celery queue of one model version in one pool (KEDA scales on its length)."""
    return f"fleet.{pool}.{model}.{version}"


def result_stream(request_id: str) -> str:
    """Redis Stream the worker writes a request's events to, in order."""
    return f"fleet:stream:{request_id}"


def cancelled_flag(request_id: str) -> str:
    """Set when a request is cancelled, so a worker that picks it up later skips it."""
    return f"fleet:cancelled:{request_id}"


def live_workers(queue: str) -> str:
    """Sorted set of the workers consuming `queue`, scored by their last heartbeat (unix time)."""
    return f"fleet:workers:{queue}"


def worker_status(worker: str) -> str:
    """Hash a worker refreshes with each heartbeat: what it serves and how busy its engine is."""
    return f"fleet:worker:{worker}"


def gateway_wake_stream(instance: str) -> str:
    """Stream a gateway appends to when it opens a result feed, to restart its blocked read."""
    return f"fleet:gateway:{instance}:wake"
