import json

from fleet_common.wire import GenerationTask, Mode, Sampling


def _task() -> GenerationTask:
    return GenerationTask(
        request_id="r1", model="m", model_version="v1", mode=Mode.INFILL,
        prompt_token_ids=[1, 2, 3], stop_token_ids=[32010],
        sampling=Sampling(max_tokens=9, temperature=0.5, stop_sequences=("\n\n", "```"),
                          seed=7, n=2, logprobs=3),
        decode_as_infill=True, deadline_unix=100.5, enqueued_at_unix=90.25,
        tenant="bots", priority=2, trace_context={"traceparent": "00-ab-cd-01"})


def test_task_survives_the_json_round_trip_exactly():
    task = _task()
    wire = json.loads(json.dumps(task.to_json()))
    assert wire["mode"] == "infill"
    assert wire["sampling"]["stop_sequences"] == ["\n\n", "```"]
    assert GenerationTask.from_json(wire) == task


def test_task_json_does_not_share_mutable_state_with_the_task():
    task = _task()
    data = task.to_json()
    data["prompt_token_ids"].append(99)
    data["stop_token_ids"].clear()
    data["trace_context"]["x"] = "y"
    data["sampling"]["max_tokens"] = 1
    assert task.prompt_token_ids == [1, 2, 3]
    assert task.stop_token_ids == [32010]
    assert task.trace_context == {"traceparent": "00-ab-cd-01"}
    assert task.sampling.max_tokens == 9
