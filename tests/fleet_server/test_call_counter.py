"""The call counter on a real server: each unary call counted once under its final status,
including statuses the error mapping makes of FleetErrors."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import Counter

from fleet_common.errors import OutOfBounds
from fleet_server.bootstrap import FleetServer
from fleet_server.call_counter import CallCounter

SERVICE = "fleet.test.v1.Counted"
CALLS = Counter("fleet_test_counted", "test", ["method", "code"])
METHOD = f"/{SERVICE}/Unary"


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"bad":
        raise OutOfBounds("x", 3, "at most 1")
    return b"ok"


def _count(code: str) -> float:
    return CALLS.labels(METHOD, code)._value.get()


async def test_calls_are_counted_by_method_and_final_status() -> None:
    server = FleetServer([SERVICE], interceptors=[CallCounter(CALLS)])
    server.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary)}),))
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD)
            for _ in range(2):
                assert await call(b"fine") == b"ok"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"bad")
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(grace=0)
    assert (_count("OK"), _count("INVALID_ARGUMENT")) == (2, 1)
