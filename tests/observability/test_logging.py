"""The log pipeline in-process: formatters, the bounded queue, stopping with a deadline."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from app.observability.logging import (
    MAX_QUEUED_LINES,
    AccessLogFields,
    BoundedQueueHandler,
    ConsoleFormatter,
    JsonFormatter,
    LogFormat,
    configure_logging,
    dropped_lines,
    escape_control,
    loggable_path,
    logging_config,
    request_id_var,
)

FORGED = "sales\n2026-01-01T00:00:00.000Z INFO    token.issued tenant=victim"
UNSAFE_CHARACTERS = "a\nb\rc\x00d\x1be\x7ff\x85g\u2028h\u2029i\tj"


def record(event: str = "token.issued", **fields: object) -> logging.LogRecord:
    made = logging.LogRecord("token_broker.audit", logging.INFO, "x.py", 1, event, (), None)
    made.created = 1_795_000_000.987654
    made.__dict__.update(fields)
    return made


def access_record(path: str) -> logging.LogRecord:
    made = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "h11_impl.py",
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", path, "1.1", 200),
        None,
    )
    AccessLogFields().filter(made)
    return made


@pytest.fixture
def pipeline() -> Iterator[tuple[logging.Logger, io.StringIO, BoundedQueueHandler]]:
    """A ``token_broker.test`` logger behind its own queue handler, writing to a buffer."""
    buffer = io.StringIO()
    handler = BoundedQueueHandler("json", stream=buffer)
    logger = logging.getLogger("token_broker.test.pipeline")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger, buffer, handler
    finally:
        logger.removeHandler(handler)
        handler.close()


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


# --- formatters ---------------------------------------------------------------------------


def test_json_line_has_the_pinned_keys_and_the_extra_fields() -> None:
    line = JsonFormatter().format(
        record(tenant="acme", latency_ms=0.25, vendor_status=None, _private=1, _request_id="r-9")
    )
    assert json.loads(line) == {
        "ts": "2026-11-18T11:06:40.987Z",
        "level": "info",
        "event": "token.issued",
        "logger": "token_broker.audit",
        "request_id": "r-9",
        "tenant": "acme",
        "latency_ms": 0.25,
        "vendor_status": None,
    }


@pytest.mark.parametrize(
    "formatter", [JsonFormatter(), ConsoleFormatter()], ids=["json", "console"]
)
def test_every_formatter_writes_one_line_whatever_the_values(formatter: logging.Formatter) -> None:
    line = formatter.format(
        record(f"event{UNSAFE_CHARACTERS}", **{"embed": FORGED, f"key{UNSAFE_CHARACTERS}": 1})
    )
    assert len(line.splitlines()) == 1  # splitlines knows every line boundary there is
    assert all(ch not in line for ch in UNSAFE_CHARACTERS if ch not in "abcdefghij")


def test_json_escapes_keep_the_values() -> None:
    line = JsonFormatter().format(record(embed=FORGED, other=UNSAFE_CHARACTERS))
    parsed = json.loads(line)
    assert (parsed["embed"], parsed["other"]) == (FORGED, UNSAFE_CHARACTERS)


def test_console_quotes_values_that_could_be_read_as_other_fields() -> None:
    line = ConsoleFormatter().format(record(embed="x outcome=ok", tenant="acme", empty=""))
    assert line.endswith('token.issued embed="x outcome=ok" tenant=acme empty=""')
    line = ConsoleFormatter().format(record(embed=FORGED))
    assert line.endswith(
        'embed="sales\\n2026-01-01T00:00:00.000Z INFO    token.issued tenant=victim"'
    )


def test_console_indents_tracebacks_so_no_line_can_pass_for_an_entry() -> None:
    try:
        raise ValueError(f"boom\n{FORGED}")
    except ValueError:
        import sys

        failed = record("thing.failed")
        failed.exc_info = sys.exc_info()
    lines = ConsoleFormatter().format(failed).split("\n")
    assert lines[0].endswith("thing.failed")
    assert all(line.startswith("    ") for line in lines[1:])
    assert any("ValueError: boom" in line for line in lines)


def test_escape_control_names_the_common_ones() -> None:
    assert escape_control("a\nb\tc\x1b[31m\u2028") == "a\\nb\\tc\\x1b[31m\\u2028"


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_access_records_become_http_access_events(log_format: LogFormat) -> None:
    # Both formats (the console one used to fail on every access line: a TypeError
    # from a super() call across formatter classes).
    formatter = ConsoleFormatter() if log_format == "console" else JsonFormatter()
    line = formatter.format(access_record("/v1/tokens?access_token=abc"))
    assert "http.access" in line
    assert "/v1/tokens?[query omitted]" in line
    assert "access_token" not in line
    assert "200" in line


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


# --- the queue ----------------------------------------------------------------------------


def test_lines_keep_order_and_the_request_id_of_the_moment_they_were_logged(
    pipeline: tuple[logging.Logger, io.StringIO, BoundedQueueHandler],
) -> None:
    logger, buffer, handler = pipeline
    token = request_id_var.set("req-1")
    try:
        logger.info("token.issued", extra={"tenant": "acme"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("thing.failed", extra={"n": 1})
    finally:
        request_id_var.reset(token)
    for n in range(2000):
        logger.info("burst", extra={"n": n})
    assert handler.stop(timeout=30)
    issued, failed, *burst = json_lines(buffer.getvalue())
    assert (issued["event"], issued["request_id"], issued["tenant"]) == (
        "token.issued",
        "req-1",
        "acme",
    )
    assert failed["request_id"] == "req-1"
    assert "ValueError: boom" in str(failed["exception"])
    assert [entry["n"] for entry in burst] == list(range(2000))
    assert all("request_id" not in entry for entry in burst)


class StalledStream(io.StringIO):
    """stdout whose reader stopped reading: every write waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writes_started = threading.Event()

    def write(self, text: str) -> int:
        self.writes_started.set()
        self.release.wait()
        return super().write(text)


def test_a_stalled_stdout_fills_the_queue_and_then_lines_are_dropped_and_counted() -> None:
    stream = StalledStream()
    handler = BoundedQueueHandler("json", max_queued_lines=50, stream=stream)
    logger = logging.getLogger("token_broker.test.stalled")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    before = dropped_lines.value()
    try:
        logger.info("first")  # taken by the writer, which then blocks on it
        assert stream.writes_started.wait(10)
        for n in range(1000):
            logger.info("line", extra={"n": n})  # never blocks: the test would hang
        assert handler.lines.qsize() == 50  # memory is bounded by the queue, not the load
        assert dropped_lines.value() - before == 1000 - 50
        # Stopping waits for the writer no longer than its deadline; what is still
        # queued is given up and counted.
        assert handler.stop(timeout=0.2) is False
        assert dropped_lines.value() - before == 1000
    finally:
        stream.release.set()
        handler.lines.put(handler.listener._sentinel)  # type: ignore[attr-defined]
        logger.removeHandler(handler)
        handler.close()


def test_a_record_that_cannot_be_formatted_is_counted_and_logging_goes_on(
    pipeline: tuple[logging.Logger, io.StringIO, BoundedQueueHandler],
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text for this")

    logger, buffer, handler = pipeline
    before = dropped_lines.value()
    logger.info("token.issued", extra={"value": Unprintable()})
    logger.info("token.issued", extra={"value": "fine"})
    assert handler.stop(timeout=30)
    assert [entry["value"] for entry in json_lines(buffer.getvalue())] == ["fine"]
    assert dropped_lines.value() - before == 1
    assert "no text for this" in capsys.readouterr().err


def test_the_config_routes_our_loggers_and_uvicorns_through_one_queue() -> None:
    config = logging_config("info", "console")
    assert config["handlers"]["stdout"]["()"] is BoundedQueueHandler
    assert {name for name, logger in config["loggers"].items() if logger.get("handlers")} == {
        "token_broker",
        "uvicorn",
        "uvicorn.access",
    }
    assert MAX_QUEUED_LINES >= 1000


def test_configure_logging_installs_a_queue_and_reconfiguring_stops_it() -> None:
    loggers = [logging.getLogger(n) for n in ("token_broker", "uvicorn", "uvicorn.access")]
    saved = [(lg, list(lg.handlers), lg.propagate, lg.level, list(lg.filters)) for lg in loggers]
    try:
        configure_logging("info", "json")
        (first,) = logging.getLogger("token_broker").handlers
        assert isinstance(first, BoundedQueueHandler)
        assert logging.getLogger("uvicorn.access").handlers == [first]
        configure_logging("info", "json")
        assert first.listener._thread is None
    finally:
        for handler in logging.getLogger("token_broker").handlers:
            handler.close()
        logging.captureWarnings(False)
        for logger, handlers, propagate, level, filters in saved:
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(level)
            logger.filters = filters
