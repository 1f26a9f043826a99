"""`fleet models` against a real gRPC server: the listing, and a failing gateway as a message."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import (
    InferenceServiceServicer,
    add_InferenceServiceServicer_to_server,
)
from fleet_cli.__main__ import main


class _Gateway(InferenceServiceServicer):
    """Lists one model, or aborts ListModels with `failure` when it is set."""

    failure: tuple[grpc.StatusCode, str] | None = None

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self.failure is not None:
            context.abort(*self.failure)
        return api.ListModelsResponse(models=[api.ModelInfo(
            name="codellama-7b", model_version="v1", pool="7b", modes=["completion", "infill"],
            context_limit=2048)])


@pytest.fixture
def gateway() -> Iterator[tuple[_Gateway, str]]:
    servicer = _Gateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_models_lists_what_the_gateway_serves(gateway: tuple[_Gateway, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _, target = gateway
    assert main(["models", "--target", target]) == 0
    assert capsys.readouterr().out == ("codellama-7b@v1  pool=7b  modes=completion,infill  "
                                       "context=2048  chat_format=-\n")


def test_models_reports_the_gateway_status_and_exits_non_zero(
        gateway: tuple[_Gateway, str], capsys: pytest.CaptureFixture[str]) -> None:
    servicer, target = gateway
    servicer.failure = (grpc.StatusCode.UNAVAILABLE, "registry unreachable")
    assert main(["models", "--target", target]) == 1
    captured = capsys.readouterr()
    assert captured.err == "error: UNAVAILABLE: registry unreachable\n" and captured.out == ""


def test_models_with_nothing_listening_is_a_message_not_a_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["models", "--target", f"127.0.0.1:{port}", "--timeout", "5"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")
