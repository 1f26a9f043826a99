"""A tenant's priority ceiling through the real servicer and error mapping: a request above it
is refused with PERMISSION_DENIED naming the field, the tenant, its ceiling and the value asked,
before anything is queued; at or below it the priority goes to the dispatcher unchanged."""

from __future__ import annotations

import grpc
import pytest

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import inference_service_pb2_grpc as api_grpc
from fleet_common.wire import Final, StreamEvent
from fleet_server.interceptor import ErrorMappingInterceptor
from gateway.auth import Authenticator
from gateway.model_directory import ModelDirectory
from gateway.prompts import PromptBuilder
from gateway.servicer import InferenceServicer
from gateway.settings import GatewaySettings
from gateway.tenant_policies import TenantPolicies
from model_registry.records import TenantPolicy
from tests.gateway.test_servicer import CHAT_7B, FakeDispatcher, models  # noqa: F401

pytestmark = pytest.mark.timeout(60)
KEYS = {"key-batch": "batch", "key-free": "anyone"}


async def test_a_priority_above_the_tenants_ceiling_is_refused(models: ModelDirectory  # noqa: F811
                                                               ) -> None:
    settings = GatewaySettings(api_keys=KEYS)
    dispatcher = FakeDispatcher()
    dispatcher.script = [StreamEvent(attempt=1, final=Final())]
    policies = TenantPolicies([TenantPolicy("batch", max_priority="low")])
    servicer = InferenceServicer(settings, models, PromptBuilder(settings.limits), dispatcher,
                                 Authenticator(settings.api_keys), policies)
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    api_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = api_grpc.InferenceServiceStub(channel)

    async def complete(key: str, priority: int) -> grpc.StatusCode:
        request = api.CompleteRequest(model=CHAT_7B, prompt="def f():",
                                      options=pb.RequestOptions(priority=priority))  # type: ignore
        try:
            await stub.Complete(request, timeout=10, metadata=[("authorization", f"Bearer {key}")])
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.PERMISSION_DENIED:
                asked = priority or pb.PRIORITY_NORMAL  # unspecified is normal
                assert err.details() == (
                    "options.priority: tenant 'batch' may ask for priority up to PRIORITY_LOW "
                    f"(its max_priority is 'low'), got {pb.Priority.Name(asked)}; ask for "
                    "PRIORITY_LOW or lower, or ask an operator to raise it (fleet ops "
                    "tenant-update --max-priority)")
            return err.code()
        return grpc.StatusCode.OK

    try:
        for priority in (pb.PRIORITY_NORMAL, pb.PRIORITY_HIGH, pb.PRIORITY_UNSPECIFIED):
            assert await complete("key-batch", priority) == grpc.StatusCode.PERMISSION_DENIED
        assert dispatcher.submitted == []  # refused before anything was queued
        assert await complete("key-batch", pb.PRIORITY_LOW) == grpc.StatusCode.OK
        # A tenant the registry does not know (a FLEET_API_KEYS one) has no ceiling.
        assert await complete("key-free", pb.PRIORITY_HIGH) == grpc.StatusCode.OK
        assert [(s.task.tenant, s.task.priority) for s in dispatcher.submitted] == [
            ("batch", pb.PRIORITY_LOW), ("anyone", pb.PRIORITY_HIGH)]
    finally:
        await channel.close()
        await server.stop(0)
