"""The OTLP sink of the fleet-traced backend receives what a real OTel exporter sends and
counts it; the backend runs only when named."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.settings import BACKENDS, DEFAULT_BACKENDS, BenchSettings
from fleet_cli.processes import spawn, wait_until


def test_the_sink_counts_the_spans_an_otlp_exporter_sends(tmp_path: Path) -> None:
    port_file, count_file = tmp_path / "sink.port", tmp_path / "spans.txt"
    sink = spawn("otlp-sink", [sys.executable, "-m", "bench.otlp_sink", "--port-file",
                               str(port_file), "--count-file", str(count_file)], tmp_path)
    try:
        wait_until(port_file.exists, 30, "sink port", sink)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
            endpoint=f"127.0.0.1:{port_file.read_text()}", insecure=True)))
        tracer = provider.get_tracer("test")
        for i in range(5):
            with tracer.start_as_current_span(f"span-{i}"):
                pass
        provider.shutdown()
    finally:
        sink.stop()
    assert count_file.read_text() == "5"


def test_the_traced_fleet_is_a_backend_but_not_a_default_one() -> None:
    assert "fleet-traced" in BACKENDS and "fleet-traced" not in DEFAULT_BACKENDS
    defaults = {f.name: f.default for f in dataclasses.fields(BenchSettings)}
    assert defaults["backends"] == DEFAULT_BACKENDS
