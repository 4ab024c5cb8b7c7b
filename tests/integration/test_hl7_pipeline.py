"""Two group-commit batches in flight with the same duplicate key (a resend
racing its original, on another connection): the message is stored and
applied once, and both senders get their ACK (HL7 v2.8 2.10.1; ADR 10,
"Pipelined group commit")."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from salus.db.engine import Database
from salus.db.tables import organizations
from salus.db.tables_hl7 import hl7_messages
from salus.hl7.committer import Frame
from salus.hl7.store import MessageStore, NewMessage, Row
from tests.conftest import BACKENDS
from tests.integration.hl7_world import ack_code, adt, hl7_world, segments_of


def _message(control: str) -> NewMessage:
    return NewMessage(
        raw=f"MSH|^~\\&|HIS|FAC|SALUS|SALUS|20260101||ADT^A01|{control}|P|2.5\r".encode(),
        source="mllp",
        org_id="hosp",
        sending_facility="FAC",
        control_id=control,
        message_type="ADT^A01",
    )


def _wait_for_lock_wait(db: Database, timeout: float = 5.0) -> None:
    """Until a PostgreSQL backend waits on a lock (the racing insert)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar():
                return
        time.sleep(0.01)
    raise AssertionError("the second batch never waited for the first one's key")


def test_batch_racing_an_uncommitted_key_finds_it_after_the_commit(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with db.write() as conn:
        conn.execute(
            insert(organizations).values(
                id="hosp", name="H", kind="hospital", active=True, created_at=datetime.now(UTC)
            )
        )
    store = MessageStore(db, None)
    calls: list[int] = []
    real_record = MessageStore._record

    def counted(
        self: MessageStore, items: Sequence[NewMessage], values: Sequence[dict[str, Any]]
    ) -> list[tuple[Row, bool]]:
        calls.append(len(items))
        return real_record(self, items, values)

    first = _message("K1")
    first_values = store._values(first)
    result: list[list[tuple[Row, bool]]] = []
    with db.write() as conn:
        # Batch A: K1 inserted, its transaction still syncing (not committed).
        assert store._insert(conn, [first_values]) == {first_values["uid"]}
        monkeypatch.setattr(MessageStore, "_record", counted)
        # Batch B, on the committer's other thread: the resend of K1, and a new K2.
        racing = threading.Thread(
            target=lambda: result.append(store.record_many([_message("K1"), _message("K2")]))
        )
        racing.start()
        if db.is_sqlite:
            time.sleep(0.2)  # B queues on the single writer's lock
        else:
            _wait_for_lock_wait(db)  # B's insert waits on A's index entry
    racing.join(10)
    assert not racing.is_alive()
    [[(row_k1, dup_k1), (row_k2, dup_k2)]] = result
    assert dup_k1 and row_k1["id"] == first_values["id"]
    assert not dup_k2
    with db.read() as conn:
        keys = conn.execute(
            select(hl7_messages.c.control_id, func.count()).group_by(hl7_messages.c.control_id)
        ).all()
    assert sorted(keys) == [("K1", 1), ("K2", 1)]
    # One attempt on both backends: PostgreSQL's ON CONFLICT waited for A's commit
    # and skipped K1; SQLite's transaction started after A's commit.
    assert calls == [2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_resend_on_another_connection_with_both_batches_in_flight_is_applied_once(
    backend: str, tmp_path: Path
) -> None:
    with hl7_world(backend, tmp_path, hl7_commits_in_flight=2) as w:
        committer = w.runtime.committer
        assert committer.in_flight == 2
        real_commit = committer.commit
        barrier = threading.Barrier(2, timeout=5)

        def commit_together(frames: Sequence[Frame]) -> Any:
            barrier.wait()  # each batch commits only once the other is in flight too
            return real_commit(frames)

        committer.commit = commit_together
        one, two = w.client(), w.client()
        for n in range(4):
            barrier.reset()
            message = adt(f"R{n}", "A01", mrn=f"MRN-R{n}", visit=f"V{n}")
            replies: dict[str, bytes] = {}
            first = threading.Thread(target=lambda m=message, r=replies: r.update(a=one.send(m)))
            first.start()
            deadline = time.monotonic() + 5
            while barrier.n_waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.002)  # the first batch is taken before the resend arrives
            replies["b"] = two.send(message)
            first.join(10)
            assert ack_code(replies["a"]) == ack_code(replies["b"]) == "AA"
            assert segments_of(replies["b"])["MSA"][2] == f"R{n}"
            [patient] = w.search(
                "a-feed", "Patient", identifier=f"urn:salus:org:hosp-a:mrn|MRN-R{n}"
            )
            assert patient["meta"]["versionId"] == "1"
        committer.commit = real_commit
        assert committer.peak_in_flight == 2
        rows = w.runtime.store.list()
        assert sorted(r["control_id"] for r in rows) == ["R0", "R1", "R2", "R3"]
        assert {r["state"] for r in rows} == {"applied"}
