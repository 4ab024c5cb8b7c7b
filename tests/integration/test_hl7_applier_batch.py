"""The background applier writes a backlog several messages per transaction
(ADR 10, stop-14 amendment): each message in its own savepoint, so one that
fails after it has written is rolled back alone and kept ``failed`` for replay;
if the batch's transaction itself fails, nothing of it stays and the messages
are applied one by one; in every case each message is applied once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from salus.audit.verify import verify_chain
from salus.hl7.store import MessageStore
from tests.conftest import BACKENDS
from tests.integration.hl7_world import Hl7World, ack_code, adt, hl7_world


def _backlog(w: Hl7World, count: int) -> list[int]:
    """``count`` ADT A01 for distinct patients, ACKed and left unapplied."""
    w.runtime.service.on_pending = lambda: None  # the applier is never woken
    client = w.client()
    for n in range(count):
        assert ack_code(client.send(adt(f"B{n}", "A01", mrn=f"MRN-B{n}", visit=f"V{n}"))) == "AA"
    ids = w.runtime.store.pending(100)
    assert len(ids) == count
    return ids


def _fail_after_writes(monkeypatch: pytest.MonkeyPatch, bad: int) -> Any:
    """Make message ``bad`` fail after its Patient and Encounter were written (when
    it would be marked applied, inside its savepoint); returns the real method."""
    original = MessageStore.set_outcome

    def failing(self: MessageStore, conn: Any, message_id: int, **kw: Any) -> bool:
        if message_id == bad and kw.get("state") == "applied":
            raise RuntimeError("mapping bug")
        return original(self, conn, message_id, **kw)

    monkeypatch.setattr(MessageStore, "set_outcome", failing)
    return original


def _states(w: Hl7World) -> dict[int, str]:
    return {int(r["id"]): str(r["state"]) for r in w.runtime.store.list(limit=100)}


def _mrns(w: Hl7World) -> set[str]:
    return {
        ident["value"]
        for patient in w.search("a-feed", "Patient")
        for ident in patient.get("identifier", [])
        if ident["value"].startswith("MRN-B")
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_message_failing_after_its_writes_is_rolled_back_alone(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with hl7_world(backend, tmp_path, hl7_apply="async") as w:
        ids = _backlog(w, 6)
        bad = ids[2]
        original = _fail_after_writes(monkeypatch, bad)
        assert w.runtime.apply_pending() == 6
        states = _states(w)
        assert states[bad] == "failed"
        assert [states[i] for i in ids if i != bad] == ["applied"] * 5
        assert w.runtime.store.get(bad)["error"] == "The message could not be applied."
        # Its Patient is gone with its savepoint; the others' stay.
        assert _mrns(w) == {f"MRN-B{n}" for n in range(6) if n != 2}
        # The audit chain has no event of the rolled-back writes and still verifies.
        assert verify_chain(w.world.services.db).ok
        # Once the mapping is fixed, the replay applies it, once.
        monkeypatch.setattr(MessageStore, "set_outcome", original)
        assert w.runtime.service.replay(bad).code == "AA"
        assert _mrns(w) == {f"MRN-B{n}" for n in range(6)}
        assert all(p["meta"]["versionId"] == "1" for p in w.search("a-feed", "Patient"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_batch_leaves_nothing_and_is_applied_one_by_one(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with hl7_world(backend, tmp_path, hl7_apply="async") as w:
        ids = _backlog(w, 5)
        bad = ids[1]
        service = w.runtime.service
        original_failed = type(service)._set_failed
        calls: list[int] = []

        def failed_once(self: Any, conn: Any, message_id: int, ack: Any) -> None:
            calls.append(message_id)
            if len(calls) == 1:  # outside the savepoints: the whole batch fails
                raise RuntimeError("lost connection")
            original_failed(self, conn, message_id, ack)

        _fail_after_writes(monkeypatch, bad)
        monkeypatch.setattr(type(service), "_set_failed", failed_once)
        assert w.runtime.apply_pending() == 5
        assert calls == [bad, bad]
        states = _states(w)
        assert states[bad] == "failed"
        assert [states[i] for i in ids if i != bad] == ["applied"] * 4
        assert _mrns(w) == {f"MRN-B{n}" for n in range(5) if n != 1}
        # Each applied once: no second version from the batch that was rolled back.
        assert all(p["meta"]["versionId"] == "1" for p in w.search("a-feed", "Patient"))
        assert verify_chain(w.world.services.db).ok


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_stops_at_its_time_budget_and_says_how_far_it_went(
    backend: str, tmp_path: Path
) -> None:
    with hl7_world(backend, tmp_path, hl7_apply="async") as w:
        ids = _backlog(w, 3)
        service = w.runtime.service
        # With no time budget, each call settles the first message only.
        assert service.apply_batch(ids, budget=0.0) == 1
        assert _states(w) == {ids[0]: "applied", ids[1]: "received", ids[2]: "received"}
        # Messages settled meanwhile are skipped, not applied again.
        assert service.apply_batch(ids) == 3
        assert set(_states(w).values()) == {"applied"}
        assert len(_mrns(w)) == 3
        assert all(p["meta"]["versionId"] == "1" for p in w.search("a-feed", "Patient"))
