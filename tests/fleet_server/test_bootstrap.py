"""The shared server bootstrap on a real port: health, reflection, port file, graceful stop; and
the error mapping as a client sees it (google.rpc rich details, retry pushback, INTERNAL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from fleet_common.errors import OutOfBounds, ResourceExhausted
from fleet_server.bootstrap import FleetServer

SERVICE = "fleet.test.v1.Probe"
REPO = Path(__file__).resolve().parents[2]

#: What the probe raises for each request body.
ERRORS: dict[bytes, Callable[[], Exception]] = {
    b"bounds": lambda: OutOfBounds("sampling.top_p", 3, "at most 1"),
    b"exhausted": lambda: ResourceExhausted("the queue is full", retry_after_s=1.5),
    b"boom": lambda: RuntimeError("secret internals"),
}


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request in ERRORS:
        raise ERRORS[request]()
    return b"ok:" + request


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    if request in ERRORS:
        raise ERRORS[request]()
    yield b"last"


async def _written(request: bytes, context: grpc.aio.ServicerContext) -> None:
    """A streaming handler that writes instead of yielding, as the health service's Watch."""
    await context.write(b"first")
    if request in ERRORS:
        raise ERRORS[request]()
    await context.write(b"last")


def _probe_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Written": grpc.unary_stream_rpc_method_handler(_written),
    })


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[FleetServer, int, Path]]:
    server = FleetServer([SERVICE])
    server.server.add_generic_rpc_handlers((_probe_handler(),))
    port_file = tmp_path / "probe.port"
    port = await server.start("127.0.0.1", 0, port_file=port_file)
    yield server, port, port_file
    await server.stop(grace=0)


async def test_serves_health_and_reflection_and_writes_the_port_file(
    running: tuple[FleetServer, int, Path],
) -> None:
    _, port, port_file = running
    assert port > 0
    assert port_file.read_text() == str(port)
    assert not port_file.with_name(port_file.name + ".tmp").exists()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        checker = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            answer = await checker.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await checker.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        reflector = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflector.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        listed = [response async for response in call]
        names = {s.name for s in listed[0].list_services_response.service}
        assert names == {SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME}

        assert await channel.unary_unary(f"/{SERVICE}/Unary")(b"x") == b"ok:x"
        for method in ("Stream", "Written"):
            streamed = channel.unary_stream(f"/{SERVICE}/{method}")(b"x")
            assert [item async for item in streamed] == [b"first", b"last"]


async def test_stop_tells_health_watchers_then_closes(running: tuple[FleetServer, int, Path],
                                                      ) -> None:
    server, port, _ = running
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.stop(grace=1))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
        with pytest.raises(grpc.aio.AioRpcError):  # the watch ends with the server
            await watch.read()
        with pytest.raises(grpc.aio.AioRpcError) as after:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=5)
        assert after.value.code() == grpc.StatusCode.UNAVAILABLE


def _call(port: int, method: str, request: bytes) -> tuple[list[bytes], grpc.RpcError]:
    """A plain synchronous client, as any caller would use: the responses before the error,
    and the error (also the call, which `rpc_status.from_call` reads)."""
    received: list[bytes] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            if method == "Unary":
                received.append(channel.unary_unary(f"/{SERVICE}/Unary")(request, timeout=10))
            else:
                received.extend(channel.unary_stream(f"/{SERVICE}/{method}")(request, timeout=10))
        except grpc.RpcError as error:
            return received, error
    raise AssertionError(f"{method}({request!r}) succeeded: {received}")


def _unpacked(status: Any, message_type: type) -> Any:
    found = [d for d in status.details if d.Is(message_type.DESCRIPTOR)]
    assert len(found) == 1, status.details
    message = message_type()
    found[0].Unpack(message)
    return message


@pytest.mark.parametrize("method", ["Unary", "Stream", "Written"])
async def test_a_bad_field_is_invalid_argument_with_a_field_violation(
    running: tuple[FleetServer, int, Path], method: str,
) -> None:
    _, port, _ = running
    received, error = await asyncio.to_thread(_call, port, method, b"bounds")
    assert received == ([] if method == "Unary" else [b"first"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "sampling.top_p: must be at most 1, got 3"
    status = rpc_status.from_call(error)
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    violations = _unpacked(status, error_details_pb2.BadRequest).field_violations
    assert [(v.field, v.description) for v in violations] == [
        ("sampling.top_p", "must be at most 1, got 3")]


@pytest.mark.parametrize("method", ["Unary", "Stream", "Written"])
async def test_exhausted_carries_retry_info_and_the_pushback_trailer(
    running: tuple[FleetServer, int, Path], method: str,
) -> None:
    _, port, _ = running
    _, error = await asyncio.to_thread(_call, port, method, b"exhausted")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "the queue is full"
    status = rpc_status.from_call(error)
    assert status is not None
    delay = _unpacked(status, error_details_pb2.RetryInfo).retry_delay
    assert delay.ToMilliseconds() == 1500
    assert ("grpc-retry-pushback-ms", "1500") in tuple(error.trailing_metadata())


@pytest.mark.parametrize("method", ["Unary", "Stream", "Written"])
async def test_an_unexpected_exception_is_internal_and_keeps_its_message_in(
    running: tuple[FleetServer, int, Path], method: str,
) -> None:
    _, port, _ = running
    _, error = await asyncio.to_thread(_call, port, method, b"boom")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == f"internal error in /{SERVICE}/{method}: RuntimeError"
    assert rpc_status.from_call(error) is None  # no rich details to read


def test_run_until_signalled_stops_on_sigterm() -> None:
    script = (
        "import asyncio\n"
        "from fleet_server.bootstrap import run_until_signalled\n"
        "async def serve(stop: asyncio.Event) -> None:\n"
        "    print('ready', flush=True)\n"
        "    await stop.wait()\n"
        "    print('stopped', flush=True)\n"
        "run_until_signalled(serve)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.communicate(timeout=30)[0] == "stopped\n"
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
