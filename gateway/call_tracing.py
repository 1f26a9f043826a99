"""The attributes of a generation call's spans: the GenAI semantic conventions' and the
fleet's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.wire import GenerationTask
from model_registry.records import ServedModel

_OPERATION = {"completion": "text_completion", "infill": "text_completion", "chat": "chat"}


def request_attributes(mode: str, task: GenerationTask, served: ServedModel) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": _OPERATION.get(mode, mode),
        "gen_ai.system": "vllm",
        "gen_ai.request.model": task.model,
        "gen_ai.request.max_tokens": task.sampling.max_tokens,
        "gen_ai.request.temperature": task.sampling.temperature,
        "fleet.mode": mode,
        "fleet.request_id": task.request_id,
        "fleet.tenant": task.tenant,
        "fleet.pool": served.pool,
        "fleet.model_version": served.version,
        "fleet.queue": served.queue,
    }


def result_attributes(usage: pb.Usage, finish_reasons: Sequence[int], attempt: int,
                      queue_wait_ms: float) -> dict[str, Any]:
    return {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.response.finish_reasons": [finish_reason_name(r) for r in finish_reasons],
        "fleet.attempt": attempt,
        "fleet.queue_wait_ms": queue_wait_ms,
    }


def finish_reason_name(reason: int) -> str:
    """FINISH_REASON_STOP -> "stop", as the GenAI conventions spell finish reasons."""
    return pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()
