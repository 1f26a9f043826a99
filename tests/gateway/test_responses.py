"""Assembling results, including a stream that resumes on a re-run attempt after a lost worker."""

from __future__ import annotations

import pytest

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.errors import Unavailable
from fleet_common.wire import Delta, Final, Started, StreamEvent
from gateway.responses import ResultAssembler


def _started(attempt: int) -> StreamEvent:
    return StreamEvent(attempt=attempt, started=Started(worker=f"w{attempt}"))


def _delta(attempt: int, text: str, ids: list[int], finish: int = 0) -> StreamEvent:
    return StreamEvent(attempt=attempt, delta=Delta(choices=[
        pb.ChoiceDelta(index=0, text=text, token_ids=ids, finish_reason=finish)]))


def _final(attempt: int, tokens: int) -> StreamEvent:
    return StreamEvent(attempt=attempt, final=Final(
        finish_reasons=[pb.FINISH_REASON_LENGTH], completion_tokens=tokens, worker=f"w{attempt}"))


def _streamed(assembler: ResultAssembler, events: list[StreamEvent]) -> tuple[str, list[int]]:
    text, ids = [], []
    for event in events:
        for delta in assembler.on_event(event) or ():
            text.append(delta.text)
            ids.extend(delta.token_ids)
    return "".join(text), ids


def test_a_stream_resumed_on_a_rerun_continues_where_it_stopped_without_repeating() -> None:
    assembler = ResultAssembler("r", "m", 1, received=0.0, streaming=True)
    first = [_started(1), _delta(1, "def", [1]), _delta(1, " f", [2])]
    rerun = [_started(2), _delta(2, "def f", [1, 2]), _delta(2, "(x", [3, 4]),
             _delta(2, "):", [5], pb.FINISH_REASON_LENGTH), _final(2, 5)]
    text, ids = _streamed(assembler, first + rerun)
    assert (text, ids) == ("def f(x):", [1, 2, 3, 4, 5])
    choice = assembler.choices()[0]
    assert (choice.text, list(choice.token_ids)) == ("def f(x):", [1, 2, 3, 4, 5])
    assert choice.finish_reason == pb.FINISH_REASON_LENGTH
    assert assembler.summary()["served_by"].worker == "w2"


def test_a_rerun_delta_straddling_the_delivered_tokens_yields_only_the_new_part() -> None:
    assembler = ResultAssembler("r", "m", 1, received=0.0, streaming=True)
    text, ids = _streamed(assembler, [_started(1), _delta(1, "ab", [1, 2]), _started(2),
                                      _delta(2, "a", [1]), _delta(2, "bcd", [2, 3, 4])])
    assert (text, ids) == ("abcd", [1, 2, 3, 4])


def test_a_rerun_that_produces_other_tokens_fails_the_stream_instead_of_splicing() -> None:
    assembler = ResultAssembler("req-7", "m", 1, received=0.0, streaming=True)
    _streamed(assembler, [_started(1), _delta(1, "ab", [1, 2]), _started(2)])
    with pytest.raises(Unavailable, match=r"req-7.*lost after 2 tokens.*may be retried"):
        assembler.on_event(_delta(2, "x", [9]))


def test_a_rerun_that_stops_before_the_delivered_tokens_fails_the_stream() -> None:
    assembler = ResultAssembler("r", "m", 1, received=0.0, streaming=True)
    _streamed(assembler, [_started(1), _delta(1, "abc", [1, 2, 3]), _started(2)])
    with pytest.raises(Unavailable, match="lost after 3 tokens"):
        assembler.on_event(_delta(2, "ab", [1, 2], pb.FINISH_REASON_END_OF_SEQUENCE))


def test_a_unary_result_starts_over_on_a_rerun() -> None:
    assembler = ResultAssembler("r", "m", 1, received=0.0, streaming=False)
    for event in [_started(1), _delta(1, "ab", [1, 2]), _started(2), _delta(2, "xy", [7, 8]),
                  _final(2, 2)]:
        assembler.on_event(event)
    choice = assembler.choices()[0]
    assert (choice.text, list(choice.token_ids)) == ("xy", [7, 8])
    assert assembler.summary()["usage"].completion_tokens == 2
