"""Tracing as an operator turns it on: ``token-broker`` child processes.

``BROKER_OTEL_ENABLED=true`` without the ``otel`` extra refuses to start in one line;
a bad ``OTEL_*`` exporter choice is one line too; and with the defaults the spans reach
an OTLP/HTTP receiver (a real HTTP server on loopback) named by
``OTEL_EXPORTER_OTLP_ENDPOINT``, flushed when the broker stops.
"""

from __future__ import annotations

import http.server
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.cli import ROOT, run_cli
from tests.support.eventually import eventually
from tests.support.policies import BASE_ENV, base_policy, write_policy
from tests.support.process import broker_process
from tests.support.servers import LOOPBACK
from tests.support.stack import bearer, session_token

# Runs the real CLI with the SDK hidden, as on an install without the extra.
WITHOUT_SDK = (
    "import sys; sys.modules['opentelemetry.sdk'] = None; "
    "from app.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


def test_enabled_without_the_extra_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    for args in (("serve", "--config", str(path)), ("check-config", str(path))):
        result = subprocess.run(
            [sys.executable, "-c", WITHOUT_SDK, *args],
            cwd=ROOT,
            env={**os.environ, **BASE_ENV, "BROKER_OTEL_ENABLED": "true", "BROKER_PORT": "0"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("token-broker: BROKER_OTEL_ENABLED: ")
        assert "token-broker[otel]" in lines[0]


def test_with_the_extra_check_config_says_tracing_is_on(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    result = run_cli("check-config", str(path), env={**BASE_ENV, "BROKER_OTEL_ENABLED": "true"})
    assert result.returncode == 0, result.stderr
    assert "tracing on" in result.stdout


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "no-such-exporter"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
def test_a_bad_exporter_choice_is_one_line_naming_the_variable(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    path = write_policy(tmp_path, base_policy())
    env = {**BASE_ENV, "BROKER_OTEL_ENABLED": "true", **variables}
    for args in (("check-config", str(path)), ("serve", "--config", str(path), "--port", "0")):
        result = run_cli(*args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"token-broker: {named}: "), lines


class _Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: decodes each export, answers success."""

    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            self.received.append(request)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        return None


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    received: list[ExportTraceServiceRequest] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_spans_reach_the_otlp_endpoint_the_environment_names(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    trace_id = secrets.token_hex(16)
    with otlp_receiver() as (endpoint, received):
        extra = {
            "BROKER_OTEL_ENABLED": "true",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        }
        with broker_process(path, tmp_path, BASE_ENV, extra_env=extra) as broker:
            forged = session_token(user="otlp-user")[:-4] + "AAAA"
            response = httpx.post(
                f"{broker.url}/v1/tokens",
                json={"embed": "sales-overview"},
                headers={**bearer(forged), "traceparent": f"00-{trace_id}-{'ab' * 8}-01"},
            )
            assert response.status_code == 401
            assert broker.stop() == 0  # SIGTERM: the batch is flushed on the way out

        def spans() -> dict[str, dict[str, object]]:
            found: dict[str, dict[str, object]] = {}
            for export in received:
                for resource_spans in export.resource_spans:
                    resource = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            if span.trace_id.hex() == trace_id:
                                found[span.name] = {"resource": resource, "span": span}
            return found

        found = eventually(spans, what="the broker's spans at the OTLP receiver")
    assert {"POST /v1/tokens", "session.verify"} <= set(found)
    resource = found["POST /v1/tokens"]["resource"]
    assert isinstance(resource, dict)
    assert resource["service.name"] == "token-broker"
    assert resource["deployment.environment.name"] == "test"
    assert forged not in str(received)
