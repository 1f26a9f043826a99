"""Request ids belong to a tenant and are idempotent: the same request under an id gets the
same result (attaching to a running generation), a different one is refused, and no tenant
can reach another's request by its id."""

from __future__ import annotations

import threading
import uuid

import grpc
import pytest
import redis

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from fleet_common.keys import request_scope, result_stream
from fleet_common.wire import event_from_fields
from tests.e2e.fleet_harness import Fleet
from tests.failures.conftest import MODEL, ensure_workers

pytestmark = pytest.mark.e2e
A = (("authorization", "Bearer key-a"),)
B = (("authorization", "Bearer key-b"),)


def _request(rid: str, prompt: str, max_tokens: int = 16) -> api.CompleteRequest:
    return api.CompleteRequest(model=MODEL, prompt=prompt, options=pb.RequestOptions(
        request_id=rid), sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def _starts(fleet: Fleet, tenant: str, rid: str) -> int:
    client = redis.Redis.from_url(fleet.redis_url)
    return sum(event_from_fields(f).HasField("started")
               for _, f in client.xrange(result_stream(request_scope(tenant, rid))))


def test_another_tenant_using_my_request_id_never_sees_my_result(fleet: Fleet) -> None:
    ensure_workers(fleet)
    rid = uuid.uuid4().hex
    mine = fleet.stub().Complete(_request(rid, "def secret_of_a():"), metadata=A, timeout=60)
    theirs = fleet.stub().Complete(_request(rid, "import os"), metadata=B, timeout=60)
    assert theirs.usage.prompt_tokens != mine.usage.prompt_tokens, "B got A's result"
    assert theirs.choices[0].token_ids != mine.choices[0].token_ids
    # The same request under the same id in another tenant is another request: it runs.
    shared = uuid.uuid4().hex
    fleet.stub().Complete(_request(shared, "def f():"), metadata=A, timeout=60)
    fleet.stub().Complete(_request(shared, "def f():"), metadata=B, timeout=60)
    assert (_starts(fleet, "tenant-a", shared), _starts(fleet, "tenant-b", shared)) == (1, 1)


def test_the_same_request_under_one_id_returns_the_same_result_without_running_again(
        fleet: Fleet) -> None:
    rid = uuid.uuid4().hex
    first = fleet.stub().Complete(_request(rid, "def add(a, b):"), metadata=A, timeout=60)
    second = fleet.stub().Complete(_request(rid, "def add(a, b):"), metadata=A, timeout=60)
    assert second.choices == first.choices and second.usage == first.usage
    assert _starts(fleet, "tenant-a", rid) == 1


def test_a_different_request_under_a_used_id_is_refused_naming_the_id(fleet: Fleet) -> None:
    rid = uuid.uuid4().hex
    fleet.stub().Complete(_request(rid, "def add(a, b):"), metadata=A, timeout=60)
    with pytest.raises(grpc.RpcError) as caught:
        fleet.stub().Complete(_request(rid, "def sub(a, b):"), metadata=A, timeout=60)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert rid in caught.value.details()


def test_concurrent_callers_with_one_id_share_one_generation(fleet: Fleet) -> None:
    rid = uuid.uuid4().hex
    results: list[object] = []

    def call(streaming: bool) -> None:
        try:
            if streaming:
                messages = list(fleet.stub().StreamComplete(api.StreamCompleteRequest(
                    model=MODEL, prompt="class Queue:", options=pb.RequestOptions(
                        request_id=rid), sampling=pb.SamplingParams(
                        max_tokens=120, ignore_eos=True)), metadata=A, timeout=90))
                results.append([t for m in messages for d in m.deltas for t in d.token_ids])
            else:
                response = fleet.stub().Complete(_request(rid, "class Queue:", 120),
                                                 metadata=A, timeout=90)
                results.append(list(response.choices[0].token_ids))
        except grpc.RpcError as exc:
            results.append(exc)

    callers = [threading.Thread(target=call, args=(i % 2 == 0,)) for i in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=120)
    assert len(results) == 4 and all(isinstance(r, list) for r in results), results
    assert all(r == results[0] for r in results) and len(results[0]) == 120  # type: ignore[arg-type]
    assert _starts(fleet, "tenant-a", rid) == 1, "callers of one id must share one generation"


def test_one_caller_leaving_does_not_cancel_the_generation_another_shares(
        fleet: Fleet) -> None:
    rid = uuid.uuid4().hex
    request = api.StreamCompleteRequest(model=MODEL, prompt="class Tree:", options=pb.RequestOptions(
        request_id=rid), sampling=pb.SamplingParams(max_tokens=150, ignore_eos=True))
    leaver = fleet.stub().StreamComplete(request, metadata=A, timeout=90)
    next(leaver)
    stayer = fleet.stub().StreamComplete(request, metadata=A, timeout=90)
    first = next(stayer)
    assert first.request_id == rid
    leaver.cancel()
    tokens = [t for m in stayer for d in m.deltas for t in d.token_ids]
    assert len(tokens) == 150
