"""Redis killed under the running fleet and started again on its port 5 s later (no restart of
the gateway or the workers): calls in flight end UNAVAILABLE, never INTERNAL; new calls are
refused with UNAVAILABLE within 50 ms; once Redis is back, calls are served again, and every
task a worker received after the restart ran (none acknowledged without running)."""

from __future__ import annotations

import re
import statistics
import threading
import time
import uuid

import grpc
import pytest
import redis

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_common.keys import live_workers, request_scope, result_stream
from fleet_common.wire import event_from_fields
from tests.e2e.fleet_harness import Fleet
from tests.failures.conftest import MODEL, WORKERS, ensure_workers
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e
TENANT_A = (("authorization", "Bearer key-a"),)
PROMPT = "class Stack:"
TOKENS = 1200  # about 5 s: the kill lands mid-stream even when the client reads late
AFTER_TOKENS = 32
OUTAGE_S = 5.0
REFUSAL_BOUND_S = 0.050


def _greedy(max_tokens: int) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def _complete(stub: InferenceServiceStub, rid: str, max_tokens: int = AFTER_TOKENS,
              timeout: float = 120) -> api.CompleteResponse:
    return stub.Complete(api.CompleteRequest(model=MODEL, prompt=PROMPT,
                                             sampling=_greedy(max_tokens),
                                             options=pb.RequestOptions(request_id=rid)),
                         metadata=TENANT_A, timeout=timeout)


def _wait_for_heartbeats(fleet: Fleet, timeout_s: float) -> float:
    """Seconds until every worker's heartbeat is back in the (restarted, empty) Redis."""
    client = redis.Redis.from_url(fleet.redis_url)
    queue = fleet.store.get_version(MODEL).queue
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if all(client.zscore(live_workers(queue), name) is not None for name in WORKERS):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"worker heartbeats did not come back within {timeout_s} s")


def _wait_until_served(stub: InferenceServiceStub, timeout_s: float) -> float:
    """Seconds until a one-token call succeeds; the calls before it must be UNAVAILABLE."""
    started = time.monotonic()
    while True:
        try:
            _complete(stub, uuid.uuid4().hex, max_tokens=1, timeout=30)
            return time.monotonic() - started
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            assert time.monotonic() - started < timeout_s, f"not served again: {exc.details()}"
            time.sleep(0.05)


def _log_lines(fleet: Fleet, worker: str, since: float) -> list[str]:
    """The worker's log lines stamped at or after `since` (unix time)."""
    lines = []
    for line in fleet.workers[worker].log_path.read_text(errors="replace").splitlines():
        stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
        if stamp and time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) + \
                int(stamp[2]) / 1000 >= since:
            lines.append(line)
    return lines


def _in_flight_unary(stub: InferenceServiceStub, result: dict[str, object]) -> None:
    try:
        result["response"] = _complete(stub, uuid.uuid4().hex, TOKENS)
    except grpc.RpcError as exc:
        result["error"] = exc


def test_a_redis_outage_fails_calls_unavailable_and_the_fleet_heals_without_restarts(
        fleet: Fleet, failures_redis: RedisServer | None) -> None:
    if failures_redis is None:
        pytest.skip("needs a redis-server of its own to kill (FLEET_TEST_REDIS_URL is shared)")
    ensure_workers(fleet)
    stub = fleet.stub()
    reference = _complete(stub, uuid.uuid4().hex)
    gateway_pid = fleet.gateway.process.pid if fleet.gateway else None
    worker_pids = {name: fleet.workers[name].process.pid for name in WORKERS}

    # Redis dies while a stream and a unary call are in flight.
    stream = stub.StreamComplete(api.StreamCompleteRequest(
        model=MODEL, prompt=PROMPT, sampling=_greedy(TOKENS)), metadata=TENANT_A, timeout=120)
    unary: dict[str, object] = {}
    caller = threading.Thread(target=_in_flight_unary, args=(stub, unary))
    tokens, killed_at, ended = 0, None, None
    try:
        for message in stream:
            tokens += sum(len(delta.token_ids) for delta in message.deltas)
            if tokens >= 20 and killed_at is None:
                caller.start()
                time.sleep(0.3)
                failures_redis.kill()
                killed_at = time.monotonic()
    except grpc.RpcError as exc:
        ended = exc
    assert killed_at is not None and tokens < TOKENS, \
        f"the stream ended before the kill, with {tokens} tokens"
    assert ended is not None, f"the stream ended OK after Redis was killed, with {tokens} tokens"
    assert ended.code() == grpc.StatusCode.UNAVAILABLE, ended.details()
    caller.join(timeout=60)
    assert isinstance(unary.get("error"), grpc.RpcError), unary
    assert unary["error"].code() == grpc.StatusCode.UNAVAILABLE, unary["error"].details()

    # New calls during the outage are refused at once.
    took = []
    for _ in range(5):
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            _complete(stub, uuid.uuid4().hex, timeout=10)
        took.append(time.perf_counter() - started)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert "unreachable" in refused.value.details(), refused.value.details()
    assert statistics.median(took) < REFUSAL_BOUND_S, took

    # Redis comes back on its port; the same processes serve again.
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))
    restarted_unix = time.time()
    failures_redis.start()
    _wait_for_heartbeats(fleet, timeout_s=30)
    _wait_until_served(stub, timeout_s=10)  # the gateway notices within a probe or two
    rids = [uuid.uuid4().hex for _ in range(4)]
    answers: dict[str, api.CompleteResponse | grpc.RpcError] = {}

    def call(rid: str) -> None:
        try:
            answers[rid] = _complete(stub, rid)
        except grpc.RpcError as exc:
            answers[rid] = exc

    callers = [threading.Thread(target=call, args=(rid,)) for rid in rids]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(timeout=150)
    for rid in rids:
        answer = answers.get(rid)
        assert isinstance(answer, api.CompleteResponse), answer
        assert list(answer.choices[0].token_ids) == list(reference.choices[0].token_ids)
    assert fleet.gateway is not None and fleet.gateway.process.pid == gateway_pid
    assert {name: fleet.workers[name].process.pid for name in WORKERS} == worker_pids
    assert all(fleet.workers[name].alive() for name in WORKERS)

    # Every task received after the restart ran: one STARTED per request, of its first attempt
    # (a task acknowledged without running would have been re-run by the gateway as attempt 2),
    # and each worker's log has a "starting" line for every task it received.
    client = redis.Redis.from_url(fleet.redis_url)
    for rid in rids:
        scope = request_scope("tenant-a", rid)
        started = [event_from_fields(fields).attempt
                   for _, fields in client.xrange(result_stream(scope))
                   if event_from_fields(fields).HasField("started")]
        assert started == [1], (rid, started)
    for name in WORKERS:
        lines = _log_lines(fleet, name, restarted_unix)
        received = set(re.findall(r"Task fleet\.generate\[([^\]]+)\] received", "\n".join(lines)))
        ran = {f"{scope}#{attempt}" for scope, attempt in re.findall(
            r"request (\S+) attempt (\d+) starting", "\n".join(lines))}
        assert received <= ran, (name, sorted(received - ran))
        assert not [line for line in lines if "raised unexpected" in line], name
