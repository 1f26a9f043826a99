"""What crosses Redis between the gateway and a worker: the typed messages of
`codellama.fleet.internal.v1` (protos/codellama/fleet/internal/v1/).

A task travels in its proto JSON form inside a Celery message, so the broker carries JSON and
nothing executes what it deserializes; unknown fields are ignored, so a newer gateway's task
still runs on an older worker. Stream events are serialized protos in one Redis Stream field.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from codellama.fleet.internal.v1.generation_task_pb2 import GenerationTask, Sampling
from codellama.fleet.internal.v1.stream_event_pb2 import (
    Delta,
    Error,
    ErrorCode,
    Final,
    Started,
    StreamEvent,
)
from codellama.fleet.v1.generation_pb2 import Priority

__all__ = ["Delta", "Error", "ErrorCode", "Final", "GenerationTask", "Sampling", "Started",
           "StreamEvent", "event_fields", "event_from_fields", "task_from_json", "task_to_json"]

EVENT_FIELD = b"e"
_PRIORITY_NAMES = {number: name for name, number in Priority.items()}


def task_to_json(task: GenerationTask) -> dict[str, Any]:
    """The task's proto JSON form (field names as in the .proto; every field written).

    Built field by field: `json_format.MessageToDict` walks repeated fields one element at a
    time in Python, which for a prompt of a few hundred ids was a tenth of the gateway's
    admission CPU. A test holds this equal to what `json_format` parses back.
    """
    sampling = task.sampling
    sampling_json: dict[str, Any] = {
        "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
        "top_p": sampling.top_p, "top_k": sampling.top_k,
        "repetition_penalty": sampling.repetition_penalty,
        "stop_sequences": list(sampling.stop_sequences), "n": sampling.n,
        "ignore_eos": sampling.ignore_eos,
    }
    if sampling.HasField("seed"):
        sampling_json["seed"] = str(sampling.seed)  # 64-bit integers are strings in proto JSON
    if sampling.HasField("logprobs"):
        sampling_json["logprobs"] = sampling.logprobs
    return {
        "request_id": task.request_id, "tenant": task.tenant, "model": task.model,
        "model_version": task.model_version,
        "prompt_token_ids": list(task.prompt_token_ids),
        "stop_token_ids": list(task.stop_token_ids),
        "sampling": sampling_json,
        "priority": _PRIORITY_NAMES.get(task.priority, task.priority),
        "deadline_unix": task.deadline_unix, "enqueued_at_unix": task.enqueued_at_unix,
        "attempt": task.attempt, "trace_context": dict(task.trace_context),
    }


def task_to_json_reference(task: GenerationTask) -> dict[str, Any]:
    """`task_to_json` as protobuf's own JSON printer writes it (slower; for tests)."""
    return json_format.MessageToDict(task, preserving_proto_field_name=True)


def task_from_json(data: dict[str, Any]) -> GenerationTask:
    return json_format.ParseDict(data, GenerationTask(), ignore_unknown_fields=True)


def event_fields(event: StreamEvent) -> dict[bytes, bytes]:
    """The Redis Stream entry of one event."""
    return {EVENT_FIELD: event.SerializeToString()}


def event_from_fields(fields: dict[bytes, bytes]) -> StreamEvent:
    return StreamEvent.FromString(fields[EVENT_FIELD])


def is_terminal(event: StreamEvent) -> bool:
    return event.WhichOneof("event") in ("final", "error")
