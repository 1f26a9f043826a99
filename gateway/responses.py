"""Turning a request's stream events into gRPC response messages (unary or streamed)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.errors import Unavailable
from fleet_common.wire import Final, StreamEvent


@dataclass
class _ChoiceState:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    matched_stop_sequence: str = ""
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)


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


@dataclass
class _Replay:
    """What a re-run attempt has produced of one choice while it catches up with what the
    caller already received."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    caught_up: bool = False


class ResultAssembler:
    """Feeds on events; produces stream messages as they come and a unary result at the end.

    When a lost worker's request is re-run, the new attempt starts from the first token. A unary
    result simply starts over. A stream has already delivered some of it: the new attempt must
    reproduce exactly those tokens (and text), after which it continues where the stream
    stopped; if it does not, the stream fails with UNAVAILABLE rather than splice two answers.
    """

    def __init__(self, request_id: str, model: str, n: int, *, received: float,
                 streaming: bool) -> None:
        self.request_id = request_id
        self._model = model
        self._n = n
        self._streaming = streaming
        self._choices = [_ChoiceState() for _ in range(n)]
        self.clock = RequestClock(received=received)
        self._final: Final | None = None
        self._attempt = 0
        self._replays: list[_Replay] | None = None

    def on_event(self, event: StreamEvent) -> Sequence[pb.ChoiceDelta] | None:
        """Returns the deltas to stream for this event, or None when there is nothing to send."""
        if event.attempt != self._attempt:
            self._begin_attempt(event.attempt)
        kind = event.WhichOneof("event")
        if kind == "started":
            self.clock.queue_wait_ms = event.started.queue_wait_ms
            return None
        if kind == "delta":
            if self.clock.first_token is None:
                self.clock.first_token = time.perf_counter()
            if self._replays is not None:
                replayed = [self._replay(delta) for delta in event.delta.choices]
                return [delta for delta in replayed if delta is not None]
            for delta in event.delta.choices:
                self._apply_delta(delta)
            return event.delta.choices
        if kind == "final":
            self.clock.finished = time.perf_counter()
            self.clock.engine_ms = event.final.engine_ms
            self._final = event.final
            return self._late_finishes(event.final.finish_reasons)
        return None

    def _begin_attempt(self, attempt: int) -> None:
        first = self._attempt == 0
        self._attempt = attempt
        if first:
            return
        if not self._streaming:
            self._choices = [_ChoiceState() for _ in range(self._n)]
        else:
            self._replays = [_Replay() for _ in range(self._n)]

    def _replay(self, delta: pb.ChoiceDelta) -> pb.ChoiceDelta | None:
        """The part of a re-run's delta the caller has not seen yet (None while catching up)."""
        assert self._replays is not None
        replay, state = self._replays[delta.index], self._choices[delta.index]
        if replay.caught_up:
            self._apply_delta(delta)
            return delta
        replay.token_ids.extend(delta.token_ids)
        replay.text += delta.text
        replay.logprobs.extend(delta.logprobs)
        sent = len(state.token_ids)
        compared = min(sent, len(replay.token_ids))
        if replay.token_ids[:compared] != state.token_ids[:compared] or (
                delta.finish_reason and len(replay.token_ids) < sent):
            raise self._not_reproduced(delta.index, sent)
        if len(replay.token_ids) < sent:
            return None
        sent_text = "".join(state.text)
        if not replay.text.startswith(sent_text):
            if sent_text.startswith(replay.text) and not delta.finish_reason:
                return None  # the detokenizer holds back a partial character
            raise self._not_reproduced(delta.index, sent)
        replay.caught_up = True
        rest = pb.ChoiceDelta(index=delta.index, text=replay.text[len(sent_text):],
                              token_ids=replay.token_ids[sent:],
                              logprobs=replay.logprobs[len(state.logprobs):],
                              finish_reason=delta.finish_reason,
                              matched_stop_sequence=delta.matched_stop_sequence)
        self._apply_delta(rest)
        return rest if (rest.token_ids or rest.text or rest.finish_reason) else None

    def _not_reproduced(self, index: int, sent: int) -> Unavailable:
        return Unavailable(
            f"request {self.request_id}: the worker serving it was lost after {sent} tokens of "
            f"choice {index}, and the re-run on another worker did not reproduce them; "
            "the request may be retried")

    def _apply_delta(self, delta: pb.ChoiceDelta) -> None:
        state = self._choices[delta.index]
        state.text.append(delta.text)
        state.token_ids.extend(delta.token_ids)
        state.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            state.finish_reason = delta.finish_reason
            state.matched_stop_sequence = delta.matched_stop_sequence

    def _late_finishes(self, reasons: Sequence[int]) -> list[pb.ChoiceDelta]:
        """Choices whose finish the worker decided (cancel, deadline) rather than the engine."""
        late = []
        for index, state in enumerate(self._choices):
            reason = reasons[index] if index < len(reasons) else pb.FINISH_REASON_UNSPECIFIED
            if reason and reason != state.finish_reason:
                state.finish_reason = reason
                late.append(pb.ChoiceDelta(index=index, finish_reason=reason))
        return late

    def summary(self) -> dict[str, Any]:
        """usage, served_by and timings, as keyword arguments for any response message."""
        final = self._final or Final()
        return {
            "usage": pb.Usage(prompt_tokens=final.prompt_tokens,
                              completion_tokens=final.completion_tokens),
            "served_by": pb.ServedBy(model=self._model, model_version=final.model_version,
                                     pool=final.pool, worker=final.worker),
            "timings": self.clock.timings(),
        }

    def choices(self) -> list[pb.Choice]:
        return [
            pb.Choice(
                index=i,
                text="".join(state.text),
                token_ids=state.token_ids,
                finish_reason=state.finish_reason,
                matched_stop_sequence=state.matched_stop_sequence,
                logprobs=state.logprobs,
            )
            for i, state in enumerate(self._choices)
        ]
