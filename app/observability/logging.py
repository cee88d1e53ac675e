"""Structured logs: one JSON object per line on stdout (or a console format for people).

Loggers live under ``token_broker.``; the record's message is the event name and its
``extra`` fields become JSON keys: ``log.info("token.issued", extra={"tenant": "acme"})``.
The request id comes from a context variable set by the request middleware, so every
line logged while serving a request carries it.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
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


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


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
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _extra_fields(record)
        request_id = request_id_var.get()
        if request_id is not None:
            fields = {"request_id": request_id, **fields}
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.getMessage()} {text}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
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
