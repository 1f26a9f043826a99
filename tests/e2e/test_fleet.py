"""The fleet end to end: real gRPC, Redis, Celery worker processes and vLLM engines."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from fleet_common.keys import (
    cancelled_flag,
    live_workers,
    request_scope,
    result_stream,
    worker_status,
)
from fleet_common.wire import event_from_fields, task_to_json
from tests.e2e.conftest import (
    BASE_34B,
    CHAT_7B,
    SPARE,
    UNSERVED,
    References,
    engine_prompt,
    reference_cases,
)
from tests.e2e.fleet_harness import Fleet

pytestmark = pytest.mark.e2e


def _stream_of(request_id: str) -> str:
    """The result stream of a request of this fleet's only tenant (authentication off)."""
    return result_stream(request_scope("", request_id))


def _sampling(max_tokens: int, **kwargs: object) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs)


def _chat_messages() -> list[pb.ChatMessage]:
    _, prompt_input, _ = reference_cases()["chat"]
    return [pb.ChatMessage(role=m.role, content=m.content) for m in prompt_input.messages]


def test_greedy_completion_equals_vllm_alone(references: References, fleet: Fleet) -> None:
    model, prompt_input, max_tokens = reference_cases()["completion"]
    response = fleet.stub().Complete(api.CompleteRequest(
        model=model, prompt=prompt_input.prompt, sampling=_sampling(max_tokens)), timeout=60)
    expected = references.get("completion")
    assert list(response.choices[0].token_ids) == expected["token_ids"]
    assert response.choices[0].text == expected["text"]
    assert response.usage.completion_tokens == len(expected["token_ids"])
    assert response.usage.prompt_tokens == len(engine_prompt(fleet.store, model, prompt_input)
                                               .token_ids)
    assert response.served_by.model_version == "v1"


def test_greedy_chat_equals_vllm_alone(references: References, fleet: Fleet) -> None:
    model, _, max_tokens = reference_cases()["chat"]
    response = fleet.stub().Chat(api.ChatRequest(
        model=model, messages=_chat_messages(), sampling=_sampling(max_tokens)), timeout=60)
    expected = references.get("chat")
    assert list(response.choices[0].token_ids) == expected["token_ids"]
    assert response.choices[0].text == expected["text"]


def test_preview_shows_the_ids_the_engine_gets(fleet: Fleet) -> None:
    model, prompt_input, _ = reference_cases()["chat"]
    preview = fleet.stub().PreviewPrompt(api.PreviewPromptRequest(
        model=model, chat=api.ChatInput(messages=_chat_messages())), timeout=10)
    built = engine_prompt(fleet.store, model, prompt_input)
    assert list(preview.token_ids) == built.token_ids
    assert list(preview.stop_token_ids) == built.stop_token_ids
    assert preview.prompt_format == "llama2-chat"
    assert preview.pieces[0] == "<s>" and len(preview.pieces) == len(preview.token_ids)


def test_preview_command_prints_the_gateways_answer_as_json(
        fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from fleet_cli.__main__ import main

    model, prompt_input, _ = reference_cases()["chat"]
    system, user = (m.content for m in prompt_input.messages)
    assert main(["preview", "-m", model, "--target", fleet.target, "--system", system, user,
                 "--max-tokens", "16", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    built = engine_prompt(fleet.store, model, prompt_input)
    assert [int(i) for i in view["token_ids"]] == built.token_ids
    assert [int(i) for i in view["stop_token_ids"]] == built.stop_token_ids
    assert view["model_version"] == "v1" and view["context_limit"] == 2048
    # Over the context limit: the same refusal a generation request would get.
    assert main(["preview", "-m", model, "--target", fleet.target, user,
                 "--max-tokens", "5000"]) == 1
    assert "INVALID_ARGUMENT: sampling.max_tokens:" in capsys.readouterr().err


def test_tensor_parallel_2_worker_equals_single_rank_vllm(references: References,
                                                          fleet: Fleet) -> None:
    model, prompt_input, max_tokens = reference_cases()["completion_34b"]
    assert fleet.store.get_version(model).tensor_parallel_size == 2
    response = fleet.stub().Complete(api.CompleteRequest(
        model=model, prompt=prompt_input.prompt, sampling=_sampling(max_tokens)), timeout=60)
    assert response.served_by.worker == "w-34b-tp2"
    assert list(response.choices[0].token_ids) == references.get("completion_34b")["token_ids"]


_ENGINE_SPIN_AFTER_LAST_STEP_S = 1.5


def test_stream_delivers_deltas_while_generating(references: References, fleet: Fleet) -> None:
    # Timed against generation: no reference engine and no other pool's spinning engine may
    # share the two cores (in CI the first delta once came after the final event was written).
    references.wait_all()
    time.sleep(_ENGINE_SPIN_AFTER_LAST_STEP_S)
    rid = uuid.uuid4().hex
    request = api.StreamCompleteRequest(model=CHAT_7B, prompt="class Stack:",
                                        sampling=_sampling(400, ignore_eos=True),
                                        options=pb.RequestOptions(request_id=rid))
    client = redis.Redis.from_url(fleet.redis_url)
    events_when_first_delta_arrived: list[str] | None = None
    messages = []
    sent_at = time.time()
    first_delta_at = 0.0
    for message in fleet.stub().StreamComplete(request, timeout=60):
        if events_when_first_delta_arrived is None and any(d.token_ids for d in message.deltas):
            first_delta_at = time.time()
            events_when_first_delta_arrived = [
                event_from_fields(f).WhichOneof("event") for _, f in client.xrange(_stream_of(rid))]
        messages.append(message)
    assert events_when_first_delta_arrived is not None
    written = [(int(entry_id.split(b"-")[0]) / 1000 - sent_at,
                event_from_fields(f).WhichOneof("event"))
               for entry_id, f in client.xrange(_stream_of(rid))]
    assert "final" not in events_when_first_delta_arrived, (
        "the first delta reached the client only after generation had ended: it arrived "
        f"{first_delta_at - sent_at:.3f} s after the call; the worker wrote (s after the call, "
        f"event): {[(round(t, 3), kind) for t, kind in written]}")
    with_tokens = [m for m in messages if any(d.token_ids for d in m.deltas)]
    # vLLM merges steps its consumer has not read yet, so a busy machine sends fewer, larger
    # deltas; what must hold is that they come in pieces and start before generation ends.
    assert len(with_tokens) >= 3, "deltas must arrive as generated, not in one piece"
    tokens = [t for m in with_tokens for d in m.deltas for t in d.token_ids]
    final = messages[-1]
    assert len(tokens) == 400 == final.usage.completion_tokens
    assert final.timings.time_to_first_token_ms < final.timings.total_ms
    # The summary message says who served it, as a unary response does.
    assert (final.served_by.model, final.served_by.model_version, final.served_by.worker,
            final.served_by.pool) == (CHAT_7B, "v1", "w-7b", "7b")


def test_requests_run_only_in_their_own_pool(fleet: Fleet) -> None:
    stub = fleet.stub()
    for i in range(6):
        model, worker, pool = ((CHAT_7B, "w-7b", "7b") if i % 2 == 0
                               else (BASE_34B, "w-34b-tp2", "34b"))
        response = stub.Complete(api.CompleteRequest(model=model, prompt=f"x = {i}",
                                                     sampling=_sampling(4)), timeout=60)
        assert (response.served_by.worker, response.served_by.pool) == (worker, pool)



def test_continuous_batching_runs_8_requests_in_one_engine_at_once(fleet: Fleet) -> None:
    """Eight requests sent together run together: most of them are generating at one moment
    (each from its STARTED to its FINAL event, timed by Redis's stream entry ids), not one
    after another. Times are printed, not asserted: on a loaded 2-core box they say more about
    the box (CI of 2026-12-03 11:13: a 1.5x speed-up, against 2.5x and more in other runs);
    nor is the worker's heartbeat sampled, which a busy engine loop can hold back."""
    stub = fleet.stub()
    client = redis.Redis.from_url(fleet.redis_url)

    def one(i: int, rid: str = "") -> float:
        started = time.perf_counter()
        response = stub.Complete(api.CompleteRequest(
            model=CHAT_7B, prompt=f"# task {i}\ndef solve():",
            sampling=_sampling(192, ignore_eos=True),
            options=pb.RequestOptions(request_id=rid)), timeout=120)
        assert response.usage.completion_tokens == 192
        return time.perf_counter() - started

    def generating_ms(rid: str) -> tuple[int, int]:
        """When the request's STARTED and FINAL events were written (ms)."""
        kinds = {event_from_fields(fields).WhichOneof("event"): int(entry.split(b"-")[0])
                 for entry, fields in client.xrange(_stream_of(rid))}
        return kinds["started"], kinds["final"]

    time.sleep(_ENGINE_SPIN_AFTER_LAST_STEP_S)
    one(0)  # warm-up
    single = one(1)
    rids = [uuid.uuid4().hex for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        started = time.perf_counter()
        list(pool.map(one, range(8), rids))
        concurrent = time.perf_counter() - started
    spans = [generating_ms(rid) for rid in rids]
    most_at_once = max(sum(1 for start, end in spans if start <= moment < end)
                       for moment, _ in spans)
    print(f"\nbatching: 1 request {single:.3f} s, 8 concurrent {concurrent:.3f} s, "
          f"{most_at_once} generating at once")
    assert most_at_once >= 4, f"at most {most_at_once} of 8 concurrent requests ran at once"


# A few representative refusals through the real gateway process; every validation case is
# covered in-process by tests/gateway/test_servicer.py and tests/gateway/test_validation.py.
# (field, request, what the message must also say: the limit and the value)
BAD_REQUESTS = [
    ("sampling.top_p", api.CompleteRequest(
        model=CHAT_7B, prompt="x", sampling=pb.SamplingParams(top_p=1.5),
        options=pb.RequestOptions(request_id=uuid.uuid4().hex)),
     ("greater than 0 and at most 1", "got 1.5")),
    ("options.request_id", api.CompleteRequest(
        model=CHAT_7B, prompt="x", options=pb.RequestOptions(request_id="has space")),
     ("1-128 characters of [A-Za-z0-9._:-]", "'has space'")),
]


def _assert_rejected_before_queueing(fleet: Fleet, call: object, request: object,
                                     code: grpc.StatusCode, *needles: str) -> str:
    client = redis.Redis.from_url(fleet.redis_url)
    model = request.model  # type: ignore[attr-defined]
    queue = fleet.store.get_version(model if model in (CHAT_7B, BASE_34B, UNSERVED)
                                    else CHAT_7B).queue
    depth_before = client.llen(queue)
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)  # type: ignore[operator]
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details()
    for needle in needles:
        assert needle in details, details
    # Refused in the gateway: nothing was queued, and no worker opened a stream for it.
    assert client.llen(queue) == depth_before == 0, "a rejected request was queued"
    rid = request.options.request_id  # type: ignore[attr-defined]
    if rid:
        time.sleep(0.2)
        assert not client.exists(_stream_of(rid)), "a rejected request reached a worker"
    return details


@pytest.mark.parametrize(("field", "request_", "says"), BAD_REQUESTS,
                         ids=[f for f, _, _ in BAD_REQUESTS])
def test_bad_field_is_invalid_argument_and_reaches_no_worker(
        fleet: Fleet, field: str, request_: api.CompleteRequest, says: tuple[str, ...]) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    _assert_rejected_before_queueing(fleet, fleet.stub().Complete, request_,
                                     grpc.StatusCode.INVALID_ARGUMENT, field + ":", *says)
    # The rich status survives the real gateway process: a BadRequest naming the field.
    with pytest.raises(grpc.RpcError) as caught:
        fleet.stub().Complete(request_, timeout=10)
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == [field]


def test_over_long_prompt_is_refused_by_the_gateway(fleet: Fleet) -> None:
    request = api.CompleteRequest(model=CHAT_7B, prompt="word " * 2100, sampling=_sampling(8),
                                  options=pb.RequestOptions(request_id=uuid.uuid4().hex))
    details = _assert_rejected_before_queueing(fleet, fleet.stub().Complete, request,
                                               grpc.StatusCode.INVALID_ARGUMENT, "prompt:")
    assert "2048" in details


def test_unknown_model_is_not_found_and_names_the_served_ones(fleet: Fleet) -> None:
    details = _assert_rejected_before_queueing(
        fleet, fleet.stub().Complete, api.CompleteRequest(model="no-such-model", prompt="x"),
        grpc.StatusCode.NOT_FOUND, "no-such-model")
    assert CHAT_7B in details


def test_model_without_live_worker_is_unavailable_at_once(fleet: Fleet) -> None:
    started = time.perf_counter()
    details = _assert_rejected_before_queueing(
        fleet, fleet.stub().Complete, api.CompleteRequest(model=UNSERVED, prompt="x"),
        grpc.StatusCode.UNAVAILABLE, "no live worker", UNSERVED)
    assert time.perf_counter() - started < 2, details


def test_worker_gone_silent_gives_deadline_exceeded_within_the_deadline(fleet: Fleet) -> None:
    """A worker that died a moment ago still looks alive; the deadline must still hold."""
    client = redis.Redis.from_url(fleet.redis_url)
    queue = fleet.store.get_version(UNSERVED).queue
    client.zadd(live_workers(queue), {"ghost": time.time() + 60})
    try:
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as caught:
            fleet.stub().Complete(api.CompleteRequest(model=UNSERVED, prompt="x"), timeout=3.0)
        elapsed = time.perf_counter() - started
    finally:
        client.zrem(live_workers(queue), "ghost")
        client.delete(queue)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no worker started" in caught.value.details(), caught.value.details()
    assert queue in caught.value.details()
    assert elapsed < 3.0


def test_stopped_worker_gives_unavailable(fleet: Fleet) -> None:
    worker = fleet.start_worker("w-spare", SPARE)
    stub = fleet.stub()
    ok = stub.Complete(api.CompleteRequest(model=SPARE, prompt="x", sampling=_sampling(2)),
                       timeout=60)
    assert ok.served_by.worker == "w-spare"
    worker.stop()
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Complete(api.CompleteRequest(model=SPARE, prompt="x"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "no live worker" in caught.value.details()
    assert time.perf_counter() - started < 5


def test_cancelled_stream_aborts_the_engine_request(fleet: Fleet) -> None:
    rid = uuid.uuid4().hex
    call = fleet.stub().StreamComplete(api.StreamCompleteRequest(
        model=CHAT_7B, prompt="while True:", sampling=_sampling(1900, ignore_eos=True),
        options=pb.RequestOptions(request_id=rid)), timeout=120)
    for message in call:
        if any(d.token_ids for d in message.deltas):
            break
    client = redis.Redis.from_url(fleet.redis_url)
    generating = _worker_status_after(client, "w-7b", time.time())
    assert int(generating[b"engine_requests"]) >= 1, generating
    call.cancel()
    final = None
    deadline = time.monotonic() + 20
    while final is None and time.monotonic() < deadline:
        for _, fields in client.xrange(_stream_of(rid)):
            event = event_from_fields(fields)
            if event.HasField("final"):
                final = event.final
        time.sleep(0.1)
    assert final is not None, "the worker never finished the cancelled request"
    assert list(final.finish_reasons) == [pb.FINISH_REASON_CANCELLED]
    # Cut short, not run to its 1,900 tokens. How short depends on the machine's speed: in the
    # CI of c87d62c (2026-12-03, a faster VM) the cancel landed after 1,019 tokens; the proof
    # that vLLM stopped is the status below.
    assert final.completion_tokens < 1900, final
    # vLLM itself holds nothing any more: had the worker only stopped forwarding (generation
    # left running or its generator left open), vLLM would hold it for ~1,800 more tokens.
    after = _worker_status_after(client, "w-7b", time.time())
    assert (int(after[b"engine_requests"]), int(after[b"tasks_in_flight"])) == (0, 0), after


def _worker_status_after(client: redis.Redis, worker: str, since: float) -> dict[bytes, bytes]:
    """The worker's status hash from its first heartbeat after `since`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = client.hgetall(worker_status(worker))
        if status and float(status[b"updated_at"]) > since:
            return status
        time.sleep(0.05)
    raise AssertionError(f"no heartbeat from {worker} after {since}")


def test_stream_cancelled_while_queued_is_flagged_so_no_worker_runs_it(fleet: Fleet) -> None:
    """Cancelled after the gateway's acknowledgement, before any worker took it."""
    client = redis.Redis.from_url(fleet.redis_url)
    queue = fleet.store.get_version(UNSERVED).queue
    client.zadd(live_workers(queue), {"ghost": time.time() + 60})
    rid = uuid.uuid4().hex
    try:
        call = fleet.stub().StreamComplete(api.StreamCompleteRequest(
            model=UNSERVED, prompt="x", options=pb.RequestOptions(request_id=rid)), timeout=30)
        ack = next(call)
        assert ack.request_id == rid and not ack.deltas
        assert client.llen(queue) == 1
        call.cancel()
        deadline = time.monotonic() + 10
        while not client.exists(cancelled_flag(request_scope("", rid))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.exists(cancelled_flag(request_scope("", rid))), "the queued request was never flagged"
    finally:
        client.zrem(live_workers(queue), "ghost")
        client.delete(queue)


def test_health_and_reflection_are_served(fleet: Fleet) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(fleet.target)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="codellama.fleet.v1.InferenceService"), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "codellama.fleet.v1.InferenceService" in names


def test_list_models_shows_modes_and_limits(fleet: Fleet) -> None:
    models = {m.name: m for m in fleet.stub().ListModels(api.ListModelsRequest(),
                                                          timeout=5).models}
    assert list(models[CHAT_7B].modes) == ["completion", "infill", "chat"]
    assert list(models[BASE_34B].modes) == ["completion"]
    assert models[CHAT_7B].context_limit == 2048 and models[BASE_34B].pool == "34b"



def test_worker_never_executes_a_pickled_task(fleet: Fleet) -> None:
    """Only JSON is accepted: a pickle-encoded message on the queue is refused, not run."""
    import base64
    import json
    import pickle

    from fleet_common.keys import GENERATE_TASK
    from fleet_common.task_message import task_message
    from fleet_common.wire import GenerationTask, Sampling

    served = fleet.store.get_version(CHAT_7B)
    queue, rid, now = served.queue, uuid.uuid4().hex, time.time()
    task = task_to_json(GenerationTask(  # it would run and write its stream if accepted
        request_id=rid, model=CHAT_7B, model_version=served.version, attempt=1,
        prompt_token_ids=[1, 822], sampling=Sampling(max_tokens=2, n=1, top_p=1.0,
                                                     repetition_penalty=1.0),
        deadline_unix=now + 60, enqueued_at_unix=now))
    message = json.loads(task_message(GENERATE_TASK, rid, (task,), queue,
                                      expires_unix=now + 60, now_unix=now))
    message["content-type"] = "application/x-python-serialize"
    message["content-encoding"] = "binary"
    message["body"] = base64.b64encode(pickle.dumps(((task,), {}, {}))).decode()
    client = redis.Redis.from_url(fleet.redis_url)
    client.lpush(queue, json.dumps(message))
    time.sleep(3)
    assert client.llen(queue) == 0, "the worker should have taken the message off the queue"
    assert not client.exists(_stream_of(rid)), "a pickled task must never run"
    log = fleet.workers["w-7b"].log_path.read_text()
    assert "ContentDisallowed" in log or "disallowed" in log.lower(), log[-2000:]
    ok = fleet.stub().Complete(api.CompleteRequest(model=CHAT_7B, prompt="x",
                                                   sampling=_sampling(2)), timeout=60)
    assert ok.usage.completion_tokens == 2


def test_task_whose_deadline_passed_in_the_queue_is_discarded_not_run(fleet: Fleet) -> None:
    """The request's deadline is the Celery task's expiry: a worker that takes the message too
    late drops it (acknowledged, never generated), so nobody waits on work no one will read."""
    from fleet_common.keys import GENERATE_TASK
    from fleet_common.task_message import task_message
    from fleet_common.wire import GenerationTask, Sampling

    served = fleet.store.get_version(CHAT_7B)
    queue, rid, now = served.queue, uuid.uuid4().hex, time.time()
    task = task_to_json(GenerationTask(
        request_id=rid, model=CHAT_7B, model_version=served.version, attempt=1,
        prompt_token_ids=[1, 822], sampling=Sampling(max_tokens=2, n=1, top_p=1.0,
                                                     repetition_penalty=1.0),
        deadline_unix=now - 5, enqueued_at_unix=now - 10))
    client = redis.Redis.from_url(fleet.redis_url)
    client.lpush(queue, task_message(GENERATE_TASK, rid, (task,), queue,
                                     expires_unix=now - 5, now_unix=now - 10))
    deadline = time.monotonic() + 10
    while client.llen(queue) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    assert client.llen(queue) == 0, "the worker should have taken the message off the queue"
    assert not client.exists(_stream_of(rid)), "an expired task must not run"
    log = fleet.workers["w-7b"].log_path.read_text()
    assert f"Discarding revoked task: {GENERATE_TASK}[{rid}]" in log, log[-2000:]
