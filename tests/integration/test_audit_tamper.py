"""Tampering with the stored audit trail is detected, and named at the right seq.

A chain of 50 events is built with signed checkpoints at 10, 20, 30, 40 and
50; each test then changes the tables directly with SQL, as an attacker
with database access would, and checks what :func:`verify_chain` reports.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from salus.audit import AuditEvent, AuditLog, BreakKind, Checkpoint, Ed25519Signer, verify_chain
from salus.audit.events import event_hash
from salus.audit.verify import VerifyReport
from salus.db import Database
from salus.db.tables import audit_checkpoints, audit_events, audit_head
from salus.security.principal import Principal, PrincipalKind, Purpose

N = 50
CHECKPOINTS = [10, 20, 30, 40, 50]


class Chain:
    def __init__(self, db: Database, signer: Ed25519Signer, file: Path) -> None:
        self.db = db
        self.signer = signer
        self.file = file

    def verify(
        self, *, file: bool = True, signer: bool = True, batch_size: int = 7
    ) -> VerifyReport:
        return verify_chain(
            self.db,
            signer=self.signer if signer else None,
            checkpoint_file=self.file if file else None,
            batch_size=batch_size,
        )

    def row(self, seq: int) -> dict[str, Any]:
        with self.db.read() as conn:
            found = conn.execute(select(audit_events).where(audit_events.c.seq == seq))
            return dict(found.mappings().one())

    def set(self, seq: int, **values: Any) -> None:
        with self.db.write() as conn:
            conn.execute(update(audit_events).where(audit_events.c.seq == seq).values(**values))

    def rehash(self, seq: int) -> None:
        """Recompute the stored hash of ``seq`` from its (changed) content."""
        row = self.row(seq)
        self.set(seq, hash=event_hash(row["prev_hash"], row))

    def truncate(self, keep: int) -> None:
        """Delete the events after ``keep`` and move the head back consistently."""
        last = self.row(keep)
        with self.db.write() as conn:
            conn.execute(delete(audit_events).where(audit_events.c.seq > keep))
            conn.execute(update(audit_head).values(seq=keep, hash=last["hash"]))


@pytest.fixture
def chain(db: Database, tmp_path: Path) -> Chain:
    signer = Ed25519Signer.generate()
    file = tmp_path / "audit" / "checkpoints.log"
    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    ticks = iter(range(10_000))
    log = AuditLog(
        db,
        signer=signer,
        checkpoint_file=file,
        clock=lambda: now + timedelta(seconds=next(ticks), microseconds=123),
    )
    people = [
        Principal(PrincipalKind.USER, f"user-{i}", f"hospital-{i % 3}", address=f"10.0.0.{i}")
        for i in range(4)
    ]
    seq = 0
    while seq < N:
        size = 1 + seq % 3  # appends of 1, 2 or 3 events
        size = min(size, min(c for c in CHECKPOINTS if c > seq) - seq)
        events = [
            AuditEvent.for_principal(
                people[(seq + i) % 4],
                category="rest",
                action="CRUDE"[(seq + i) % 5],
                outcome=0 if (seq + i) % 7 else 4,
                patient_key=f"pk-{(seq + i) % 5}",
                entity=f"Observation/obs-{seq + i + 1}",
                purpose=Purpose.TREATMENT,
                description="read Observation",
                request_id=f"req-{seq + i + 1}",
                flags=["break-glass"] if (seq + i) % 11 == 0 else None,
                detail={"n": seq + i + 1, "interaction": "read"},
            )
            for i in range(size)
        ]
        seq = log.record(events)[-1]
        if seq in CHECKPOINTS:
            assert log.checkpoint() is not None
    return Chain(db, signer, file)


def assert_first(report: VerifyReport, kind: BreakKind, seq: int | None, message: str) -> None:
    assert not report.ok
    first = report.first
    assert first is not None
    assert (first.kind, first.seq) == (kind, seq), report.problems
    assert message in first.message, first.message
    assert report.message == first.message
    for problem in report.problems:  # messages never carry stored values
        assert "pk-" not in problem.message and "user-" not in problem.message


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_a_clean_chain_verifies(chain: Chain, batch_size: int) -> None:
    report = chain.verify(batch_size=batch_size)
    assert report.ok, report.problems
    assert report.message == "audit trail intact: 50 events checked"
    assert (report.events_checked, report.last_seq, report.head_seq) == (N, N, N)
    assert (report.checkpoints_checked, report.file_checkpoints_checked) == (5, 5)
    assert report.signatures_checked and report.notes == ()
    assert len(chain.file.read_text().splitlines()) == 5
    assert report.to_dict()["first"] is None


EDITS: list[tuple[str, Any]] = [
    ("description", "read Observation "),  # one trailing space
    ("principal_id", "user-3"),
    ("org_id", "hospital-9"),
    ("patient_key", "pk-4"),
    ("purpose", "HRESCH"),
    ("outcome", 8),
    ("action", "D"),
    ("category", "auth"),
    ("entity", "Observation/obs-999"),
    ("request_id", "req-x"),
    ("flags", "break-glass"),
    ("address", "10.9.9.9"),
    ("principal_kind", "client"),
    ("client_id", "sneaky"),
    ("detail", {"n": 17, "interaction": "vread"}),
    ("recorded_at", datetime(2026, 11, 23, 8, 0, 5, tzinfo=UTC)),
    ("prev_hash", "f" * 64),
    ("hash", "e" * 64),
]


@pytest.mark.parametrize(("field", "value"), EDITS, ids=[name for name, _ in EDITS])
def test_editing_any_field_is_detected(chain: Chain, field: str, value: Any) -> None:
    chain.set(17, **{field: value})
    assert_first(chain.verify(), BreakKind.MODIFIED, 17, "event 17 was modified")


@pytest.mark.parametrize("seq", [1, 33, N])
def test_edits_at_the_ends_are_detected(chain: Chain, seq: int) -> None:
    chain.set(seq, description="changed")
    assert_first(chain.verify(), BreakKind.MODIFIED, seq, f"event {seq} was modified")


@pytest.mark.parametrize("seq", [1, 17, 33])
def test_edit_with_recomputed_hash_is_caught_by_the_next_link(chain: Chain, seq: int) -> None:
    chain.set(seq, description="nothing happened here")
    chain.rehash(seq)
    assert_first(
        chain.verify(),
        BreakKind.MODIFIED,
        seq,
        f"event {seq} was modified (its hash was recomputed; event {seq + 1} does not link to it)",
    )


def test_recomputed_last_event_is_caught_by_head_and_checkpoint(chain: Chain) -> None:
    chain.set(N, patient_key="pk-0")
    chain.rehash(N)
    report = chain.verify()
    assert_first(report, BreakKind.HEAD_MISMATCH, N, f"the chain head does not match event {N}")
    assert {(p.kind, p.seq) for p in report.problems} >= {(BreakKind.CHECKPOINT_MISMATCH, N)}


def test_rewriting_the_rest_of_the_chain_is_caught_by_checkpoints(chain: Chain) -> None:
    chain.set(17, description="rewritten")
    for seq in range(17, N + 1):  # the attacker recomputes every later hash, and the head
        row = chain.row(seq)
        prev = chain.row(seq - 1)["hash"]
        chain.set(seq, prev_hash=prev, hash=event_hash(prev, {**row, "prev_hash": prev}))
    with chain.db.write() as conn:
        conn.execute(update(audit_head).values(hash=chain.row(N)["hash"]))
    report = chain.verify()
    assert_first(report, BreakKind.CHECKPOINT_MISMATCH, 20, "checkpoint 20 does not match event 20")
    assert [p.seq for p in report.problems] == [20, 20, 30, 30, 40, 40, 50, 50]  # rows and file


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        (25, 25, "event 25 is missing"),
        (25, 27, "events 25 to 27 are missing"),
        (1, 1, "event 1 is missing"),
    ],
)
def test_deleting_events_in_the_middle_is_detected(
    chain: Chain, first: int, last: int, message: str
) -> None:
    with chain.db.write() as conn:
        conn.execute(
            delete(audit_events).where(audit_events.c.seq >= first, audit_events.c.seq <= last)
        )
    report = chain.verify()
    assert_first(report, BreakKind.MISSING, first, message)
    assert len(report.problems) == 1  # the next event is not blamed too


@pytest.mark.parametrize(("a", "b"), [(20, 21), (20, 30), (1, 2)])
def test_reordering_events_is_detected(chain: Chain, a: int, b: int) -> None:
    with chain.db.write() as conn:  # swap the seqs of two events
        conn.execute(update(audit_events).where(audit_events.c.seq == a).values(seq=-1))
        conn.execute(update(audit_events).where(audit_events.c.seq == b).values(seq=a))
        conn.execute(update(audit_events).where(audit_events.c.seq == -1).values(seq=b))
    report = chain.verify()
    assert_first(
        report,
        BreakKind.OUT_OF_ORDER,
        a,
        f"events out of order at {a} (the event stored at {a} was recorded as {b})",
    )
    assert (BreakKind.OUT_OF_ORDER, b) in {(p.kind, p.seq) for p in report.problems}
    assert all(p.kind is not BreakKind.MODIFIED for p in report.problems)  # no knock-on blame


@pytest.mark.parametrize("keep", [42, 49, 1])
def test_truncating_the_tail_is_caught_by_checkpoints(chain: Chain, keep: int) -> None:
    chain.truncate(keep)
    report = chain.verify()
    assert_first(
        report,
        BreakKind.TRUNCATED,
        keep + 1,
        f"chain truncated: checkpoint at 50 but chain ends at {keep}",
    )
    assert report.events_checked == keep and report.head_seq == keep


def test_truncating_events_without_moving_the_head(chain: Chain) -> None:
    with chain.db.write() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.seq > 45))
    assert_first(
        chain.verify(), BreakKind.TRUNCATED, 46, "chain truncated: head at 50 but chain ends at 45"
    )


def test_truncating_events_and_checkpoint_rows_is_caught_by_the_file(chain: Chain) -> None:
    chain.truncate(42)
    with chain.db.write() as conn:
        conn.execute(delete(audit_checkpoints).where(audit_checkpoints.c.seq > 42))
    # The database alone now looks like a valid, shorter chain...
    assert chain.verify(file=False).ok
    # ...but the checkpoint file outside it remembers seq 50.
    report = chain.verify()
    assert_first(
        report, BreakKind.TRUNCATED, 43, "chain truncated: checkpoint at 50 but chain ends at 42"
    )
    assert (report.checkpoints_checked, report.file_checkpoints_checked) == (4, 5)


def test_deleting_everything_is_caught_by_the_file(chain: Chain) -> None:
    with chain.db.write() as conn:
        for table in (audit_events, audit_head, audit_checkpoints):
            conn.execute(delete(table))
    assert_first(
        chain.verify(),
        BreakKind.TRUNCATED,
        1,
        "chain truncated: checkpoint at 50 but chain ends at 0",
    )


def test_a_deleted_checkpoint_file_is_reported(chain: Chain) -> None:
    chain.file.unlink()
    assert_first(chain.verify(), BreakKind.CHECKPOINT_FILE, None, "the checkpoint file is missing")


def test_a_malformed_checkpoint_file_line_is_reported(chain: Chain) -> None:
    lines = chain.file.read_text().splitlines(keepends=True)
    lines[2] = '{"seq": 30, "hash": "x"\n'
    chain.file.write_text("".join(lines))
    report = chain.verify()
    assert_first(report, BreakKind.CHECKPOINT_FILE, None, "checkpoint file line 3 is malformed")
    assert report.file_checkpoints_checked == 4


def test_forged_checkpoint_signature_is_detected(chain: Chain) -> None:
    with chain.db.read() as conn:
        other = conn.execute(
            select(audit_checkpoints.c.signature).where(audit_checkpoints.c.seq == 20)
        ).scalar_one()
    with chain.db.write() as conn:  # a real signature, but of another checkpoint
        conn.execute(
            update(audit_checkpoints).where(audit_checkpoints.c.seq == 30).values(signature=other)
        )
    report = chain.verify()
    assert_first(report, BreakKind.SIGNATURE_INVALID, 30, "checkpoint 30 signature invalid")
    # Without a signer only (seq, hash) is checked, and that still matches.
    unsigned = chain.verify(signer=False)
    assert unsigned.ok and not unsigned.signatures_checked


def test_checkpoint_forged_with_another_key_is_detected(chain: Chain) -> None:
    """Truncate, then cover it with a new checkpoint signed by the attacker's key."""
    chain.truncate(42)
    head = chain.row(42)
    attacker = Ed25519Signer.generate(kid=chain.signer.kid)  # even reusing the kid
    created = datetime(2026, 11, 24, tzinfo=UTC)
    kid, signature = attacker.sign(Checkpoint.payload_for(42, head["hash"], created))
    with chain.db.write() as conn:
        conn.execute(delete(audit_checkpoints).where(audit_checkpoints.c.seq > 40))
        conn.execute(
            insert(audit_checkpoints).values(
                seq=42, hash=head["hash"], created_at=created, kid=kid, signature=signature
            )
        )
    with chain.file.open("a") as handle:
        handle.write(Checkpoint(42, head["hash"], created, kid, signature).to_line())
    report = chain.verify()
    assert_first(report, BreakKind.SIGNATURE_INVALID, 42, "checkpoint 42 signature invalid")
    kinds = {(p.kind, p.seq) for p in report.problems}
    assert (BreakKind.TRUNCATED, 43) in kinds  # the genuine checkpoint at 50 in the file


def test_a_checkpoint_of_a_different_hash_is_detected(chain: Chain) -> None:
    """A validly signed checkpoint whose hash is not the stored event's."""
    created = datetime(2026, 11, 24, tzinfo=UTC)
    fake = "a" * 64
    kid, signature = chain.signer.sign(Checkpoint.payload_for(35, fake, created))
    with chain.db.write() as conn:
        conn.execute(
            insert(audit_checkpoints).values(
                seq=35, hash=fake, created_at=created, kid=kid, signature=signature
            )
        )
    assert_first(
        chain.verify(), BreakKind.CHECKPOINT_MISMATCH, 35, "checkpoint 35 does not match event 35"
    )


def test_checkpoint_file_lines_are_checked_like_rows(chain: Chain) -> None:
    lines = [json.loads(line) for line in chain.file.read_text().splitlines()]
    lines[1]["hash"] = "b" * 64  # seq 20, signature now invalid
    chain.file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert_first(
        chain.verify(),
        BreakKind.SIGNATURE_INVALID,
        20,
        "checkpoint 20 (checkpoint file line 2) signature invalid",
    )
    # Unsigned verification still compares the (seq, hash) with the chain.
    assert_first(
        chain.verify(signer=False),
        BreakKind.CHECKPOINT_MISMATCH,
        20,
        "checkpoint 20 (checkpoint file line 2) does not match event 20",
    )


def test_head_tampering_is_detected(chain: Chain) -> None:
    with chain.db.write() as conn:
        conn.execute(update(audit_head).values(seq=45, hash=chain.row(45)["hash"]))
    assert_first(
        chain.verify(),
        BreakKind.HEAD_MISMATCH,
        46,
        "the chain continues past its head: head at 45, chain ends at 50",
    )
    with chain.db.write() as conn:
        conn.execute(delete(audit_head))
    assert_first(chain.verify(), BreakKind.HEAD_MISMATCH, None, "the chain head is missing")


def test_a_broken_head_stops_new_appends(chain: Chain) -> None:
    """Appending never papers over a deleted head: the change fails with it."""
    from salus.errors import IntegrityError

    with chain.db.write() as conn:
        conn.execute(delete(audit_head))
    log = AuditLog(chain.db)
    with pytest.raises(IntegrityError):
        log.record([AuditEvent(category="system", action="E")])
    assert chain.verify().first is not None


def test_every_single_event_edit_is_detected(chain: Chain) -> None:
    """Exhaustively: an edit of any one event is named at that event's seq."""
    for seq in range(1, N + 1):
        original = chain.row(seq)["description"]
        chain.set(seq, description="x")
        report = chain.verify(batch_size=1000)
        assert report.first is not None and report.first.seq == seq
        assert report.first.kind is BreakKind.MODIFIED
        chain.set(seq, description=original)
    assert chain.verify().ok


def test_an_unreadable_checkpoint_file_is_reported(chain: Chain) -> None:
    chain.file.unlink()
    chain.file.mkdir()  # something that cannot be read as a file
    assert_first(
        chain.verify(), BreakKind.CHECKPOINT_FILE, None, "the checkpoint file could not be read"
    )
