"""The gateway's Prometheus metrics of the requests it serves.

Latency histograms have the unit and bucket shape of vLLM's (`vllm:time_to_first_token_seconds`
and the rest), measured at the gateway, so a dashboard can put the two side by side: the
difference is what the gateway, the queue and the network add. Inter-token latency is observed
once per request, as its mean gap between tokens (vLLM observes every gap).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
from prometheus_client import Counter, Gauge, Histogram

from fleet_common.errors import FleetError
from fleet_common.wire import Final, GenerationTask
from fleet_server.status import status_code_of
from gateway.responses import RequestClock
from model_registry.records import ServedRollout

# vLLM 0.32's buckets (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_MODEL = ["model", "version"]

REQUESTS = Counter("fleet_requests", "Generation calls by model, version, mode and final "
                   "gRPC status.", ["model", "version", "mode", "code"])
TTFT = Histogram("fleet_time_to_first_token_seconds", "From the call's arrival to its first "
                 "token leaving the gateway.", _MODEL, buckets=TTFT_BUCKETS)
ITL = Histogram("fleet_inter_token_latency_seconds", "Mean gap between a request's tokens at "
                "the gateway.", _MODEL, buckets=ITL_BUCKETS)
E2E = Histogram("fleet_e2e_request_latency_seconds", "From the call's arrival to its final "
                "result.", _MODEL, buckets=REQUEST_LATENCY_BUCKETS)
QUEUE_WAIT = Histogram("fleet_queue_wait_seconds", "From enqueue to a worker starting the "
                       "request.", _MODEL, buckets=REQUEST_LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("fleet_prompt_tokens", "Prompt tokens of finished requests.",
                        ["tenant", *_MODEL])
COMPLETION_TOKENS = Counter("fleet_completion_tokens", "Tokens generated for finished "
                            "requests.", ["tenant", *_MODEL])
QUOTA_REFUSALS = Counter("fleet_quota_refusals", "Requests refused by a tenant quota or a "
                         "queue bound, by reason.", ["tenant", "reason"])
ROLLOUT_WEIGHT = Gauge("fleet_rollout_weight", "Share of a model's traffic routed to a "
                       "version (0..1).", _MODEL)


@dataclass
class CallRecord:
    """What one call's metrics need; filled in as the call goes."""

    mode: str
    model: str
    version: str = ""
    clock: RequestClock | None = None
    completion_tokens: int = 0


@contextlib.contextmanager
def recorded(mode: str, model: str) -> Iterator[CallRecord]:
    """Counts the call under the status it ends with and observes its latencies."""
    record = CallRecord(mode, model)
    code = grpc.StatusCode.OK
    try:
        yield record
    except FleetError as exc:
        code = status_code_of(exc)
        raise
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        code = grpc.StatusCode.INTERNAL
        raise
    finally:
        REQUESTS.labels(record.model, record.version, mode, code.name).inc()
        if code is grpc.StatusCode.OK and record.clock is not None:
            _observe(record, record.clock)


def _observe(record: CallRecord, clock: RequestClock) -> None:
    labels = (record.model, record.version)
    if clock.first_token is not None:
        TTFT.labels(*labels).observe(clock.first_token - clock.received)
        if clock.finished is not None and record.completion_tokens > 1:
            ITL.labels(*labels).observe((clock.finished - clock.first_token)
                                        / (record.completion_tokens - 1))
    if clock.finished is not None:
        E2E.labels(*labels).observe(clock.finished - clock.received)
    QUEUE_WAIT.labels(*labels).observe(clock.queue_wait_ms / 1000)


class TokenMetrics:
    """A Dispatcher observer: tokens by tenant, refusals by reason."""

    def completed(self, task: GenerationTask, final: Final) -> None:
        labels = (task.tenant, task.model, final.model_version or task.model_version)
        PROMPT_TOKENS.labels(*labels).inc(final.prompt_tokens)
        COMPLETION_TOKENS.labels(*labels).inc(final.completion_tokens)

    def refused(self, task: GenerationTask, reason: str) -> None:
        if reason != "Unavailable":
            QUOTA_REFUSALS.labels(task.tenant, reason).inc()


def set_rollout_weights(rollouts: Iterable[ServedRollout]) -> None:
    """The share of each model's traffic its stable and candidate versions get."""
    for rollout in rollouts:
        state = rollout.state
        share = state.candidate_weight / 100 if rollout.candidate is not None else 0.0
        ROLLOUT_WEIGHT.labels(state.model, state.stable_version).set(1.0 - share)
        if rollout.candidate is not None:
            ROLLOUT_WEIGHT.labels(state.model, rollout.candidate.version).set(share)
