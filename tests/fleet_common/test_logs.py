"""JSON log lines: one object per line, with the request bound to the task and the trace."""

from __future__ import annotations

import asyncio
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from fleet_common.logs import JsonFormatter, bind_request


def _line(logger: logging.Logger, message: str) -> dict[str, object]:
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None)
    return json.loads(JsonFormatter().format(record))


async def test_each_task_logs_its_own_request_and_tenant() -> None:
    logger = logging.getLogger("test.logs")

    async def serve(request_id: str, tenant: str) -> dict[str, object]:
        bind_request(request_id, tenant)
        await asyncio.sleep(0.01)  # the other task binds its request meanwhile
        return _line(logger, f"serving {request_id}")

    first, second = await asyncio.gather(serve("r1", "tenant-a"), serve("r2", "tenant-b"))
    assert (first["request_id"], first["tenant"], first["message"]) == (
        "r1", "tenant-a", "serving r1")
    assert (second["request_id"], second["tenant"]) == ("r2", "tenant-b")
    assert first["level"] == "INFO" and first["logger"] == "test.logs"


def test_a_line_written_inside_a_span_names_its_trace_and_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        line = _line(logging.getLogger("test.logs"), "inside")
    context = span.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in _line(logging.getLogger("test.logs"), "outside")
