"""The server interceptor that turns every error a handler raises into a status, and every
request that does not parse into INVALID_ARGUMENT (unary, server-streaming and
client-streaming calls; the fleet has no bidirectional ones).

grpcio calls a handler's request deserializer before any interceptor code runs, and what it
raises there becomes UNKNOWN ("Unexpected DecodeError") without reaching us. So the handlers
this interceptor returns decode leniently: a message that does not parse arrives as
`_Undecodable`, and the wrapper refuses it with a status that says so.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from fleet_common.errors import FleetError, InvalidArgument
from fleet_server.status import rich_status

log = logging.getLogger(__name__)


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    """Ends the call with the status `exc` maps to; unexpected errors are INTERNAL and logged."""
    if isinstance(exc, FleetError):
        status = rich_status(exc)
        await context.abort_with_status(status)  # type: ignore[arg-type]
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL,
                        f"internal error in {method}: {type(exc).__name__}")


class _Undecodable:
    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error

    def refusal(self) -> InvalidArgument:
        return InvalidArgument("request", f"the message does not parse as {self.type_name}: "
                                          f"{type(self.error).__name__}: {self.error}")


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    type_name = getattr(getattr(message_type, "DESCRIPTOR", None), "full_name", "the request")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - refused as INVALID_ARGUMENT by the wrapper
            return _Undecodable(type_name, exc)

    return deserialize


@contextlib.asynccontextmanager
async def _mapped(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """Ends the call with the status of what the handler raised (an abort passes through)."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # noqa: BLE001 - every error becomes a status, INTERNAL if unknown
        await abort_with(context, exc, method)


def _accepted(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.refusal()
    return request


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        decode = _lenient(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with _mapped(context, method):
                    return await inner_unary(_accepted(request), context)

            return grpc.unary_unary_rpc_method_handler(unary, decode,
                                                       handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream
            if inspect.iscoroutinefunction(inner_stream):  # writes with context.write: Watch

                async def written(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    async with _mapped(context, method):
                        return await inner_stream(_accepted(request), context)

                return grpc.unary_stream_rpc_method_handler(written, decode,
                                                            handler.response_serializer)

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with _mapped(context, method):
                    async for item in inner_stream(_accepted(request), context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(stream, decode,
                                                        handler.response_serializer)
        if handler.stream_unary is not None:
            inner_collect = handler.stream_unary

            async def collect(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                async with _mapped(context, method):
                    return await inner_collect(_decoded(requests), context)

            return grpc.stream_unary_rpc_method_handler(collect, decode,
                                                        handler.response_serializer)
        return handler


async def _decoded(requests: Any) -> Any:
    """A client stream's messages; one that does not parse ends the call INVALID_ARGUMENT."""
    async for request in requests:
        yield _accepted(request)
