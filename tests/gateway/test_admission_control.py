"""Admission control over a real Redis, with workers' status hashes and queue contents written
as workers and kombu write them: the bound, the refusals and their numbers, the cost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from kombu.transport.redis import PRIORITY_STEPS, Channel
from redis.asyncio import Redis

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_cli.processes import free_port
from fleet_common import fair_queue
from fleet_common.celery_app import make_celery_app
from fleet_common.errors import ResourceExhausted, Unavailable
from fleet_common.keys import (
    draining_workers,
    live_workers,
    request_claim,
    request_scope,
    result_stream,
    worker_status,
)
from fleet_common.wire import Final, GenerationTask, Sampling, StreamEvent, event_fields
from gateway.admission_control import (
    KOMBU_PRIORITY_SEP,
    KOMBU_PRIORITY_STEPS,
    LOG_EVERY_S,
    UNKNOWN_RETRY_S,
    AdmissionControl,
    waiting_lists,
)
from gateway.dispatch import Dispatcher
from gateway.request_claims import fingerprint

pytestmark = pytest.mark.timeout(60)

LIVENESS_S = 5.0
REFRESH_S = 0.25


class Clock:
    """The controller's clock, moved by the test: a read is reused until REFRESH_S passes."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = REFRESH_S) -> None:
        self.now += seconds


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=10)
    yield client
    await client.aclose()


@pytest.fixture
def queue() -> str:
    return f"fleet.7b.tiny.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _control(redis: Redis, clock: Clock, **options: object) -> AdmissionControl:
    return AdmissionControl(redis, liveness_s=LIVENESS_S, refresh_s=REFRESH_S, clock=clock,
                            **options)  # type: ignore[arg-type]


async def _worker(redis: Redis, queue: str, name: str, *, capacity: int | None,
                  in_flight: int, draining: bool = False) -> None:
    """A worker's heartbeat as workers.background writes it."""
    await redis.zadd((draining_workers if draining else live_workers)(queue), {name: time.time()})
    fields: dict[str, str | int] = {"queue": queue, "tasks_in_flight": in_flight}
    if capacity is not None:
        fields["capacity"] = capacity
    await redis.hset(worker_status(name), mapping=fields)


async def _waiting(redis: Redis, queue: str, count: int) -> None:
    if count:
        await redis.lpush(queue, *[b"{}"] * count)


def _task(*, deadline_in_s: float = 30.0, max_tokens: int = 32, n: int = 1) -> GenerationTask:
    now = time.time()
    return GenerationTask(
        request_id=uuid.uuid4().hex, tenant="acme", model="tiny", model_version="v1",
        prompt_token_ids=[1, 822], stop_token_ids=[2],
        sampling=Sampling(max_tokens=max_tokens, top_p=1.0, repetition_penalty=1.0, n=n,
                          temperature=1.0 if n > 1 else 0.0),
        priority=pb.PRIORITY_NORMAL, deadline_unix=now + deadline_in_s, enqueued_at_unix=now,
        attempt=1)


def _served(control: AdmissionControl, queue: str, *, seconds: float, tokens: int) -> None:
    control.served(queue, Final(engine_ms=seconds * 1000, completion_tokens=tokens))


async def _refusal(control: AdmissionControl, task: GenerationTask, queue: str
                   ) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        await control.admit(task, queue)
    return caught.value


# The bound ------------------------------------------------------------------------------------

async def test_the_bound_is_the_live_workers_capacity_times_one_plus_the_factor(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=4, in_flight=4)
    await _worker(redis, queue, f"{queue}-b", capacity=6, in_flight=5)
    await _waiting(redis, queue, 7)
    control = _control(redis, clock, queue_factor=2.0)
    load = await control.load(queue)
    assert (load.capacity, load.in_flight, load.waiting, load.live_workers) == (10, 9, 7, 2)
    assert load.depth == 16 and control.bound(queue, load.capacity) == 30
    assert _control(redis, clock, queue_factor=0.5).bound(queue, 10) == 15


async def test_no_refusal_under_the_bound_and_a_burst_between_reads_stops_at_it(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=2, in_flight=2)
    await _waiting(redis, queue, 1)
    control = _control(redis, clock, queue_factor=1.0)  # bound 4, depth 3
    await control.admit(_task(), queue)
    # Nothing was re-read, yet the request admitted a moment ago counts: the queue is full.
    refusal = await _refusal(control, _task(), queue)
    assert "4 requests waiting or running, bound 4" in refusal.message
    assert control.round_trips == 2  # one read: the queue, then the worker it found


async def test_a_refusal_past_the_bound_names_queue_depth_bound_and_estimate(
        redis: Redis, queue: str, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=4, in_flight=4)
    await _waiting(redis, queue, 9)
    control = _control(redis, clock, queue_factor=2.0)  # bound 12, depth 13
    _served(control, queue, seconds=2.0, tokens=32)
    refusal = await _refusal(control, _task(), queue)
    # Two departures (13 -> 11) make room; they come every 2.0 s / 4 slots.
    assert refusal.retry_after_s == pytest.approx(1.0)
    assert refusal.message == (
        f"queue {queue} is full: 13 requests waiting or running, bound 12 (capacity 4 of 1 live "
        "worker x (1 + queue factor 2)); estimated wait 5.00 s; retry in 1.00 s")
    # Operators see a count per queue, logged at most every LOG_EVERY_S.
    for _ in range(3):
        await _refusal(control, _task(), queue)
    clock.advance(LOG_EVERY_S)
    await _refusal(control, _task(), queue)
    assert control.refusals == {queue: 5}
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert logged == [f"queue {queue}: refused {n} requests in the last 10 s (now 13 waiting "
                      "or running, capacity 4, bound 12)" for n in (1, 4)]


async def test_before_any_request_finished_the_bound_still_holds_with_a_default_retry(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=1, in_flight=1)
    await _waiting(redis, queue, 2)
    refusal = await _refusal(_control(redis, clock, queue_factor=2.0), _task(), queue)
    assert refusal.retry_after_s == UNKNOWN_RETRY_S
    assert "estimated wait unknown (no request has finished on it yet)" in refusal.message


async def test_messages_of_every_kombu_priority_list_count_as_waiting(
        redis: Redis, redis_url: str, queue: str, clock: Clock) -> None:
    assert (KOMBU_PRIORITY_STEPS, KOMBU_PRIORITY_SEP) == (tuple(PRIORITY_STEPS), Channel.sep)
    app = make_celery_app(redis_url, visibility_timeout_s=60)
    for priority in (0, 3, 5, 9):  # kombu files 5 under step 3
        app.send_task("fleet.generate", args=(), queue=queue, priority=priority)
    assert sum([await redis.llen(name) for name in waiting_lists(queue)]) == 4
    assert await redis.llen(queue) < 4  # not all of them are on the plain list
    await _worker(redis, queue, f"{queue}-a", capacity=3, in_flight=0)
    assert (await _control(redis, clock).load(queue)).waiting == 4


async def test_draining_workers_count_in_flight_but_add_no_capacity(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=4, in_flight=1)
    await _worker(redis, queue, f"{queue}-old", capacity=8, in_flight=6, draining=True)
    # A live entry left from before the drain (still within the liveness window) changes nothing.
    await redis.zadd(live_workers(queue), {f"{queue}-old": time.time() - 1})
    load = await _control(redis, clock).load(queue)
    assert (load.capacity, load.in_flight, load.live_workers) == (4, 7, 1)


async def test_a_worker_that_publishes_no_capacity_leaves_the_queue_unbounded_unless_fixed(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=1, in_flight=1)
    await _worker(redis, queue, f"{queue}-legacy", capacity=None, in_flight=1)
    await _waiting(redis, queue, 50)
    control = _control(redis, clock)
    load = await control.load(queue)
    assert load.without_capacity == (f"{queue}-legacy",) and load.capacity == 0
    await control.admit(_task(), queue)
    fixed = _control(redis, clock, bounds={queue: 40})
    refusal = await _refusal(fixed, _task(), queue)
    assert "52 requests waiting or running, bound 40 (fixed for this queue)" in refusal.message


# The deadline ---------------------------------------------------------------------------------

async def test_a_request_whose_estimated_wait_and_service_outlast_its_deadline_is_refused(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=4, in_flight=4)
    await _waiting(redis, queue, 7)  # depth 11 of bound 12: room, but 8 departures to wait for
    control = _control(redis, clock, queue_factor=2.0)
    _served(control, queue, seconds=2.0, tokens=32)
    # wait = (11 - 4 + 1) x 2.0 s / 4 = 4.0 s, then 2.0 s of service: 6.0 s.
    refusal = await _refusal(control, _task(deadline_in_s=5.0), queue)
    assert refusal.retry_after_s == pytest.approx(1.0, abs=0.05)
    assert f"queue {queue} would not serve the request within its deadline: 11" in refusal.message
    assert "estimated wait 4.00 s + service 2.00 s = 6.00 s, remaining deadline 5.0" in \
        refusal.message
    await control.admit(_task(deadline_in_s=6.5), queue)


async def test_a_request_asking_for_fewer_tokens_is_expected_to_run_shorter(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=4, in_flight=4)
    await _waiting(redis, queue, 7)
    control = _control(redis, clock, queue_factor=3.0)
    _served(control, queue, seconds=2.0, tokens=32)
    # 8 of the average 32 tokens: 0.5 s of service after the 4.0 s wait.
    await control.admit(_task(deadline_in_s=4.8, max_tokens=8), queue)
    refusal = await _refusal(control, _task(deadline_in_s=4.8, max_tokens=4, n=4), queue)
    assert "service 1.00 s" in refusal.message  # n choices ask for n times the tokens


async def test_a_request_that_finds_a_free_slot_is_never_refused_on_the_estimate(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=4, in_flight=3)
    control = _control(redis, clock)
    _served(control, queue, seconds=60.0, tokens=32)
    await control.admit(_task(deadline_in_s=1.0), queue)


async def test_the_service_time_follows_recent_requests(
        redis: Redis, queue: str, clock: Clock) -> None:
    control = _control(redis, clock)
    _served(control, queue, seconds=1.0, tokens=10)
    for _ in range(40):
        _served(control, queue, seconds=3.0, tokens=30)
    service = control.service_time(queue)
    assert service is not None
    assert service.seconds == pytest.approx(3.0, abs=0.05)
    assert service.tokens == pytest.approx(30.0, abs=0.5)
    control.served(queue, Final(engine_ms=0, completion_tokens=0))  # nothing measured
    assert service.seconds == pytest.approx(3.0, abs=0.05)


# Cost -----------------------------------------------------------------------------------------

async def test_one_round_trip_serves_every_check_until_the_read_is_refresh_s_old(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=64, in_flight=0)
    control = _control(redis, clock, queue_factor=1000.0)
    await asyncio.gather(*(control.admit(_task(), queue) for _ in range(50)))
    assert control.round_trips == 2  # the first read finds the worker, then reads its status
    clock.advance(REFRESH_S / 2)
    await control.admit(_task(), queue)
    assert control.round_trips == 2
    clock.advance(REFRESH_S / 2)
    await control.admit(_task(), queue)
    assert control.round_trips == 3  # the worker is known now: one round trip per read
    await _worker(redis, queue, f"{queue}-b", capacity=64, in_flight=0)
    clock.advance()
    assert (await control.load(queue)).capacity == 128
    assert control.round_trips == 5  # a worker that joined costs one more, once
    clock.advance()
    await control.load(queue)
    assert control.round_trips == 6


async def test_a_cached_check_costs_microseconds(redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=64, in_flight=8)
    control = _control(redis, clock, queue_factor=1e9)
    _served(control, queue, seconds=2.0, tokens=32)
    tasks = [_task(deadline_in_s=1e6) for _ in range(5000)]
    await control.admit(tasks[0], queue)
    reads = control.round_trips
    started = time.process_time()
    for task in tasks:
        await control.admit(task, queue)
    per_check_us = (time.process_time() - started) / len(tasks) * 1e6
    # The gateway's whole admission budget is 250 us per request (4,000 per CPU-second).
    assert per_check_us < 25, per_check_us
    assert control.round_trips == reads


async def test_redis_down_is_unavailable_naming_the_queue(queue: str, clock: Clock) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    with pytest.raises(Unavailable, match=f"reading the load of queue {queue}"):
        await _control(client, clock).admit(_task(), queue)
    await client.aclose()


# Through the dispatcher -----------------------------------------------------------------------

async def test_the_dispatcher_refuses_before_claiming_and_learns_from_finals(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=1, in_flight=1)
    control = _control(redis, clock, queue_factor=1.0)  # bound 2
    dispatcher = Dispatcher(redis, worker_liveness_s=LIVENESS_S, lease_check_s=60,
                            admission=control)
    dispatcher.start()
    try:
        task = _task()
        run = await dispatcher.submit(task, queue, "7b",
                                      fingerprint=fingerprint(task, caller_seed=None))
        refused = _task()
        with pytest.raises(ResourceExhausted, match="bound 2"):
            await dispatcher.submit(refused, queue, "7b",
                                    fingerprint=fingerprint(refused, caller_seed=None))
        assert not await redis.exists(request_claim(request_scope("acme", refused.request_id)))
        assert await redis.llen(queue) == 1
        final = StreamEvent(attempt=1, final=Final(engine_ms=1500, completion_tokens=32))
        await redis.xadd(result_stream(run.scope), event_fields(final))
        events = [e async for e in dispatcher.events(run)]
        assert events[-1].HasField("final")
        service = control.service_time(queue)
        assert service is not None and service.seconds == pytest.approx(1.5)
        await dispatcher.finish(run)
    finally:
        await dispatcher.aclose()


# Tenants' shares ------------------------------------------------------------------------------

async def _in_lines(redis: Redis, queue: str, tenant: str, count: int) -> None:
    """`count` requests of `tenant` waiting in its fair line, with their tickets."""
    enqueue = redis.register_script(fair_queue.ENQUEUE)
    for _ in range(count):
        task = _task()
        task.tenant = tenant
        await enqueue(keys=fair_queue.enqueue_keys(queue, "normal", tenant),
                      args=fair_queue.enqueue_args(tenant, 1, fair_queue.item_of(task), b"t"))


async def test_a_tenant_under_its_share_is_admitted_to_a_queue_another_tenant_filled(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=2, in_flight=2)
    await _in_lines(redis, queue, "flood", 4)  # bound 2 x (1 + 2) = 6: full
    control = _control(redis, clock, queue_factor=2.0)
    flood, quiet = _task(), _task()
    flood.tenant, quiet.tenant = "flood", "quiet"
    refusal = await _refusal(control, flood, queue)
    assert "6 requests waiting or running, bound 6" in refusal.message
    # The waiting room (4) shared by two tenants: 2 each; "flood" holds 4.
    await control.admit(quiet, queue)
    await control.admit(quiet, queue)
    assert "bound 6" in (await _refusal(control, quiet, queue)).message  # its share is used
    clock.advance()
    await _in_lines(redis, queue, "quiet", 2)
    assert "bound 6" in (await _refusal(control, quiet, queue)).message


async def test_a_full_queue_of_one_tenant_refuses_that_tenant(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=2, in_flight=2)
    await _in_lines(redis, queue, "acme", 4)
    control = _control(redis, clock, queue_factor=2.0)
    assert "bound 6" in (await _refusal(control, _task(), queue)).message


async def test_the_wait_estimate_counts_what_the_fair_lines_start_first(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=2, in_flight=2)
    await _in_lines(redis, queue, "flood", 10)
    control = _control(redis, clock, queue_factor=10.0)
    _served(control, queue, seconds=1.0, tokens=32)  # a departure every 0.5 s
    quiet = _task(deadline_in_s=3.0)
    quiet.tenant = "quiet"
    # First come, first served it would wait for 11 departures (5.5 s) and be refused; in the
    # fair lines it is next but one (1 s wait + 1 s service).
    await control.admit(quiet, queue)
    flood = _task(deadline_in_s=3.0)
    flood.tenant = "flood"
    assert "would not serve the request within its deadline" in (
        await _refusal(control, flood, queue)).message


async def test_a_flood_admitted_since_the_last_read_counts_against_its_tenant(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=2, in_flight=2)
    control = _control(redis, clock, queue_factor=2.0)  # bound 6
    flood, quiet = _task(), _task()
    flood.tenant, quiet.tenant = "flood", "quiet"
    for _ in range(4):  # all within one read: none of them is in the lines the read saw
        await control.admit(flood, queue)
    assert "bound 6" in (await _refusal(control, flood, queue)).message
    await control.admit(quiet, queue)


async def test_a_request_that_finished_since_the_read_frees_its_place(
        redis: Redis, queue: str, clock: Clock) -> None:
    await _worker(redis, queue, f"{queue}-a", capacity=2, in_flight=2)
    control = _control(redis, clock, queue_factor=1.0)  # bound 4
    for _ in range(2):
        await control.admit(_task(), queue)
    await _refusal(control, _task(), queue)
    _served(control, queue, seconds=0.1, tokens=4)  # one finished: no longer waiting or running
    await control.admit(_task(), queue)
