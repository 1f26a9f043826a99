"""Turning a request's stream events into gRPC response messages (unary or streamed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.wire import EventKind, StreamEvent


def finish_reason_pb(reason: str) -> int:
    return pb.FinishReason.Value(f"FINISH_REASON_{reason.upper()}")


def _logprobs_pb(items: list[dict[str, Any]]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token_id=item["token_id"],
            token=item["token"],
            logprob=item["logprob"],
            top_logprobs=[pb.TopLogprob(token_id=t["token_id"], token=t["token"],
                                        logprob=t["logprob"]) for t in item["top"]],
        )
        for item in items
    ]


@dataclass
class _ChoiceState:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    matched_stop_sequence: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RequestClock:
    """Gateway-side timings of one request."""

    received: float  # time.perf_counter() when the gateway got the call
    first_token: float | None = None
    finished: float | None = None
    queue_wait_ms: float = 0.0
    engine_ms: float = 0.0

    def timings(self) -> pb.Timings:
        def since(t: float | None) -> float:
            return (t - self.received) * 1000 if t is not None else 0.0

        return pb.Timings(queue_wait_ms=self.queue_wait_ms,
                          time_to_first_token_ms=since(self.first_token),
                          total_ms=since(self.finished), engine_ms=self.engine_ms)


class ResultAssembler:
    """Feeds on events; produces stream messages as they come and a unary result at the end."""

    def __init__(self, request_id: str, model: str, n: int, *, received: float) -> None:
        self.request_id = request_id
        self._model = model
        self._choices = [_ChoiceState() for _ in range(n)]
        self.clock = RequestClock(received=received)
        self._final: dict[str, Any] | None = None

    def on_event(self, event: StreamEvent) -> list[pb.ChoiceDelta] | None:
        """Returns the deltas to stream for this event, or None when there is nothing to send."""
        if event.kind is EventKind.STARTED:
            self.clock.queue_wait_ms = event.data["queue_wait_ms"]
            return None
        if event.kind is EventKind.DELTA:
            if self.clock.first_token is None:
                self.clock.first_token = time.perf_counter()
            return [self._apply_delta(d) for d in event.data["deltas"]]
        if event.kind is EventKind.FINAL:
            self.clock.finished = time.perf_counter()
            self.clock.engine_ms = event.data["engine_ms"]
            self._final = event.data
            return self._late_finishes(event.data["finish_reasons"])
        return None

    def _apply_delta(self, delta: dict[str, Any]) -> pb.ChoiceDelta:
        state = self._choices[delta["index"]]
        state.text.append(delta["text"])
        state.token_ids.extend(delta["token_ids"])
        state.logprobs.extend(delta.get("logprobs", ()))
        if "finish_reason" in delta:
            state.finish_reason = delta["finish_reason"]
            state.matched_stop_sequence = delta.get("matched_stop_sequence", "")
        return pb.ChoiceDelta(
            index=delta["index"],
            text=delta["text"],
            token_ids=delta["token_ids"],
            finish_reason=finish_reason_pb(delta["finish_reason"]) if "finish_reason" in delta
            else pb.FINISH_REASON_UNSPECIFIED,
            matched_stop_sequence=delta.get("matched_stop_sequence", ""),
            logprobs=_logprobs_pb(delta.get("logprobs", [])),
        )

    def _late_finishes(self, reasons: dict[str, str]) -> list[pb.ChoiceDelta]:
        """Choices whose finish the worker decided (cancel, deadline) rather than the engine."""
        late = []
        for index, state in enumerate(self._choices):
            reason = reasons.get(str(index), "")
            if reason and reason != state.finish_reason:
                state.finish_reason = reason
                late.append(pb.ChoiceDelta(index=index, finish_reason=finish_reason_pb(reason)))
        return late

    def summary(self) -> dict[str, Any]:
        """usage, served_by and timings, as keyword arguments for any response message."""
        final = self._final or {}
        return {
            "usage": pb.Usage(prompt_tokens=final.get("prompt_tokens", 0),
                              completion_tokens=final.get("completion_tokens", 0)),
            "served_by": pb.ServedBy(model=self._model,
                                     model_version=final.get("model_version", ""),
                                     pool=final.get("pool", ""), worker=final.get("worker", "")),
            "timings": self.clock.timings(),
        }

    def choices(self) -> list[pb.Choice]:
        return [
            pb.Choice(
                index=i,
                text="".join(state.text),
                token_ids=state.token_ids,
                finish_reason=finish_reason_pb(state.finish_reason) if state.finish_reason
                else pb.FINISH_REASON_UNSPECIFIED,
                matched_stop_sequence=state.matched_stop_sequence,
                logprobs=_logprobs_pb(state.logprobs),
            )
            for i, state in enumerate(self._choices)
        ]
