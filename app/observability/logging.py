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
import logging
import logging.handlers
import queue
import re
import threading
import time
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


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        request_id = _request_id(record)
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _extra_fields(record)
        request_id = _request_id(record)
        if request_id is not None:
            fields = {"request_id": request_id, **fields}
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.getMessage()} {text}".rstrip()
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


class _RoutingListener(logging.handlers.QueueListener):
    """One thread for every logger: each record goes to its own logger's handlers."""

    def __init__(self, queue: Any, routes: dict[int, list[logging.Handler]]) -> None:
        super().__init__(queue, respect_handler_level=True)
        self.routes = routes

    def handle(self, record: logging.LogRecord) -> None:
        if isinstance(record, _PendingEvent):
            record = record.materialize()
        for handler in self.routes.get(record.__dict__.get("_route", -1), ()):
            if record.levelno >= handler.level:
                handler.handle(record)


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
        self._listener: _RoutingListener | None = None
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
            self._listener = _RoutingListener(log_queue, routes)
            self._listener.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            self._queue = None
            self._fast_route = False
            if self._listener is not None:
                self._listener.stop()  # drains what is queued
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
