"""Runs batch jobs' items: leases them from the jobs database, sends each through the same
admission and dispatch as a unary call, and records its one result.

Several gateways run one each; the database leases share the items out (`JobStore.lease_items`,
never more than `job_window` of a job at once, so a large batch leaves the queues to interactive
callers). An item's request id is `<job id>.<index>`: when a gateway dies, the item is leased
again once its lease lapses and attaches to the generation already running or finished under
that id (`gateway.request_claims`), so nothing is generated twice. A result is recorded only by
the attempt that holds the lease (`JobStore.finish_item`), so every item gets exactly one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import job_service_pb2 as jobs_api
from fleet_common.errors import DeadlineExceeded, FleetError, ResourceExhausted, Unavailable
from fleet_server import tracing
from fleet_server.status import status_code_of
from gateway import webhook_targets
from gateway.job_metrics import count_item_end, count_webhook_delivery
from gateway.prompts import PromptInput
from gateway.servicer import InferenceServicer
from gateway.webhooks import DeliveryOutcome, DeliveryPolicy, deliver, next_attempt
from model_registry.jobs import ItemRecord, ItemState, JobState, JobStore

log = logging.getLogger(__name__)
_RETRY_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
_EXPIRE_EVERY_S = 5.0
_PURGE_EVERY_S = 3600.0
_PURGE_BATCH = 1000
_WEBHOOK_BATCH = 32
_ENDED = {JobState.CANCELLING, JobState.CANCELLED, JobState.EXPIRED}
_CANCELLED_CODE = 1  # grpc.StatusCode.CANCELLED
_INTERNAL_CODE = 13  # grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class JobRunnerSettings:
    owner: str  # this gateway's instance name, in the leases it takes
    window_per_job: int
    max_in_flight: int
    lease_s: float
    poll_s: float
    max_attempts: int
    max_deadline_s: float
    retention_s: int
    webhook_allowed_hosts: tuple[str, ...] = ()


_KINDS: dict[str, tuple[Any, Callable[[Any], PromptInput]]] = {
    "complete": (api.CompleteResponse, PromptInput.completion),
    "infill": (api.InfillResponse, PromptInput.infill),
    "chat": (api.ChatResponse, PromptInput.chat),
}


def item_request_id(job_id: str, index: int) -> str:
    return f"{job_id}.{index}"


class JobRunner:
    def __init__(self, store: JobStore, servicer: InferenceServicer, settings: JobRunnerSettings,
                 *, webhook_policy: DeliveryPolicy | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self._store = store
        self._servicer = servicer
        self._settings = settings
        self._running: dict[tuple[str, int], tuple[asyncio.Task[None], ItemRecord]] = {}
        self._stopped_for_job: set[tuple[str, int]] = set()  # cancelled because their job ended
        self._webhook_policy = webhook_policy or DeliveryPolicy()
        self._http = http or httpx.AsyncClient(follow_redirects=False)
        self._rng = random.Random()
        self._tasks: list[asyncio.Task[None]] = []
        self._handing_over = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._feed_forever(), name="job-feed"),
                       asyncio.create_task(self._renew_forever(), name="job-leases"),
                       asyncio.create_task(self._housekeep_forever(), name="job-housekeeping"),
                       asyncio.create_task(self._webhooks_forever(), name="job-webhooks")]

    async def aclose(self) -> None:
        """Stops taking items and hands the running ones over: their generations go on, their
        leases end now, and the next gateway to lease one attaches to its generation under the
        item's request id (`Dispatcher.hand_over`)."""
        self._handing_over = True
        for task in self._tasks:
            task.cancel()
        running = list(self._running)
        for task, _ in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *(t for t, _ in self._running.values()),
                             return_exceptions=True)
        if running:
            try:
                released = await asyncio.to_thread(self._store.release_leases,
                                                   self._settings.owner, running)
                log.info("handed %d running job items over to the next gateway", released)
            except Exception:  # they lapse within a lease instead
                log.exception("releasing the leases of %d job items failed", len(running))
        await self._http.aclose()

    # Taking and running items -----------------------------------------------------------------

    async def _feed_forever(self) -> None:
        while True:
            try:
                await self._stop_cancelled()
                await self._feed()
            except Exception:  # the database may be briefly away; the next poll tries again
                log.exception("taking job items failed")
            await asyncio.sleep(self._settings.poll_s)

    async def _feed(self) -> None:
        room = self._settings.max_in_flight - len(self._running)
        if room <= 0:
            return
        items = await asyncio.to_thread(
            self._store.lease_items, self._settings.owner, limit=room,
            lease=timedelta(seconds=self._settings.lease_s),
            window_per_job=self._settings.window_per_job)
        for item in items:
            key = (item.job_id, item.index)
            if key in self._running:  # our own lease lapsed (a stalled database) and came back
                continue
            task = asyncio.create_task(self._run(item), name=f"job-item-{key}")
            self._running[key] = (task, item)
            task.add_done_callback(lambda done, k=key: self._forget(k, done))

    def _forget(self, key: tuple[str, int], task: asyncio.Task[None]) -> None:
        if key in self._running and self._running[key][0] is task:
            del self._running[key]

    async def _stop_cancelled(self) -> None:
        """Stops the running items of jobs cancelled or expired meanwhile."""
        job_ids = {job_id for job_id, _ in self._running}
        if not job_ids:
            return
        states = await asyncio.to_thread(self._store.job_states, job_ids)
        for key, (task, _) in list(self._running.items()):
            if states.get(key[0]) in _ENDED and key not in self._stopped_for_job:
                self._stopped_for_job.add(key)
                task.cancel()

    async def _run(self, item: ItemRecord) -> None:
        with tracing.span("job item", parent_carrier={}, link_carrier=_carrier(item), attributes={
                "fleet.job_id": item.job_id, "fleet.job_item": item.index,
                "fleet.tenant": item.tenant, "fleet.attempt": item.attempts}):
            key = (item.job_id, item.index)
            try:
                answer = await self._answer(item)
                if answer is None:  # the job's window closed while the item ran
                    for job in await asyncio.to_thread(self._store.expire_due):
                        log.info("job %s expired at %s", job.id, job.expires_at.isoformat())
                    return
                state, result, code, message = answer
            except asyncio.CancelledError:
                if key not in self._stopped_for_job:
                    raise  # this gateway is stopping: the lease lapses, another runs it
                self._stopped_for_job.discard(key)
                state, result, code, message = (ItemState.CANCELLED, None, _CANCELLED_CODE,
                                                "the job was cancelled or expired")
            recorded = await asyncio.to_thread(
                self._store.finish_item, item.job_id, item.index, attempt=item.attempts,
                state=state, result=result, error_code=code, error_message=message)
            if recorded:
                count_item_end(state.value)
            else:
                log.info("job %s item %d: attempt %d's result not recorded (no longer its "
                         "lease)", item.job_id, item.index, item.attempts)

    async def _answer(self, item: ItemRecord
                      ) -> tuple[ItemState, bytes | None, int | None, str] | None:
        """The item's end: (state, serialized response, gRPC code number, message), or None
        when the job's completion window closed first (the item expires with its job, as the
        job's unfinished items do). Failures a later try may not meet (UNAVAILABLE,
        RESOURCE_EXHAUSTED) are retried in place."""
        request = jobs_api.JobRequest.FromString(item.request)
        kind = request.WhichOneof("request")
        response_type, prompt_input_of = _KINDS[kind]
        call = getattr(request, kind)
        call.options.request_id = item_request_id(item.job_id, item.index)
        for attempt in range(self._settings.max_attempts):
            try:
                response = await self._once(item, response_type, prompt_input_of(call), call)
                return ItemState.SUCCEEDED, response.SerializeToString(), None, ""
            except (Unavailable, ResourceExhausted) as exc:
                if attempt + 1 == self._settings.max_attempts:
                    return _failed(exc)
                wait = getattr(exc, "retry_after_s", None) or _RETRY_BACKOFF_S[
                    min(attempt, len(_RETRY_BACKOFF_S) - 1)]
                log.info("job %s item %d: %s; trying again in %.1f s", item.job_id, item.index,
                         exc, wait)
                await asyncio.sleep(wait)
            except DeadlineExceeded as exc:  # the call's deadline; the job's window may remain
                if time.time() >= item.expires_at.timestamp():
                    return None
                if attempt + 1 == self._settings.max_attempts:
                    return _failed(exc)
            except FleetError as exc:
                return _failed(exc)
            except Exception as exc:  # a bug must end the item, not send it round the fleet
                log.exception("job %s item %d failed unexpectedly", item.job_id, item.index)
                return (ItemState.FAILED, None, _INTERNAL_CODE,
                        f"internal error running the item: {type(exc).__name__}")
        raise AssertionError("unreachable")

    async def _once(self, item: ItemRecord, response_type: Any, prompt_input: PromptInput,
                    call: Any) -> Any:
        deadline = min(time.time() + self._settings.max_deadline_s,
                       item.expires_at.timestamp())
        carrier: dict[str, str] = {}
        tracing.inject(carrier)
        admitted = await self._servicer.admit_as(
            item.tenant, prompt_input, call, deadline_unix=deadline, trace_context=carrier,
            received_clock=time.perf_counter(), default_priority=pb.PRIORITY_LOW)
        assembler = await self._servicer.run_to_final(
            admitted, handing_over=lambda: self._handing_over)
        return response_type(request_id=admitted.task.request_id, choices=assembler.choices(),
                             **assembler.summary())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_s / 3)
            keys = list(self._running)
            if not keys:
                continue
            try:
                await asyncio.to_thread(self._store.renew_leases, self._settings.owner, keys,
                                        timedelta(seconds=self._settings.lease_s))
            except Exception:
                log.exception("renewing the leases of %d job items failed", len(keys))

    # Expiry, retention and webhooks -----------------------------------------------------------

    async def _housekeep_forever(self) -> None:
        last_purge = 0.0
        while True:
            try:
                for job in await asyncio.to_thread(self._store.expire_due):
                    log.info("job %s expired at %s", job.id, job.expires_at.isoformat())
                if time.monotonic() - last_purge >= _PURGE_EVERY_S:
                    await self._purge()
                    last_purge = time.monotonic()
            except Exception:
                log.exception("job housekeeping failed")
            await asyncio.sleep(_EXPIRE_EVERY_S)

    async def _purge(self) -> None:
        """Deletes the jobs past their retention, a bounded transaction at a time."""
        while purged := await asyncio.to_thread(
                self._store.purge, timedelta(seconds=self._settings.retention_s),
                limit=_PURGE_BATCH):
            log.info("purged %d jobs past their retention", purged)
            if purged < _PURGE_BATCH:
                return

    async def _webhooks_forever(self) -> None:
        while True:
            try:
                events = await asyncio.to_thread(self._store.due_webhooks, _WEBHOOK_BATCH)
                await asyncio.gather(*(self._send(event) for event in events))
            except Exception:
                log.exception("delivering webhooks failed")
            await asyncio.sleep(self._settings.poll_s)

    async def _send(self, event: Any) -> None:
        target = await webhook_targets.resolve(event.url, self._settings.webhook_allowed_hosts)
        if target.refusal:  # the name resolves elsewhere than at submission: not sent, retried
            outcome = DeliveryOutcome(delivered=False, status=None,
                                      error=f"not sent: {target.refusal}", retry_after_s=None,
                                      disable_endpoint=False)
        else:
            secret = await asyncio.to_thread(self._store.webhook_secret, event.tenant)
            outcome = await deliver(self._http, event.url, secret, event.webhook_id,
                                    event.payload, timeout_s=self._webhook_policy.timeout_s,
                                    connect_to=target.address)
        now = datetime.now(UTC)
        retry_at = None if outcome.delivered or outcome.disable_endpoint else next_attempt(
            self._webhook_policy, attempts=event.attempts + 1, first_attempt_at=event.created_at,
            now=now, retry_after_s=outcome.retry_after_s, rng=self._rng)
        gave_up = not outcome.delivered and retry_at is None
        count_webhook_delivery("delivered" if outcome.delivered else
                               "gave_up" if gave_up else "retry")
        if not outcome.delivered:
            log.warning("webhook %s to %s: %s%s", event.webhook_id, event.url,
                        outcome.error or outcome.status,
                        "; giving up" if gave_up else f"; next try at {retry_at}")
        await asyncio.to_thread(self._store.record_webhook_attempt, event.webhook_id,
                                delivered=outcome.delivered, status=outcome.status,
                                error=outcome.error, next_attempt_at=retry_at, gave_up=gave_up)


def _carrier(item: ItemRecord) -> dict[str, str]:
    return {"traceparent": item.trace_parent} if item.trace_parent else {}


def _failed(exc: FleetError) -> tuple[ItemState, None, int, str]:
    return ItemState.FAILED, None, status_code_of(exc).value[0], str(exc)
