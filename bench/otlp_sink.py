"""An OTLP/HTTP trace receiver for the tracing row (S1T): accepts exports, keeps counts.

The broker with tracing on exports its spans as a deployment would, over OTLP/HTTP to a
collector on loopback; this stands in for the collector. It does no more than a
collector's receiver must (read the body, answer success), so what S1T measures is the
broker's cost of making and exporting spans, not a backend's.
"""

from __future__ import annotations

import http.server
import threading
from types import TracebackType

from bench.procs import LOOPBACK

# An empty ExportTraceServiceResponse: full success.
_SUCCESS = b""


class _Handler(http.server.BaseHTTPRequestHandler):
    sink: OtlpSink

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path == "/v1/traces":
            self.sink.record(len(body))
            self.send_response(200)
        else:
            self.send_response(404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(_SUCCESS)))
        self.end_headers()
        self.wfile.write(_SUCCESS)

    def log_message(self, format: str, *args: object) -> None:
        return None


class OtlpSink:
    """``with OtlpSink() as sink:`` serves on a free loopback port until the block ends."""

    def __init__(self) -> None:
        handler = type("SinkHandler", (_Handler,), {"sink": self})
        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._lock = threading.Lock()
        self.exports = 0
        self.bytes = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def record(self, size: int) -> None:
        with self._lock:
            self.exports += 1
            self.bytes += size

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
