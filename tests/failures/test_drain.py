"""SIGTERM to a worker (the process alone, as Kubernetes sends it) drains it: it stops being
admitted to at once, requests sent meanwhile go to the other worker, its stream finishes on it
with its engine alive, and it exits 0. A stream that outlives a short grace continues on
another worker."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable

import grpc
import pytest
import redis

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from fleet_common.keys import draining_workers, live_workers, request_scope, result_stream
from fleet_common.wire import ErrorCode, StreamEvent, event_from_fields
from tests.e2e.fleet_harness import Fleet
from tests.failures.conftest import MODEL, WORKERS, ensure_workers

pytestmark = pytest.mark.e2e
TENANT_A = (("authorization", "Bearer key-a"),)
PROMPT = "class Stack:"
TOKENS = 240
LONG_TOKENS = 1000  # outlives a 2 s grace on any machine that runs these tests
SHORT_GRACE_WORKER = "wf-short"


class Stream:
    """A greedy streaming completion, read on a thread of its own."""

    def __init__(self, fleet: Fleet, tokens: int) -> None:
        self.rid = uuid.uuid4().hex
        self.call = fleet.stub().StreamComplete(api.StreamCompleteRequest(
            model=MODEL, prompt=PROMPT,
            sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True),
            options=pb.RequestOptions(request_id=self.rid)), metadata=TENANT_A, timeout=180)
        self.ids: list[int] = []
        self.last: api.StreamCompleteResponse | None = None
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.call:
                for delta in message.deltas:
                    self.ids.extend(delta.token_ids)
                self.last = message
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()

    def wait_for_tokens(self, count: int, timeout: float = 60) -> None:
        _wait(lambda: len(self.ids) >= count or self.done.is_set(), timeout, f"{count} tokens")
        assert len(self.ids) >= count, (self.error, len(self.ids))

    def finish(self, timeout: float = 180) -> api.StreamCompleteResponse:
        assert self.done.wait(timeout), "the stream did not finish"
        assert self.error is None, f"{self.error.code()}: {self.error.details()}"
        assert self.last is not None
        return self.last


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def _events(fleet: Fleet, rid: str) -> list[StreamEvent]:
    client = redis.Redis.from_url(fleet.redis_url)
    return [event_from_fields(f)
            for _, f in client.xrange(result_stream(request_scope("tenant-a", rid)))]


def _started(fleet: Fleet, rid: str) -> list[tuple[int, str]]:
    """(attempt, worker) of each STARTED event."""
    return [(e.attempt, e.started.worker) for e in _events(fleet, rid) if e.HasField("started")]


def _sets(fleet: Fleet, worker: str) -> tuple[bool, bool]:
    """Whether `worker` is in its queue's live set and in its draining set."""
    queue = fleet.store.get_version(MODEL).queue
    client = redis.Redis.from_url(fleet.redis_url)
    return (client.zscore(live_workers(queue), worker) is not None,
            client.zscore(draining_workers(queue), worker) is not None)


def _stream_on(fleet: Fleet, worker: str, tokens: int, tries: int = 20) -> Stream:
    """A stream that `worker` serves: the queue is shared, so streams that another worker
    picked up are cancelled until one lands on it."""
    for _ in range(tries):
        stream = Stream(fleet, tokens)
        _wait(lambda rid=stream.rid: bool(_started(fleet, rid)), 30, "the stream to start")
        if _started(fleet, stream.rid)[0][1] == worker:
            return stream
        stream.call.cancel()
        stream.done.wait(30)
    raise AssertionError(f"no stream landed on {worker} in {tries} tries")


def test_sigterm_drains_a_worker_while_the_other_takes_new_requests(fleet: Fleet) -> None:
    ensure_workers(fleet)
    try:
        stream = Stream(fleet, TOKENS)
        stream.wait_for_tokens(20)
        [(_, victim)] = _started(fleet, stream.rid)
        [other] = set(WORKERS) - {victim}
        process = fleet.workers[victim].process
        os.kill(process.pid, signal.SIGTERM)
        _wait(lambda: _sets(fleet, victim) == (False, True), 5, f"{victim} to be draining")

        assert process.poll() is None, "the drain ended before the new requests were sent"
        replies: list[api.CompleteResponse | grpc.RpcError] = []

        def complete() -> None:
            try:
                replies.append(fleet.stub().Complete(api.CompleteRequest(
                    model=MODEL, prompt="def add(a, b):",
                    sampling=pb.SamplingParams(max_tokens=8, ignore_eos=True)),
                    metadata=TENANT_A, timeout=30))
            except grpc.RpcError as exc:
                replies.append(exc)

        callers = [threading.Thread(target=complete) for _ in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=60)
        assert all(isinstance(r, api.CompleteResponse) for r in replies) and len(replies) == 3, [
            f"{r.code()}: {r.details()}" for r in replies if isinstance(r, grpc.RpcError)]
        assert {r.served_by.worker for r in replies} == {other}

        last = stream.finish()
        assert len(stream.ids) == TOKENS and last.usage.completion_tokens == TOKENS
        assert last.served_by.worker == victim
        assert _started(fleet, stream.rid) == [(1, victim)], "the stream was re-run: engine lost"
        assert process.wait(timeout=90) == 0
        assert _sets(fleet, victim) == (False, False)
    finally:
        ensure_workers(fleet)


def test_a_stream_outliving_the_drain_grace_continues_on_another_worker(fleet: Fleet) -> None:
    ensure_workers(fleet)
    proc = fleet.spawn_worker(SHORT_GRACE_WORKER, MODEL, {"FLEET_DRAIN_GRACE_S": "2"})
    try:
        fleet.wait_for_worker(SHORT_GRACE_WORKER, MODEL)
        stream = _stream_on(fleet, SHORT_GRACE_WORKER, LONG_TOKENS)
        stream.wait_for_tokens(10)
        os.kill(proc.process.pid, signal.SIGTERM)
        stopped_at = time.monotonic()
        assert proc.process.wait(timeout=60) == 0
        assert time.monotonic() - stopped_at < 30

        last = stream.finish()
        assert len(stream.ids) == LONG_TOKENS and last.usage.completion_tokens == LONG_TOKENS
        started = _started(fleet, stream.rid)
        # Attempt 1 on the draining worker, then a re-run on one of the others. The re-run is
        # usually attempt 2; when the draining worker's consumer had already taken attempt 2's
        # message off the queue (its last blocking pop), the gateway re-runs it once more after
        # the liveness window and attempt 2, back later, is skipped as stale.
        attempts = [a for a, _ in started]
        assert attempts[0] == 1 and attempts == sorted(set(attempts)) and len(attempts) >= 2, \
            started
        assert started[0][1] == SHORT_GRACE_WORKER and started[-1][1] in WORKERS, started
        assert last.served_by.worker == started[-1][1]
        [evicted] = [e for e in _events(fleet, stream.rid) if e.HasField("error")]
        assert (evicted.attempt, evicted.error.code) == (1, ErrorCode.ERROR_CODE_UNAVAILABLE)
        assert _sets(fleet, SHORT_GRACE_WORKER) == (False, False)
    finally:
        fleet.workers.pop(SHORT_GRACE_WORKER).stop()
