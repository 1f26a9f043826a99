"""InferenceService: thin RPC handlers over validation, prompt building and dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import inference_service_pb2_grpc as api_grpc
from fleet_common.logs import bind_request
from fleet_common.wire import GenerationTask
from fleet_server import tracing
from gateway.auth import Authenticator
from gateway.call_tracing import request_attributes, result_attributes
from gateway.dispatch import TaskDispatcher
from gateway.model_directory import ModelDirectory
from gateway.prompts import PromptBuilder, PromptInput
from gateway.request_claims import fingerprint
from gateway.request_metrics import CallRecord, recorded
from gateway.request_run import RequestRun
from gateway.responses import ResultAssembler
from gateway.settings import GatewaySettings
from gateway.tenant_policies import TenantPolicies, check_priority
from gateway.validation import (
    validate_model_name,
    validate_priority,
    validate_request_id,
    validate_routing_key,
    validate_sampling,
)
from model_registry.records import ServedModel

log = logging.getLogger(__name__)
_TRACE_HEADERS = ("traceparent", "tracestate")


def trace_context_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The caller's W3C trace context headers, carried to the worker with the task."""
    return {key: value for key, value in context.invocation_metadata() or ()
            if key in _TRACE_HEADERS and isinstance(value, str)}


def _call_span(response_type: Any, context: grpc.aio.ServicerContext) -> Any:
    """The call's server span, a child of the caller's traceparent when it sends one."""
    rpc = response_type.DESCRIPTOR.name.removesuffix("Response")
    return tracing.span(f"codellama.fleet.v1.InferenceService/{rpc}", kind=tracing.SpanKind.SERVER,
                        parent_carrier=trace_context_of(context))


def _record_result(record: CallRecord, call_span: Any, admitted: _Admitted,
                   assembler: ResultAssembler, summary: dict[str, Any],
                   choices: list[Any]) -> None:
    record.clock, record.completion_tokens = assembler.clock, summary["usage"].completion_tokens
    if call_span is not None:
        call_span.set_attributes(result_attributes(
            summary["usage"], [c.finish_reason for c in choices], admitted.task.attempt,
            assembler.clock.queue_wait_ms))


@dataclass(frozen=True)
class _Admitted:
    run: RequestRun
    served: ServedModel
    received: float  # perf_counter when the call arrived, so timings include admission

    @property
    def task(self) -> GenerationTask:
        return self.run.task


class InferenceServicer(api_grpc.InferenceServiceServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        models: ModelDirectory,
        prompts: PromptBuilder,
        dispatcher: TaskDispatcher,
        auth: Authenticator,
        policies: TenantPolicies | None = None,
    ) -> None:
        """`policies`: the tenants' policies (priority ceilings); None: every tenant has the
        defaults."""
        self._settings = settings
        self._models = models
        self._prompts = prompts
        self._dispatcher = dispatcher
        self._auth = auth
        self._policies = policies if policies is not None else TenantPolicies()

    # Unary RPCs -------------------------------------------------------------------------------

    async def Complete(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(api.CompleteResponse, PromptInput.completion(request), request,
                                 context)

    async def Infill(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(api.InfillResponse, PromptInput.infill(request), request,
                                 context)

    async def Chat(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(api.ChatResponse, PromptInput.chat(request), request, context)

    # Streaming RPCs ---------------------------------------------------------------------------

    def StreamComplete(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._stream(api.StreamCompleteResponse, PromptInput.completion(request), request,
                            context)

    def StreamInfill(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._stream(api.StreamInfillResponse, PromptInput.infill(request), request,
                            context)

    def StreamChat(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._stream(api.StreamChatResponse, PromptInput.chat(request), request, context)

    # Introspection ----------------------------------------------------------------------------

    async def PreviewPrompt(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = self._auth.tenant_of(context)
        served = self._models.resolve(validate_model_name(request.model),
                                      validate_routing_key(request.options) or tenant or None)
        prompt_input = PromptInput.preview(request)
        built = await self._prompts.build_async(served, prompt_input)
        if request.HasField("max_tokens"):
            self._prompts.check_budget(served, built, request.max_tokens)
        return self._prompts.preview_response(served, built)

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._auth.tenant_of(context)
        return api.ListModelsResponse(models=[
            api.ModelInfo(name=m.model, model_version=m.version, pool=m.pool, modes=m.modes,
                          context_limit=m.context_limit, chat_format=m.chat_format)
            for m in self._models.all()
        ])

    # Shared path ------------------------------------------------------------------------------

    async def admit(self, prompt_input: PromptInput, request: Any,
                    context: grpc.aio.ServicerContext) -> _Admitted:
        """Validates, builds the prompt (off the event loop when it is long), checks the
        budget and submits the task: what every generation RPC does before it streams."""
        received = time.time()
        received_clock = time.perf_counter()
        tenant = self._auth.tenant_of(context)
        return await self.admit_as(tenant, prompt_input, request,
                                   deadline_unix=self._deadline(received, context),
                                   trace_context=trace_context_of(context),
                                   received_clock=received_clock)

    async def admit_as(self, tenant: str, prompt_input: PromptInput, request: Any, *,
                       deadline_unix: float, trace_context: dict[str, str],
                       received_clock: float, default_priority: int = pb.PRIORITY_NORMAL
                       ) -> _Admitted:
        """`admit` for an authenticated `tenant` (a job item: no call context)."""
        model = validate_model_name(request.model)
        sampling = validate_sampling(request.sampling, self._settings.limits)
        request_id = validate_request_id(request.options)
        priority = validate_priority(request.options, default=default_priority)
        check_priority(self._policies.of(tenant), priority)
        served = await self._models.resolve_serving(
            model, validate_routing_key(request.options) or tenant or None, self._dispatcher)
        built = await self._prompts.build_async(served, prompt_input)
        self._prompts.check_budget(served, built, sampling.max_tokens)
        task = GenerationTask(
            request_id=request_id,
            tenant=tenant,
            model=served.model,
            model_version=served.version,
            prompt_token_ids=built.token_ids,
            # ignore_eos means the format's end tokens too (EOS, EOT, <step>), as in vLLM.
            stop_token_ids=[] if sampling.ignore_eos else built.stop_token_ids,
            sampling=sampling,
            priority=priority,
            deadline_unix=deadline_unix,
            enqueued_at_unix=time.time(),
            attempt=1,
            trace_context=trace_context,
        )
        caller_seed = sampling.seed if sampling.HasField("seed") else None
        if caller_seed is None and sampling.temperature > 0:
            # A re-run after a lost worker then samples the same tokens, so a stream can
            # continue where it stopped instead of failing.
            task.sampling.seed = secrets.randbits(63)
        run = await self._dispatcher.submit(task, served.queue, served.pool,
                                            fingerprint=fingerprint(task, caller_seed=caller_seed))
        return _Admitted(run, served, received_clock)

    def _deadline(self, received: float, context: grpc.aio.ServicerContext) -> float:
        """The client's deadline, slightly early so we answer before it gives up; else default."""
        remaining = context.time_remaining()
        if remaining is None:
            budget = self._settings.default_deadline_s
        else:
            margin = min(self._settings.deadline_margin_s, remaining * 0.1)
            budget = min(remaining - margin, self._settings.max_deadline_s)
        return received + max(budget, 0.0)

    async def _events(self, admitted: _Admitted, assembler: ResultAssembler
                      ) -> AsyncIterator[list[Any] | None]:
        """Stream events as delta lists."""
        async for event in self._dispatcher.events(admitted.run):
            yield assembler.on_event(event)

    @contextlib.asynccontextmanager
    async def _until_final(self, admitted: _Admitted, *,
                           handing_over: Callable[[], bool] = lambda: False
                           ) -> AsyncIterator[None]:
        """Leaving before the final event (client gone, deadline, error) cancels the request
        wherever it is, queued or generating (unless other callers share it). A cancel while
        `handing_over()` leaves it running for the next caller under its id instead."""
        try:
            yield
        except asyncio.CancelledError:
            if handing_over():
                await asyncio.shield(self._dispatcher.hand_over(admitted.run))
            else:
                await asyncio.shield(self._dispatcher.abandon(admitted.run))
            raise
        except BaseException:
            await asyncio.shield(self._dispatcher.abandon(admitted.run))
            raise
        await self._dispatcher.finish(admitted.run)

    async def run_to_final(self, admitted: _Admitted, *,
                           handing_over: Callable[[], bool] = lambda: False) -> ResultAssembler:
        """Waits for an admitted request's final event; its assembler holds the answer."""
        assembler = ResultAssembler(admitted.task.request_id, admitted.served.model,
                                    admitted.task.sampling.n, received=admitted.received,
                                    streaming=False)
        async with self._until_final(admitted, handing_over=handing_over):
            async for _ in self._events(admitted, assembler):
                pass
        return assembler

    async def _unary(self, response_type: Any, prompt_input: PromptInput, request: Any,
                     context: grpc.aio.ServicerContext) -> Any:
        mode = prompt_input.mode.value
        with recorded(mode, request.model) as record, \
                _call_span(response_type, context) as call_span:
            admitted = await self._traced_admit(prompt_input, request, context, call_span)
            record.version = admitted.served.version
            assembler = await self.run_to_final(admitted)
            choices, summary = assembler.choices(), assembler.summary()
            _record_result(record, call_span, admitted, assembler, summary, choices)
            return response_type(request_id=admitted.task.request_id, choices=choices,
                                 **summary)

    async def _stream(self, response_type: Any, prompt_input: PromptInput, request: Any,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        mode = prompt_input.mode.value
        with recorded(mode, request.model) as record, \
                _call_span(response_type, context) as call_span:
            admitted = await self._traced_admit(prompt_input, request, context, call_span)
            record.version = admitted.served.version
            rid = admitted.task.request_id
            assembler = ResultAssembler(rid, admitted.served.model, admitted.task.sampling.n,
                                        received=admitted.received, streaming=True)
            async with self._until_final(admitted):
                yield response_type(request_id=rid)
                async for deltas in self._events(admitted, assembler):
                    if deltas:
                        yield response_type(request_id=rid, deltas=deltas)
            summary = assembler.summary()
            _record_result(record, call_span, admitted, assembler, summary, assembler.choices())
            yield response_type(request_id=rid, **summary)

    async def _traced_admit(self, prompt_input: PromptInput, request: Any,
                            context: grpc.aio.ServicerContext, call_span: Any) -> _Admitted:
        with tracing.span("admission"):
            admitted = await self.admit(prompt_input, request, context)
        bind_request(admitted.task.request_id, admitted.task.tenant)
        if call_span is not None:
            call_span.set_attributes(request_attributes(prompt_input.mode.value, admitted.task,
                                                        admitted.served))
        return admitted
