"""When tracing is on: only when the standard OTEL_* variables ask for it."""

from __future__ import annotations

import pytest

from fleet_server import tracing

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}


@pytest.mark.parametrize(("environ", "wanted"), [
    ({}, False),
    (ENDPOINT, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
    ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
    ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
    ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
])
def test_tracing_is_wanted_only_with_an_endpoint_and_not_disabled(
        environ: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(environ) is wanted


def test_while_off_a_span_is_nothing_and_injects_nothing() -> None:
    assert not tracing.enabled()
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    with tracing.span("x") as span:
        tracing.inject(carrier)
    assert span is None
    assert carrier == {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
