"""The gateway <-> worker protocol: tasks survive Celery's JSON, events survive Redis."""

import json

import pytest
from google.protobuf.message import DecodeError

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.wire import (
    Delta,
    Final,
    GenerationTask,
    Sampling,
    StreamEvent,
    event_fields,
    event_from_fields,
    is_terminal,
    task_from_json,
    task_to_json,
    task_to_json_reference,
)


def _task() -> GenerationTask:
    sampling = Sampling(max_tokens=9, temperature=0.5, stop_sequences=["\n\n", "```"], n=2,
                        top_p=1.0, repetition_penalty=1.0, seed=7, logprobs=3)
    return GenerationTask(
        request_id="r1", tenant="bots", model="m", model_version="v1",
        prompt_token_ids=[1, 2, 3], stop_token_ids=[32010], sampling=sampling,
        priority=pb.PRIORITY_LOW, deadline_unix=100.5, enqueued_at_unix=90.25, attempt=2,
        trace_context={"traceparent": "00-ab-cd-01"})


def test_task_survives_the_json_round_trip_exactly():
    task = _task()
    wire = json.loads(json.dumps(task_to_json(task)))
    assert wire["sampling"]["stop_sequences"] == ["\n\n", "```"]
    assert wire["priority"] == "PRIORITY_LOW" and wire["attempt"] == 2
    assert task_from_json(wire) == task


def test_unset_optional_sampling_fields_stay_unset():
    task = GenerationTask(request_id="r", sampling=Sampling(max_tokens=1))
    back = task_from_json(json.loads(json.dumps(task_to_json(task))))
    assert not back.sampling.HasField("seed") and not back.sampling.HasField("logprobs")
    with_zero = GenerationTask(request_id="r", sampling=Sampling(max_tokens=1, seed=0))
    assert task_from_json(task_to_json(with_zero)).sampling.HasField("seed")


def test_a_newer_gateways_unknown_fields_are_ignored_by_an_older_worker():
    wire = {**task_to_json(_task()), "field_from_the_future": {"x": 1}}
    assert task_from_json(wire).request_id == "r1"


def test_events_round_trip_and_know_when_they_end_a_request():
    delta = StreamEvent(attempt=3, delta=Delta(choices=[pb.ChoiceDelta(text="a", token_ids=[5])]))
    final = StreamEvent(attempt=3, final=Final(finish_reasons=[pb.FINISH_REASON_LENGTH]))
    assert event_from_fields(event_fields(delta)) == delta
    assert not is_terminal(delta) and is_terminal(final)


def test_an_entry_that_is_not_an_event_is_refused():
    with pytest.raises(DecodeError):
        event_from_fields({b"e": b"\xff\xff not a proto"})


@pytest.mark.parametrize("task", [
    _task(),
    GenerationTask(request_id="r", sampling=Sampling(max_tokens=1)),
    GenerationTask(request_id="r", prompt_token_ids=list(range(5000)), priority=pb.PRIORITY_HIGH,
                   sampling=Sampling(max_tokens=7, temperature=0.7, seed=2**63 - 1, logprobs=0,
                                     stop_sequences=["é\n", ""], ignore_eos=True)),
])
def test_the_fast_json_form_parses_to_what_protobufs_own_printer_gives(task: GenerationTask):
    fast = json.loads(json.dumps(task_to_json(task)))
    assert task_from_json(fast) == task_from_json(task_to_json_reference(task)) == task
