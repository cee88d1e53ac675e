"""Structured logs: one JSON object per line on stdout (or a console format for people).

Loggers live under ``token_broker.``; the record's message is the event name and its
``extra`` fields become keys: ``log.info("token.issued", extra={"tenant": "acme"})``.
The request id comes from a context variable set by the request middleware, so every
line logged while serving a request carries it.

The pipeline is the standard library's (``logging.config.dictConfig``, also handed to
uvicorn as its ``log_config``)::

    loggers token_broker, uvicorn, uvicorn.access
      -> BoundedQueueHandler   (the caller's thread: never blocks, never formats)
      -> queue.Queue(maxsize)  (full: the line is dropped and counted)
      -> QueueListener thread  -> one formatter per format -> stdout

Writing to stdout is a blocking system call; a reader that stops reading (a stalled
pipe, a wedged log shipper) would otherwise stall the event loop on the first line,
grow memory without bound, or hang shutdown. Here it can only fill the queue: further
lines are dropped and counted (``token_broker_log_lines_dropped_total``), and stopping
waits at most :data:`STOP_TIMEOUT_SECONDS` for the writer.

Every formatter escapes control characters, so a value such as an embed name with a
newline cannot write a line of its own (log forging).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import logging.config
import logging.handlers
import os
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any, Final, Literal, TextIO

import orjson
from prometheus_client import Counter
from prometheus_client.metrics_core import Metric

LogFormat = Literal["json", "console"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

MAX_QUEUED_LINES: Final = 10_000
"""Lines waiting for stdout. At ~300 bytes each about 3 MB: a burst is absorbed, a
stalled reader costs bounded memory."""
MAX_BATCH_LINES: Final = 256
"""Lines written with one system call at most."""
GATHER_SECONDS: Final = 0.05
"""How long the writer lets lines gather after the queue ran empty (see _GatheringListener)."""
STOP_TIMEOUT_SECONDS: Final = 2.0
"""How long stopping waits for queued lines to be written; then they are given up."""

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName", "color_message"}
)
_NO_REQUEST_ID: Final = object()

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: everything a
# terminal, `str.splitlines` or a log shipper may treat as the end of a line or a command.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NON_ASCII_CONTROL: Final = re.compile("[\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A console value printed bare; anything else is printed as a quoted JSON string.
_BARE_VALUE: Final = re.compile(r'[^\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]+')


def _escape_match(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\n``)."""
    return _CONTROL.sub(_escape_match, text)


def _json_escape_match(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and k[0] != "_"}


def _request_id(record: logging.LogRecord) -> str | None:
    """The id captured when the record was queued (the writer thread formats it later,
    where the request's context is gone), else the current one."""
    captured = record.__dict__.get("_request_id", _NO_REQUEST_ID)
    return request_id_var.get() if captured is _NO_REQUEST_ID else captured


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int((created % 1) * 1000):03d}Z"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return record.exc_text or None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event``, ``logger``,
    ``request_id``, the record's extra fields, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        request_id = _request_id(record)
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(_extra_fields(record))
        exception = _exception_text(self, record)
        if exception is not None:
            entry["exception"] = exception
        line = orjson.dumps(entry, default=str).decode()
        # orjson escapes C0 controls; the others are legal JSON but end lines elsewhere.
        if not line.isascii() or "\x7f" in line:
            line = _NON_ASCII_CONTROL.sub(_json_escape_match, line)
        return line


def _console_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if _BARE_VALUE.fullmatch(text):
        return text
    return escape_control(orjson.dumps(text).decode())


class ConsoleFormatter(logging.Formatter):
    """``<ts> <LEVEL> <event> key=value ...`` for people; a traceback follows indented."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _extra_fields(record)
        request_id = _request_id(record)
        if request_id is not None:
            fields = {"request_id": request_id, **fields}
        text = " ".join(
            f"{escape_control(key)}={_console_value(value)}" for key, value in fields.items()
        )
        event = escape_control(record.getMessage())
        line = f"{_timestamp(record.created)} {record.levelname:<7} {event} {text}".rstrip()
        exception = _exception_text(self, record)
        if exception is not None:
            # Indented, so no line of a traceback (or of an exception message an attacker
            # chose) can look like a log line of its own.
            line += "".join(f"\n    {escape_control(part)}" for part in exception.split("\n"))
        return line


FORMATTERS: Final[dict[str, type[logging.Formatter]]] = {
    "json": JsonFormatter,
    "console": ConsoleFormatter,
}

_TOKEN_LIKE = re.compile(r"^[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.|^[A-Za-z0-9_\-+/=%.~]{48,}$")


def loggable_path(path: object) -> str:
    """The request path without its query string, with token-like segments redacted.

    Clients do put session tokens in URLs (``?access_token=...``); the broker never
    reads them there, and must not write them to its logs either.
    """
    text = str(path)
    base, has_query, _ = text.partition("?")
    segments = ["[redacted]" if _TOKEN_LIKE.match(seg) else seg for seg in base.split("/")]
    return "/".join(segments) + ("?[query omitted]" if has_query else "")


class AccessLogFields(logging.Filter):
    """uvicorn's access records become ``http.access`` events with named fields (the
    path without its query), whatever formatter writes them."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, path, http_version, status = args
            record.msg = "http.access"
            record.args = ()
            record.client = client
            record.method = method
            record.path = loggable_path(path)
            record.http_version = http_version
            record.status = status
        return True


# --- the queue between the event loop and stdout ------------------------------------------


class _LineWriter:
    """What the listener thread hands each record to: format it, and write the lines it
    has gathered in one go (:meth:`flush`).

    Not a ``logging.Handler`` on purpose: a handler's lock is taken by
    ``logging.shutdown()`` at exit, and a writer blocked on a stalled stdout holds it,
    which would hang the exit this module promises not to hang. With a file descriptor
    the lines go straight to ``os.write`` (no Python-level lock either).
    """

    level = logging.NOTSET  # QueueListener reads it when respecting handler levels

    def __init__(self, formatter: logging.Formatter, stream: TextIO) -> None:
        self._formatter = formatter
        self._stream = stream
        self._pending: list[str] = []
        try:
            self._fd: int | None = stream.fileno()
            stream.flush()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            self._fd = None

    def handle(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self._formatter.format(record) + "\n")
        except Exception:  # as logging does: one bad record must not end logging
            traceback.print_exc(file=sys.stderr)
            dropped_lines.add()
        if len(self._pending) >= MAX_BATCH_LINES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        lines = len(self._pending)
        self._pending.clear()
        try:
            if self._fd is None:
                self._stream.write(text)
                self._stream.flush()
                return
            data = memoryview(text.encode("utf-8", "backslashreplace"))
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:  # a closed pipe: the lines are lost, the service goes on
            dropped_lines.add(lines)


class _GatheringListener(logging.handlers.QueueListener):
    """A ``QueueListener`` that writes what it has taken once the queue runs empty, then
    lets the next lines gather for :data:`GATHER_SECONDS` before it waits again.

    Waking the thread for every line takes the GIL from the event loop at every wake-up;
    in ``make bench`` S1 (two lines per request) the per-line listener cost about a third
    of the cache-hit throughput. A line reaches stdout at most ~50 ms after it is logged.
    """

    def __init__(self, lines: queue.Queue[Any], writer: _LineWriter) -> None:
        super().__init__(lines, writer)  # type: ignore[arg-type]
        self._lines = lines
        self._writer = writer

    def dequeue(self, block: bool) -> Any:
        if self._lines.empty():
            self._writer.flush()
            time.sleep(GATHER_SECONDS)
        record = self._lines.get(block)
        if record is self._sentinel:  # type: ignore[attr-defined]
            self._writer.flush()
        return record


class DroppedLines:
    """The process's count of log lines lost (logging is process-wide, so is this).

    A prometheus-client counter created on first use, not at import: with several
    workers it lives in ``PROMETHEUS_MULTIPROC_DIR`` like every other metric, and
    :meth:`collect` lets a single process's registry expose it.
    """

    def __init__(self) -> None:
        self._counter: Counter | None = None
        self._lock = threading.Lock()

    def _get(self) -> Counter:
        with self._lock:
            if self._counter is None:
                self._counter = Counter(
                    "log_lines_dropped_total",
                    "Log lines dropped: the output queue was full, stdout was gone, "
                    "or a record could not be formatted.",
                    namespace="token_broker",
                    registry=None,
                )
            return self._counter

    def add(self, lines: int = 1) -> None:
        self._get().inc(lines)

    def value(self) -> float:
        return sum(
            sample.value
            for metric in self._get().collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    def collect(self) -> Iterable[Metric]:
        return self._get().collect()


dropped_lines = DroppedLines()


class BoundedQueueHandler(logging.handlers.QueueHandler):
    """Hands records to a bounded queue drained by a :class:`QueueListener` thread.

    ``emit`` never blocks: when the queue is full the record is dropped and counted in
    :data:`dropped_lines`. Closing the handler (``logging.shutdown()`` at exit, or the
    next ``dictConfig``) stops the thread, waiting at most :data:`STOP_TIMEOUT_SECONDS`.
    """

    def __init__(
        self,
        log_format: LogFormat = "json",
        max_queued_lines: int = MAX_QUEUED_LINES,
        stream: TextIO | None = None,
    ) -> None:
        self.lines: queue.Queue[Any] = queue.Queue(maxsize=max_queued_lines)
        super().__init__(self.lines)
        dropped_lines.add(0)  # the series exists from start-up
        writer = _LineWriter(FORMATTERS[log_format](), stream if stream is not None else sys.stdout)
        self.listener = _GatheringListener(self.lines, writer)
        self.listener.start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Everything that depends on the calling thread or context is fixed now; the
        # message and fields are formatted on the writer thread.
        record._request_id = request_id_var.get()
        if record.exc_info:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
            record.exc_info = None  # a traceback holds frames: do not keep them queued
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.lines.put_nowait(record)
        except queue.Full:
            dropped_lines.add()

    def close(self) -> None:
        self.stop(STOP_TIMEOUT_SECONDS)
        super().close()

    def stop(self, timeout: float) -> bool:
        """Write what is queued, then end the thread. False when stdout did not take it
        all within ``timeout`` seconds: the rest is given up (and counted)."""
        listener = self.listener
        # QueueListener.stop() would wait forever (and block on a full queue); this is
        # the same sequence with a deadline (QueueListener's _thread and _sentinel have
        # been these names since Python 3.2).
        thread: threading.Thread | None = listener._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self.lines.put(listener._sentinel, timeout=timeout)  # type: ignore[attr-defined]
        thread.join(max(0.0, deadline - time.monotonic()))
        listener._thread = None
        if thread.is_alive():
            dropped_lines.add(self.lines.qsize())
            return False
        return True


_EXCEPTION_FORMATTER: Final = logging.Formatter()


def logging_config(level: str, fmt: LogFormat) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict, also handed to uvicorn (``log_config``)."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"access_fields": {"()": AccessLogFields}},
        "handlers": {"stdout": {"()": BoundedQueueHandler, "log_format": fmt}},
        "loggers": {
            "token_broker": {"handlers": ["stdout"], "level": upper, "propagate": False},
            "uvicorn": {"handlers": ["stdout"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {
                "handlers": ["stdout"],
                "level": upper,
                "propagate": False,
                "filters": ["access_fields"],
            },
        },
    }


def configure_logging(level: str, fmt: LogFormat) -> None:
    logging.config.dictConfig(logging_config(level, fmt))
    logging.captureWarnings(True)
