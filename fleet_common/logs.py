"""Log lines for people (text) or for log pipelines (JSON, one object per line).

A JSON line carries the request id and tenant of the request the code is serving (bound once
per request with `bind_request`; each gRPC call and each worker request runs in its own
asyncio task, so the binding is that request's alone) and the trace and span ids of the
current OpenTelemetry span, so a log search and a trace find each other.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from opentelemetry import trace

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")


def bind_request(request_id: str, tenant: str) -> None:
    """Names the request the current task serves in every log line it writes from now on."""
    _request_id.set(request_id)
    _tenant.set(tenant)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := _request_id.get():
            line["request_id"] = request_id
            line["tenant"] = _tenant.get()
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = f"{span.trace_id:032x}"
            line["span_id"] = f"{span.span_id:016x}"
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """The root logger's handler, on stderr, as `logging.basicConfig` sets it up (and, like
    it, leaving a root logger that already has handlers as it is)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
