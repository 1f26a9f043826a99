"""One domain error hierarchy, free of any transport.

The gRPC servers turn these into statuses in one place (`fleet_server.status`); everything else
raises them. Messages name the field, the limit and the value, so a caller can fix the request
without reading our code.
"""

from __future__ import annotations

from dataclasses import dataclass


class FleetError(Exception):
    """Base of every error we expect to report to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(FleetError):
    """A request field is wrong. `field` is the dotted path of the field in the request."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class OutOfBounds(InvalidArgument):
    """A field's value is outside its allowed bounds. Still INVALID_ARGUMENT for callers: gRPC's
    OUT_OF_RANGE means "past the end" (iteration), not a bad value."""

    def __init__(self, field: str, value: object, limit: str) -> None:
        super().__init__(field, f"must be {limit}, got {value!r}")
        self.value = value
        self.limit = limit


class FailedPrecondition(FleetError):
    """The request is well formed but the target cannot do it (e.g. infill on a 34B model)."""


class NotFound(FleetError):
    """The named thing does not exist (or belongs to another tenant)."""


class AlreadyExists(FleetError):
    """The name or id is taken."""


class Aborted(FleetError):
    """A concurrent change won (optimistic concurrency); the caller may re-read and retry."""


class Unavailable(FleetError):
    """A backend the request needs is down or has no capacity; retrying later may succeed."""


class DeadlineExceeded(FleetError):
    """The request's deadline passed before it finished."""


class Unauthenticated(FleetError):
    """No valid credentials."""


class PermissionDenied(FleetError):
    """Valid credentials that lack the scope the call needs."""


@dataclass(frozen=True)
class QuotaViolation:
    """One limit a request crossed: `subject` is whose (e.g. "tenant:acme"), `description`
    names the limit, its value and the current use (google.rpc.QuotaFailure.Violation)."""

    subject: str
    description: str


class ResourceExhausted(FleetError):
    """A quota or queue bound refused the request; retry after `retry_after_s` if set (None:
    no wait is known to help). `reason` names the limit (e.g. "requests_per_minute"),
    `violations` the quotas crossed."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, reason: str = "",
                 violations: tuple[QuotaViolation, ...] = ()) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.violations = violations


class Cancelled(FleetError):
    """The caller cancelled."""


class EngineFailure(FleetError):
    """The engine failed while serving; details are in the worker log under the request id."""
