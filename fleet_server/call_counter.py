"""A server interceptor that counts calls by method and final status (`<prefix>_requests_total`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter

REGISTRY_REQUESTS = Counter("fleet_registry_requests", "Registry calls by method and final "
                            "gRPC status.", ["method", "code"])


def _code(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class CallCounter(grpc.aio.ServerInterceptor):
    """Counts unary calls (placed before the error-mapping interceptor, it sees the status the
    call ends with); streaming calls pass through uncounted."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method, counter = handler.unary_unary, details.method, self._counter

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await inner(request, context)
            except BaseException:
                counter.labels(method, _code(context) if context.code() else "UNKNOWN").inc()
                raise
            counter.labels(method, _code(context)).inc()
            return response

        return grpc.unary_unary_rpc_method_handler(
            counted, handler.request_deserializer, handler.response_serializer)
