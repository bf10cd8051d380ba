"""A small OTLP/HTTP trace receiver on loopback: what a collector would get, decoded.

The API and the worker export with their real OTLP exporters (OTEL_EXPORTER_OTLP_ENDPOINT
pointing here); spans from every process, prefork children included, arrive over HTTP,
so a test reads the trace exactly as a backend would see it.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[str]
    links: list[Link]
    status_code: int


@dataclass
class OtlpReceiver:
    url: str
    decode: bool = True
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    span_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def exporter_env(self) -> dict[str, str]:
        """The standard OTEL_* variables that make a process export its spans here, fast."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        if not self.decode:  # a benchmark's sink: count, keep nothing
            count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            with self.lock:
                self.span_count += count
                self.requests += 1
            return
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex() or None,
                            kind=span.kind,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={kv.key: _value(kv.value) for kv in span.attributes},
                            events=[event.name for event in span.events],
                            links=[
                                Link(
                                    link.trace_id.hex(),
                                    link.span_id.hex(),
                                    {kv.key: _value(kv.value) for kv in link.attributes},
                                )
                                for link in span.links
                            ],
                            status_code=span.status.code,
                        )
                    )
        with self.lock:
            self.spans.extend(received)
            self.span_count += len(received)
            self.requests += 1

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return sorted(
            (s for s in self.snapshot() if s.trace_id == trace_id), key=lambda s: s.start_ns
        )

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.snapshot()
            if predicate(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"spans did not arrive in {timeout}s; got {len(self.snapshot())}")


@contextmanager
def otlp_receiver(decode: bool = True) -> Iterator[OtlpReceiver]:
    """Serve OTLP/HTTP (protobuf) on a free loopback port until the block ends."""
    holder: dict[str, OtlpReceiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path.rstrip("/") != "/v1/traces":
                self.send_error(404)
                return
            holder["receiver"].add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["receiver"] = OtlpReceiver(
        url=f"http://127.0.0.1:{server.server_address[1]}", decode=decode
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["receiver"]
    finally:
        server.shutdown()
        server.server_close()
