"""OpenTelemetry tracing: one trace per request from the gRPC call to the engine and back.

Off unless the standard variables ask for it: an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), not `OTEL_TRACES_EXPORTER=none`, not
`OTEL_SDK_DISABLED=true`. The exporter is OTLP over gRPC and reads the rest of its `OTEL_*`
variables itself (headers, timeout, compression, `OTEL_BSP_*` batching, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`). When off, `span` is a null context: no span objects, no context
propagation, nothing exported.

The context crosses the queue in `GenerationTask.trace_context` (W3C traceparent/tracestate),
written as the task is published, as opentelemetry-instrumentation-celery does in message
headers; the gateway builds its Celery messages itself, so it does it there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

log = logging.getLogger(__name__)
_TRACER_NAME = "codellama-fleet"
_enabled = False
_provider: Any = None

__all__ = ["SpanKind", "configure", "current_trace_ids", "enabled", "inject", "shutdown", "span"]


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Sets up the tracer provider and its OTLP exporter if the environment asks; idempotent."""
    global _enabled, _provider
    if _enabled or not wanted(environ):
        return _enabled
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; an operator's OTEL_SERVICE_NAME wins.
    named = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    _provider = TracerProvider(resource=Resource.create(named))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    _enabled = True
    log.info("tracing on: exporting spans of %s over OTLP/gRPC", service_name)
    return True


def enabled() -> bool:
    return _enabled


def shutdown() -> None:
    """Exports what is buffered (at exit)."""
    if _provider is not None:
        _provider.shutdown()


@contextlib.contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL,
         parent_carrier: Mapping[str, str] | None = None,
         attributes: Mapping[str, Any] | None = None,
         link_carrier: Mapping[str, str] | None = None) -> Iterator[Span | None]:
    """A span under the current one (or under the context in `parent_carrier`, W3C headers;
    an empty one starts a trace), linked to the span in `link_carrier` if any (a job item's
    trace to its job's); None, and nothing else done, while tracing is off."""
    if not _enabled:
        yield None
        return
    parent = propagate.extract(dict(parent_carrier)) if parent_carrier is not None else None
    links = []
    if link_carrier:
        linked = trace.get_current_span(propagate.extract(dict(link_carrier))).get_span_context()
        if linked.is_valid:
            links.append(trace.Link(linked))
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(name, context=parent, kind=kind, links=links,
                                      attributes=dict(attributes or {})) as current:
        yield current


def inject(carrier: MutableMapping[str, str]) -> None:
    """Writes the current span's context into `carrier` (replacing what it held)."""
    if _enabled:
        carrier.clear()
        propagate.inject(carrier, context=otel_context.get_current())


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, as hex, for log lines; None without one."""
    if not _enabled:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
