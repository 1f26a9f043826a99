"""Names of everything the gateway and the workers share in Redis.

Every per-request key is scoped by tenant: a request id names a request only within its
tenant, so no tenant can read another's stream or cancel another's request by guessing an id.
"""

from __future__ import annotations

from urllib.parse import quote

GENERATE_TASK = "fleet.generate"
CANCEL_CHANNEL = "fleet:cancel"


def request_scope(tenant: str, request_id: str) -> str:
    """`tenant/request_id`, unambiguous: the tenant is percent-encoded (so it holds no '/') and
    request ids never contain '/'."""
    return f"{quote(tenant, safe='')}/{request_id}"


def queue_name(pool: str, model: str, version: str) -> str:
    """The Celery queue of one model version in one pool: its tickets; its requests wait in
    its fair lines (`fair_queue`). KEDA scales on `fleet_desired_workers` for it."""
    return f"fleet.{pool}.{model}.{version}"


def result_stream(scope: str) -> str:
    """Redis Stream the worker writes a request's events to, in order."""
    return f"fleet:stream:{scope}"


def request_claim(scope: str) -> str:
    """Hash of a request id's claim: the fingerprint of the request that holds the id, the
    attempt now serving it, and how many callers are attached to it."""
    return f"fleet:request:{scope}"


def attempt_started(scope: str, attempt: int) -> str:
    """Set (NX) by the worker that starts an attempt, so a second delivery of the same message
    never runs it again; holds that worker's name."""
    return f"fleet:started:{scope}#{attempt}"


def cancelled_flag(scope: str) -> str:
    """Set when a request is cancelled, so a worker that picks it up later skips it."""
    return f"fleet:cancelled:{scope}"


def live_workers(queue: str) -> str:
    """Sorted set of the workers consuming `queue`, scored by their last heartbeat (unix time)."""
    return f"fleet:workers:{queue}"


def draining_workers(queue: str) -> str:
    """Like `live_workers`, for workers that finish what they hold but take nothing new."""
    return f"fleet:draining:{queue}"


def worker_status(worker: str) -> str:
    """Hash a worker refreshes with each heartbeat: what it serves and how busy its engine is."""
    return f"fleet:worker:{worker}"


def _quota(tenant: str, what: str) -> str:
    """A tenant's quota keys share the hash tag `{<tenant>}` (braces are percent-encoded in the
    tenant), so one script can touch them all on a Redis Cluster too."""
    return f"fleet:quota:{{{quote(tenant, safe='')}}}:{what}"


def quota_leases(tenant: str) -> str:
    """Sorted set of the tenant's requests generating now (member: request scope), scored by
    when the lease expires (unix ms) unless its gateway renews it."""
    return _quota(tenant, "leases")


def quota_lease_starts(tenant: str) -> str:
    """Sorted set of the same members scored by when they were admitted (unix ms)."""
    return _quota(tenant, "lease-starts")


def quota_reservations(tenant: str) -> str:
    """Hash: request scope -> "<window second> <tokens reserved>" until the request is settled
    or released."""
    return _quota(tenant, "reservations")


def quota_request_window(tenant: str) -> str:
    """Hash: unix second -> requests admitted in it, for the last 60 seconds."""
    return _quota(tenant, "requests")


def quota_token_window(tenant: str) -> str:
    """Hash: unix second -> tokens charged to requests admitted in it, for the last 60 s."""
    return _quota(tenant, "tokens")


def quota_stats(tenant: str) -> str:
    """Hash of what the quota scripts learn: `lease_ms`, the mean time a lease is held."""
    return _quota(tenant, "stats")


def queued_job_items(tenant: str) -> str:
    """Counter of the tenant's batch job items waiting (`gateway.quotas.JobItemQuota`)."""
    return _quota(tenant, "job-items")


USAGE_STREAM = "fleet:usage"
"""Stream of the usage counts the gateways flush (`fleet_common.usage_events`), consumed by the
registry's consumer group into the database."""


def usage_counted(scope: str) -> str:
    """Set (NX) when a request's completion is counted, so callers sharing its id count once."""
    return f"fleet:usage:counted:{scope}"


def gateway_wake_stream(instance: str) -> str:
    """Stream a gateway appends to when it opens a result feed, to restart its blocked read."""
    return f"fleet:gateway:{instance}:wake"
