"""The SQLite write lock holder's precedence over threads preparing other
writes (salus.fhir.writegate, ADR 21 stop-15 amendment)."""

from __future__ import annotations

import threading
import time

import pytest

from salus.fhir import writegate
from salus.fhir.writegate import WriteGate


def _run(target: object) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def _holder(
    gate: WriteGate, done: list[str] | None = None
) -> tuple[threading.Thread, threading.Event]:
    """A thread that holds ``gate`` until the returned event is set (then
    notes "holder done" in ``done``); returned once it holds it."""
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with gate.holding():
            holding.set()
            release.wait(5)
            if done is not None:
                done.append("holder done")

    thread = _run(hold)
    assert holding.wait(5)
    return thread, release


def test_checkpoint_passes_without_a_holder_and_for_the_holder_itself() -> None:
    gate = WriteGate()
    started = time.monotonic()
    gate.checkpoint()
    with gate.holding():
        gate.checkpoint()  # the holder never waits for itself
        with gate.holding():  # nested: still the holder afterwards
            pass
        assert gate.enter() is False
    assert time.monotonic() - started < 1.0


def test_checkpoint_waits_until_the_holder_leaves() -> None:
    gate = WriteGate()
    order: list[str] = []

    def preparer() -> None:
        gate.checkpoint()
        order.append("preparer passed")

    first, release = _holder(gate, order)
    second = _run(preparer)
    time.sleep(0.05)
    assert order == []  # still waiting at its checkpoint
    release.set()
    first.join(5)
    second.join(5)
    assert order == ["holder done", "preparer passed"]


def test_checkpoint_waits_at_most_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writegate, "MAX_WAIT_S", 0.05)
    gate = WriteGate()
    thread, release = _holder(gate)
    passed = threading.Event()
    _run(lambda: (gate.checkpoint(), passed.set()))
    assert passed.wait(2)  # went on although the holder is still there
    release.set()
    thread.join(5)


def test_inactive_holding_and_a_second_holder_change_nothing() -> None:
    gate = WriteGate()
    with gate.holding(active=False):
        assert gate.enter() is True  # nobody held it
        gate.leave()
    thread, release = _holder(gate)
    assert gate.enter() is False  # another thread holds it: not taken over
    gate.leave()  # not the holder: no effect
    waited = threading.Event()
    _run(lambda: (gate.checkpoint(), waited.set()))
    assert not waited.wait(0.05)  # the holder still holds it
    release.set()
    thread.join(5)
    assert waited.wait(5)
