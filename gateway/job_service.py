"""JobService: batch jobs over the jobs database; `gateway.job_runner` runs their items.

Submission checks what can be checked without running an item (the request's kind, model name,
sampling, priority ceiling, custom ids, the job's window and webhook URL, the tenant's
max_queued_job_items) and refuses the whole job naming the item's field; what only a run can
tell (the prompt against the model's context, a model removed meanwhile) ends that item FAILED
with the status the RPC would have returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import job_service_pb2 as jobs_api
from codellama.fleet.v1 import job_service_pb2_grpc as jobs_grpc
from fleet_common.errors import (
    FleetError,
    InvalidArgument,
    NotFound,
    OutOfBounds,
    QuotaViolation,
    ResourceExhausted,
)
from fleet_server import tracing
from gateway import webhook_targets
from gateway.auth import Authenticator
from gateway.servicer import trace_context_of
from gateway.settings import Limits
from gateway.tenant_policies import TenantPolicies, check_priority
from gateway.validation import validate_model_name, validate_priority, validate_sampling
from model_registry.api_keys import JOBS
from model_registry.jobs import (
    DuplicateCustomId,
    InvalidPageToken,
    ItemRecord,
    ItemState,
    JobRecord,
    JobState,
    JobStore,
    NewItem,
    TooManyUnfinished,
    WebhookDelivery,
    WebhookState,
)

MAX_ITEMS = 10_000
MAX_CUSTOM_ID = 256
MAX_WEBHOOK_URL = 2048
MAX_JOB_BYTES = 256 * 2**20  # what one job may store of requests
DEFAULT_WINDOW = timedelta(hours=24)
MIN_WINDOW, MAX_WINDOW = timedelta(minutes=1), timedelta(days=7)
DEFAULT_PAGE, MAX_PAGE = 100, 1000
RESULTS_PAGE = 500
_QUEUED_ITEMS_RETRY_S = 60.0

_JOB_STATES = {s: getattr(jobs_api, f"JOB_STATE_{s.name}") for s in JobState}
_STATE_OF_JOB_MESSAGE = {v: k for k, v in _JOB_STATES.items()}
_ITEM_STATES = {s: getattr(jobs_api, f"ITEM_STATE_{s.name}") for s in ItemState}
_WEBHOOK_STATES = {s: getattr(jobs_api, f"WEBHOOK_STATE_{s.name}") for s in WebhookState}
_RESPONSES = {"complete": api.CompleteResponse, "infill": api.InfillResponse,
              "chat": api.ChatResponse}
_TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}


@dataclass(frozen=True)
class JobServiceSettings:
    limits: Limits
    webhook_allowed_hosts: tuple[str, ...] = ()
    watch_poll_s: float = 0.5


class JobServicer(jobs_grpc.JobServiceServicer):
    def __init__(self, store: JobStore, auth: Authenticator, policies: TenantPolicies,
                 settings: JobServiceSettings) -> None:
        self._store = store
        self._auth = auth
        self._policies = policies
        self._settings = settings

    async def SubmitJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = self._auth.tenant_of(context, JOBS)
        item = NewItem("", *self._checked(tenant, request.request, "request"))
        job = await self._create(tenant, [item], request.settings, context, "SubmitJob")
        return jobs_api.SubmitJobResponse(job=job_message(job))

    async def SubmitBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = self._auth.tenant_of(context, JOBS)
        items = self._batch(tenant, request.items, first_index=0)
        job = await self._create(tenant, items, request.settings, context, "SubmitBatch")
        return jobs_api.SubmitBatchResponse(job=job_message(job))

    async def SubmitBatchStream(self, request_iterator: AsyncIterator[Any],
                                context: grpc.aio.ServicerContext) -> Any:
        tenant = self._auth.tenant_of(context, JOBS)
        settings, items, stored = None, [], 0
        async for message in request_iterator:
            if settings is None:
                settings = message.settings
            elif message.HasField("settings"):
                raise InvalidArgument("settings", "is read from the first message only; send "
                                      "it there")
            items.extend(self._batch(tenant, message.items, first_index=len(items)))
            stored += sum(len(item.request) for item in items[-len(message.items):]) \
                if message.items else 0
            if stored > MAX_JOB_BYTES:
                raise OutOfBounds("items", f"over {MAX_JOB_BYTES:,} bytes of requests",
                                  f"at most {MAX_JOB_BYTES:,} bytes in one job")
        job = await self._create(tenant, items, settings or jobs_api.JobSettings(), context,
                                 "SubmitBatchStream")
        return jobs_api.SubmitBatchStreamResponse(job=job_message(job))

    async def GetJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = self._auth.tenant_of(context, JOBS)
        return jobs_api.GetJobResponse(job=await self._job_message(tenant, request.job_id))

    async def ListJobs(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = self._auth.tenant_of(context, JOBS)
        if request.page_size > MAX_PAGE:
            raise OutOfBounds("page_size", request.page_size, f"at most {MAX_PAGE}")
        states = [_state_of(i, s) for i, s in enumerate(request.states)]
        try:
            jobs, token = await asyncio.to_thread(
                self._store.list_jobs, tenant, states=states,
                page_size=request.page_size or DEFAULT_PAGE, page_token=request.page_token)
        except InvalidPageToken as exc:
            raise InvalidArgument("page_token", f"is not a token ListJobs returned ({exc})") \
                from exc
        deliveries = await asyncio.to_thread(self._store.webhook_deliveries,
                                             [j.id for j in jobs if j.webhook_url])
        return jobs_api.ListJobsResponse(jobs=[job_message(j, deliveries.get(j.id)) for j in jobs],
                                         next_page_token=token)

    async def WatchJob(self, request: Any, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[Any]:
        tenant = self._auth.tenant_of(context, JOBS)
        last = None
        while True:
            message = await self._job_message(tenant, request.job_id)
            if message != last:
                yield jobs_api.WatchJobResponse(job=message)
                last = message
            if _STATE_OF_JOB_MESSAGE[message.state] in _TERMINAL:
                return
            await asyncio.sleep(self._settings.watch_poll_s)

    async def CancelJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = self._auth.tenant_of(context, JOBS)
        job = await asyncio.to_thread(self._store.cancel_job, tenant, request.job_id)
        if job is None:
            raise _not_found(request.job_id)
        return jobs_api.CancelJobResponse(job=job_message(job))

    async def GetJobResults(self, request: Any, context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[Any]:
        tenant = self._auth.tenant_of(context, JOBS)
        await self._job(tenant, request.job_id)
        after = request.after_index if request.HasField("after_index") else -1
        while True:
            page = await asyncio.to_thread(self._store.results, tenant, request.job_id,
                                           after_index=after, limit=RESULTS_PAGE)
            if not page:
                return
            yield jobs_api.GetJobResultsResponse(results=[result_message(r) for r in page])
            after = page[-1].index

    async def GetWebhookSecret(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = self._auth.tenant_of(context, JOBS)
        secret = await asyncio.to_thread(self._store.webhook_secret, tenant)
        return jobs_api.GetWebhookSecretResponse(secret=secret)

    # Submission checks ------------------------------------------------------------------------

    def _batch(self, tenant: str, items: Sequence[Any], *, first_index: int) -> list[NewItem]:
        if first_index + len(items) > MAX_ITEMS:
            raise OutOfBounds("items", f"{first_index + len(items)} items",
                              f"at most {MAX_ITEMS:,} in one job")
        checked = []
        for offset, item in enumerate(items):
            path = f"items[{first_index + offset}]"
            if not 1 <= len(item.custom_id) <= MAX_CUSTOM_ID:
                raise OutOfBounds(f"{path}.custom_id", f"{len(item.custom_id)} characters",
                                  f"1 to {MAX_CUSTOM_ID} characters")
            checked.append(NewItem(item.custom_id,
                                   *self._checked(tenant, item.request, f"{path}.request")))
        return checked

    def _checked(self, tenant: str, request: Any, path: str) -> tuple[str, bytes]:
        """(kind, serialized request) of a job request that passes the submission checks."""
        kind = request.WhichOneof("request")
        if kind is None:
            raise InvalidArgument(path, "must set one of complete, infill or chat")
        call = getattr(request, kind)
        try:
            validate_model_name(call.model)
            self._check_sizes(kind, call)
            validate_sampling(call.sampling, self._settings.limits)
            check_priority(self._policies.of(tenant),
                           validate_priority(call.options, default=pb.PRIORITY_LOW))
        except FleetError as exc:
            raise _at(f"{path}.{kind}", exc) from exc
        return kind, request.SerializeToString()

    def _check_sizes(self, kind: str, call: Any) -> None:
        """The limits a call of that kind meets (the gateway's FLEET_LIMIT_*), so a job cannot
        store what would be refused when it runs."""
        limits = self._settings.limits
        texts = {"complete": lambda: [("prompt", call.prompt)],
                 "infill": lambda: [("prefix", call.prefix), ("suffix", call.suffix)],
                 "chat": lambda: [(f"messages[{i}].content", m.content)
                                  for i, m in enumerate(call.messages)]}[kind]()
        if kind == "chat" and len(call.messages) > limits.max_messages:
            raise OutOfBounds("messages", len(call.messages),
                              f"at most {limits.max_messages} messages")
        for field_name, text in texts:
            if len(text) > limits.max_prompt_chars:
                raise OutOfBounds(field_name, f"{len(text)} characters",
                                  f"at most {limits.max_prompt_chars} characters")

    async def _create(self, tenant: str, items: list[NewItem], settings: Any,
                      context: grpc.aio.ServicerContext, rpc: str) -> JobRecord:
        """Stores the job; its items' traces will link to this call's server span."""
        if not items:
            raise InvalidArgument("items", "at least one item is required")
        stored = sum(len(item.request) for item in items)
        if stored > MAX_JOB_BYTES:
            raise OutOfBounds("items", f"{stored:,} bytes of requests",
                              f"at most {MAX_JOB_BYTES:,} bytes in one job")
        window = _window(settings.completion_window_s)
        webhook_url = await self._webhook_url(settings.webhook_url)
        with tracing.span(f"codellama.fleet.v1.JobService/{rpc}", kind=tracing.SpanKind.SERVER,
                          parent_carrier=trace_context_of(context), attributes={
                              "fleet.tenant": tenant, "fleet.job_items": len(items)}) as span:
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            try:
                job = await asyncio.to_thread(
                    self._store.create_job, tenant, items, priority=pb.PRIORITY_LOW,
                    completion_window=window, webhook_url=webhook_url,
                    trace_parent=carrier.get("traceparent", ""),
                    max_unfinished=self._policies.of(tenant).max_queued_job_items)
            except DuplicateCustomId as exc:
                raise InvalidArgument("items.custom_id", str(exc)) from exc
            except TooManyUnfinished as exc:
                raise _queued_items_refusal(tenant, exc) from exc
            if span is not None:
                span.set_attribute("fleet.job_id", job.id)
            return job

    async def _webhook_url(self, url: str) -> str:
        if not url:
            return ""
        if len(url) > MAX_WEBHOOK_URL:
            raise OutOfBounds("settings.webhook_url", f"{len(url)} characters",
                              f"at most {MAX_WEBHOOK_URL} characters")
        refused = await webhook_targets.refusal(url, self._settings.webhook_allowed_hosts)
        if refused:
            raise InvalidArgument("settings.webhook_url", f"{refused}; got {url[:200]!r}")
        return url

    async def _job_message(self, tenant: str, job_id: str) -> Any:
        job = await self._job(tenant, job_id)
        deliveries = await asyncio.to_thread(self._store.webhook_deliveries, [job.id]) \
            if job.webhook_url and job.finished_at is not None else {}
        return job_message(job, deliveries.get(job.id))

    async def _job(self, tenant: str, job_id: str) -> JobRecord:
        job = await asyncio.to_thread(self._store.get_job, tenant, job_id)
        if job is None:
            raise _not_found(job_id)
        return job


def _queued_items_refusal(tenant: str, exc: TooManyUnfinished) -> ResourceExhausted:
    return ResourceExhausted(
        f"tenant {tenant!r} may have {exc.limit} job items unfinished (max_queued_job_items); "
        f"it has {exc.unfinished} and this job adds {exc.adding}; retry in "
        f"{_QUEUED_ITEMS_RETRY_S:.0f} s or submit fewer",
        retry_after_s=_QUEUED_ITEMS_RETRY_S, reason="max_queued_job_items",
        violations=(QuotaViolation(f"tenant:{tenant}", f"max_queued_job_items {exc.limit}: "
                                   f"{exc.unfinished} unfinished, {exc.adding} more asked"),))


def _window(seconds: int) -> timedelta:
    if not seconds:
        return DEFAULT_WINDOW
    window = timedelta(seconds=seconds)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise OutOfBounds("settings.completion_window_s", seconds,
                          f"{int(MIN_WINDOW.total_seconds())} to "
                          f"{int(MAX_WINDOW.total_seconds())} seconds (0: 24 hours)")
    return window


def _state_of(index: int, state: int) -> JobState:
    if state not in _STATE_OF_JOB_MESSAGE:
        raise InvalidArgument(f"states[{index}]", f"unknown job state {state}; allowed: "
                              + ", ".join(jobs_api.JobState.keys()[1:]))
    return _STATE_OF_JOB_MESSAGE[state]


def _at(path: str, exc: FleetError) -> FleetError:
    """`exc` naming the field under `path` (an item of a batch)."""
    if isinstance(exc, InvalidArgument):
        return InvalidArgument(f"{path}.{exc.field}", exc.problem)
    return type(exc)(f"{path}: {exc.message}")


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id[:80]!r} not found (or not the caller's tenant's)")


def _time(moment: datetime | None) -> str:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else ""


def job_message(job: JobRecord, webhook: WebhookDelivery | None = None) -> Any:
    counts = {state.value: job.counts.get(state, 0) for state in ItemState}
    message = jobs_api.Job(
        job_id=job.id, state=_JOB_STATES[job.state], total_items=job.total_items,
        counts=jobs_api.ItemCounts(**counts), created_at=_time(job.created_at),
        started_at=_time(job.started_at), finished_at=_time(job.finished_at),
        expires_at=_time(job.expires_at), webhook_url=job.webhook_url)
    if webhook is not None:
        message.webhook.CopyFrom(jobs_api.WebhookDelivery(
            webhook_id=webhook.webhook_id, event_type=webhook.event_type,
            state=_WEBHOOK_STATES[webhook.state], attempts=webhook.attempts,
            last_status=webhook.last_status or 0, last_error=webhook.last_error,
            next_attempt_at=_time(webhook.next_attempt_at)
            if webhook.state is WebhookState.PENDING else ""))
    return message


def result_message(item: ItemRecord) -> Any:
    result = jobs_api.ItemResult(index=item.index, custom_id=item.custom_id,
                                 state=_ITEM_STATES[item.state],
                                 error_code=item.error_code or 0,
                                 error_message=item.error_message)
    if item.result is not None:
        getattr(result, item.kind).CopyFrom(_RESPONSES[item.kind].FromString(item.result))
    return result
