"""Observability of real processes (a gateway and a vLLM worker with /metrics and tracing on):
Prometheus metrics scraped after traffic; one trace per request, gateway and worker spans in
it, received by a real OTLP gRPC receiver; nothing exported by a gateway whose tracing is off;
scale from zero (a request queued for a version without workers, served by the worker started
on the signal). The signal under a scripted load: tests/gateway/test_autoscale_signal_live.py."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import job_service_pb2 as jobs
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from codellama.fleet.v1.job_service_pb2_grpc import JobServiceStub
from fleet_cli.processes import ManagedProcess, free_port, start_gateway, wait_until
from tests.e2e.fleet_harness import Fleet
from tests.failures.conftest import KEYS

pytestmark = pytest.mark.e2e
MODEL = "tiny-7b-metrics"
A = (("authorization", "Bearer key-a"),)


class SpanReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver (the collector's service): keeps every span, with the
    service.name of the process that sent it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self._lock = threading.Lock()

    def Export(self, request: object, context: object) -> object:
        with self._lock:
            for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "")
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: bytes) -> list[tuple[str, object]]:
        with self._lock:
            return [(s, span) for s, span in self.spans
                    if span.trace_id == trace_id]  # type: ignore[attr-defined]


@dataclass
class Observed:
    gateway: str  # host:port of its gRPC
    gateway_metrics: str
    worker_metrics: str
    queue: str
    receiver: SpanReceiver
    untraced_gateway: str  # a gateway whose tracing is off (OTEL_TRACES_EXPORTER=none)
    fleet: Fleet


@pytest.fixture(scope="module")
def observed(fleet: Fleet, tiny_checkpoints: dict[str, Path]) -> Iterator[Observed]:
    served = fleet.register(MODEL, tiny_checkpoints["infill"], variant="codellama-7b-instruct",
                            context_limit=2048)
    receiver = SpanReceiver()
    otlp = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, otlp)
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    tracing_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
                   "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    worker_port, gateway_port = free_port(), free_port()
    fleet.spawn_worker("wf-metrics", MODEL, {
        "FLEET_CONCURRENCY": "2", "FLEET_MAX_NUM_SEQS": "2", "FLEET_CAPACITY": "2",
        "FLEET_METRICS_PORT": str(worker_port), "FLEET_METRICS_HOST": "127.0.0.1",
        **tracing_env})
    gateways: list[ManagedProcess] = []
    common = {"FLEET_REGISTRY_URL": fleet.registry_url, "FLEET_REDIS_URL": fleet.redis_url,
              "FLEET_WORKER_LIVENESS_S": "3", "FLEET_REGISTRY_REFRESH_S": "0.5",
              "FLEET_API_KEYS": json.dumps(KEYS), **tracing_env}
    try:
        fleet.wait_for_worker("wf-metrics", MODEL)
        gateway, port = start_gateway({
            **common, "FLEET_METRICS_PORT": str(gateway_port),
            "FLEET_METRICS_HOST": "127.0.0.1", "FLEET_AUTOSCALE_INTERVAL_S": "0.2",
            # 6 long requests on a worker of capacity 2 must all be admitted
            "FLEET_ADMISSION_QUEUE_FACTOR": "4", "FLEET_WAIT_FOR_WORKERS": "true",
            "FLEET_JOBS_DATABASE_URL": fleet.registry_url, "FLEET_JOB_POLL_S": "0.2"},
            fleet.log_dir)
        gateways.append(gateway)
        untraced, untraced_port = start_gateway({
            **common, "OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "untraced-gateway"},
            fleet.log_dir)
        gateways.append(untraced)
        yield Observed(f"127.0.0.1:{port}", f"http://127.0.0.1:{gateway_port}/metrics",
                       f"http://127.0.0.1:{worker_port}/metrics", served.queue, receiver,
                       f"127.0.0.1:{untraced_port}", fleet)
    finally:
        for gateway in gateways:
            gateway.stop()
        fleet.workers.pop("wf-metrics").stop()
        otlp.stop(grace=1)


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _stub(observed: Observed) -> InferenceServiceStub:
    return InferenceServiceStub(grpc.insecure_channel(observed.gateway))


def _complete(observed: Observed, tokens: int, *, target: str | None = None,
              metadata: tuple[tuple[str, str], ...] = A) -> api.CompleteResponse:
    stub = InferenceServiceStub(grpc.insecure_channel(target or observed.gateway))
    return stub.Complete(api.CompleteRequest(
        model=MODEL, prompt="def add(a, b):", options=pb.RequestOptions(
            request_id=uuid.uuid4().hex),
        sampling=pb.SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.0)),
        metadata=metadata, timeout=120)


def _wait_routable(observed: Observed) -> None:
    def routable() -> bool:
        try:
            _complete(observed, 1)
            return True
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
    wait_until(routable, 30, f"{MODEL} routable")


def test_counters_and_histograms_move_by_what_was_served(observed: Observed) -> None:
    _wait_routable(observed)
    before = _scrape(observed.gateway_metrics)
    for _ in range(3):
        assert _complete(observed, 16).usage.completion_tokens == 16
    with pytest.raises(grpc.RpcError) as refused:
        _stub(observed).Complete(api.CompleteRequest(
            model=MODEL, prompt="x", sampling=pb.SamplingParams(max_tokens=10**6)),
            metadata=A, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = _scrape(observed.gateway_metrics)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    ok = {"model": MODEL, "mode": "completion", "code": "OK"}
    assert moved("fleet_requests_total", **ok) == 3
    assert moved("fleet_requests_total", model=MODEL, code="INVALID_ARGUMENT") == 1
    assert moved("fleet_time_to_first_token_seconds_count", model=MODEL) == 3
    assert moved("fleet_e2e_request_latency_seconds_count", model=MODEL) == 3
    assert moved("fleet_inter_token_latency_seconds_count", model=MODEL) == 3
    assert moved("fleet_queue_wait_seconds_count", model=MODEL) == 3
    assert moved("fleet_completion_tokens_total", tenant="tenant-a", model=MODEL) == 48
    assert moved("fleet_prompt_tokens_total", tenant="tenant-a", model=MODEL) > 0
    assert _value(after, "fleet_rollout_weight", model=MODEL, version="v1") == 1.0
    worker = _scrape(observed.worker_metrics)
    assert ("fleet_worker_in_flight", frozenset({("worker", "wf-metrics"),
                                                 ("queue", observed.queue)})) in worker
    assert _value(worker, "vllm:prompt_tokens_total") > 0  # vLLM's own, served beside ours
    assert any(n == "fleet_engine_kv_cache_usage_ratio" for n, _ in worker)


def _attributes(span: object) -> dict[str, object]:
    def value(v: object) -> object:
        kind = v.WhichOneof("value")  # type: ignore[attr-defined]
        if kind == "array_value":
            return [value(x) for x in v.array_value.values]  # type: ignore[attr-defined]
        return getattr(v, kind) if kind else None

    return {a.key: value(a.value) for a in span.attributes}  # type: ignore[attr-defined]


def test_one_trace_runs_from_the_call_through_the_queue_to_the_engine(
        observed: Observed) -> None:
    _wait_routable(observed)
    trace_id, caller_span = secrets.token_bytes(16), secrets.token_bytes(8)
    traceparent = f"00-{trace_id.hex()}-{caller_span.hex()}-01"
    response = _complete(observed, 8, metadata=(*A, ("traceparent", traceparent)))
    names = {"call": "codellama.fleet.v1.InferenceService/Complete", "admission": "admission",
             "publish": f"publish {observed.queue}", "worker": "worker generate",
             "engine": "engine generate"}

    def all_arrived() -> bool:
        got = {span.name for _, span in observed.receiver.of_trace(trace_id)}  # type: ignore
        return set(names.values()) <= got
    wait_until(all_arrived, 20, "every span of the request at the receiver")
    spans = {span.name: (service, span) for service, span in observed.receiver.of_trace(trace_id)}
    (call_service, call), (_, admission), (_, publish) = (
        spans[names["call"]], spans[names["admission"]], spans[names["publish"]])
    (worker_service, worker), (_, engine) = spans[names["worker"]], spans[names["engine"]]
    assert call_service == "codellama-fleet-gateway"
    assert worker_service == "codellama-fleet-worker"
    assert call.parent_span_id == caller_span  # the caller's traceparent is honoured
    assert admission.parent_span_id == call.span_id
    assert publish.parent_span_id == admission.span_id  # the first attempt is queued there
    assert worker.parent_span_id == publish.span_id  # across the queue
    assert engine.parent_span_id == worker.span_id
    attrs = _attributes(call)
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.request.model"] == MODEL and attrs["gen_ai.request.max_tokens"] == 8
    assert attrs["gen_ai.usage.input_tokens"] == response.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == 8
    assert attrs["gen_ai.response.finish_reasons"] == ["length"]
    assert attrs["fleet.tenant"] == "tenant-a" and attrs["fleet.queue"] == observed.queue
    assert attrs["fleet.attempt"] == 1 and attrs["fleet.model_version"] == "v1"
    worker_attrs = _attributes(worker)
    assert worker_attrs["fleet.worker"] == "wf-metrics" and "fleet.queue_wait_ms" in worker_attrs
    assert _attributes(engine)["gen_ai.usage.output_tokens"] == 8


def test_a_job_items_trace_links_to_the_call_that_submitted_the_job(
        observed: Observed) -> None:
    _wait_routable(observed)
    trace_id, caller_span = secrets.token_bytes(16), secrets.token_bytes(8)
    traceparent = f"00-{trace_id.hex()}-{caller_span.hex()}-01"
    job = JobServiceStub(grpc.insecure_channel(observed.gateway)).SubmitJob(
        jobs.SubmitJobRequest(request=jobs.JobRequest(complete=api.CompleteRequest(
            model=MODEL, prompt="def add(a, b):",
            sampling=pb.SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0)))),
        metadata=(*A, ("traceparent", traceparent)), timeout=30).job

    def item_spans() -> list[object]:
        with observed.receiver._lock:
            return [span for _, span in observed.receiver.spans
                    if span.name == "job item"  # type: ignore[attr-defined]
                    and _attributes(span).get("fleet.job_id") == job.job_id]

    wait_until(lambda: bool(item_spans()), 60, "the job item's span at the receiver")
    [submit] = [span for _, span in observed.receiver.of_trace(trace_id)
                if span.name == "codellama.fleet.v1.JobService/SubmitJob"]  # type: ignore
    assert submit.parent_span_id == caller_span  # type: ignore[attr-defined]
    [item] = item_spans()
    assert [(link.trace_id, link.span_id) for link in item.links] == [  # type: ignore
        (trace_id, submit.span_id)]  # type: ignore[attr-defined]
    assert item.trace_id != trace_id  # type: ignore[attr-defined]  # its own trace

    def worker_arrived() -> bool:
        return "worker generate" in {s.name for _, s in observed.receiver.of_trace(
            item.trace_id)}  # type: ignore[attr-defined]
    wait_until(worker_arrived, 20, "the item's worker span in the item's trace")


def test_a_gateway_with_tracing_off_exports_nothing(observed: Observed) -> None:
    _wait_routable(observed)
    trace_id = secrets.token_bytes(16)
    traceparent = f"00-{trace_id.hex()}-{secrets.token_bytes(8).hex()}-01"
    _complete(observed, 4, target=observed.untraced_gateway,
              metadata=(*A, ("traceparent", traceparent)))
    # The worker, whose tracing is on, exports its span of the request: wait for it, so the
    # gateway's would have had as long to arrive.
    wait_until(lambda: any(s == "codellama-fleet-worker"
                           for s, _ in observed.receiver.of_trace(trace_id)), 20,
               "the worker's span")
    time.sleep(0.5)
    services = {service for service, _ in observed.receiver.spans}
    assert "untraced-gateway" not in services
    assert all(s == "codellama-fleet-worker" for s, _ in observed.receiver.of_trace(trace_id))


def test_scale_from_zero_a_request_waits_for_the_worker_its_signal_asks_for(
        observed: Observed, tiny_checkpoints: dict[str, Path]) -> None:
    """With FLEET_WAIT_FOR_WORKERS a version without workers queues its requests: the signal
    asks for one worker, and the worker started then (as KEDA would) serves the request."""
    fleet, model = observed.fleet, "tiny-7b-from-zero"
    served = fleet.register(model, tiny_checkpoints["infill"], variant="codellama-7b-instruct",
                            context_limit=2048)
    result: list[object] = []

    def call() -> None:
        try:
            result.append(_stub(observed).Complete(api.CompleteRequest(
                model=model, prompt="def add(a, b):",
                sampling=pb.SamplingParams(max_tokens=8, ignore_eos=True)),
                metadata=A, timeout=300))
        except grpc.RpcError as err:
            result.append(err)

    def queued_and_asked_for() -> bool:
        samples = _scrape(observed.gateway_metrics)
        return (_value(samples, "fleet_queue_depth", queue=served.queue) == 1
                and _value(samples, "fleet_desired_workers", queue=served.queue) == 1)

    caller: threading.Thread | None = None
    try:
        def routable_and_waiting() -> bool:
            nonlocal caller
            if caller is None or (not caller.is_alive() and result
                                  and isinstance(result[-1], grpc.RpcError)
                                  and result[-1].code() == grpc.StatusCode.NOT_FOUND):
                result.clear()
                caller = threading.Thread(target=call)
                caller.start()
                time.sleep(0.3)
            return queued_and_asked_for()
        wait_until(routable_and_waiting, 30, "the request queued and one worker asked for")
        assert caller is not None and caller.is_alive() and not result
        fleet.spawn_worker("wf-from-zero", model)
        caller.join(timeout=280)
        assert result and isinstance(result[0], api.CompleteResponse), result
        assert result[0].usage.completion_tokens == 8
        assert result[0].served_by.worker == "wf-from-zero"
    finally:
        if "wf-from-zero" in fleet.workers:
            fleet.workers.pop("wf-from-zero").stop()
