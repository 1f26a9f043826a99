"""JobService and the job runner in-process: the real servicers behind a real gRPC server, a
real jobs database (SQLite), and a fake dispatcher that answers each task from a script. What
reaches the dispatcher (priority, request ids, at most a window at a time), what the job's
results say, cancels and retries. Through real workers: tests/failures/test_jobs.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import job_service_pb2 as jobs
from codellama.fleet.v1 import job_service_pb2_grpc as jobs_grpc
from fleet_cli.__main__ import main
from fleet_common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from fleet_common.keys import request_scope, result_stream
from fleet_common.wire import Delta, Final, GenerationTask, Started, StreamEvent
from fleet_server.interceptor import ErrorMappingInterceptor
from gateway.auth import Authenticator
from gateway.job_runner import JobRunner, JobRunnerSettings
from gateway.job_service import JobServicer, JobServiceSettings
from gateway.model_directory import ModelDirectory
from gateway.prompts import PromptBuilder
from gateway.request_run import RequestRun
from gateway.result_feeds import ResultFeed
from gateway.servicer import InferenceServicer
from gateway.settings import GatewaySettings
from gateway.tenant_policies import TenantPolicies
from model_registry.database import migrate, open_engine
from model_registry.jobs import ItemState, JobState, JobStore, NewItem
from model_registry.records import TenantPolicy
from tests.support.model_directory import tiny_model_directory

pytestmark = pytest.mark.timeout(60)
MODEL = "tiny-7b-instruct"
KEYS = {"key-a": "acme", "key-b": "rival"}
A = (("authorization", "Bearer key-a"),)
B = (("authorization", "Bearer key-b"),)
WINDOW = 2


class ScriptedDispatcher:
    """Answers each task with one delta (token ids 7, 8, 9) and a final, once `release`d when
    `hold` is set; fails a task's first `fail_first` submissions with `failure`."""

    def __init__(self) -> None:
        self.submitted: list[GenerationTask] = []
        self.abandoned: list[str] = []
        self.handed_over: list[str] = []
        self.running = 0
        self.most_running = 0
        self.hold = False
        self.released = asyncio.Event()
        self.failure: Exception | None = None
        self.fail_first = 0
        self._failed: dict[str, int] = {}

    async def submit(self, task: GenerationTask, queue: str, pool: str, *,
                     fingerprint: str) -> RequestRun:
        if self.failure is not None and self._failed.get(task.request_id, 0) < self.fail_first:
            self._failed[task.request_id] = self._failed.get(task.request_id, 0) + 1
            raise self.failure
        self.submitted.append(task)
        scope = request_scope(task.tenant, task.request_id)
        return RequestRun(task, queue, pool, ResultFeed(scope, result_stream(scope).encode()))

    async def events(self, run: RequestRun) -> AsyncIterator[StreamEvent]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            yield StreamEvent(attempt=1, started=Started(worker="w", pool="7b",
                                                         model_version="v1"))
            if self.hold:
                try:
                    async with asyncio.timeout(run.task.deadline_unix - time.time()):
                        await self.released.wait()
                except TimeoutError:
                    raise DeadlineExceeded(f"request {run.task.request_id} did not finish "
                                           "within its deadline") from None
            yield StreamEvent(attempt=1, delta=Delta(choices=[pb.ChoiceDelta(
                token_ids=[7, 8, 9], text="abc")]))
            yield StreamEvent(attempt=1, final=Final(
                finish_reasons=[pb.FINISH_REASON_LENGTH], prompt_tokens=3,
                completion_tokens=3, worker="w", pool="7b", model_version="v1"))
        finally:
            self.running -= 1

    async def finish(self, run: RequestRun) -> None:
        pass

    async def abandon(self, run: RequestRun) -> None:
        self.abandoned.append(run.task.request_id)

    async def hand_over(self, run: RequestRun) -> None:
        self.handed_over.append(run.task.request_id)

    async def live_worker_count(self, queue: str) -> int:
        return 1


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory,
           tiny_checkpoints: dict[str, Path]) -> ModelDirectory:
    return tiny_model_directory(tmp_path_factory.mktemp("registry"), tiny_checkpoints,
                                [(MODEL, "infill", "codellama-7b-instruct")])


@dataclass
class Jobs:
    stub: jobs_grpc.JobServiceStub
    dispatcher: ScriptedDispatcher
    store: JobStore
    policies: TenantPolicies
    target: str
    runners: list[JobRunner] = field(default_factory=list)
    servicer: InferenceServicer | None = None

    def runner(self, owner: str, lease_s: float = 30.0) -> JobRunner:
        assert self.servicer is not None
        runner = JobRunner(self.store, self.servicer, JobRunnerSettings(
            owner=owner, window_per_job=WINDOW, max_in_flight=16, lease_s=lease_s, poll_s=0.05,
            max_attempts=3, max_deadline_s=60, retention_s=3600))
        runner.start()
        self.runners.append(runner)
        return runner


@pytest.fixture
async def service(models: ModelDirectory, tmp_path: Path) -> AsyncIterator[Jobs]:
    engine = open_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    store = JobStore(engine)
    settings = GatewaySettings(api_keys=KEYS)
    auth = Authenticator(settings.api_keys)
    dispatcher = ScriptedDispatcher()
    policies = TenantPolicies()
    servicer = InferenceServicer(settings, models, PromptBuilder(settings.limits), dispatcher,
                                 auth, policies)
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    jobs_grpc.add_JobServiceServicer_to_server(JobServicer(
        store, auth, policies, JobServiceSettings(settings.limits, watch_poll_s=0.05)),
        server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stub = jobs_grpc.JobServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
    service = Jobs(stub, dispatcher, store, policies, f"127.0.0.1:{port}",
                   servicer=servicer)
    yield service
    for runner in service.runners:
        await runner.aclose()
    await server.stop(0)


def _item(custom_id: str, prompt: str = "def f():") -> jobs.BatchItem:
    return jobs.BatchItem(custom_id=custom_id, request=jobs.JobRequest(
        complete=api.CompleteRequest(model=MODEL, prompt=prompt,
                                     sampling=pb.SamplingParams(max_tokens=3))))


async def _ended(service: Jobs, job_id: str) -> jobs.Job:
    async with asyncio.timeout(20):
        async for change in service.stub.WatchJob(jobs.WatchJobRequest(job_id=job_id),
                                                  metadata=A):
            last = change.job
    return last


async def _results(service: Jobs, job_id: str) -> list[jobs.ItemResult]:
    return [r async for page in service.stub.GetJobResults(
        jobs.GetJobResultsRequest(job_id=job_id), metadata=A) for r in page.results]


async def test_a_batch_runs_every_item_once_at_low_priority_within_its_window(
        service: Jobs) -> None:
    service.runner("gw-1")
    job = (await service.stub.SubmitBatch(jobs.SubmitBatchRequest(
        items=[_item(f"c{i}") for i in range(6)]), metadata=A)).job
    final = await _ended(service, job.job_id)
    assert final.state == jobs.JOB_STATE_SUCCEEDED and final.counts.succeeded == 6
    tasks = service.dispatcher.submitted
    assert sorted(t.request_id for t in tasks) == [f"{job.job_id}.{i}" for i in range(6)]
    assert {t.priority for t in tasks} == {pb.PRIORITY_LOW}
    assert {t.tenant for t in tasks} == {"acme"}
    assert 1 <= service.dispatcher.most_running <= WINDOW
    results = await _results(service, job.job_id)
    assert [(r.index, r.custom_id) for r in results] == [(i, f"c{i}") for i in range(6)]
    assert all(list(r.complete.choices[0].token_ids) == [7, 8, 9] for r in results)
    assert {r.complete.usage.completion_tokens for r in results} == {3}


async def test_a_caller_may_ask_for_more_than_low_for_an_item(service: Jobs) -> None:
    service.runner("gw-1")
    item = _item("n")
    item.request.complete.options.priority = pb.PRIORITY_HIGH
    job = (await service.stub.SubmitBatch(jobs.SubmitBatchRequest(items=[item]),
                                          metadata=A)).job
    assert (await _ended(service, job.job_id)).state == jobs.JOB_STATE_SUCCEEDED
    assert [t.priority for t in service.dispatcher.submitted] == [pb.PRIORITY_HIGH]


async def test_a_streamed_batch_is_one_job(service: Jobs) -> None:
    async def messages() -> AsyncIterator[jobs.SubmitBatchStreamRequest]:
        yield jobs.SubmitBatchStreamRequest(settings=jobs.JobSettings(completion_window_s=600),
                                            items=[_item("s0")])
        yield jobs.SubmitBatchStreamRequest(items=[_item("s1"), _item("s2")])

    job = (await service.stub.SubmitBatchStream(messages(), metadata=A)).job
    assert job.total_items == 3 and job.counts.queued == 3
    assert job.state == jobs.JOB_STATE_QUEUED

    bad = _item("b")
    bad.request.complete.sampling.temperature = 5

    async def refused() -> AsyncIterator[jobs.SubmitBatchStreamRequest]:
        yield jobs.SubmitBatchStreamRequest(items=[_item("r0")])
        yield jobs.SubmitBatchStreamRequest(items=[bad])

    async def settings_late() -> AsyncIterator[jobs.SubmitBatchStreamRequest]:
        yield jobs.SubmitBatchStreamRequest(items=[_item("l0")])
        yield jobs.SubmitBatchStreamRequest(settings=jobs.JobSettings(completion_window_s=600))

    for stream, says in ((refused, "items[1].request.complete.sampling.temperature: must be "
                                   "between 0 and 2, got 5.0"),
                         (settings_late, "settings: is read from the first message only")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.SubmitBatchStream(stream(), metadata=A)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert caught.value.details().startswith(says), caught.value.details()
    long_prompt = _item("p", prompt="x" * 1_000_001)
    with pytest.raises(grpc.aio.AioRpcError) as too_long:
        await service.stub.SubmitBatch(jobs.SubmitBatchRequest(items=[long_prompt]), metadata=A)
    assert too_long.value.details() == ("items[0].request.complete.prompt: must be at most "
                                        "1000000 characters, got '1000001 characters'")


async def test_cancel_stops_the_running_items_and_drops_the_queued(service: Jobs) -> None:
    service.dispatcher.hold = True
    service.runner("gw-1")
    job = (await service.stub.SubmitBatch(jobs.SubmitBatchRequest(
        items=[_item(f"x{i}") for i in range(5)]), metadata=A)).job
    async with asyncio.timeout(10):
        while service.dispatcher.running < WINDOW:
            await asyncio.sleep(0.01)
    cancelled = (await service.stub.CancelJob(jobs.CancelJobRequest(job_id=job.job_id),
                                              metadata=A)).job
    assert cancelled.state == jobs.JOB_STATE_CANCELLING
    assert cancelled.counts.cancelled == 3 and cancelled.counts.running == 2
    final = await _ended(service, job.job_id)
    assert final.state == jobs.JOB_STATE_CANCELLED and final.counts.cancelled == 5
    assert sorted(service.dispatcher.abandoned) == [f"{job.job_id}.{i}" for i in range(2)]
    assert {r.error_code for r in await _results(service, job.job_id)} == {
        grpc.StatusCode.CANCELLED.value[0]}


async def test_an_unavailable_fleet_is_retried_and_a_refusal_fails_the_item(
        service: Jobs) -> None:
    service.dispatcher.failure = Unavailable("no live worker serves tiny@v1")
    service.dispatcher.fail_first = 1
    service.runner("gw-1")
    retried = (await service.stub.SubmitJob(jobs.SubmitJobRequest(request=_item("r").request),
                                            metadata=A)).job
    assert (await _ended(service, retried.job_id)).state == jobs.JOB_STATE_SUCCEEDED
    service.dispatcher.failure = InvalidArgument("sampling.max_tokens", "must be at most 1")
    service.dispatcher.fail_first = 10
    refused = (await service.stub.SubmitJob(jobs.SubmitJobRequest(request=_item("f").request),
                                            metadata=A)).job
    final = await _ended(service, refused.job_id)
    assert final.state == jobs.JOB_STATE_FAILED
    [result] = await _results(service, refused.job_id)
    assert (result.state, result.error_code) == (jobs.ITEM_STATE_FAILED,
                                                 grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert result.error_message == "sampling.max_tokens: must be at most 1"


async def test_a_stopping_gateway_hands_its_running_items_to_the_next(service: Jobs) -> None:
    """A graceful stop leaves the item's generation running (hand-over, not a cancel) and ends
    its lease at once: the next gateway takes it without waiting the 30 s lease out."""
    service.dispatcher.hold = True
    first = service.runner("gw-1", lease_s=30)
    job = (await service.stub.SubmitJob(jobs.SubmitJobRequest(request=_item("g").request),
                                        metadata=A)).job
    async with asyncio.timeout(10):
        while service.dispatcher.running < 1:
            await asyncio.sleep(0.01)
    await first.aclose()
    service.runners.remove(first)
    rid = f"{job.job_id}.0"
    assert service.dispatcher.handed_over == [rid] and service.dispatcher.abandoned == []
    service.dispatcher.hold = False
    service.runner("gw-2", lease_s=30)
    async with asyncio.timeout(10):
        final = await _ended(service, job.job_id)
    assert final.state == jobs.JOB_STATE_SUCCEEDED and final.counts.succeeded == 1
    assert [t.request_id for t in service.dispatcher.submitted] == [rid] * 2
    assert [r.attempts for r in service.store.results("acme", job.job_id)] == [2]


async def test_jobs_are_the_tenants_own_and_refusals_name_the_field(service: Jobs) -> None:
    job = (await service.stub.SubmitJob(jobs.SubmitJobRequest(request=_item("t").request),
                                        metadata=A)).job
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await service.stub.GetJob(jobs.GetJobRequest(job_id=job.job_id), metadata=B)
    assert other.value.code() == grpc.StatusCode.NOT_FOUND
    assert [j.job_id for j in (await service.stub.ListJobs(jobs.ListJobsRequest(),
                                                           metadata=B)).jobs] == []
    with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
        await service.stub.ListJobs(jobs.ListJobsRequest())
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    bad = _item("b")
    bad.request.complete.sampling.temperature = 5
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.stub.SubmitBatch(jobs.SubmitBatchRequest(items=[_item("a"), bad]),
                                       metadata=A)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == ("items[1].request.complete.sampling.temperature: must "
                                       "be between 0 and 2, got 5.0"), refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as webhook:
        await service.stub.SubmitJob(jobs.SubmitJobRequest(
            request=_item("w").request,
            settings=jobs.JobSettings(webhook_url="http://10.0.0.1/hook")), metadata=A)
    assert webhook.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert webhook.value.details().startswith("settings.webhook_url: must be https")
    with pytest.raises(grpc.aio.AioRpcError) as internal:
        await service.stub.SubmitJob(jobs.SubmitJobRequest(
            request=_item("w").request,
            settings=jobs.JobSettings(webhook_url="https://169.254.169.254/hook")), metadata=A)
    assert internal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resolves to internal address 169.254.169.254" in internal.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await service.stub.SubmitBatch(jobs.SubmitBatchRequest(
            items=[_item(f"m{i}") for i in range(10_001)]), metadata=A)
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10,000 in one job" in too_many.value.details()


async def test_a_tenants_unfinished_items_and_priority_ceiling_are_enforced(
        service: Jobs) -> None:
    service.policies.install([TenantPolicy(tenant="acme", max_queued_job_items=3,
                                           max_priority="normal")])
    await service.stub.SubmitBatch(jobs.SubmitBatchRequest(items=[_item("q0"), _item("q1")]),
                                   metadata=A)
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await service.stub.SubmitBatch(jobs.SubmitBatchRequest(
            items=[_item("q2"), _item("q3")]), metadata=A)
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queued_job_items" in full.value.details() and "has 2" in full.value.details()
    details = {d.type_url.rsplit("/", 1)[-1]: d
               for d in rpc_status.from_call(full.value).details}
    quota, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    details["google.rpc.QuotaFailure"].Unpack(quota)
    details["google.rpc.RetryInfo"].Unpack(retry)
    assert quota.violations[0].subject == "tenant:acme"
    assert retry.retry_delay.seconds == 60
    assert (await service.stub.ListJobs(jobs.ListJobsRequest(), metadata=A)).jobs[0].total_items \
        == 2, "a refused job stores nothing"
    high = _item("h")
    high.request.complete.options.priority = pb.PRIORITY_HIGH
    with pytest.raises(grpc.aio.AioRpcError) as ceiling:
        await service.stub.SubmitJob(jobs.SubmitJobRequest(request=high.request), metadata=A)
    assert ceiling.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ceiling.value.details().startswith("request.complete: options.priority: tenant "
                                              "'acme' may ask for priority up to "
                                              "PRIORITY_NORMAL"), ceiling.value.details()


async def test_the_fleet_job_commands_submit_watch_and_read_results(
        service: Jobs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    service.runner("gw-1")
    target = service.target
    batch = tmp_path / "items.jsonl"
    batch.write_text("".join(
        json.dumps(MessageToDict(_item(f"l{i}"), preserving_proto_field_name=True)) + "\n"
        for i in range(3)))
    common = ["--target", target, "--api-key", "key-a"]
    assert await asyncio.to_thread(main, ["jobs", "submit", "--file", str(batch),
                                          *common]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    assert await asyncio.to_thread(main, ["jobs", "watch", job_id, *common]) == 0
    watched = capsys.readouterr()
    assert json.loads(watched.out)["state"] == "JOB_STATE_SUCCEEDED"
    assert "3/3" in watched.err and "3 ok, 0 failed" in watched.err  # the progress bar
    results = tmp_path / "results.jsonl"
    assert await asyncio.to_thread(main, ["jobs", "results", job_id, "-o", str(results),
                                          *common]) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r.get("index", 0), r["custom_id"]) for r in lines] == [(0, "l0"), (1, "l1"),
                                                                   (2, "l2")]
    assert await asyncio.to_thread(main, ["jobs", "get", "job_nope", *common]) == 1
    assert capsys.readouterr().err.startswith("NOT_FOUND: job 'job_nope' not found")
    assert await asyncio.to_thread(main, ["jobs", "webhook-secret", *common]) == 0
    assert capsys.readouterr().out.strip() == service.store.webhook_secret("acme")
    other = (await service.stub.GetWebhookSecret(jobs.GetWebhookSecretRequest(),
                                                 metadata=B)).secret
    assert other.startswith("whsec_") and other != service.store.webhook_secret("acme")


async def test_an_item_running_when_its_jobs_window_closes_expires_with_the_job(
        service: Jobs) -> None:
    """The call's deadline is the window's end; reaching it is the job expiring, not the item
    failing: the item ends EXPIRED (DEADLINE_EXCEEDED), the finished one keeps its result."""
    service.runner("gw-1")
    request = _item("x").request.SerializeToString()
    job = service.store.create_job("acme", [NewItem("done", "complete", request)], priority=1,
                                   completion_window=timedelta(seconds=3))
    async with asyncio.timeout(10):
        while service.store.get_job("acme", job.id).counts.get(ItemState.SUCCEEDED, 0) < 1:
            await asyncio.sleep(0.02)
    service.dispatcher.hold = True
    late = service.store.create_job("acme", [NewItem("late", "complete", request)],
                                    priority=1, completion_window=timedelta(seconds=1))
    async with asyncio.timeout(10):
        while service.store.get_job("acme", late.id).state != JobState.EXPIRED:
            await asyncio.sleep(0.02)
    [result] = service.store.results("acme", late.id)
    assert (result.state, result.error_code) == (ItemState.EXPIRED, 4), result
    [kept] = service.store.results("acme", job.id)
    assert kept.state == ItemState.SUCCEEDED and kept.result


async def test_a_call_deadline_is_retried_and_a_bug_fails_the_item_internal(
        service: Jobs) -> None:
    service.dispatcher.failure = DeadlineExceeded("request r did not finish within its deadline")
    service.dispatcher.fail_first = 1
    service.runner("gw-1")
    retried = (await service.stub.SubmitJob(jobs.SubmitJobRequest(request=_item("d").request),
                                            metadata=A)).job
    assert (await _ended(service, retried.job_id)).state == jobs.JOB_STATE_SUCCEEDED
    service.dispatcher.failure = RuntimeError("a bug")
    service.dispatcher.fail_first = 10
    broken = (await service.stub.SubmitJob(jobs.SubmitJobRequest(request=_item("e").request),
                                           metadata=A)).job
    assert (await _ended(service, broken.job_id)).state == jobs.JOB_STATE_FAILED
    [result] = await _results(service, broken.job_id)
    assert (result.error_code, result.error_message) == (
        grpc.StatusCode.INTERNAL.value[0], "internal error running the item: RuntimeError")


async def test_a_streamed_message_that_does_not_parse_is_invalid_argument(service: Jobs) -> None:
    channel = grpc.aio.insecure_channel(service.target)
    submit = channel.stream_unary("/codellama.fleet.v1.JobService/SubmitBatchStream",
                                  request_serializer=lambda raw: raw,
                                  response_deserializer=jobs.SubmitBatchStreamResponse.FromString)

    async def messages() -> AsyncIterator[bytes]:
        yield jobs.SubmitBatchStreamRequest(items=[_item("ok")]).SerializeToString()
        yield b"\xff\xff\xff\xff not a protobuf"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(messages(), metadata=A)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse as codellama.fleet.v1.SubmitBatchStreamRequest" in \
        caught.value.details(), caught.value.details()
    await channel.close()
