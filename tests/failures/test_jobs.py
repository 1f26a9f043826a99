"""Batch jobs through real processes: a gateway with JobService on the registry's database, the
package's two vLLM workers, Redis. Every item's result equals the same request made as a unary
call; a 1,000-item batch through two worker SIGKILLs and a gateway SIGKILL still gives every
custom_id exactly one result, each equal to the unary answer, and so does a batch through a
gateway SIGKILL or a Redis crash that loses every key; a cancelled job starts no item
after CancelJob returns; a job's end is POSTed as a signed Standard Webhooks event to a
receiver that fails twice first, and a webhook to a private address is refused; a tenant sees
only its own jobs; a job never has more than its window of items in the queues."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from pytest_httpserver import HTTPServer
from redis import Redis
from standardwebhooks import Webhook
from werkzeug import Request, Response

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import job_service_pb2 as jobs
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from codellama.fleet.v1.job_service_pb2_grpc import JobServiceStub
from fleet_cli.processes import ManagedProcess, start_gateway
from fleet_common.keys import attempt_started, request_scope
from model_registry.database import open_engine
from model_registry.jobs import ItemState, JobStore
from tests.e2e.fleet_harness import Fleet
from tests.failures.conftest import KEYS, MODEL, WORKERS, ensure_workers
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e
A = (("authorization", "Bearer key-a"),)
B = (("authorization", "Bearer key-b"),)
WINDOW = 2


@dataclass
class JobGateway:
    process: ManagedProcess
    target: str

    def jobs(self) -> JobServiceStub:
        return JobServiceStub(grpc.insecure_channel(self.target))

    def inference(self) -> InferenceServiceStub:
        return InferenceServiceStub(grpc.insecure_channel(self.target))


def _start(fleet: Fleet, window: int = WINDOW) -> JobGateway:
    process, port = start_gateway({
        "FLEET_REGISTRY_URL": fleet.registry_url, "FLEET_REDIS_URL": fleet.redis_url,
        "FLEET_JOBS_DATABASE_URL": fleet.registry_url, "FLEET_API_KEYS": json.dumps(KEYS),
        "FLEET_WORKER_LIVENESS_S": "3", "FLEET_REGISTRY_REFRESH_S": "0.5",
        "FLEET_JOB_WINDOW": str(window), "FLEET_JOB_LEASE_S": "3", "FLEET_JOB_POLL_S": "0.2",
        "FLEET_WEBHOOK_ALLOWED_HOSTS": json.dumps(["127.0.0.1"])}, fleet.log_dir)
    return JobGateway(process, f"127.0.0.1:{port}")


@pytest.fixture
def gateway(fleet: Fleet) -> Iterator[JobGateway]:
    ensure_workers(fleet)
    started = _start(fleet)
    try:
        yield started
    finally:
        started.process.stop()


def _item(custom_id: str, prompt: str, tokens: int) -> jobs.BatchItem:
    return jobs.BatchItem(custom_id=custom_id, request=jobs.JobRequest(
        complete=api.CompleteRequest(model=MODEL, prompt=prompt, sampling=pb.SamplingParams(
            max_tokens=tokens, temperature=0.0, ignore_eos=True))))


def _wait_ended(stub: JobServiceStub, job_id: str, timeout: float = 240) -> list[jobs.Job]:
    """Every change WatchJob reported, until the job ended."""
    return [m.job for m in stub.WatchJob(jobs.WatchJobRequest(job_id=job_id), metadata=A,
                                         timeout=timeout)]


def _results(stub: JobServiceStub, job_id: str) -> list[jobs.ItemResult]:
    return [r for page in stub.GetJobResults(jobs.GetJobResultsRequest(job_id=job_id),
                                             metadata=A, timeout=30) for r in page.results]


def test_every_item_of_a_batch_gets_the_answer_a_unary_call_gets(gateway: JobGateway) -> None:
    items = [_item(f"hunk-{i}", f"def f{i}(x):", 12 + i) for i in range(5)]
    chat = jobs.BatchItem(custom_id="review", request=jobs.JobRequest(chat=api.ChatRequest(
        model=MODEL, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="Review: x = 1")],
        sampling=pb.SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))))
    submitted = gateway.jobs().SubmitBatch(jobs.SubmitBatchRequest(items=[*items, chat]),
                                           metadata=A, timeout=30).job
    assert submitted.state == jobs.JOB_STATE_QUEUED and submitted.total_items == 6
    changes = _wait_ended(gateway.jobs(), submitted.job_id)
    assert changes[-1].state == jobs.JOB_STATE_SUCCEEDED, changes[-1]
    assert changes[-1].counts.succeeded == 6 and changes[-1].finished_at
    assert any(c.state == jobs.JOB_STATE_RUNNING for c in changes), "never seen running"
    results = _results(gateway.jobs(), submitted.job_id)
    assert [(r.index, r.custom_id, r.state) for r in results] == [
        (i, item.custom_id, jobs.ITEM_STATE_SUCCEEDED) for i, item in enumerate([*items, chat])]
    for result, item in zip(results[:5], items, strict=True):
        direct = gateway.inference().Complete(item.request.complete, metadata=A, timeout=60)
        assert list(result.complete.choices[0].token_ids) == list(direct.choices[0].token_ids)
        assert result.complete.usage.completion_tokens == item.request.complete.sampling.max_tokens
        assert result.complete.request_id == f"{submitted.job_id}.{result.index}"
    direct_chat = gateway.inference().Chat(chat.request.chat, metadata=A, timeout=60)
    assert results[5].chat.choices[0].text == direct_chat.choices[0].text


def test_a_tenant_sees_only_its_own_jobs(gateway: JobGateway) -> None:
    job = gateway.jobs().SubmitJob(jobs.SubmitJobRequest(request=_item("x", "y = ", 2).request),
                                   metadata=A, timeout=30).job
    with pytest.raises(grpc.RpcError) as other:
        gateway.jobs().GetJob(jobs.GetJobRequest(job_id=job.job_id), metadata=B, timeout=10)
    assert other.value.code() == grpc.StatusCode.NOT_FOUND, other.value.details()
    mine = gateway.jobs().ListJobs(jobs.ListJobsRequest(), metadata=A, timeout=10).jobs
    theirs = gateway.jobs().ListJobs(jobs.ListJobsRequest(), metadata=B, timeout=10).jobs
    assert job.job_id in {j.job_id for j in mine}
    assert job.job_id not in {j.job_id for j in theirs}
    with pytest.raises(grpc.RpcError) as cancel:
        gateway.jobs().CancelJob(jobs.CancelJobRequest(job_id=job.job_id), metadata=B, timeout=10)
    assert cancel.value.code() == grpc.StatusCode.NOT_FOUND
    for streaming in (lambda: list(gateway.jobs().WatchJob(
                          jobs.WatchJobRequest(job_id=job.job_id), metadata=B, timeout=10)),
                      lambda: list(gateway.jobs().GetJobResults(
                          jobs.GetJobResultsRequest(job_id=job.job_id), metadata=B,
                          timeout=10))):
        with pytest.raises(grpc.RpcError) as hidden:
            streaming()
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    assert _wait_ended(gateway.jobs(), job.job_id)[-1].state == jobs.JOB_STATE_SUCCEEDED


def test_a_refused_batch_names_the_item_and_field(gateway: JobGateway) -> None:
    bad = _item("b", "z", 4)
    bad.request.complete.sampling.n = 99
    with pytest.raises(grpc.RpcError) as refused:
        gateway.jobs().SubmitBatch(jobs.SubmitBatchRequest(items=[_item("a", "z", 4), bad]),
                                   metadata=A, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("items[1].request.complete.sampling.n:"), \
        refused.value.details()
    with pytest.raises(grpc.RpcError) as duplicate:
        gateway.jobs().SubmitBatch(jobs.SubmitBatchRequest(items=[_item("a", "z", 4)] * 2),
                                   metadata=A, timeout=10)
    assert duplicate.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'a'" in duplicate.value.details(), duplicate.value.details()
    with pytest.raises(grpc.RpcError) as empty:
        gateway.jobs().SubmitJob(jobs.SubmitJobRequest(request=jobs.JobRequest()), metadata=A,
                                 timeout=10)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert empty.value.details().startswith("request:"), empty.value.details()
    with pytest.raises(grpc.RpcError) as window:
        gateway.jobs().SubmitJob(jobs.SubmitJobRequest(
            request=_item("w", "z", 4).request, settings=jobs.JobSettings(completion_window_s=5)),
            metadata=A, timeout=10)
    assert window.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert window.value.details() == ("settings.completion_window_s: must be 60 to 604800 "
                                      "seconds (0: 24 hours), got 5"), window.value.details()


def test_a_job_never_has_more_than_its_window_of_items_running(fleet: Fleet,
                                                               gateway: JobGateway) -> None:
    store = JobStore(open_engine(fleet.registry_url))
    job = gateway.jobs().SubmitBatch(jobs.SubmitBatchRequest(
        items=[_item(f"w{i}", f"w{i} = ", 40) for i in range(8)]), metadata=A, timeout=30).job
    most, seen = 0, None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        seen = store.get_job("tenant-a", job.job_id)
        assert seen is not None
        most = max(most, seen.counts.get(ItemState.RUNNING, 0))
        if seen.finished_at is not None:
            break
        time.sleep(0.05)
    assert seen is not None and seen.finished_at is not None, "the job did not end"
    assert 1 <= most <= WINDOW, most


def test_a_cancelled_job_stops_and_keeps_what_ended(fleet: Fleet, gateway: JobGateway) -> None:
    job = gateway.jobs().SubmitBatch(jobs.SubmitBatchRequest(
        items=[_item(f"c{i}", f"c{i} = ", 600) for i in range(6)]), metadata=A, timeout=30).job
    deadline = time.monotonic() + 120
    while gateway.jobs().GetJob(jobs.GetJobRequest(job_id=job.job_id), metadata=A,
                                timeout=10).job.counts.running == 0:
        assert time.monotonic() < deadline, "no item started"
        time.sleep(0.05)
    cancelled = gateway.jobs().CancelJob(jobs.CancelJobRequest(job_id=job.job_id), metadata=A,
                                         timeout=10).job
    assert cancelled.state in (jobs.JOB_STATE_CANCELLING, jobs.JOB_STATE_CANCELLED)
    final = _wait_ended(gateway.jobs(), job.job_id, timeout=60)[-1]
    assert final.state == jobs.JOB_STATE_CANCELLED, final
    assert final.counts.cancelled >= 4, final.counts  # a window of 2: at least 4 never ran
    assert final.counts.queued == final.counts.running == 0
    results = _results(gateway.jobs(), job.job_id)
    assert len(results) == 6 and {r.state for r in results} <= {
        jobs.ITEM_STATE_SUCCEEDED, jobs.ITEM_STATE_CANCELLED}
    # No item started after CancelJob returned: those ever run were running or done by then.
    ever_run = [r for r in JobStore(open_engine(fleet.registry_url)).results(
        "tenant-a", job.job_id) if r.attempts > 0]
    c = cancelled.counts
    assert len(ever_run) == c.running + c.succeeded + c.failed, (ever_run, c)


def _submit_and_wait_running(gateway: JobGateway, *, prefix: str, items: int) -> jobs.Job:
    """A batch of 300-token greedy items, once one of them runs."""
    job = gateway.jobs().SubmitBatch(jobs.SubmitBatchRequest(
        items=[_item(f"{prefix}{i}", f"{prefix}{i} = ", 300) for i in range(items)]),
        metadata=A, timeout=30).job
    deadline = time.monotonic() + 120
    while gateway.jobs().GetJob(jobs.GetJobRequest(job_id=job.job_id), metadata=A,
                                timeout=10).job.counts.running == 0:
        assert time.monotonic() < deadline, "no item started"
        time.sleep(0.05)
    return job


def test_a_job_outlives_a_sigkilled_gateway_with_one_result_per_item(fleet: Fleet) -> None:
    ensure_workers(fleet)
    first = _start(fleet)
    second = None
    try:
        job = _submit_and_wait_running(first, prefix="k", items=6)
        os.kill(first.process.process.pid, signal.SIGKILL)
        first.process.process.wait(timeout=30)
        second = _start(fleet)
        final = _wait_ended(second.jobs(), job.job_id)[-1]
        assert final.state == jobs.JOB_STATE_SUCCEEDED, final
        results = _results(second.jobs(), job.job_id)
        assert [r.index for r in results] == list(range(6))
        assert all(r.complete.usage.completion_tokens == 300 for r in results)
        for r in results:
            direct = second.inference().Complete(api.CompleteRequest(
                model=MODEL, prompt=f"k{r.index} = ", sampling=pb.SamplingParams(
                    max_tokens=300, temperature=0.0, ignore_eos=True)), metadata=A, timeout=60)
            assert list(r.complete.choices[0].token_ids) == list(direct.choices[0].token_ids)
    finally:
        first.process.stop()
        if second is not None:
            second.process.stop()


def test_a_gracefully_stopped_gateway_hands_its_running_items_over(fleet: Fleet) -> None:
    """SIGTERM, not SIGKILL: the stopping gateway leaves its items' generations running and
    ends their leases; the next gateway attaches to them, so every item is generated once
    (one attempt marker each) and each result is the unary answer."""
    ensure_workers(fleet)
    first = _start(fleet)
    second = None
    try:
        job = _submit_and_wait_running(first, prefix="h", items=4)
        first.process.stop()
        assert first.process.process.returncode == 0
        assert re.search(r"handed [12] running job items over", _log(first)), first.process.log_tail()
        second = _start(fleet)
        final = _wait_ended(second.jobs(), job.job_id)[-1]
        assert final.state == jobs.JOB_STATE_SUCCEEDED, final
        results = _results(second.jobs(), job.job_id)
        assert [r.index for r in results] == list(range(4))
        redis = Redis.from_url(fleet.redis_url)
        for r in results:
            scope = request_scope("tenant-a", f"{job.job_id}.{r.index}")
            markers = redis.keys(attempt_started(scope, 0).removesuffix("#0") + "#*")
            assert len(markers) == 1, (r.index, markers)
            direct = second.inference().Complete(api.CompleteRequest(
                model=MODEL, prompt=f"h{r.index} = ", sampling=pb.SamplingParams(
                    max_tokens=300, temperature=0.0, ignore_eos=True)), metadata=A, timeout=60)
            assert list(r.complete.choices[0].token_ids) == list(direct.choices[0].token_ids)
        redis.close()
    finally:
        first.process.stop()
        if second is not None:
            second.process.stop()


def _log(gateway: JobGateway) -> str:
    return gateway.process.log_path.read_text(errors="replace")


def test_a_job_outlives_a_redis_crash_with_one_result_per_item(
        fleet: Fleet, gateway: JobGateway, failures_redis: RedisServer | None) -> None:
    """Redis is SIGKILLed (no persistence: every queue, line and result stream is lost) while
    items run; the job store is the database, so the runner re-runs what was lost."""
    if failures_redis is None:
        pytest.skip("needs a redis-server of the test's own to kill")
    stub = gateway.jobs()
    job = stub.SubmitBatch(jobs.SubmitBatchRequest(
        items=[_item(f"r{i}", f"r{i} = ", 300) for i in range(6)]), metadata=A,
        timeout=30).job
    deadline = time.monotonic() + 120
    while stub.GetJob(jobs.GetJobRequest(job_id=job.job_id), metadata=A,
                      timeout=10).job.counts.running == 0:
        assert time.monotonic() < deadline, "no item started"
        time.sleep(0.05)
    failures_redis.restart(crash=True)
    final = _wait_ended(stub, job.job_id)[-1]
    assert final.state == jobs.JOB_STATE_SUCCEEDED, final
    results = _results(stub, job.job_id)
    assert [r.custom_id for r in results] == [f"r{i}" for i in range(6)]
    for r in results:
        direct = gateway.inference().Complete(api.CompleteRequest(
            model=MODEL, prompt=f"r{r.index} = ", sampling=pb.SamplingParams(
                max_tokens=300, temperature=0.0, ignore_eos=True)), metadata=A, timeout=60)
        assert list(r.complete.choices[0].token_ids) == list(direct.choices[0].token_ids)


def _succeeded(gateway: JobGateway, job_id: str) -> int:
    return gateway.jobs().GetJob(jobs.GetJobRequest(job_id=job_id), metadata=A,
                                 timeout=10).job.counts.succeeded


def _until_succeeded(gateway: JobGateway, job_id: str, count: int) -> None:
    deadline = time.monotonic() + 300
    while _succeeded(gateway, job_id) < count:
        assert time.monotonic() < deadline, f"fewer than {count} items succeeded in 300 s"
        time.sleep(0.1)


def _sigkill_worker(fleet: Fleet, name: str) -> None:
    os.killpg(fleet.workers[name].process.pid, signal.SIGKILL)
    fleet.workers[name].process.wait(timeout=30)


@pytest.mark.long
def test_a_1000_item_batch_survives_two_worker_kills_and_a_gateway_restart(
        fleet: Fleet) -> None:
    """The long variant of the test above (README: the long test command)."""
    ensure_workers(fleet)
    prompts = [f"k{i} = " for i in range(10)]
    first, second = _start(fleet, window=16), None
    try:
        job = first.jobs().SubmitBatch(jobs.SubmitBatchRequest(
            items=[_item(f"k{i}", prompts[i % 10], 4) for i in range(1000)]), metadata=A,
            timeout=60).job
        _until_succeeded(first, job.job_id, 150)
        _sigkill_worker(fleet, WORKERS[0])
        _until_succeeded(first, job.job_id, 300)
        ensure_workers(fleet)  # the first worker back (the other served meanwhile)
        _sigkill_worker(fleet, WORKERS[1])
        _until_succeeded(first, job.job_id, 500)
        os.kill(first.process.process.pid, signal.SIGKILL)
        first.process.process.wait(timeout=30)
        second = _start(fleet, window=16)
        final = _wait_ended(second.jobs(), job.job_id, timeout=600)[-1]
        assert final.state == jobs.JOB_STATE_SUCCEEDED, final
        assert final.counts.succeeded == 1000, final.counts
        results = _results(second.jobs(), job.job_id)
        assert [(r.index, r.custom_id) for r in results] == [(i, f"k{i}") for i in range(1000)]
        answers = {prompt: list(second.inference().Complete(api.CompleteRequest(
            model=MODEL, prompt=prompt, sampling=pb.SamplingParams(
                max_tokens=4, temperature=0.0, ignore_eos=True)), metadata=A,
            timeout=60).choices[0].token_ids) for prompt in prompts}
        wrong = [r.index for r in results
                 if list(r.complete.choices[0].token_ids) != answers[prompts[r.index % 10]]]
        assert wrong == [], f"{len(wrong)} items differ from the unary answer: {wrong[:10]}"
    finally:
        first.process.stop()
        if second is not None:
            second.process.stop()
        ensure_workers(fleet)


def test_a_job_end_is_posted_as_a_signed_standard_webhook(fleet: Fleet, gateway: JobGateway,
                                                          httpserver: HTTPServer) -> None:
    received: list[tuple[bytes, dict[str, str]]] = []
    got = threading.Event()
    attempts = []

    def receive(request: Request) -> Response:
        attempts.append(request.headers.get("webhook-id"))
        if len(attempts) == 1:
            return Response("busy", status=503, headers={"Retry-After": "1"})
        if len(attempts) == 2:
            return Response("broken", status=500)
        received.append((request.get_data(), dict(request.headers)))
        got.set()
        return Response("", status=204)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(receive)
    job = gateway.jobs().SubmitJob(jobs.SubmitJobRequest(
        request=_item("h", "h = ", 3).request,
        settings=jobs.JobSettings(webhook_url=f"http://127.0.0.1:{httpserver.port}/hook")),
        metadata=A,
        timeout=30).job
    assert got.wait(120), f"no webhook delivered; attempts {attempts}"
    body, headers = received[0]
    secret = gateway.jobs().GetWebhookSecret(jobs.GetWebhookSecretRequest(), metadata=A,
                                             timeout=10).secret
    event = Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    assert event["type"] == "job.succeeded" and event["data"]["job_id"] == job.job_id
    assert len(set(attempts)) == 1, "a retry must keep the webhook-id"
    assert len(attempts) == 3, attempts
    deadline = time.monotonic() + 10
    while (delivery := gateway.jobs().GetJob(jobs.GetJobRequest(job_id=job.job_id), metadata=A,
                                             timeout=10).job.webhook).state \
            != jobs.WEBHOOK_STATE_DELIVERED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (delivery.state, delivery.attempts, delivery.last_status, delivery.webhook_id,
            delivery.event_type) == (jobs.WEBHOOK_STATE_DELIVERED, 3, 204, attempts[0],
                                     "job.succeeded")
    with pytest.raises(grpc.RpcError) as internal:
        gateway.jobs().SubmitJob(jobs.SubmitJobRequest(
            request=_item("i", "i = ", 3).request,
            settings=jobs.JobSettings(webhook_url="https://10.0.0.1/hook")), metadata=A,
            timeout=10)
    assert internal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "internal address 10.0.0.1" in internal.value.details()


@pytest.mark.long
def test_an_expired_job_keeps_the_results_it_finished(gateway: JobGateway) -> None:
    """A one-minute window over more work than a minute holds: the job ends EXPIRED, the items
    that finished keep their full results, the rest (running ones too) end EXPIRED without one,
    and every item has exactly one end."""
    stub = gateway.jobs()
    job = stub.SubmitBatch(jobs.SubmitBatchRequest(
        settings=jobs.JobSettings(completion_window_s=60),
        items=[_item(f"e{i}", f"e{i} = ", 300) for i in range(100)]), metadata=A,
        timeout=30).job
    final = _wait_ended(stub, job.job_id, timeout=180)[-1]
    assert final.state == jobs.JOB_STATE_EXPIRED, final
    assert final.counts.succeeded >= 2 and final.counts.expired >= 1, final.counts
    assert final.counts.succeeded + final.counts.expired == 100, final.counts
    results = _results(stub, job.job_id)
    assert [r.index for r in results] == list(range(100))
    finished = [r for r in results if r.state == jobs.ITEM_STATE_SUCCEEDED]
    assert len(finished) == final.counts.succeeded
    assert all(r.complete.usage.completion_tokens == 300 for r in finished)
    expired = [r for r in results if r.state == jobs.ITEM_STATE_EXPIRED]
    assert len(expired) == final.counts.expired and not any(r.HasField("complete")
                                                            for r in expired)
