"""The Prometheus `/metrics` endpoint every fleet process serves on a port of its own."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def serve_metrics(port: int, host: str = "0.0.0.0",
                  registry: CollectorRegistry = REGISTRY) -> int:
    """Serves `registry` on http://host:port/metrics from a daemon thread; returns the port
    (the one picked, for 0)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
