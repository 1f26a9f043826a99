"""An OTLP/gRPC trace receiver that counts what it gets and keeps nothing:
`python -m bench.otlp_sink --port-file PATH`. The `fleet-traced` backend exports its spans
here, so the bench measures the fleet with tracing on and exporting, as a collector would
receive them, without a collector's own cost on the machine (it counts spans, nothing more)."""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        count = sum(len(scope.spans) for resource in request.resource_spans
                    for scope in resource.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--count-file", type=Path, help="where to write the span count at exit")
    args = parser.parse_args()
    receiver = CountingReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(args.port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1)
    if args.count_file is not None:
        args.count_file.write_text(str(receiver.spans))


if __name__ == "__main__":
    main()
