"""RequestRunner over a real Redis, the real stream writer and InFlight, and a fake engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_cli.processes import free_port, start_redis
from fleet_common.keys import (
    attempt_started,
    cancelled_flag,
    request_claim,
    request_scope,
    result_stream,
)
from fleet_common.wire import (
    ErrorCode,
    GenerationTask,
    Sampling,
    StreamEvent,
    event_from_fields,
)
from tests.support.fake_engine import FIRST_TOKEN_ID, FakeEngine, Script
from workers.engine import EngineRequestRejected, EngineUnavailable
from workers.generation import InFlight, RequestRunner
from workers.result_stream import ResultStreamWriter

# A stuck Redis call or generation fails its test in a minute instead of holding the whole run.
pytestmark = pytest.mark.timeout(60)

PROMPT = [1, 822, 285, 29898]
STOPS = [2, 32010]
SERVE_TIMEOUT_S = 10.0


@dataclass
class Worker:
    engine: FakeEngine
    in_flight: InFlight
    runner: RequestRunner
    redis: Redis


def _worker(redis: Redis, engine: FakeEngine | None = None) -> Worker:
    engine = engine or FakeEngine()
    in_flight = InFlight()
    runner = RequestRunner(engine=engine,
                           writer=ResultStreamWriter(redis, ttl_s=120, max_len=1000),
                           redis=redis, in_flight=in_flight, worker_name="w-test", pool="7b")
    return Worker(engine, in_flight, runner, redis)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def worker(redis: Redis) -> Worker:
    return _worker(redis)


def _task(*, tenant: str = "acme", request_id: str | None = None, attempt: int = 1,
          deadline_in_s: float = 60.0, n: int = 1, priority: int = pb.PRIORITY_NORMAL
          ) -> GenerationTask:
    now = time.time()
    sampling = Sampling(max_tokens=64, temperature=0.7 if n > 1 else 0.0, top_p=0.9, top_k=40,
                        repetition_penalty=1.1, stop_sequences=["\n\n"], n=n, seed=7)
    return GenerationTask(
        request_id=request_id or uuid.uuid4().hex, tenant=tenant, model="tiny", model_version="v3",
        prompt_token_ids=PROMPT, stop_token_ids=STOPS, sampling=sampling, priority=priority,
        deadline_unix=now + deadline_in_s, enqueued_at_unix=now - 0.25, attempt=attempt)


def _scope(task: GenerationTask) -> str:
    return request_scope(task.tenant, task.request_id)


def _run_id(task: GenerationTask) -> str:
    """The attempt's name: its engine request id and what a cancel message names."""
    return f"{_scope(task)}#{task.attempt}"


async def _events(redis: Redis, task: GenerationTask) -> list[StreamEvent]:
    return [event_from_fields(f) for _, f in await redis.xrange(result_stream(_scope(task)))]


def _kinds(events: list[StreamEvent]) -> list[str | None]:
    return [e.WhichOneof("event") for e in events]


def _delta_tokens(events: list[StreamEvent]) -> list[int]:
    return [t for e in events if e.HasField("delta") for c in e.delta.choices for t in c.token_ids]


async def _serve(worker: Worker, task: GenerationTask) -> None:
    await asyncio.wait_for(worker.runner.serve(task), SERVE_TIMEOUT_S)


async def test_events_are_started_deltas_final_all_of_the_tasks_attempt(worker: Worker) -> None:
    task = _task(attempt=3)
    await _serve(worker, task)
    events = await _events(worker.redis, task)
    assert _kinds(events) == ["started", "delta", "delta", "delta", "final"]
    assert [e.attempt for e in events] == [3] * 5
    started, final = events[0].started, events[-1].final
    assert (started.worker, started.pool, started.model_version) == ("w-test", "7b", "v3")
    assert 250 <= started.queue_wait_ms < 5000
    assert _delta_tokens(events) == [FIRST_TOKEN_ID, FIRST_TOKEN_ID + 1, FIRST_TOKEN_ID + 2]
    assert [c.text for e in events[1:-1] for c in e.delta.choices] == ["<0>", "<1>", "<2>"]
    assert list(final.finish_reasons) == [pb.FINISH_REASON_LENGTH]
    assert (final.prompt_tokens, final.completion_tokens) == (len(PROMPT), 3)
    assert (final.worker, final.pool, final.model_version) == ("w-test", "7b", "v3")
    assert final.engine_ms > 0
    assert not worker.in_flight.generations and worker.engine.unfinished_requests() == 0


async def test_the_engine_gets_the_tasks_prompt_stops_and_sampling(worker: Worker) -> None:
    task = _task(attempt=2)
    await _serve(worker, task)
    [request] = worker.engine.requests
    assert request.request_id == _run_id(task) == f"acme/{task.request_id}#2"
    assert request.prompt_token_ids == PROMPT and request.stop_token_ids == STOPS
    assert request.sampling == task.sampling
    assert not worker.engine.aborted


@pytest.mark.parametrize(("priority", "engine_priority"), [
    (pb.PRIORITY_HIGH, 0), (pb.PRIORITY_NORMAL, 1), (pb.PRIORITY_UNSPECIFIED, 1),
    (pb.PRIORITY_LOW, 2)])
async def test_priority_maps_to_the_engines_lower_runs_first(worker: Worker, priority: int,
                                                             engine_priority: int) -> None:
    await _serve(worker, _task(priority=priority))
    assert worker.engine.requests[0].priority == engine_priority


async def test_every_choice_is_counted_and_finished(worker: Worker) -> None:
    task = _task(n=2)
    await _serve(worker, task)
    final = (await _events(worker.redis, task))[-1].final
    assert list(final.finish_reasons) == [pb.FINISH_REASON_LENGTH] * 2
    assert final.completion_tokens == 6


async def test_cancelled_before_start_finishes_cancelled_without_the_engine(
        worker: Worker) -> None:
    task = _task(attempt=2)
    await worker.redis.set(cancelled_flag(_scope(task)), 2)  # the flag names the attempt
    await _serve(worker, task)
    events = await _events(worker.redis, task)
    assert _kinds(events) == ["final"]
    assert list(events[0].final.finish_reasons) == [pb.FINISH_REASON_CANCELLED]
    assert events[0].attempt == 2 and events[0].final.completion_tokens == 0
    assert not worker.engine.requests


async def test_an_earlier_attempts_cancel_flag_does_not_cancel_a_later_one(
        worker: Worker) -> None:
    task = _task(attempt=2)
    await worker.redis.set(cancelled_flag(_scope(task)), 1)
    await _serve(worker, task)
    assert _kinds(await _events(worker.redis, task))[-1] == "final"
    assert len(worker.engine.requests) == 1


async def test_cancelled_while_generating_aborts_the_engine_request(redis: Redis) -> None:
    worker = _worker(redis, FakeEngine(Script(tokens=200, step_delay_s=0.01)))
    task = _task()
    serving = asyncio.create_task(worker.runner.serve(task))
    await worker.engine.wait_for_steps(_run_id(task), 3)
    assert worker.in_flight.cancel(_run_id(task))
    await asyncio.wait_for(serving, SERVE_TIMEOUT_S)
    events = await _events(redis, task)
    assert worker.engine.aborted == [_run_id(task)]
    assert _kinds(events)[0] == "started" and _kinds(events)[-1] == "final"
    final = events[-1].final
    assert list(final.finish_reasons) == [pb.FINISH_REASON_CANCELLED]
    assert 3 <= final.completion_tokens == len(_delta_tokens(events)) < 200
    assert worker.engine.unfinished_requests() == 0 and not worker.in_flight.generations


async def test_deadline_passed_before_start_finishes_without_the_engine(worker: Worker) -> None:
    task = _task(deadline_in_s=-1.0)
    await _serve(worker, task)
    events = await _events(worker.redis, task)
    assert _kinds(events) == ["final"]
    assert list(events[0].final.finish_reasons) == [pb.FINISH_REASON_DEADLINE_EXCEEDED]
    assert not worker.engine.requests


async def test_deadline_during_generation_aborts_the_engine_request(redis: Redis) -> None:
    worker = _worker(redis, FakeEngine(Script(tokens=200, step_delay_s=0.01)))
    task = _task(deadline_in_s=0.3)
    started = time.monotonic()
    await _serve(worker, task)
    assert time.monotonic() - started < 2.0
    events = await _events(redis, task)
    assert worker.engine.aborted == [_run_id(task)]
    final = events[-1].final
    assert list(final.finish_reasons) == [pb.FINISH_REASON_DEADLINE_EXCEEDED]
    assert 0 < final.completion_tokens == len(_delta_tokens(events)) < 200


@pytest.mark.parametrize(("failure", "code", "says"), [
    (EngineRequestRejected("prompt longer than 2048"), ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
     "the engine refused request {rid}: prompt longer than 2048"),
    (EngineUnavailable("engine core died"), ErrorCode.ERROR_CODE_UNAVAILABLE,
     "worker w-test lost its engine while serving request {rid}; the request may be retried"),
    (RuntimeError("kernel exploded"), ErrorCode.ERROR_CODE_INTERNAL,
     "engine failed on request {rid}: RuntimeError: kernel exploded"),
], ids=["rejected", "unavailable", "bug"])
@pytest.mark.parametrize("at_step", [0, 2])
async def test_engine_failure_is_one_error_event_with_its_code(
        redis: Redis, failure: Exception, code: int, says: str, at_step: int) -> None:
    worker = _worker(redis, FakeEngine(Script(tokens=5, fail_at_step=at_step, failure=failure)))
    task = _task(attempt=2)
    await _serve(worker, task)
    events = await _events(redis, task)
    assert _kinds(events) == ["started"] + ["delta"] * at_step + ["error"]
    assert [e.attempt for e in events] == [2] * len(events)
    assert events[-1].error.code == code
    assert events[-1].error.message == says.format(rid=task.request_id)


async def test_a_redelivered_finished_attempt_is_skipped_and_a_later_attempt_runs(
        worker: Worker) -> None:
    first = _task(attempt=1)
    await _serve(worker, first)
    await _serve(worker, first)  # the broker delivered the same message again
    assert _kinds(await _events(worker.redis, first)) == ["started"] + ["delta"] * 3 + ["final"]
    assert len(worker.engine.requests) == 1
    rerun = GenerationTask()
    rerun.CopyFrom(first)
    rerun.attempt = 2
    await _serve(worker, rerun)
    events = await _events(worker.redis, first)
    assert [e.attempt for e in events] == [1] * 5 + [2] * 5
    assert [r.request_id for r in worker.engine.requests] == [_run_id(first),
                                                              _run_id(rerun)]
    await _serve(worker, first)  # a stale delivery of attempt 1 after attempt 2 finished
    assert len(worker.engine.requests) == 2


async def test_an_attempt_a_gateway_has_since_re_run_is_skipped(worker: Worker) -> None:
    task = _task(attempt=1)
    await worker.redis.hset(request_claim(_scope(task)), "attempt", 2)
    await _serve(worker, task)
    assert await _events(worker.redis, task) == []
    assert not worker.engine.requests


async def test_a_second_delivery_of_a_running_attempt_never_runs_it_twice(redis: Redis) -> None:
    """kombu restores a consumer's unacknowledged messages when its connection drops, running
    ones too: the same attempt delivered again while it runs must not write a second answer
    into its stream (a lost worker's attempt is re-run by the gateway as the next one)."""
    worker = _worker(redis, FakeEngine(Script(tokens=40, step_delay_s=0.01)))
    task = _task()
    await asyncio.gather(_serve(worker, task), _serve(worker, task))
    events = await _events(redis, task)
    assert _kinds(events).count("started") == 1 and _kinds(events).count("final") == 1
    assert len(_delta_tokens(events)) == 40
    assert len(worker.engine.requests) == 1


@pytest.mark.parametrize("redis_lost", [True, False], ids=["marker-gone", "marker-re-claimed"])
async def test_a_run_whose_attempt_marker_is_lost_stops_without_writing(
        redis: Redis, redis_lost: bool) -> None:
    """Redis lost its keys mid-generation (the marker is gone), or lost them and a re-run
    claimed the same attempt (the marker holds another token): the old run writes nothing more,
    not even an error, and frees its engine request."""
    worker = _worker(redis, FakeEngine(Script(tokens=200, step_delay_s=0.01)))
    task = _task()
    serving = asyncio.create_task(worker.runner.serve(task))
    await worker.engine.wait_for_steps(_run_id(task), 3)
    marker = attempt_started(_scope(task), task.attempt)
    await redis.delete(result_stream(_scope(task)), marker)
    if not redis_lost:
        await redis.set(marker, "w-other re-run", ex=60)
    await asyncio.wait_for(serving, SERVE_TIMEOUT_S)
    assert await _events(redis, task) == []
    assert worker.engine.aborted == [_run_id(task)]
    assert worker.engine.unfinished_requests() == 0 and not worker.in_flight.generations


async def test_an_unstarted_attempt_handed_back_to_the_queue_runs(worker: Worker) -> None:
    """A draining worker's unstarted messages go back to the queue and run elsewhere."""
    task = _task()
    await _serve(worker, task)
    assert _kinds(await _events(worker.redis, task))[-1] == "final"
    assert len(worker.engine.requests) == 1


async def test_same_request_id_of_two_tenants_are_two_requests(worker: Worker) -> None:
    rid = uuid.uuid4().hex
    acme, globex = _task(tenant="acme", request_id=rid), _task(tenant="glo/bex", request_id=rid)
    await worker.redis.set(cancelled_flag(_scope(acme)), 1)
    await asyncio.gather(_serve(worker, acme), _serve(worker, globex))
    acme_events, globex_events = await _events(worker.redis, acme), await _events(worker.redis,
                                                                                  globex)
    assert _kinds(acme_events) == ["final"]
    assert list(acme_events[0].final.finish_reasons) == [pb.FINISH_REASON_CANCELLED]
    assert _kinds(globex_events) == ["started"] + ["delta"] * 3 + ["final"]
    assert [r.request_id for r in worker.engine.requests] == [f"glo%2Fbex/{rid}#1"]


async def test_redis_unreachable_fails_serve_without_calling_the_engine() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    worker = _worker(redis)
    with pytest.raises(RedisConnectionError):
        await _serve(worker, _task())
    assert not worker.engine.requests and not worker.in_flight.generations
    await redis.aclose()


async def test_redis_lost_while_generating_fails_serve_and_frees_the_engine(
        tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(port, tmp_path)
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1,
                           socket_timeout=2)
    worker = _worker(redis, FakeEngine(Script(tokens=500, step_delay_s=0.01)))
    task = _task()
    try:
        serving = asyncio.create_task(worker.runner.serve(task))
        await worker.engine.wait_for_steps(_run_id(task), 2)
    finally:
        await asyncio.to_thread(server.stop)
    with pytest.raises((RedisConnectionError, OSError)):
        await asyncio.wait_for(serving, 30)
    assert not worker.in_flight.generations
    assert worker.engine.unfinished_requests() == 0, \
        "the engine request keeps generating for a stream no one can write"
    await redis.aclose()
