"""Logs: structured, with request ids, and without patient data."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from salus.errors import NotFound
from salus.logging import JsonFormatter, PlainFormatter, configure_logging, request_id_var

SECRET = "Park Ji-ho 1988-03-04"


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    configure_logging("INFO", "json")
    root = logging.getLogger()
    handler = next(h for h in root.handlers if getattr(h, "_salus", False))
    assert isinstance(handler, logging.StreamHandler)
    original = handler.setStream(stream)
    try:
        yield logging.getLogger("salus.test"), stream
    finally:
        handler.setStream(original)  # type: ignore[arg-type]


def test_json_lines_carry_the_request_id(capture: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = capture
    token = request_id_var.set("req-42")
    try:
        log.info("stored", extra={"route": "/fhir/{type}", "status": 201})
    finally:
        request_id_var.reset(token)
    entry = json.loads(stream.getvalue())
    assert entry["msg"] == "stored"
    assert entry["request_id"] == "req-42"
    assert entry["route"] == "/fhir/{type}" and entry["status"] == 201
    assert entry["level"] == "info" and entry["logger"] == "salus.test"


def test_foreign_exception_messages_are_redacted(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = capture
    try:
        try:
            raise KeyError(SECRET)
        except KeyError as inner:
            raise ValueError(f"could not parse {SECRET}") from inner
    except ValueError:
        log.exception("parse failed")
    text = stream.getvalue()
    assert SECRET not in text
    entry = json.loads(text)
    assert "builtins.ValueError: <message redacted>" in entry["exc"]
    assert "builtins.KeyError: <message redacted>" in entry["exc"]
    assert "test_logging.py" in entry["exc"]  # the traceback itself is kept


def test_salus_error_messages_are_kept(capture: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = capture
    try:
        raise NotFound("No such job.")
    except NotFound:
        log.exception("lookup failed")
    assert "salus.errors.NotFound: No such job." in json.loads(stream.getvalue())["exc"]


def test_plain_format() -> None:
    record = logging.LogRecord("salus.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    record.request_id = "r1"
    record.route = "/health"
    line = PlainFormatter().format(record)
    assert "WARNING" in line and "salus.x [r1]: hello you" in line and "route=/health" in line
    assert json.loads(JsonFormatter().format(record))["msg"] == "hello you"


def test_uvicorn_access_log_is_silenced() -> None:
    configure_logging("INFO", "plain")
    assert logging.getLogger("uvicorn.access").disabled
