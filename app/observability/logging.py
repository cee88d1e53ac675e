"""Structured logs: one JSON object per line on stdout (or a console format for people).

Loggers live under ``token_broker.``; the record's message is the event name and its
``extra`` fields become JSON keys: ``log.info("token.issued", extra={"tenant": "acme"})``.
The request id comes from a context variable set by the request middleware, so every
line logged while serving a request carries it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName", "color_message"}
)


_UNSET = object()


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and k[0] != "_"}


def _request_id(record: logging.LogRecord) -> str | None:
    """The id captured when the record was made (queued records are formatted later,
    on another thread, where the request's context is gone)."""
    captured = record.__dict__.get("_request_id", _UNSET)
    return request_id_var.get() if captured is _UNSET else captured


def _timestamp(created: float) -> str:
    whole = int(created)
    return f"{_second_prefix(whole)}{int((created - whole) * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _second_prefix(whole_seconds: int) -> str:
    # strftime costs microseconds; a busy second writes thousands of lines.
    moment = dt.datetime.fromtimestamp(whole_seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info:
            exception: str | None = self.formatException(record.exc_info)
        else:
            exception = record.exc_text or None
        return self.render(
            record.created,
            record.levelname,
            record.getMessage(),
            record.name,
            _request_id(record),
            _extra_fields(record),
            exception,
        )

    @staticmethod
    def render(
        created: float,
        level: str,
        event: str,
        logger: str,
        request_id: str | None,
        fields: dict[str, Any],
        exception: str | None = None,
    ) -> str:
        """One JSON line; also used for queued events that never become a LogRecord."""
        entry: dict[str, Any] = {
            "ts": _timestamp(created),
            "level": level.lower(),
            "event": event,
            "logger": logger,
        }
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(fields)
        if exception is not None:
            entry["exception"] = exception
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _extra_fields(record)
        request_id = _request_id(record)
        if request_id is not None:
            fields = {"request_id": request_id, **fields}
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{_timestamp(record.created)} {record.levelname:<7} {record.getMessage()} {text}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


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


class AccessLogFormatter(JsonFormatter):
    """uvicorn.access records → ``http.access`` events with named fields."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, path, http_version, status = args
            record.msg = "http.access"
            record.args = ()
            record.__dict__.update(
                client=client,
                method=method,
                path=loggable_path(path),
                http_version=http_version,
                status=status,
            )
        return super().format(record)


class ConsoleAccessLogFormatter(ConsoleFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return AccessLogFormatter.format(self, record)  # type: ignore[arg-type]


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict, also handed to uvicorn (``log_config``)."""
    formatter = f"{__name__}.JsonFormatter" if fmt == "json" else f"{__name__}.ConsoleFormatter"
    access = (
        f"{__name__}.AccessLogFormatter"
        if fmt == "json"
        else f"{__name__}.ConsoleAccessLogFormatter"
    )
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}, "access": {"()": access}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stdout",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "token_broker": {"handlers": ["default"], "level": upper, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": ["access"], "level": upper, "propagate": False},
        },
    }


def configure_logging(level: str, fmt: str) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))
    logging.captureWarnings(True)


# --- formatting and writing off the event loop --------------------------------------------
#
# A log line is JSON formatting plus a write to stdout: tens of microseconds of work and
# a blocking syscall, on every token request (audit events). While the service runs, the
# handlers of our loggers sit behind one queue drained by one thread; the event loop only
# builds the record and enqueues it.

QUEUED_LOGGERS = ("token_broker", "uvicorn", "uvicorn.access")
_EXCEPTION_FORMATTER = logging.Formatter()


class _ContextQueueHandler(logging.handlers.QueueHandler):
    def __init__(self, queue: Any, route: int) -> None:
        super().__init__(queue)
        self.route = route

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Everything that depends on the current thread or context is fixed now.
        record._request_id = request_id_var.get()
        record._route = self.route
        if record.exc_info:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
            record.exc_info = None
        # msg and args stay as they are (an in-process queue needs no pickling, and
        # the access-log formatter reads uvicorn's args).
        return record


class _Output:
    """A stream written once per batch; shared by the handlers that write to it, so
    their lines keep their order."""

    __slots__ = ("buffer", "handler")

    def __init__(self, handler: logging.StreamHandler[Any]) -> None:
        self.handler = handler
        self.buffer: list[str] = []

    def write_out(self) -> None:
        if not self.buffer:
            return
        handler = self.handler
        text = "".join(self.buffer)
        self.buffer.clear()
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except Exception:  # as logging does: a broken stream must not stop the service
            handler.handleError(logging.makeLogRecord({"msg": "log write failed"}))
        finally:
            handler.release()


class _Sink:
    """One handler as the writer thread sees it.

    A plain ``StreamHandler`` (no filters) has its formatted lines buffered in its
    stream's :class:`_Output`; any other handler gets each record through ``handle``.
    """

    __slots__ = ("handler", "json", "output")

    def __init__(self, handler: logging.Handler, outputs: dict[int, _Output]) -> None:
        self.handler = handler
        self.output: _Output | None = None
        if type(handler) is logging.StreamHandler and not handler.filters:
            self.output = outputs.setdefault(id(handler.stream), _Output(handler))
        self.json = self.output is not None and type(handler.formatter) is JsonFormatter


_STOP = object()
MAX_BATCH = 1024
GATHER_SECONDS = 0.05
"""After a batch the writer sleeps this long, so the next one gathers what arrives
meanwhile: without it the thread wakes for nearly every event, and each wake-up takes
the GIL from the event loop (measured: a 20 µs RSA verification took 80 µs)."""


class _LogWriter:
    """The one thread that formats and writes every queued record, in batches.

    It takes what is queued (up to :data:`MAX_BATCH`), formats each item for its own
    logger's handlers, writes each stream once per batch, then gathers the next batch
    for :data:`GATHER_SECONDS`: at thousands of audit events a second, per-line
    ``LogRecord`` objects, formatting, ``flush`` calls and thread wake-ups cost more CPU
    (and GIL time taken from the event loop) than the requests did. A line reaches
    its stream at most about 50 ms after it was logged; stopping writes everything.
    """

    def __init__(
        self, log_queue: queue.SimpleQueue[Any], routes: dict[int, list[logging.Handler]]
    ) -> None:
        self._queue = log_queue
        outputs: dict[int, _Output] = {}
        self._routes = {
            route: [_Sink(handler, outputs) for handler in handlers]
            for route, handlers in routes.items()
        }
        self._outputs = list(outputs.values())
        self._thread = threading.Thread(
            target=self._run, name="token-broker-log-writer", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write everything queued so far, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batch = [get()]
            try:
                while len(batch) < MAX_BATCH:
                    batch.append(get_nowait())
            except queue.Empty:
                pass
            stopping = False
            for item in batch:
                if item is _STOP:
                    stopping = True
                    continue
                try:
                    self._take(item)
                except Exception:  # one bad record must not end logging for good
                    traceback.print_exc(file=sys.stderr)
            for output in self._outputs:
                output.write_out()
            if stopping:
                return
            if len(batch) < MAX_BATCH:
                time.sleep(GATHER_SECONDS)

    def _take(self, item: Any) -> None:
        if isinstance(item, _PendingEvent):
            sinks = self._routes.get(item.route, ())
            record: logging.LogRecord | None = None
            for sink in sinks:
                if item.level < sink.handler.level:
                    continue
                if sink.json and sink.output is not None:
                    sink.output.buffer.append(item.json_line() + sink.output.handler.terminator)
                    continue
                if record is None:
                    record = item.materialize()
                self._emit(sink, record)
            return
        for sink in self._routes.get(item.__dict__.get("_route", -1), ()):
            if item.levelno >= sink.handler.level:
                self._emit(sink, item)

    def _emit(self, sink: _Sink, record: logging.LogRecord) -> None:
        output = sink.output
        if output is not None:
            try:
                output.buffer.append(sink.handler.format(record) + output.handler.terminator)
            except Exception:
                sink.handler.handleError(record)
            return
        for pending in self._outputs:  # this handler may write to one of those streams
            pending.write_out()
        sink.handler.handle(record)


@dataclass(frozen=True, slots=True)
class _PendingEvent:
    """An event queued without building a LogRecord on the event loop."""

    logger: str
    level: int
    event: str
    fields: dict[str, Any]
    request_id: str | None
    created: float
    route: int

    def json_line(self) -> str:
        """What :class:`JsonFormatter` writes for :meth:`materialize`'s record."""
        fields = {k: v for k, v in self.fields.items() if k not in _STANDARD_ATTRS and k[0] != "_"}
        return JsonFormatter.render(
            self.created,
            logging.getLevelName(self.level),
            self.event,
            self.logger,
            self.request_id,
            fields,
        )

    def materialize(self) -> logging.LogRecord:
        record = logging.LogRecord(self.logger, self.level, "", 0, self.event, None, None)
        record.created = self.created
        record.msecs = (self.created - int(self.created)) * 1000
        record.__dict__.update(self.fields)
        record._request_id = self.request_id
        record._route = self.route
        return record


class _QueuedLogging:
    """Process-wide (logging is): installed by the first lifespan, removed by the last."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] | None = None
        self._fast_route = False
        self._users = 0
        self._saved: list[tuple[logging.Logger, list[logging.Handler]]] = []
        self._listener: _LogWriter | None = None
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            log_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
            self._queue = log_queue
            routes: dict[int, list[logging.Handler]] = {}
            for route, name in enumerate(QUEUED_LOGGERS):
                logger = logging.getLogger(name)
                if not logger.handlers:
                    continue
                self._saved.append((logger, list(logger.handlers)))
                if route == _TOKEN_BROKER_ROUTE and not logger.propagate:
                    self._fast_route = True
                routes[route] = list(logger.handlers)
                logger.handlers = [_ContextQueueHandler(log_queue, route)]
            self._listener = _LogWriter(log_queue, routes)
            self._listener.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            self._queue = None
            self._fast_route = False
            if self._listener is not None:
                self._listener.stop()  # writes what is queued
                self._listener = None
            for logger, handlers in self._saved:
                logger.handlers = handlers
            self._saved.clear()

    def emit(self, logger: logging.Logger, event: str, fields: dict[str, Any]) -> bool:
        """Queue an INFO event for the ``token_broker`` handlers; False when not queued."""
        log_queue = self._queue
        if log_queue is None or not self._fast_route:
            return False  # not queued, or the records must propagate (no own handlers)
        log_queue.put(
            _PendingEvent(
                logger.name,
                logging.INFO,
                event,
                fields,
                request_id_var.get(),
                time.time(),
                _TOKEN_BROKER_ROUTE,
            )
        )
        return True


_queued_logging = _QueuedLogging()
_TOKEN_BROKER_ROUTE = QUEUED_LOGGERS.index("token_broker")


def info_event(logger: logging.Logger, event: str, fields: dict[str, Any]) -> None:
    """``logger.info(event, extra=fields)``, cheaper on the hot path (audit events):
    while logging is queued the record is built on the logging thread. ``logger`` must
    be a ``token_broker.*`` logger without handlers of its own."""
    if logger.isEnabledFor(logging.INFO) and not _queued_logging.emit(logger, event, fields):
        logger.info(event, extra=fields)


@contextlib.contextmanager
def logging_off_the_loop() -> Iterator[None]:
    _queued_logging.acquire()
    try:
        yield
    finally:
        _queued_logging.release()
