"""Structured logging: JSON (for collectors) or text (for people), with the session id, chunk
index and trace id of the current work taken from context variables and the active span."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace

from microturn.telemetry.attributes import CHUNK_INDEX, SESSION_ID

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "microturn_log_context", default=None
)


@contextlib.contextmanager
def log_context(
    session_id: str | None = None, chunk_index: int | None = None, **extra: Any
) -> Iterator[None]:
    """Attach fields to every log record emitted inside the block (asyncio-task safe)."""
    fields = dict(_context.get() or {})
    if session_id is not None:
        fields[SESSION_ID] = session_id
    if chunk_index is not None:
        fields[CHUNK_INDEX] = chunk_index
    fields.update(extra)
    token = _context.set(fields)
    try:
        yield
    finally:
        _context.reset(token)


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_context.get() or {})
    fields.update(getattr(record, "fields", {}) or {})
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = f"{span.trace_id:032x}"
        fields["span_id"] = f"{span.span_id:016x}"
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_record_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in _record_fields(record).items() if k not in ("trace_id", "span_id")}
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


CHATTY_LOGGERS = ("httpx", "httpcore")


def configure_logging(service: str, fmt: str = "text", level: str = "INFO") -> None:
    """Replace the root handlers with one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # HTTP clients log every request at INFO: a controller polling each second would fill the log
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
