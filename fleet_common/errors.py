"""One domain error hierarchy; each class carries its gRPC status code.

The gateway maps these to statuses in one place (an interceptor); everything else raises them.
Messages name the field, the limit and the value, so a caller can fix the request without
reading our code.
"""

from __future__ import annotations

import grpc


class FleetError(Exception):
    """Base of every error we expect to report to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(FleetError):
    """A request field is wrong. `field` is the dotted path of the field in the request."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class OutOfRange(InvalidArgument):
    """A numeric field is outside its allowed range (still INVALID_ARGUMENT for callers)."""

    def __init__(self, field: str, value: object, limit: str) -> None:
        super().__init__(field, f"must be {limit}, got {value!r}")
        self.value = value
        self.limit = limit


class FailedPrecondition(FleetError):
    """The request is well formed but the target cannot do it (e.g. infill on a 34B model)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(FleetError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FleetError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(FleetError):
    """A concurrent change won (optimistic concurrency); the caller may re-read and retry."""

    code = grpc.StatusCode.ABORTED


class Unavailable(FleetError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FleetError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(FleetError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(FleetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(FleetError):
    code = grpc.StatusCode.CANCELLED


class EngineFailure(FleetError):
    """The engine failed while serving; details are in the worker log under the request id."""

    code = grpc.StatusCode.INTERNAL
