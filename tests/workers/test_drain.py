"""A worker's drain and its lost engine, on the real runtime (engine loop thread, heartbeats,
RequestRunner) over a real Redis, with a fake engine: who is in which worker set when, which
requests finish and which end with UNAVAILABLE, and that the engine stops last."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import redis
from celery.exceptions import Reject

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common import fair_queue
from fleet_common.keys import (
    draining_workers,
    live_workers,
    request_scope,
    result_stream,
    worker_status,
)
from fleet_common.wire import ErrorCode, GenerationTask, Sampling, StreamEvent, event_from_fields
from model_registry.records import ServedModel
from tests.support.fake_engine import FakeEngine, Script
from workers.background import Presence, PresenceControl, heartbeat
from workers.generation import InFlight
from workers.runtime import ENGINE_LOST_EXIT, WorkerRuntime
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(60)

SERVED = ServedModel(model="tiny", version="v1", pool="7b", checkpoint="ck", checkpoint_dir="/x",
                     template="t@1", chat_format="", chat_template="", supports_infill=False,
                     context_limit=2048, tensor_parallel_size=1, dtype="float32")
QUEUE = SERVED.queue
BEAT_S = 0.05
STEP_S = 0.02


class Worker:
    """A started runtime and what it was given."""

    def __init__(self, redis_url: str, grace_s: float, reserve: int = 0) -> None:
        self.name = f"w-{uuid.uuid4().hex[:8]}"
        self.engine = FakeEngine(default=Script(tokens=2))
        self.shutdown_seen_running: set[str] | None = None
        self.exit_codes: list[int] = []
        real_shutdown = self.engine.shutdown

        def shutdown() -> None:
            self.shutdown_seen_running = set(self.engine.running)
            real_shutdown()

        self.engine.shutdown = shutdown  # type: ignore[method-assign]
        settings = WorkerSettings(redis_url=redis_url, worker_name=self.name, concurrency=4,
                                  heartbeat_interval_s=BEAT_S, drain_grace_s=grace_s,
                                  fair_share_reserve=reserve)
        self.runtime = WorkerRuntime(settings, SERVED, lambda: self.engine,
                                     request_exit=self.exit_codes.append)
        self.pool = ThreadPoolExecutor(4)  # Celery's task threads

    def serve(self, task: GenerationTask, tokens: int) -> Future[None]:
        self.engine.scripts[_run_id(task)] = Script(tokens=tokens, step_delay_s=STEP_S)
        return self.pool.submit(self.runtime.serve, task)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def start_worker(redis_url: str, client: redis.Redis
                 ) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(grace_s: float, reserve: int = 0) -> Worker:
        worker = Worker(redis_url, grace_s, reserve)
        worker.runtime.start()
        started.append(worker)
        _wait(lambda: _sets(client, worker)[0] is not None, "the first heartbeat")
        return worker

    yield start
    for worker in started:
        worker.runtime.stop()
        worker.pool.shutdown(cancel_futures=True)


def _task() -> GenerationTask:
    now = time.time()
    return GenerationTask(
        request_id=uuid.uuid4().hex, tenant="acme", model="tiny", model_version="v1",
        prompt_token_ids=[1, 2, 3], stop_token_ids=[2],
        sampling=Sampling(max_tokens=1000, temperature=0.0, top_p=1.0, n=1,
                          repetition_penalty=1.0, ignore_eos=True),
        priority=pb.PRIORITY_NORMAL, deadline_unix=now + 60, enqueued_at_unix=now, attempt=1)


def _run_id(task: GenerationTask) -> str:
    return f"{request_scope(task.tenant, task.request_id)}#{task.attempt}"


def _events(client: redis.Redis, task: GenerationTask) -> list[StreamEvent]:
    key = result_stream(request_scope(task.tenant, task.request_id))
    return [event_from_fields(fields) for _, fields in client.xrange(key)]


def _wait(predicate: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _sets(client: redis.Redis, worker: Worker) -> tuple[float | None, float | None]:
    return (client.zscore(live_workers(QUEUE), worker.name),
            client.zscore(draining_workers(QUEUE), worker.name))


def test_a_drain_leaves_the_live_set_at_once_and_lets_requests_finish_before_the_engine_stops(
        start_worker: Callable[[float], Worker], client: redis.Redis) -> None:
    worker = start_worker(30.0)
    task = _task()
    served = worker.serve(task, tokens=60)  # 1.2 s
    _wait(lambda: worker.engine.steps.get(_run_id(task), 0) >= 3, "the stream to start")

    worker.runtime.begin_drain()
    _wait(lambda: _sets(client, worker)[0] is None, "leaving the live set", timeout_s=0.5)
    first_beat = _sets(client, worker)[1]
    assert first_beat is not None
    assert client.hget(worker_status(worker.name), "presence") == b"draining"
    _wait(lambda: (_sets(client, worker)[1] or 0) > first_beat, "a heartbeat while draining")
    assert _sets(client, worker)[0] is None, "a beat put the draining worker back in the live set"

    served.result(timeout=10)
    events = _events(client, task)
    assert events[-1].HasField("final"), events[-1]
    assert events[-1].final.completion_tokens == 60
    assert not worker.engine.aborted and worker.shutdown_seen_running is None

    worker.runtime.stop()
    assert worker.shutdown_seen_running == set(), "the engine stopped under a request"
    assert _sets(client, worker) == (None, None)
    assert not client.exists(worker_status(worker.name))
    assert worker.exit_codes == []


@pytest.mark.parametrize(("grace_s", "immediate"), [(0.3, False), (30.0, True)])
def test_requests_outliving_the_grace_end_unavailable_and_are_aborted(
        start_worker: Callable[[float], Worker], client: redis.Redis, grace_s: float,
        immediate: bool) -> None:
    worker = start_worker(grace_s)
    short, long = _task(), _task()
    short_served, long_served = worker.serve(short, tokens=5), worker.serve(long, tokens=1000)
    _wait(lambda: worker.engine.steps.get(_run_id(long), 0) >= 1, "the long stream to start")
    drained_at = time.monotonic()
    worker.runtime.begin_drain(immediate=immediate)

    long_served.result(timeout=5)
    assert time.monotonic() - drained_at < (1.0 if immediate else grace_s + 1.0)
    last = _events(client, long)[-1]
    assert last.HasField("error") and last.error.code == ErrorCode.ERROR_CODE_UNAVAILABLE, last
    short_served.result(timeout=5)
    if immediate:  # nothing finishes, however short
        assert set(worker.engine.aborted) == {_run_id(long), _run_id(short)}
        assert _events(client, short)[-1].error.code == ErrorCode.ERROR_CODE_UNAVAILABLE
    else:
        assert worker.engine.aborted == [_run_id(long)]
        assert _events(client, short)[-1].final.completion_tokens == 5
    assert _sets(client, worker)[1] is not None, "draining: its leases must stay valid"
    worker.runtime.stop()
    assert _sets(client, worker) == (None, None)


def test_a_lost_engine_ends_its_requests_unavailable_leaves_and_asks_to_exit(
        start_worker: Callable[[float], Worker], client: redis.Redis) -> None:
    worker = start_worker(30.0)
    task = _task()
    served = worker.serve(task, tokens=1000)
    _wait(lambda: worker.engine.steps.get(_run_id(task), 0) >= 1, "the stream to start")
    worker.engine.dead = True  # fails its health checks from now on

    served.result(timeout=5)
    last = _events(client, task)[-1]
    assert last.HasField("error") and last.error.code == ErrorCode.ERROR_CODE_UNAVAILABLE, last
    _wait(lambda: worker.exit_codes == [ENGINE_LOST_EXIT], "the request to exit")
    assert worker.runtime.exit_code == ENGINE_LOST_EXIT
    _wait(lambda: _sets(client, worker) == (None, None), "the worker to stop heartbeating")
    time.sleep(5 * BEAT_S)
    assert _sets(client, worker) == (None, None)


async def test_the_heartbeat_moves_sets_at_once_not_at_the_next_beat(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    control = PresenceControl()
    beating = asyncio.create_task(heartbeat(client, QUEUE, "w-slow", 60.0, dict,
                                            control=control))
    try:
        async with asyncio.timeout(2):
            while await client.zscore(live_workers(QUEUE), "w-slow") is None:
                await asyncio.sleep(0.01)
            control.set(Presence.DRAINING)
            while await client.zscore(draining_workers(QUEUE), "w-slow") is None:
                await asyncio.sleep(0.01)
            assert await client.zscore(live_workers(QUEUE), "w-slow") is None
            control.set(Presence.GONE)
            await beating
        assert await client.zscore(draining_workers(QUEUE), "w-slow") is None
        assert not await client.exists(worker_status("w-slow"))
        control.set(Presence.LIVE)
        assert control.presence is Presence.GONE, "a worker that left cannot come back"
    finally:
        beating.cancel()
        await client.aclose()


async def test_an_eviction_before_the_generation_starts_is_remembered() -> None:
    in_flight = InFlight()
    assert not in_flight.evict("r1")
    in_flight.begin("r1")
    assert in_flight.evict("r1") and in_flight.was_evicted("r1")
    generation = asyncio.ensure_future(asyncio.sleep(60))
    in_flight.attach("r1", generation)
    await asyncio.sleep(0)
    assert generation.cancelled()
    in_flight.end("r1")
    assert not in_flight.was_evicted("r1")


def test_begin_drain_is_safe_from_another_thread_and_idempotent(
        start_worker: Callable[[float], Worker], client: redis.Redis) -> None:
    worker = start_worker(30.0)
    callers = [threading.Thread(target=worker.runtime.begin_drain) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=5)
    _wait(lambda: _sets(client, worker)[1] is not None, "the draining set")
    assert _sets(client, worker)[0] is None


def test_a_draining_worker_hands_new_requests_back_to_the_queue(
        start_worker: Callable[[float], Worker], client: redis.Redis) -> None:
    worker = start_worker(30.0)
    worker.runtime.begin_drain()
    task = _task()
    with pytest.raises(Reject) as refused:
        worker.serve(task, tokens=5).result(timeout=5)
    assert refused.value.requeue
    assert _events(client, task) == []
    assert _run_id(task) not in {request.request_id for request in worker.engine.requests}


def test_a_thread_held_back_from_the_reserve_hands_its_ticket_back_on_drain(
        start_worker: Callable[..., Worker], client: redis.Redis) -> None:
    worker = start_worker(30.0, reserve=3)  # 4 threads, 1 open slot
    enqueue = client.register_script(fair_queue.ENQUEUE)
    tasks = [_task(), _task()]
    for task in tasks:
        worker.engine.scripts[_run_id(task)] = Script(tokens=150, step_delay_s=STEP_S)
        enqueue(keys=fair_queue.enqueue_keys(QUEUE, "normal", task.tenant),
                args=fair_queue.enqueue_args(task.tenant, 1, fair_queue.item_of(task), b"t"))
    running = worker.pool.submit(worker.runtime.take_and_serve)
    _wait(lambda: _run_id(tasks[0]) in worker.engine.running, "the first request to run")
    held_back = worker.pool.submit(worker.runtime.take_and_serve)
    time.sleep(0.3)  # asking again every 20 ms: acme runs its share, the open slot
    assert not held_back.done()
    assert int(client.get(fair_queue.waiting_count(QUEUE)) or 0) == 1
    worker.runtime.begin_drain()
    with pytest.raises(Reject) as refused:
        held_back.result(timeout=5)
    assert refused.value.requeue
    assert int(client.get(fair_queue.waiting_count(QUEUE)) or 0) == 1  # still waits, untaken
    assert _events(client, tasks[1]) == []
    running.result(timeout=60)  # the running one finishes within the grace
    assert _events(client, tasks[0])[-1].HasField("final")
