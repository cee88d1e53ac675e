"""RequestContextMiddleware at the ASGI level: request ids, disconnects, escaped errors."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.api.middleware import RequestContextMiddleware
from app.observability.metrics import Metrics

pytestmark = pytest.mark.anyio


async def run(
    app: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[list[Message], Metrics]:
    metrics = Metrics.create()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/tokens",
        "headers": headers or [],
        "state": {"metrics": metrics},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await RequestContextMiddleware(app)(scope, receive, send)
    return sent, metrics


def counted(metrics: Metrics, status: str) -> float | None:
    return metrics.registry.get_sample_value(
        "token_broker_http_requests_total",
        {"route": "unmatched", "method": "POST", "status": status},
    )


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(b"ok")(scope, receive, send)


def echoed_id(sent: list[Message]) -> bytes:
    return bytes(dict(sent[0]["headers"])[b"x-request-id"])


@pytest.mark.parametrize("value", [b"abc\n", b"abc\r\nx-evil: 1", b"\nabc", b"abc\x00"])
async def test_a_request_id_with_line_breaks_or_nul_is_replaced(value: bytes) -> None:
    sent, _ = await run(answer, [(b"x-request-id", value)])
    returned = echoed_id(sent)
    assert returned != value
    assert len(returned) == 32 and returned.isalnum()


async def test_a_sane_request_id_is_echoed() -> None:
    sent, _ = await run(answer, [(b"x-request-id", b"req-1.A_b")])
    assert echoed_id(sent) == b"req-1.A_b"


async def test_a_client_gone_mid_body_is_a_499_and_no_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def read_then_fail(scope: Scope, receive: Receive, send: Send) -> None:
        raise ClientDisconnect()

    with caplog.at_level(logging.DEBUG, logger="token_broker.http"):
        sent, metrics = await run(read_then_fail)

    assert sent == []  # nobody is listening
    assert counted(metrics, "499") == 1
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "http.client_disconnected")
    ]


async def test_an_escaped_exception_is_a_bare_500(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("internal detail 7f3a")

    with caplog.at_level(logging.ERROR, logger="token_broker.http"):
        sent, metrics = await run(broken, [(b"x-request-id", b"rid-9")])

    assert sent[0]["status"] == 500
    body = orjson.loads(sent[1]["body"])
    assert body["code"] == "internal_error" and body["request_id"] == "rid-9"
    assert b"7f3a" not in sent[1]["body"]
    assert counted(metrics, "500") == 1
    assert [r.getMessage() for r in caplog.records] == ["http.unhandled_error"]
