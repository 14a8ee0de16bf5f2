"""Structured logs: one JSON object per line, tagged with the request or job being handled.

The request id comes from a valid ``X-Request-ID`` header or is generated (:func:`request_id_of`);
:class:`service.observability.RequestObserver` binds it for the request's lifetime, echoes it in the response
header and writes one access line per request on ``metah.access``. Job workers bind the job id the same way
(:func:`bind`). The binding lives in a :class:`contextvars.ContextVar`,
so it follows the request into ``anyio.to_thread`` work and never leaks between concurrent requests.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.types import Scope

LogFormat = Literal["json", "text"]

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is kept only if it is short and plain (it ends up in logs and headers); otherwise a new one.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

_context: ContextVar[dict[str, str | int] | None] = ContextVar("metah_log_context", default=None)

# LogRecord attributes that are not caller-supplied ``extra=`` fields.
# (uvicorn adds ``color_message``, the message with terminal colour codes.)
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}

access_log = logging.getLogger("metah.access")


@contextmanager
def bind(**fields: str | int) -> Iterator[None]:
    """Tag every log record written inside the block (in this task or thread) with ``fields``."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bound() -> dict[str, str | int]:
    """The fields bound by the innermost :func:`bind`."""
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (``record.request_id``, ``record.job_id``…)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in bound().items():
            setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", …bound and extra fields, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [key=value …]`` for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        line = f"{record.levelname} {record.name}: {record.getMessage()}" + (f" [{extra}]" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class StderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever ``sys.stderr`` is at the time of each record (as :data:`logging.lastResort` does), so
    a replaced or closed stream (a test's capture, a daemon's redirect) never breaks logging."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure(fmt: LogFormat, level: int = logging.INFO) -> None:
    """Route the root logger (and uvicorn's, which keep their own handlers) to stderr in ``fmt``.

    Calling it again replaces the handler it installed before; handlers installed by others stay.
    """
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, StderrHandler)] + [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # library warnings become records in the same format
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def request_id_of(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when it is plain and short, else a fresh random id."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            if REQUEST_ID_PATTERN.match(text):
                return text
            break
    return secrets.token_hex(16)  # 32 hex digits, as uuid4().hex gave, without building a UUID object
