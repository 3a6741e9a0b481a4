"""Request ids and structured logs.

Every scored or otherwise handled request (health and metrics aside) gets one id: the
caller's `X-Request-ID` when it is a valid id (a load balancer's or the application's
trace id), else a fresh one. It is answered back in `X-Request-ID`, carried by every log
line written while the request is handled (a context variable, read by a logging filter),
and stored as `request_id` with each prediction the request made — unless the body names
its own `request_id`, which then replaces it for the rows, the logs and the answer alike.

`LOG_FORMAT=json` makes every line of the worker one JSON object (`ts`, `level`, `logger`,
`message`, `request_id`, `pid`, `exc`); `ACCESS_LOG=true` adds one line per request
(method, path, status, milliseconds to the answer's start)."""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from serving.schemas import MAX_ID_LENGTH, REQUEST_ID_CHARS

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
HEADER = b"x-request-id"
_VALID = re.compile(rf"[{REQUEST_ID_CHARS}]{{1,{MAX_ID_LENGTH}}}")
access = logging.getLogger("riskloop.access")


def accepted(value: bytes) -> str | None:
    """The caller's id when it is one riskloop would store (printable ASCII, <= 64)."""
    text = value.decode("latin-1")
    return text if _VALID.fullmatch(text) else None


def new_id() -> str:
    return os.urandom(16).hex()


def adopt(request_id: str | None) -> str | None:
    """A body's own `request_id` replaces the transport id for the rest of the request."""
    if request_id:
        REQUEST_ID.set(request_id)
    return REQUEST_ID.get()


def answering(send: Callable, method: str, path: str, log_access: bool) -> Callable:
    """`send` that adds `X-Request-ID` (the id current when the answer starts) and, with
    `log_access`, writes the access line."""
    started = time.perf_counter()

    async def send_with_id(message: dict) -> None:
        if message["type"] == "http.response.start":
            rid = REQUEST_ID.get()
            if rid is not None:
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (HEADER, rid.encode())],
                }
            if log_access:
                ms = (time.perf_counter() - started) * 1000
                access.info("%s %s %d %.1fms", method, path, message["status"], ms,
                            extra={"http": {"method": method, "path": path,
                                            "status": message["status"], "ms": round(ms, 2)}})  # fmt: skip
        await send(message)

    return send_with_id


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "pid": record.process,
        }
        if http := getattr(record, "http", None):
            doc["http"] = http
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(log_format: str, access_log: bool) -> None:
    """Put the request-id filter (and the JSON formatter) on every handler the worker has:
    BentoML configures its own logging before riskloop's code runs, so riskloop adapts the
    handlers it finds instead of replacing them."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    handlers = {h for lg in loggers for h in lg.handlers}
    if not handlers:  # nothing configured (a plain process): log to stderr
        handler = logging.StreamHandler()
        logging.getLogger().addHandler(handler)
        handlers = {handler}
    for handler in handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
    access.setLevel(logging.INFO if access_log else logging.WARNING)
