"""The real InferenceServicer in-process behind a real gRPC server and the error mapping, over a
fake dispatcher and a real registry: what reaches the dispatcher, what callers get back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import inference_service_pb2_grpc as api_grpc
from fleet_common.errors import Unavailable
from fleet_common.keys import request_scope, result_stream
from fleet_common.wire import (
    Delta,
    Error,
    ErrorCode,
    Final,
    GenerationTask,
    Started,
    StreamEvent,
)
from fleet_server.interceptor import ErrorMappingInterceptor
from gateway.auth import Authenticator
from gateway.dispatch import error_of
from gateway.model_directory import ModelDirectory
from gateway.prompts import PromptBuilder, PromptInput
from gateway.request_run import RequestRun
from gateway.result_feeds import ResultFeed
from gateway.servicer import InferenceServicer
from gateway.settings import GatewaySettings, Limits
from model_registry.database import migrate, open_engine
from model_registry.reader import StoreRegistryReader
from model_registry.registration import register_model
from model_registry.store import RegistryStore

pytestmark = pytest.mark.timeout(60)

CHAT_7B = "tiny-7b-instruct"  # infill layout, Llama 2 chat
BASE_34B = "tiny-34b"         # completion only
CONTEXT_LIMIT = 2048
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Submitted:
    task: GenerationTask
    queue: str
    pool: str
    fingerprint: str


class FakeDispatcher:
    """A TaskDispatcher that queues nothing: it records what it is given and plays back
    `script`, raising an ERROR event's domain error as the real one does."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.script: list[StreamEvent] = []
        self.hang_after_script = False
        self.submit_error: Exception | None = None
        self.submitted: list[Submitted] = []
        self.finished: list[GenerationTask] = []
        self.abandoned: list[GenerationTask] = []
        self.abandon_called = asyncio.Event()

    async def submit(self, task: GenerationTask, queue: str, pool: str, *,
                     fingerprint: str) -> RequestRun:
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted.append(Submitted(task, queue, pool, fingerprint))
        scope = request_scope(task.tenant, task.request_id)
        return RequestRun(task, queue, pool, ResultFeed(scope, result_stream(scope).encode()))

    async def events(self, run: RequestRun) -> AsyncIterator[StreamEvent]:
        for event in self.script:
            if event.HasField("error"):
                raise error_of(event.error.code, event.error.message)
            yield event
        if self.hang_after_script:
            await asyncio.Event().wait()

    async def finish(self, run: RequestRun) -> None:
        self.finished.append(run.task)

    async def abandon(self, run: RequestRun) -> None:
        self.abandoned.append(run.task)
        self.abandon_called.set()

    async def hand_over(self, run: RequestRun) -> None:
        raise AssertionError("only a stopping job runner hands a request over")

    async def live_worker_count(self, queue: str) -> int:
        return 1


@dataclass
class Gateway:
    stub: api_grpc.InferenceServiceStub
    dispatcher: FakeDispatcher
    models: ModelDirectory
    servers: list[grpc.aio.Server] = field(default_factory=list)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory,
           tiny_checkpoints: dict[str, Path]) -> ModelDirectory:
    engine = open_engine(f"sqlite:///{tmp_path_factory.mktemp('registry') / 'registry.db'}")
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    for model, layout, variant in ((CHAT_7B, "infill", "codellama-7b-instruct"),
                                   (BASE_34B, "plain", "codellama-34b")):
        register_model(store, model=model, version="v1", checkpoint_dir=tiny_checkpoints[layout],
                       variant=variant, context_limit=CONTEXT_LIMIT, dtype="float32")
    directory = ModelDirectory(StoreRegistryReader(store, engine), refresh_s=3600)
    directory.load()
    return directory


async def _serve(models: ModelDirectory, dispatcher: FakeDispatcher,
                 api_keys: dict[str, str] | None = None
                 ) -> tuple[grpc.aio.Server, api_grpc.InferenceServiceStub]:
    settings = GatewaySettings(api_keys=api_keys or {})
    servicer = InferenceServicer(settings, models, PromptBuilder(settings.limits), dispatcher,
                                 Authenticator(settings.api_keys))
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    api_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return server, api_grpc.InferenceServiceStub(channel)


@pytest.fixture(scope="module")
async def shared_gateway(models: ModelDirectory) -> AsyncIterator[Gateway]:
    dispatcher = FakeDispatcher()
    server, stub = await _serve(models, dispatcher)
    yield Gateway(stub, dispatcher, models)
    await server.stop(0)


@pytest.fixture
def gateway(shared_gateway: Gateway) -> Gateway:
    shared_gateway.dispatcher.reset()
    return shared_gateway


def _prompt_ids(models: ModelDirectory, model: str, prompt_input: PromptInput) -> list[int]:
    return PromptBuilder(Limits()).build(models.resolve(model), prompt_input).token_ids


# Validation ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bad:
    """A request the gateway must refuse before dispatching: RPC kind, request fields, the
    status, the field a BadRequest names (INVALID_ARGUMENT only), what the message must say."""

    kind: str
    fields: dict[str, Any]
    code: grpc.StatusCode
    field: str | None
    says: tuple[str, ...]


def _bad_sampling(field: str, params: pb.SamplingParams, *says: str) -> Bad:
    return Bad("Complete", {"model": CHAT_7B, "prompt": "x", "sampling": params},
               grpc.StatusCode.INVALID_ARGUMENT, field, says)


def _bad(kind: str, field: str, *says: str, **fields: Any) -> Bad:
    return Bad(kind, {"model": CHAT_7B, **fields}, grpc.StatusCode.INVALID_ARGUMENT, field, says)


def _user(content: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_USER, content=content)


INVALID = pytest.mark.parametrize("bad", [
    _bad_sampling("sampling.max_tokens", pb.SamplingParams(max_tokens=0),
                  "must be at least 1", "got 0"),
    # "x" is BOS + one token: the context leaves 2,046.
    _bad_sampling("sampling.max_tokens", pb.SamplingParams(max_tokens=5000),
                  "at most 2046 (context limit 2048 minus 2 prompt tokens)", "got 5000"),
    _bad_sampling("sampling.temperature", pb.SamplingParams(temperature=-0.5),
                  "between 0 and 2", "got -0.5"),
    _bad_sampling("sampling.temperature", pb.SamplingParams(temperature=float("nan")),
                  "between 0 and 2", "got nan"),
    _bad_sampling("sampling.top_p", pb.SamplingParams(top_p=0.0),
                  "greater than 0 and at most 1", "got 0.0"),
    _bad_sampling("sampling.top_p", pb.SamplingParams(top_p=1.5),
                  "greater than 0 and at most 1", "got 1.5"),
    _bad_sampling("sampling.top_k", pb.SamplingParams(top_k=1_000_000),
                  "at most 100000", "got 1000000"),
    _bad_sampling("sampling.repetition_penalty", pb.SamplingParams(repetition_penalty=0.0),
                  "greater than 0 and at most 2", "got 0.0"),
    _bad_sampling("sampling.stop_sequences", pb.SamplingParams(stop_sequences=["a"] * 9),
                  "at most 8 entries", "got 9"),
    _bad_sampling("sampling.stop_sequences[0]", pb.SamplingParams(stop_sequences=[""]),
                  "must not be empty"),
    _bad_sampling("sampling.stop_sequences[1]",
                  pb.SamplingParams(stop_sequences=["ok", "x" * 65]),
                  "at most 64 characters", "got '65 characters'"),
    _bad_sampling("sampling.seed", pb.SamplingParams(seed=2**64 - 1),
                  f"at most {2**63 - 1}", f"got {2**64 - 1}"),
    _bad_sampling("sampling.n", pb.SamplingParams(n=9, temperature=1.0),
                  "between 1 and 8", "got 9"),
    _bad_sampling("sampling.n", pb.SamplingParams(n=2), "n=2 needs sampling",
                  "temperature above 0"),
    _bad_sampling("sampling.logprobs", pb.SamplingParams(logprobs=6),
                  "between 0 and 5", "got 6"),
    _bad("Complete", "model", "is required", model="", prompt="x"),
    _bad("Complete", "model", "at most 128 characters", "got '129 characters'",
         model="m" * 129, prompt="x"),
    _bad("Complete", "prompt", "must not be empty", prompt=""),
    _bad("Complete", "prompt", "contains 2 <FILL_ME> markers", "at most one",
         prompt="a <FILL_ME> b <FILL_ME>"),
    _bad("Complete", "prompt", "at most 1000000 characters", "got '1000001 characters'",
         prompt="x" * 1_000_001),
    _bad("Complete", "options.request_id", "1-128 characters of [A-Za-z0-9._:-]",
         "'has space'", prompt="x", options=pb.RequestOptions(request_id="has space")),
    _bad("Complete", "options.priority", "unknown value 42", "PRIORITY_HIGH",
         prompt="x", options=pb.RequestOptions(priority=42)),  # type: ignore[arg-type]
    _bad("Complete", "options.routing_key", "at most 256 characters", "got '257 characters'",
         prompt="x", options=pb.RequestOptions(routing_key="k" * 257)),
    _bad("Complete", "prompt", "context limit of 2048 tokens", "sampling.max_tokens=8",
         prompt="word " * 2100, sampling=pb.SamplingParams(max_tokens=8)),
    _bad("Complete", "sampling.max_tokens", "at most 1046 (context limit 2048 minus 1002 prompt",
         "got 1500", prompt="word " * 1000, sampling=pb.SamplingParams(max_tokens=1500)),
    _bad("Infill", "order", "unknown value 7", "INFILL_ORDER_PSM, INFILL_ORDER_SPM",
         prefix="a", order=7),
    _bad("Infill", "prefix", "prefix and suffix are both empty"),
    _bad("Chat", "messages", "must hold at least one message", messages=[]),
    _bad("Chat", "messages", "at most 256 messages", "got 257", messages=[_user("a")] * 257),
    _bad("Chat", "messages[0].role", "ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT",
         "got ROLE_UNSPECIFIED", messages=[pb.ChatMessage(content="hi")]),
    _bad("Chat", "messages[1].role", "expected 'assistant'",
         messages=[_user("a"), _user("b")]),
    _bad("Chat", "messages[0].content", "contains '[INST]'", messages=[_user("[INST] hi")]),
], ids=lambda bad: f"{bad.kind}-{bad.field}")

REFUSED = pytest.mark.parametrize("bad", [
    Bad("Infill", {"model": BASE_34B, "prefix": "def f():"}, grpc.StatusCode.FAILED_PRECONDITION,
        None, ("model tiny-34b cannot infill",)),
    Bad("Complete", {"model": BASE_34B, "prompt": "a <FILL_ME> b"},
        grpc.StatusCode.FAILED_PRECONDITION, None,
        ("model tiny-34b cannot infill (the prompt contains <FILL_ME>)",)),
    Bad("Chat", {"model": BASE_34B, "messages": [_user("hi")]},
        grpc.StatusCode.FAILED_PRECONDITION, None, ("model tiny-34b cannot chat",)),
    Bad("Complete", {"model": "no-such-model", "prompt": "x"}, grpc.StatusCode.NOT_FOUND, None,
        ("'no-such-model' is not served here", f"served models: {BASE_34B}, {CHAT_7B}")),
], ids=lambda bad: f"{bad.kind}-{bad.code.name}")


async def _refusal(gateway: Gateway, bad: Bad, streaming: bool) -> grpc.aio.AioRpcError:
    name = ("Stream" if streaming else "") + bad.kind
    request = getattr(api, f"{name}Request")(**bad.fields)
    call = getattr(gateway.stub, name)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            async for _ in call(request, timeout=CALL_TIMEOUT_S):
                pass
        else:
            await call(request, timeout=CALL_TIMEOUT_S)
    return caught.value


def _bad_request_of(error: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no rich status in the trailers"
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            return bad_request
    return None


@INVALID
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_a_bad_field_is_invalid_argument_naming_it_and_nothing_is_dispatched(
        gateway: Gateway, bad: Bad, streaming: bool) -> None:
    error = await _refusal(gateway, bad, streaming)
    assert error.code() == bad.code, error.details()
    details = error.details() or ""
    assert details.startswith(f"{bad.field}: "), details
    for needle in bad.says:
        assert needle in details, details
    bad_request = _bad_request_of(error)
    assert bad_request is not None
    [violation] = bad_request.field_violations
    assert violation.field == bad.field
    assert details == f"{bad.field}: {violation.description}"
    assert gateway.dispatcher.submitted == []


@REFUSED
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_a_request_the_fleet_cannot_serve_is_refused_before_dispatch(
        gateway: Gateway, bad: Bad, streaming: bool) -> None:
    error = await _refusal(gateway, bad, streaming)
    assert error.code() == bad.code, error.details()
    for needle in bad.says:
        assert needle in (error.details() or ""), error.details()
    assert _bad_request_of(error) is None
    assert gateway.dispatcher.submitted == []


# Admission and results ----------------------------------------------------------------------

def _script(*deltas: pb.ChoiceDelta, reasons: tuple[int, ...] = (pb.FINISH_REASON_LENGTH,)
            ) -> list[StreamEvent]:
    return [
        StreamEvent(attempt=1, started=Started(worker="w-7b", pool="7b", model_version="v1",
                                               queue_wait_ms=12.5)),
        *(StreamEvent(attempt=1, delta=Delta(choices=[d])) for d in deltas),
        StreamEvent(attempt=1, final=Final(
            finish_reasons=reasons, prompt_tokens=4, completion_tokens=sum(
                len(d.token_ids) for d in deltas),
            engine_ms=30.0, worker="w-7b", pool="7b", model_version="v1")),
    ]


async def test_unary_complete_assembles_the_events_into_one_response(gateway: Gateway) -> None:
    gateway.dispatcher.script = _script(
        pb.ChoiceDelta(index=0, text="def", token_ids=[10]),
        pb.ChoiceDelta(index=0, text=" f():", token_ids=[11, 12],
                       finish_reason=pb.FINISH_REASON_LENGTH))
    response = await gateway.stub.Complete(api.CompleteRequest(
        model=CHAT_7B, prompt="# add", sampling=pb.SamplingParams(max_tokens=3),
        options=pb.RequestOptions(request_id="req-1")), timeout=CALL_TIMEOUT_S)
    assert response.request_id == "req-1"
    [choice] = response.choices
    assert (choice.index, choice.text, list(choice.token_ids), choice.finish_reason) == (
        0, "def f():", [10, 11, 12], pb.FINISH_REASON_LENGTH)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (4, 3)
    assert (response.served_by.model, response.served_by.model_version, response.served_by.pool,
            response.served_by.worker) == (CHAT_7B, "v1", "7b", "w-7b")
    timings = response.timings
    assert (timings.queue_wait_ms, timings.engine_ms) == (12.5, 30.0)
    assert 0 < timings.time_to_first_token_ms <= timings.total_ms
    assert gateway.dispatcher.abandoned == []
    assert [t.request_id for t in gateway.dispatcher.finished] == ["req-1"]


@pytest.mark.parametrize(("kind", "fields", "prompt_input"), [
    ("Complete", {"prompt": "# add"}, PromptInput.completion(api.CompleteRequest(prompt="# add"))),
    ("Infill", {"prefix": "def f(", "suffix": "):"},
     PromptInput.infill(api.InfillRequest(prefix="def f(", suffix="):"))),
    ("Chat", {"messages": [_user("hi")]}, PromptInput.chat(api.ChatRequest(
        messages=[_user("hi")]))),
])
async def test_the_task_carries_the_built_prompt_and_the_validated_fields(
        gateway: Gateway, kind: str, fields: dict[str, Any], prompt_input: PromptInput) -> None:
    gateway.dispatcher.script = _script()
    request = getattr(api, f"{kind}Request")(
        model=CHAT_7B, sampling=pb.SamplingParams(max_tokens=5, temperature=0.5, n=2, seed=3),
        options=pb.RequestOptions(request_id="req-2", priority=pb.PRIORITY_HIGH), **fields)
    before = time.time()
    await getattr(gateway.stub, kind)(request, timeout=5.0, metadata=(
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),))
    [submitted] = gateway.dispatcher.submitted
    task = submitted.task
    assert (submitted.queue, submitted.pool) == ("fleet.7b.tiny-7b-instruct.v1", "7b")
    assert (task.request_id, task.tenant, task.model, task.model_version, task.attempt) == (
        "req-2", "", CHAT_7B, "v1", 1)
    built = PromptBuilder(Limits()).build(gateway.models.resolve(CHAT_7B), prompt_input)
    assert list(task.prompt_token_ids) == built.token_ids
    assert list(task.stop_token_ids) == built.stop_token_ids != []
    assert (task.sampling.max_tokens, task.sampling.temperature, task.sampling.n,
            task.sampling.seed) == (5, 0.5, 2, 3)
    assert task.priority == pb.PRIORITY_HIGH
    # The client's 5 s, less the margin that lets the gateway answer first.
    assert 4.5 <= task.deadline_unix - before <= 5.0
    assert before <= task.enqueued_at_unix <= time.time()
    assert task.trace_context["traceparent"].startswith("00-0af7651916cd43dd")


async def test_without_a_client_deadline_the_default_applies_and_ignore_eos_drops_stops(
        gateway: Gateway) -> None:
    gateway.dispatcher.script = _script()
    before = time.time()
    await gateway.stub.Complete(api.CompleteRequest(
        model=CHAT_7B, prompt="x", sampling=pb.SamplingParams(max_tokens=4, ignore_eos=True)))
    [task] = [s.task for s in gateway.dispatcher.submitted]
    assert 119 <= task.deadline_unix - before <= 121
    assert list(task.stop_token_ids) == [] and task.sampling.ignore_eos
    assert task.priority == pb.PRIORITY_NORMAL
    assert not task.sampling.HasField("seed"), "greedy decoding needs no seed"


async def test_a_sampled_request_without_a_seed_gets_one_its_fingerprint_ignores(
        gateway: Gateway) -> None:
    gateway.dispatcher.script = _script()
    for seed in (None, None, 5):
        sampling = pb.SamplingParams(max_tokens=4, temperature=0.5, seed=seed)
        await gateway.stub.Complete(api.CompleteRequest(model=CHAT_7B, prompt="x",
                                                        sampling=sampling),
                                    timeout=CALL_TIMEOUT_S)
    first, second, seeded = gateway.dispatcher.submitted
    # A re-run of the request then samples the same tokens.
    assert first.task.sampling.HasField("seed") and second.task.sampling.HasField("seed")
    assert first.task.sampling.seed != second.task.sampling.seed
    assert first.fingerprint == second.fingerprint != seeded.fingerprint
    assert seeded.task.sampling.seed == 5


async def test_streaming_forwards_each_delta_then_a_summary(gateway: Gateway) -> None:
    deltas = [pb.ChoiceDelta(index=0, text="a", token_ids=[1]),
              pb.ChoiceDelta(index=1, text="b", token_ids=[2]),
              pb.ChoiceDelta(index=0, text="c", token_ids=[3],
                             finish_reason=pb.FINISH_REASON_STOP_SEQUENCE,
                             matched_stop_sequence="\n")]
    # Choice 1 never finished in the engine: the worker's FINAL says it was cancelled.
    gateway.dispatcher.script = _script(
        *deltas, reasons=(pb.FINISH_REASON_STOP_SEQUENCE, pb.FINISH_REASON_CANCELLED))
    messages = [m async for m in gateway.stub.StreamComplete(api.StreamCompleteRequest(
        model=CHAT_7B, prompt="x", sampling=pb.SamplingParams(n=2, temperature=1.0),
        options=pb.RequestOptions(request_id="req-3")), timeout=CALL_TIMEOUT_S)]
    assert all(m.request_id == "req-3" for m in messages)
    assert not messages[0].deltas and not messages[0].HasField("usage")
    assert [list(m.deltas) for m in messages[1:4]] == [[d] for d in deltas]
    assert [list(m.deltas) for m in messages[4:-1]] == [
        [pb.ChoiceDelta(index=1, finish_reason=pb.FINISH_REASON_CANCELLED)]]
    summary = messages[-1]
    assert not summary.deltas and summary.usage.completion_tokens == 3
    assert (summary.served_by.model, summary.served_by.worker) == (CHAT_7B, "w-7b")
    assert summary.timings.total_ms >= summary.timings.time_to_first_token_ms > 0
    assert gateway.dispatcher.abandoned == []


@pytest.mark.parametrize(("code", "status", "field"), [
    (ErrorCode.ERROR_CODE_INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT, "request"),
    (ErrorCode.ERROR_CODE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, None),
    (ErrorCode.ERROR_CODE_INTERNAL, grpc.StatusCode.INTERNAL, None),
], ids=lambda v: getattr(v, "name", None))
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_an_error_event_is_the_calls_status_and_abandons_the_request(
        gateway: Gateway, code: int, status: grpc.StatusCode, field: str | None,
        streaming: bool) -> None:
    gateway.dispatcher.script = [
        *_script(pb.ChoiceDelta(index=0, text="a", token_ids=[1]))[:2],
        StreamEvent(attempt=1, error=Error(code=code, message="the worker says why"))]
    bad = Bad("Complete", {"model": CHAT_7B, "prompt": "x"}, status, field, ())
    error = await _refusal(gateway, bad, streaming)
    assert error.code() == status and "the worker says why" in (error.details() or "")
    bad_request = _bad_request_of(error)
    assert (bad_request.field_violations[0].field if bad_request else None) == field
    [task] = [s.task for s in gateway.dispatcher.submitted]
    assert gateway.dispatcher.abandoned == [task] and gateway.dispatcher.finished == []


async def test_a_submit_refusal_is_the_calls_status(gateway: Gateway) -> None:
    gateway.dispatcher.submit_error = Unavailable("no live worker serves tiny-7b-instruct@v1")
    error = await _refusal(gateway, Bad("Complete", {"model": CHAT_7B, "prompt": "x"},
                                        grpc.StatusCode.UNAVAILABLE, None, ()), False)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "no live worker serves tiny-7b-instruct@v1"


async def test_a_client_that_cancels_a_stream_abandons_the_request(gateway: Gateway) -> None:
    gateway.dispatcher.script = _script(pb.ChoiceDelta(index=0, text="a", token_ids=[1]))[:2]
    gateway.dispatcher.hang_after_script = True
    call = gateway.stub.StreamComplete(api.StreamCompleteRequest(model=CHAT_7B, prompt="x"),
                                       timeout=CALL_TIMEOUT_S)
    async for message in call:
        if message.deltas:
            break
    call.cancel()
    await asyncio.wait_for(gateway.dispatcher.abandon_called.wait(), 5)
    [task] = [s.task for s in gateway.dispatcher.submitted]
    assert gateway.dispatcher.abandoned == [task]


async def test_with_api_keys_the_tenant_is_the_keys_and_no_key_is_refused(
        models: ModelDirectory) -> None:
    dispatcher = FakeDispatcher()
    dispatcher.script = _script()
    server, stub = await _serve(models, dispatcher, api_keys={"key-acme": "acme"})
    try:
        request = api.CompleteRequest(model=CHAT_7B, prompt="x")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Complete(request, timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dispatcher.submitted == []
        await stub.Complete(request, timeout=CALL_TIMEOUT_S,
                            metadata=(("authorization", "Bearer key-acme"),))
        assert [s.task.tenant for s in dispatcher.submitted] == ["acme"]
    finally:
        await server.stop(0)
