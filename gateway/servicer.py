"""InferenceService: thin RPC handlers over validation, prompt building and dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import inference_service_pb2_grpc as api_grpc
from fleet_common.wire import GenerationTask, Mode
from gateway.auth import Authenticator
from gateway.dispatch import Dispatcher
from gateway.model_directory import ModelDirectory
from gateway.prompts import PromptBuilder, PromptInput
from gateway.responses import ResultAssembler
from gateway.result_feeds import ResultFeed
from gateway.settings import GatewaySettings
from gateway.validation import (
    validate_model_name,
    validate_priority,
    validate_request_id,
    validate_routing_key,
    validate_sampling,
)
from model_registry.records import ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Admitted:
    task: GenerationTask
    served: ServedModel
    feed: ResultFeed
    received: float  # perf_counter when the call arrived, so timings include admission


class InferenceServicer(api_grpc.InferenceServiceServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        models: ModelDirectory,
        prompts: PromptBuilder,
        dispatcher: Dispatcher,
        auth: Authenticator,
    ) -> None:
        self._settings = settings
        self._models = models
        self._prompts = prompts
        self._dispatcher = dispatcher
        self._auth = auth

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
        built = self._prompts.build(served, prompt_input)
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

    async def _admit(self, prompt_input: PromptInput, request: Any,
                     context: grpc.aio.ServicerContext) -> _Admitted:
        received = time.time()
        received_clock = time.perf_counter()
        tenant = self._auth.tenant_of(context)
        model = validate_model_name(request.model)
        sampling = validate_sampling(request.sampling, self._settings.limits)
        request_id = validate_request_id(request.options)
        priority = validate_priority(request.options)
        served = self._models.resolve(model, validate_routing_key(request.options) or tenant or None)
        built = self._prompts.build(served, prompt_input)
        self._prompts.check_budget(served, built, sampling.max_tokens)
        task = GenerationTask(
            request_id=request_id,
            model=served.model,
            model_version=served.version,
            mode=built.mode,
            prompt_token_ids=built.token_ids,
            # ignore_eos means the format's end tokens too (EOS, EOT, <step>), as in vLLM.
            stop_token_ids=[] if sampling.ignore_eos else built.stop_token_ids,
            sampling=sampling,
            decode_as_infill=built.mode is Mode.INFILL,
            deadline_unix=self._deadline(received, context),
            enqueued_at_unix=time.time(),
            tenant=tenant,
            priority=priority,
        )
        feed = await self._dispatcher.submit(task, served.queue, served.pool)
        return _Admitted(task, served, feed, received_clock)

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
        async for event in self._dispatcher.events(admitted.feed, admitted.task,
                                                   admitted.served.queue):
            yield assembler.on_event(event)

    @contextlib.asynccontextmanager
    async def _until_final(self, admitted: _Admitted) -> AsyncIterator[None]:
        """Leaving before the final event (client gone, deadline, error) cancels the request
        wherever it is, queued or generating."""
        try:
            yield
        except BaseException:
            await asyncio.shield(self._dispatcher.cancel(admitted.task.request_id))
            raise
        finally:
            self._dispatcher.release(admitted.feed)

    async def _unary(self, response_type: Any, prompt_input: PromptInput, request: Any,
                     context: grpc.aio.ServicerContext) -> Any:
        admitted = await self._admit(prompt_input, request, context)
        assembler = ResultAssembler(admitted.task.request_id, admitted.served.model,
                                    admitted.task.sampling.n, received=admitted.received)
        async with self._until_final(admitted):
            async for _ in self._events(admitted, assembler):
                pass
        return response_type(request_id=admitted.task.request_id, choices=assembler.choices(),
                             **assembler.summary())

    async def _stream(self, response_type: Any, prompt_input: PromptInput, request: Any,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        admitted = await self._admit(prompt_input, request, context)
        rid = admitted.task.request_id
        assembler = ResultAssembler(rid, admitted.served.model, admitted.task.sampling.n,
                                    received=admitted.received)
        async with self._until_final(admitted):
            yield response_type(request_id=rid)
            async for deltas in self._events(admitted, assembler):
                if deltas:
                    yield response_type(request_id=rid, deltas=deltas)
        yield response_type(request_id=rid, **assembler.summary())
