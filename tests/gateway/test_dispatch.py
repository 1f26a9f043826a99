"""The gateway's Dispatcher over a real Redis: queueing, reading results back, cancelling."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_cli.processes import free_port
from fleet_common import fair_queue
from fleet_common.errors import (
    DeadlineExceeded,
    EngineFailure,
    FleetError,
    InvalidArgument,
    Unavailable,
)
from fleet_common.keys import (
    CANCEL_CHANNEL,
    attempt_started,
    cancelled_flag,
    live_workers,
    request_claim,
    request_scope,
    result_stream,
)
from fleet_common.wire import (
    Delta,
    Error,
    ErrorCode,
    Final,
    GenerationTask,
    Sampling,
    Started,
    StreamEvent,
    event_fields,
)
from gateway.dispatch import MAX_ATTEMPTS, Dispatcher
from gateway.request_claims import ClaimKind, RequestClaims, fingerprint
from gateway.request_run import RequestRun, WorkerLost
from gateway.result_feeds import ResultFeed

# A stuck Redis call fails its test in a minute instead of holding the whole run.
pytestmark = pytest.mark.timeout(60)

LIVENESS_S = 5.0
POOL = "7b"
WORKER = "w1"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=10)
    yield client
    await client.aclose()


@pytest.fixture
async def dispatcher(redis: Redis) -> AsyncIterator[Dispatcher]:
    # Lease checks a minute apart: these tests write every event a worker would.
    dispatcher = Dispatcher(redis, worker_liveness_s=LIVENESS_S, lease_check_s=60)
    dispatcher.start()
    yield dispatcher
    await dispatcher.aclose()


@pytest.fixture
def queue() -> str:
    return f"fleet.{POOL}.tiny.{uuid.uuid4().hex[:8]}"


def _task(*, tenant: str = "acme", deadline_in_s: float = 30.0) -> GenerationTask:
    now = time.time()
    return GenerationTask(
        request_id=uuid.uuid4().hex, tenant=tenant, model="tiny", model_version="v1",
        prompt_token_ids=[1, 822], stop_token_ids=[2],
        sampling=Sampling(max_tokens=8, top_p=1.0, repetition_penalty=1.0, n=1),
        priority=pb.PRIORITY_NORMAL, deadline_unix=now + deadline_in_s, enqueued_at_unix=now,
        attempt=1)


def _scope(task: GenerationTask) -> str:
    return request_scope(task.tenant, task.request_id)


async def _submit(dispatcher: Dispatcher, task: GenerationTask, queue: str) -> RequestRun:
    return await dispatcher.submit(task, queue, POOL,
                                   fingerprint=fingerprint(task, caller_seed=None))


async def _live(redis: Redis, queue: str, *workers: str, age_s: float = 0.0) -> None:
    await redis.zadd(live_workers(queue), {w: time.time() - age_s for w in workers or (WORKER,)})


async def _write(redis: Redis, task: GenerationTask, *events: StreamEvent) -> None:
    for event in events:
        await redis.xadd(result_stream(_scope(task)), event_fields(event))


def _started(attempt: int) -> StreamEvent:
    return StreamEvent(attempt=attempt, started=Started(worker=WORKER, model_version="v1"))


def _delta(attempt: int, token: int) -> StreamEvent:
    return StreamEvent(attempt=attempt, delta=Delta(choices=[pb.ChoiceDelta(token_ids=[token])]))


def _final(attempt: int) -> StreamEvent:
    return StreamEvent(attempt=attempt, final=Final(completion_tokens=1))


def _error(attempt: int, code: int) -> StreamEvent:
    return StreamEvent(attempt=attempt, error=Error(code=code, message="the worker says why"))


async def _all_events(dispatcher: Dispatcher, run: RequestRun) -> list[StreamEvent]:
    async def collect() -> list[StreamEvent]:
        return [e async for e in dispatcher.events(run)]

    return await asyncio.wait_for(collect(), 10)


async def _queued_tasks(redis: Redis, queue: str, tenant: str = "acme") -> list[GenerationTask]:
    """The tasks waiting in the tenant's NORMAL line of `queue`, first queued first."""
    line = fair_queue.tenant_line(queue, "normal", tenant)
    return [fair_queue.task_of(raw) for raw in reversed(await redis.lrange(line, 0, -1))]


async def test_submit_puts_the_task_in_its_tenants_line_and_one_ticket_on_the_queue(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task(tenant="a/b")
    run = await _submit(dispatcher, task, queue)
    assert run.run_id == f"a%2Fb/{task.request_id}#1"
    assert await _queued_tasks(redis, queue, "a/b") == [task]
    assert await redis.llen(queue) == 1
    message = json.loads(await redis.lindex(queue, 0))
    assert message["headers"]["task"] == fair_queue.FAIR_TAKE_TASK
    assert message["headers"]["id"] == run.run_id
    assert message["properties"]["delivery_info"]["routing_key"] == queue
    assert message["content-type"] == "application/json"
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [] and kwargs == {}
    await dispatcher.abandon(run)


@pytest.mark.parametrize("heartbeat_age_s", [None, LIVENESS_S + 1],
                         ids=["no-worker", "stale-heartbeat"])
async def test_submit_without_a_live_worker_is_unavailable_naming_the_queue(
        dispatcher: Dispatcher, redis: Redis, queue: str, heartbeat_age_s: float | None) -> None:
    if heartbeat_age_s is not None:
        await _live(redis, queue, age_s=heartbeat_age_s)
    task = _task()
    with pytest.raises(Unavailable) as caught:
        await _submit(dispatcher, task, queue)
    assert f"no live worker serves tiny@v1 (pool {POOL}, queue {queue})" in caught.value.message
    assert await redis.llen(queue) == 0
    assert not await redis.exists(request_claim(_scope(task)))


async def test_events_are_the_awaited_attempts_only_until_its_final(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task()
    # The id ran before as attempt 1 and was given up; it runs again as attempt 2, while the
    # stale attempt 1 goes on writing, even a failure, around attempt 2's events.
    await redis.hset(request_claim(_scope(task)), mapping={"attempt": 1, "fingerprint": ""})
    run = await _submit(dispatcher, task, queue)
    assert [t.attempt for t in await _queued_tasks(redis, queue)] == [2]
    await _write(redis, task, _started(1), _delta(1, 10), _started(2), _delta(1, 11),
                 _error(1, ErrorCode.ERROR_CODE_INTERNAL), _delta(2, 20), _final(1), _final(2),
                 _delta(2, 21))
    events = await _all_events(dispatcher, run)
    assert [(e.attempt, e.WhichOneof("event")) for e in events] == [
        (2, "started"), (2, "delta"), (2, "final")]
    assert list(events[1].delta.choices[0].token_ids) == [20]
    await dispatcher.finish(run)


@pytest.mark.parametrize(("code", "error"), [
    (ErrorCode.ERROR_CODE_INVALID_ARGUMENT, InvalidArgument),
    (ErrorCode.ERROR_CODE_INTERNAL, EngineFailure),
    (ErrorCode.ERROR_CODE_UNSPECIFIED, EngineFailure),
])
async def test_an_error_event_ends_the_events_with_its_domain_error(
        dispatcher: Dispatcher, redis: Redis, queue: str, code: int,
        error: type[FleetError]) -> None:
    await _live(redis, queue)
    task = _task()
    run = await _submit(dispatcher, task, queue)
    await _write(redis, task, _started(1), _error(1, code))
    seen: list[StreamEvent] = []
    with pytest.raises(error) as caught:
        async with asyncio.timeout(10):
            async for event in dispatcher.events(run):
                seen.append(event)
    assert type(caught.value) is error
    assert "the worker says why" in caught.value.message
    assert [e.WhichOneof("event") for e in seen] == ["started"]
    if error is InvalidArgument:
        assert caught.value.field == "request"  # type: ignore[attr-defined]
    assert await redis.llen(queue) == 1, "a failed request must not be re-run"
    await dispatcher.abandon(run)


async def test_an_unavailable_error_re_runs_the_request_as_the_next_attempt(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task()
    run = await _submit(dispatcher, task, queue)
    reading = asyncio.create_task(_all_events(dispatcher, run))
    await _write(redis, task, _started(1), _error(1, ErrorCode.ERROR_CODE_UNAVAILABLE))
    async with asyncio.timeout(10):
        while await redis.llen(queue) < 2:
            await asyncio.sleep(0.01)
    assert [t.attempt for t in await _queued_tasks(redis, queue)] == [1, 2]
    await _write(redis, task, _started(2), _delta(2, 7), _final(2))
    events = await reading
    assert [(e.attempt, e.WhichOneof("event")) for e in events] == [
        (1, "started"), (2, "started"), (2, "delta"), (2, "final")]
    await dispatcher.finish(run)


async def test_a_worker_error_and_its_lost_heartbeat_re_run_the_attempt_once(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    """A SIGKILLed worker can both write UNAVAILABLE and stop its heartbeat: the lease
    monitor's notice then sits on the feed behind the error and is about attempt 1, which the
    error has already re-run (seen in a failures run, 2026-12-03 10:59: attempts 1 and 3)."""
    await _live(redis, queue)
    task = _task()
    run = await _submit(dispatcher, task, queue)
    await _write(redis, task, _started(1), _error(1, ErrorCode.ERROR_CODE_UNAVAILABLE))
    async with asyncio.timeout(10):
        while run.feed.items.qsize() < 2:
            await asyncio.sleep(0.01)
    run.notify(WorkerLost(f"worker {WORKER} stopped sending heartbeats while serving attempt 1"))
    reading = asyncio.create_task(_all_events(dispatcher, run))
    async with asyncio.timeout(10):
        while await redis.llen(queue) < 2:
            await asyncio.sleep(0.01)
    await _write(redis, task, _started(2), _delta(2, 7), _final(2))
    events = await reading
    assert [(e.attempt, e.WhichOneof("event")) for e in events] == [
        (1, "started"), (2, "started"), (2, "delta"), (2, "final")]
    assert [t.attempt for t in await _queued_tasks(redis, queue)] == [1, 2], "one re-run"
    await dispatcher.finish(run)


async def test_a_re_run_waits_for_a_heartbeat_that_is_a_beat_late(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task()
    run = await _submit(dispatcher, task, queue)
    reading = asyncio.create_task(_all_events(dispatcher, run))
    await redis.zadd(live_workers(queue), {WORKER: time.time() - 2 * LIVENESS_S})  # stale
    await _write(redis, task, _started(1), _error(1, ErrorCode.ERROR_CODE_UNAVAILABLE))
    await asyncio.sleep(1.0)
    assert await redis.llen(queue) == 1, "re-run with no live worker"
    assert not reading.done()
    await _live(redis, queue)  # the late beat
    async with asyncio.timeout(5):
        while await redis.llen(queue) < 2:
            await asyncio.sleep(0.01)
    await _write(redis, task, _started(2), _final(2))
    assert [e.attempt for e in await reading] == [1, 2, 2]
    await dispatcher.finish(run)


async def test_a_re_run_with_no_live_worker_for_a_whole_liveness_window_is_unavailable(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task()
    run = await _submit(dispatcher, task, queue)
    await redis.delete(live_workers(queue))
    began = time.monotonic()
    await _write(redis, task, _started(1), _error(1, ErrorCode.ERROR_CODE_UNAVAILABLE))
    with pytest.raises(Unavailable, match=f"no live worker of queue {queue} is left to re-run"):
        await _all_events(dispatcher, run)
    assert LIVENESS_S <= time.monotonic() - began < LIVENESS_S + 3
    assert await redis.llen(queue) == 1
    await dispatcher.abandon(run)


async def test_a_request_unavailable_on_every_attempt_is_unavailable(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task()
    run = await _submit(dispatcher, task, queue)
    await _write(redis, task, *(_error(a, ErrorCode.ERROR_CODE_UNAVAILABLE)
                                for a in range(1, MAX_ATTEMPTS + 1)))
    with pytest.raises(Unavailable, match=f"gave up after {MAX_ATTEMPTS} attempts"):
        await _all_events(dispatcher, run)
    assert len(await _queued_tasks(redis, queue)) == MAX_ATTEMPTS
    await dispatcher.abandon(run)


async def test_no_start_within_the_deadline_names_the_queue_depth_and_live_workers(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue, "w1", "w2")
    await redis.lpush(queue, b"someone else's task")
    task = _task(deadline_in_s=0.4)
    run = await _submit(dispatcher, task, queue)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        await _all_events(dispatcher, run)
    assert time.monotonic() - started < 2.0
    assert caught.value.message == (
        f"no worker started request {task.request_id} within its deadline of 0.40 s "
        f"(queue {queue}: 2 waiting, 2 live workers)")
    await dispatcher.abandon(run)


async def test_started_but_unfinished_within_the_deadline_says_so(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task(deadline_in_s=0.4)
    run = await _submit(dispatcher, task, queue)
    await _write(redis, task, _started(1), _delta(1, 5))
    with pytest.raises(DeadlineExceeded, match=f"request {task.request_id} did not finish "
                                               "within its deadline of 0.40 s") as caught:
        await _all_events(dispatcher, run)
    assert f"attempt 1 on worker {WORKER}" in caught.value.message
    assert "@v1" in caught.value.message
    await dispatcher.abandon(run)


async def test_abandoning_flags_the_tenants_attempt_and_tells_the_workers(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task(tenant="acme")
    run = await _submit(dispatcher, task, queue)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CANCEL_CHANNEL)
    await dispatcher.abandon(run)
    async with asyncio.timeout(5):
        message = None
        while message is None:  # None also stands for the skipped subscribe confirmation
            message = await pubsub.get_message(timeout=1)
    await pubsub.aclose()
    assert (message["channel"], message["data"]) == (
        CANCEL_CHANNEL.encode(), f"acme/{task.request_id}#1".encode())
    assert await redis.get(cancelled_flag(_scope(task))) == b"1"  # the attempt it stops
    assert 0 < await redis.ttl(cancelled_flag(_scope(task))) <= 3600
    assert not await redis.exists(cancelled_flag(request_scope("globex", task.request_id)))
    assert not await redis.exists(cancelled_flag(task.request_id))


async def test_a_caller_leaving_after_redis_lost_the_claim_cancels_nothing(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    """A Redis crash loses the claim; the caller that then gives up must not flag the id as
    cancelled, or the re-run under it (attempt 1 again) starts cancelled: a job item ended
    OK with no tokens that way (CI of 2026-12-03 11:24)."""
    await _live(redis, queue)
    task = _task()
    run = await _submit(dispatcher, task, queue)
    await redis.delete(request_claim(_scope(task)), result_stream(_scope(task)))
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CANCEL_CHANNEL)
    await dispatcher.abandon(run)
    assert await pubsub.get_message(timeout=0.5) is None, "a cancel for a claim that is gone"
    await pubsub.aclose()
    assert not await redis.exists(cancelled_flag(_scope(task)))
    rerun = await _submit(dispatcher, task, queue)
    assert rerun.task.attempt == 1
    await dispatcher.abandon(rerun)


async def test_a_caller_of_a_claim_redis_lost_cannot_leave_the_ids_new_claim(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    """After a Redis loss another caller may claim the id afresh (attempt 1 again) before the
    first caller gives up: that caller's leaving must neither free nor cancel the new claim."""
    await _live(redis, queue)
    task = _task()
    scope = _scope(task)
    old = await _submit(dispatcher, task, queue)
    await redis.delete(request_claim(scope))
    new = await _submit(dispatcher, task, queue)
    assert (new.task.attempt, new.epoch != old.epoch) == (1, True)
    await dispatcher.abandon(old)
    assert await redis.hmget(request_claim(scope), "callers", "fingerprint") == [
        b"1", fingerprint(task, caller_seed=None).encode()]
    assert not await redis.exists(cancelled_flag(scope))
    await dispatcher.abandon(new)
    assert await redis.get(cancelled_flag(scope)) == b"1"


async def test_a_claim_made_afresh_clears_a_cancel_flag_from_before(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    """A flag left from a lost history (set against the empty Redis a crash left, or outliving
    an expired claim) would cancel the new attempt 1 before it starts."""
    await _live(redis, queue)
    task = _task()
    await redis.set(cancelled_flag(_scope(task)), 1, ex=60)
    run = await _submit(dispatcher, task, queue)
    assert run.task.attempt == 1
    assert not await redis.exists(cancelled_flag(_scope(task)))
    await dispatcher.abandon(run)
    assert await redis.get(cancelled_flag(_scope(task))) == b"1", "a real cancel still flags"


async def test_abandon_with_redis_down_returns_quietly() -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    dispatcher = Dispatcher(down, worker_liveness_s=LIVENESS_S)
    task = _task()
    run = RequestRun(task, "fleet.7b.tiny.v1", POOL,
                     ResultFeed(_scope(task), result_stream(_scope(task)).encode()))
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(dispatcher.cancel(run), 10)
    await asyncio.wait_for(dispatcher.abandon(run), 10)
    with pytest.raises(Unavailable, match="queue backend unreachable while checking for live"):
        await asyncio.wait_for(_submit(dispatcher, task, run.queue), 10)
    await down.aclose()


async def test_waiting_for_workers_a_request_to_an_empty_queue_waits_for_the_first_one(
        redis: Redis, queue: str) -> None:
    """Scale from zero: no live worker, yet the request is queued and not failed by the lease
    checks; the worker that starts later serves it."""
    dispatcher = Dispatcher(redis, worker_liveness_s=LIVENESS_S, lease_check_s=0.05,
                            wait_for_workers=True)
    dispatcher.start()
    try:
        task = _task()
        run = await _submit(dispatcher, task, queue)
        await asyncio.sleep(0.5)  # ten lease checks with no live worker
        assert await _queued_tasks(redis, queue) == [task] and not run.notified
        await _live(redis, queue)
        await _write(redis, task, _started(1), _final(1))
        events = await _all_events(dispatcher, run)
        assert [e.WhichOneof("event") for e in events] == ["started", "final"]
        await dispatcher.finish(run)
    finally:
        await dispatcher.aclose()


async def _served_by_a_re_run(dispatcher: Dispatcher, redis: Redis, queue: str,
                              run: RequestRun) -> None:
    """The attached caller's lease checks re-queue the lost attempt as attempt 2 within ten
    seconds, and the caller reads that attempt's events."""
    events = dispatcher.events(run)
    first = asyncio.ensure_future(anext(events))
    deadline = time.monotonic() + 10
    while not (queued := await _queued_tasks(redis, queue)):
        assert time.monotonic() < deadline, "the lost attempt was never re-run"
        await asyncio.sleep(0.05)
    assert [t.attempt for t in queued] == [2]
    await _write(redis, run.task, _started(2), _final(2))
    assert (await asyncio.wait_for(first, 10)).WhichOneof("event") == "started"
    await events.aclose()
    await dispatcher.finish(run)


async def test_an_attempt_claimed_by_a_gateway_that_died_before_queueing_it_is_re_run(
        redis: Redis, queue: str) -> None:
    """A gateway claimed the request id and died before putting the attempt in its line; a
    caller attached to that claim (the same request sent again, a job runner resuming) would
    wait for an attempt no worker will ever see. Within a liveness window it re-runs it."""
    dispatcher = Dispatcher(redis, worker_liveness_s=1.0, lease_check_s=0.05)
    dispatcher.start()
    try:
        await _live(redis, queue, age_s=-60)  # a heartbeat that stays fresh for the test
        task = _task()
        claim = await RequestClaims(redis).claim(
            _scope(task), fingerprint(task, caller_seed=None), 60)  # the dead gateway's
        assert claim.kind is ClaimKind.NEW
        run = await _submit(dispatcher, task, queue)
        assert run.task.attempt == 1 and await _queued_tasks(redis, queue) == []
        await _served_by_a_re_run(dispatcher, redis, queue, run)
    finally:
        await dispatcher.aclose()


async def test_an_attached_caller_leaves_a_queued_attempt_alone(redis: Redis, queue: str) -> None:
    """The other side: an attempt its gateway did queue waits in line as long as it must; the
    attached caller does not re-run it."""
    owner = Dispatcher(redis, worker_liveness_s=1.0, lease_check_s=60)
    attached = Dispatcher(redis, worker_liveness_s=1.0, lease_check_s=0.05)
    owner.start()
    attached.start()
    try:
        await _live(redis, queue, age_s=-60)
        task = _task()
        owners_run = await _submit(owner, task, queue)
        run = await _submit(attached, task, queue)
        await asyncio.sleep(2.5)  # past the grace and the liveness window, fifty checks
        assert [t.attempt for t in await _queued_tasks(redis, queue)] == [1]
        assert not run.notified and run.unseen_since is None
        await attached.abandon(run)
        await owner.abandon(owners_run)
    finally:
        await attached.aclose()
        await owner.aclose()


@pytest.mark.parametrize("started_by_the_lost_worker", [False, True],
                         ids=["taken-not-started", "started-no-event"])
async def test_an_attached_caller_re_runs_an_attempt_lost_with_the_worker_that_took_it(
        redis: Redis, queue: str, started_by_the_lost_worker: bool) -> None:
    """The claiming gateway queued the attempt and is gone; a worker took it from the line and
    died, before starting it (the line is empty, no marker) or after its marker but before its
    STARTED event (the marker names a worker with no heartbeat). The attached caller re-runs."""
    owner = Dispatcher(redis, worker_liveness_s=1.0, lease_check_s=60)
    attached = Dispatcher(redis, worker_liveness_s=1.0, lease_check_s=0.05)
    owner.start()
    attached.start()
    try:
        await _live(redis, queue, age_s=-60)
        task = _task()
        await _submit(owner, task, queue)
        run = await _submit(attached, task, queue)
        line = fair_queue.tenant_line(queue, "normal", task.tenant)
        assert await redis.rpop(line) is not None  # the worker's take
        if started_by_the_lost_worker:
            await redis.set(attempt_started(_scope(task), 1), "w-lost 1f2e", ex=60)
        await _served_by_a_re_run(attached, redis, queue, run)
    finally:
        await attached.aclose()
        await owner.aclose()


async def test_a_handed_over_request_runs_on_and_the_next_caller_attaches(
        dispatcher: Dispatcher, redis: Redis, queue: str) -> None:
    await _live(redis, queue)
    task = _task()
    run = await _submit(dispatcher, task, queue)
    await dispatcher.hand_over(run)
    assert await redis.get(cancelled_flag(_scope(task))) is None
    again = await _submit(dispatcher, task, queue)
    assert again.task.attempt == 1
    assert [t.attempt for t in await _queued_tasks(redis, queue)] == [1]
    await _write(redis, task, _started(1), _final(1))
    assert [e.WhichOneof("event") for e in await _all_events(dispatcher, again)] == [
        "started", "final"]
    await dispatcher.finish(again)
