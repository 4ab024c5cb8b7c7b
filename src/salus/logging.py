"""Structured logging with request ids and no patient data.

Two formats: ``plain`` for people and ``json`` (one object per line) for log
collectors. The request id of the current HTTP request (or DIMSE
association, or MLLP connection) rides in a context variable and is added to
every record. Exception messages from outside Salus are redacted from
tracebacks: a library error can quote the input it choked on, and that
input can be a patient's record. :class:`salus.errors.SalusError` messages are
written free of patient data by contract and are kept.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from salus.errors import SalusError

__all__ = ["configure_logging", "request_id_var", "safe_exception_text"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "salus_request_id", default=None
)

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "request_id", "taskName", "color_message"}
)


def safe_exception_text(
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> str:
    """A traceback whose exception messages are redacted unless they are ours."""
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    current_tb = tb
    chain: list[tuple[BaseException, TracebackType | None]] = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, current_tb if current is exc else current.__traceback__))
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    for index, (item, item_tb) in enumerate(reversed(chain)):
        if index:
            lines.append("\nThe above exception led to the following one:\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_tb(item_tb))
        name = f"{type(item).__module__}.{type(item).__qualname__}"
        text = str(item) if isinstance(item, SalusError) else "<message redacted>"
        lines.append(f"{name}: {text}\n")
    return "".join(lines).rstrip("\n")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = safe_exception_text(*record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        request_id = getattr(record, "request_id", None)
        rid = f" [{request_id}]" if request_id else ""
        extras = _extras(record)
        tail = "".join(f" {k}={v}" for k, v in extras.items())
        line = f"{ts}Z {record.levelname:<7} {record.name}{rid}: {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + safe_exception_text(*record.exc_info)
        return line


def configure_logging(level: str = "INFO", fmt: str = "plain") -> None:
    """Install Salus's handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_salus", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(_RequestIdFilter())
    handler._salus = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    from salus.thirdparty import quiet_third_party_loggers

    quiet_third_party_loggers()
