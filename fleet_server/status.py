"""Domain errors -> gRPC statuses: the one mapping, with machine-readable rich details.

INVALID_ARGUMENT carries `google.rpc.BadRequest` (the field and what is wrong with it);
RESOURCE_EXHAUSTED carries `google.rpc.QuotaFailure` when a tenant quota refused the request
(who, which limit, its value and the use), and with a retry time `google.rpc.RetryInfo` and the
`grpc-retry-pushback-ms` trailer that gRPC's own retry policy honours.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from fleet_common import errors

_CODES: dict[type[errors.FleetError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.EngineFailure: grpc.StatusCode.INTERNAL,
}
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def status_code_of(error: errors.FleetError) -> grpc.StatusCode:
    """The status of the nearest mapped class in the error's ancestry; INTERNAL if none."""
    for cls in type(error).__mro__:
        code = _CODES.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class RichStatus:
    """What `context.abort_with_status` takes: code, details, trailing metadata."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def rich_status(error: errors.FleetError) -> RichStatus:
    code = status_code_of(error)
    details: list[any_pb2.Any] = []
    extra: list[tuple[str, str]] = []
    if isinstance(error, errors.InvalidArgument):
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field,
                                                        description=error.problem)])))
    if isinstance(error, errors.ResourceExhausted) and error.violations:
        details.append(_packed(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=v.subject,
                                                     description=v.description)
            for v in error.violations])))
    retry_after_s = getattr(error, "retry_after_s", None)
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(int(retry_after_s * 1000), 0))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
        extra.append((RETRY_PUSHBACK_KEY, str(max(int(retry_after_s * 1000), 0))))
    status = rpc_status.to_status(status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=details))
    return RichStatus(status.code, status.details,
                      tuple(status.trailing_metadata) + tuple(extra))
