from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app.observability.logging import (
    configure_logging,
    info_event,
    loggable_path,
    logging_off_the_loop,
    request_id_var,
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Logging is process-wide: leave it as the next test expects it."""
    loggers = [
        logging.getLogger(n) for n in ("token_broker", "uvicorn", "uvicorn.error", "uvicorn.access")
    ]
    saved = [(lg, list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    yield
    logging.captureWarnings(False)
    for logger, handlers, propagate, level in saved:
        logger.handlers = handlers
        logger.propagate = propagate
        logger.setLevel(level)


@pytest.fixture
def stream() -> io.StringIO:
    configure_logging("info", "json")
    buffer = io.StringIO()
    for name in ("token_broker", "uvicorn", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.setStream(buffer)  # type: ignore[attr-defined]
    return buffer


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_queued_records_keep_the_request_id_of_the_moment_they_were_made(
    stream: io.StringIO,
) -> None:
    audit = logging.getLogger("token_broker.audit")
    other = logging.getLogger("token_broker.test")
    with logging_off_the_loop():
        handlers = logging.getLogger("token_broker").handlers
        token = request_id_var.set("req-1")
        info_event(audit, "token.issued", {"tenant": "acme"})
        try:
            raise ValueError("boom")
        except ValueError:
            other.exception("thing.failed", extra={"n": 1})
        request_id_var.reset(token)
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", "/x?t=1", "1.1", 200
        )
    assert logging.getLogger("token_broker").handlers != handlers  # restored
    issued, failed, access = lines(stream)
    assert issued["event"] == "token.issued"
    assert issued["request_id"] == "req-1"
    assert issued["tenant"] == "acme"
    assert failed["request_id"] == "req-1"
    assert "ValueError: boom" in str(failed["exception"])
    assert failed["n"] == 1
    assert access["event"] == "http.access"
    assert access["path"] == "/x?[query omitted]"
    assert access["status"] == 200
    assert "request_id" not in access


def test_without_own_handlers_events_propagate(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("token_broker").handlers = []
    logging.getLogger("token_broker").propagate = True
    caplog.set_level(logging.INFO)
    with logging_off_the_loop():
        info_event(logging.getLogger("token_broker.audit"), "token.denied", {"outcome": "x"})
    assert [r.getMessage() for r in caplog.records] == ["token.denied"]


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/v1/tokens", "/v1/tokens"),
        ("/v1/embeds?access_token=abc", "/v1/embeds?[query omitted]"),
        ("/v1/tokens/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", "/v1/tokens/[redacted]"),
        ("/x/" + "a" * 60, "/x/[redacted]"),
    ],
)
def test_loggable_path(path: str, logged: str) -> None:
    assert loggable_path(path) == logged


def test_a_burst_of_events_is_written_complete_and_in_order(stream: io.StringIO) -> None:
    audit = logging.getLogger("token_broker.audit")
    access = logging.getLogger("uvicorn.access")
    with logging_off_the_loop():
        for n in range(3000):
            if n % 7 == 0:  # another handler on the same stream: order is kept across both
                access.info('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", f"/n/{n}", "1.1", 200)
            else:
                info_event(audit, "token.issued", {"n": n})
    written = lines(stream)
    assert len(written) == 3000
    for n, entry in enumerate(written):
        if n % 7 == 0:
            assert (entry["event"], entry["path"]) == ("http.access", f"/n/{n}")
        else:
            assert (entry["event"], entry["n"]) == ("token.issued", n)


def test_queued_events_are_written_as_the_formatter_writes_their_record(
    stream: io.StringIO,
) -> None:
    from app.observability.logging import JsonFormatter, _PendingEvent

    event = _PendingEvent(
        "token_broker.audit",
        logging.INFO,
        "token.denied",
        {"tenant": "acme", "latency_ms": 0.25, "vendor_status": None, "_private": 1},
        "req-9",
        1_795_000_000.987654,
        0,
    )
    assert event.json_line() == JsonFormatter().format(event.materialize())
    assert json.loads(event.json_line()) == {
        "ts": "2026-11-18T11:06:40.987Z",
        "level": "info",
        "event": "token.denied",
        "logger": "token_broker.audit",
        "request_id": "req-9",
        "tenant": "acme",
        "latency_ms": 0.25,
        "vendor_status": None,
    }


def test_other_handlers_still_get_every_record(stream: io.StringIO) -> None:
    class Collecting(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.events.append(record.getMessage())

    collecting = Collecting()
    logging.getLogger("token_broker").addHandler(collecting)
    audit = logging.getLogger("token_broker.audit")
    with logging_off_the_loop():
        for n in range(50):
            info_event(audit, f"event.{n}", {})
        logging.getLogger("token_broker.other").warning("plain.record")
    expected = [f"event.{n}" for n in range(50)] + ["plain.record"]
    assert collecting.events == expected
    assert [entry["event"] for entry in lines(stream)] == expected


def test_an_event_that_cannot_be_written_does_not_stop_logging(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text for this")

    audit = logging.getLogger("token_broker.audit")
    with logging_off_the_loop():
        info_event(audit, "token.issued", {"value": Unprintable()})
        info_event(audit, "token.issued", {"value": "fine"})
    assert [entry["value"] for entry in lines(stream)] == ["fine"]
    assert "no text for this" in capsys.readouterr().err
