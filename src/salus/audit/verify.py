"""Verify the audit chain, its head and its checkpoints.

:func:`verify_chain` streams the events in ``seq`` order (keyset pages of
``batch_size`` rows, so memory stays bounded) inside one snapshot
(``REPEATABLE READ`` on PostgreSQL; a read transaction on SQLite in WAL
mode), and checks:

* ``seq`` runs 1, 2, 3… without gaps;
* each ``prev_hash`` is the previous event's ``hash`` (64 zeros for seq 1);
* each ``hash`` recomputes (:func:`salus.audit.events.event_hash`);
* the head row matches the last event;
* each checkpoint, in ``audit_checkpoints`` and in the checkpoint file,
  has a valid signature (when a signer is given) and its (seq, hash) is the
  stored event's; and the chain is at least as long as the newest one.

The report names the first broken link (lowest seq) and what is wrong, in
words free of patient data: seqs, never field values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from salus.audit.events import GENESIS_HASH, event_hash
from salus.audit.signing import Checkpoint, CheckpointSigner
from salus.db.engine import Database
from salus.db.tables import audit_checkpoints, audit_events, audit_head
from salus.errors import InvalidInput

__all__ = ["BreakKind", "Problem", "VerifyReport", "verify_chain"]

#: Problems kept per source (events, head, database checkpoints, file).
MAX_PROBLEMS = 100
#: How far from its place a reordered event is looked for (once per problem).
REORDER_WINDOW = 1000


class BreakKind(StrEnum):
    MODIFIED = "modified"
    MISSING = "missing"
    OUT_OF_ORDER = "out-of-order"
    HEAD_MISMATCH = "head-mismatch"
    TRUNCATED = "truncated"
    CHECKPOINT_MISMATCH = "checkpoint-mismatch"
    SIGNATURE_INVALID = "signature-invalid"
    CHECKPOINT_FILE = "checkpoint-file"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: BreakKind
    #: The seq of the broken link (None: not tied to one event).
    seq: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "seq": self.seq, "message": self.message}


@dataclass(frozen=True, slots=True)
class VerifyReport:
    events_checked: int
    last_seq: int
    last_hash: str
    head_seq: int | None
    checkpoints_checked: int
    file_checkpoints_checked: int
    signatures_checked: bool
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        """The first broken link: the problem with the lowest seq."""
        return self.problems[0] if self.problems else None

    @property
    def message(self) -> str:
        if self.first is not None:
            return self.first.message
        return f"audit trail intact: {self.events_checked} events checked"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "head_seq": self.head_seq,
            "checkpoints_checked": self.checkpoints_checked,
            "file_checkpoints_checked": self.file_checkpoints_checked,
            "signatures_checked": self.signatures_checked,
            "first": self.first.to_dict() if self.first else None,
            "problems": [problem.to_dict() for problem in self.problems],
            "notes": list(self.notes),
        }


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.count = 0

    def add(self, kind: BreakKind, seq: int | None, message: str) -> None:
        self.count += 1
        if self.count <= MAX_PROBLEMS:
            self.items.append(Problem(kind, seq, message))


def verify_chain(
    db: Database,
    *,
    signer: CheckpointSigner | None = None,
    checkpoint_file: Path | None = None,
    batch_size: int = 1000,
) -> VerifyReport:
    """Check the whole audit trail; see the module docstring for what is checked."""
    if batch_size < 1:
        raise InvalidInput("batch_size must be positive.")
    notes: list[str] = []
    # Size the file before the snapshot: every checkpoint in that part of the
    # file was taken of a head the snapshot already contains.
    file_size: int | None = None
    unreadable = False
    if checkpoint_file is not None:
        try:
            file_size = checkpoint_file.stat().st_size
        except FileNotFoundError:
            file_size = None
        except OSError:
            unreadable = True
    if signer is None:
        notes.append("checkpoint signatures not checked (no signer configured)")

    events = _Problems()
    head_problems = _Problems()
    db_problems = _Problems()
    file_problems = _Problems()
    with _snapshot(db) as conn:
        checked, last_seq, last_hash = _check_events(conn, events, batch_size)
        head_row = conn.execute(
            select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        ).first()
        head_seq = None if head_row is None else int(head_row[0])
        _check_head(head_row, checked, last_seq, last_hash, head_problems)

        newest = 0
        db_checked = 0
        for page in _checkpoint_pages(conn, batch_size):
            newest = max(
                newest, _check_checkpoints(conn, page, last_seq, signer, db_problems, None)
            )
            db_checked += len(page)

        file_checked = 0
        if unreadable:
            file_problems.add(
                BreakKind.CHECKPOINT_FILE, None, "the checkpoint file could not be read"
            )
        elif checkpoint_file is not None and file_size is None:
            if db_checked:
                file_problems.add(BreakKind.CHECKPOINT_FILE, None, "the checkpoint file is missing")
            else:
                notes.append("no checkpoint file yet")
        elif checkpoint_file is not None and file_size is not None:
            try:
                for page, line_numbers in _file_pages(
                    checkpoint_file, file_size, batch_size, file_problems
                ):
                    newest = max(
                        newest,
                        _check_checkpoints(
                            conn, page, last_seq, signer, file_problems, line_numbers
                        ),
                    )
                    file_checked += len(page)
            except OSError:
                file_problems.add(
                    BreakKind.CHECKPOINT_FILE, None, "the checkpoint file could not be read"
                )
        if newest > last_seq:
            head_problems.add(
                BreakKind.TRUNCATED,
                last_seq + 1,
                f"chain truncated: checkpoint at {newest} but chain ends at {last_seq}",
            )

    every = events.items + head_problems.items + db_problems.items + file_problems.items
    dropped = events.count + head_problems.count + db_problems.count + file_problems.count
    dropped -= len(every)
    if dropped:
        notes.append(f"{dropped} further problem(s) not listed")
    ordered = sorted(every, key=lambda p: (p.seq is None, p.seq or 0))
    return VerifyReport(
        events_checked=checked,
        last_seq=last_seq,
        last_hash=last_hash,
        head_seq=head_seq,
        checkpoints_checked=db_checked,
        file_checkpoints_checked=file_checked,
        signatures_checked=signer is not None,
        problems=tuple(ordered),
        notes=tuple(notes),
    )


@contextmanager
def _snapshot(db: Database) -> Iterator[Connection]:
    """One read transaction that sees one state of the database throughout."""
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with conn.begin():
            yield conn


def _check_events(conn: Connection, problems: _Problems, batch_size: int) -> tuple[int, int, str]:
    """Walk the events; return (events checked, last seq, last stored hash)."""
    expected = 1
    prev_hash = GENESIS_HASH
    checked = 0
    last_seq = 0
    flagged = False
    while True:
        rows = (
            conn.execute(
                select(audit_events)
                .where(audit_events.c.seq >= expected)
                .order_by(audit_events.c.seq)
                .limit(batch_size)
            )
            .mappings()
            .all()
        )
        if not rows:
            break
        for mapping in rows:
            row: dict[str, Any] = dict(mapping)
            seq = int(row["seq"])
            stored_prev = str(row["prev_hash"])
            stored_hash = str(row["hash"])
            # After a broken link the next event's link says nothing new.
            link_ok = stored_prev == prev_hash or flagged
            flagged = False
            if seq > expected:
                if seq == expected + 1:
                    gap = f"event {expected} is missing"
                else:
                    gap = f"events {expected} to {seq - 1} are missing"
                problems.add(BreakKind.MISSING, expected, gap)
                link_ok = True  # the link to the missing event cannot be judged
            self_ok = event_hash(stored_prev, row) == stored_hash
            if not self_ok:
                moved_from = _original_seq(row, seq)
                if moved_from is not None:
                    problems.add(
                        BreakKind.OUT_OF_ORDER,
                        seq,
                        f"events out of order at {seq} (the event stored at {seq} "
                        f"was recorded as {moved_from})",
                    )
                else:
                    problems.add(BreakKind.MODIFIED, seq, f"event {seq} was modified")
                flagged = True
            elif not link_ok:
                if seq == 1:
                    problems.add(
                        BreakKind.MODIFIED, 1, "event 1 was modified (it does not start the chain)"
                    )
                else:
                    problems.add(
                        BreakKind.MODIFIED,
                        seq - 1,
                        f"event {seq - 1} was modified (its hash was recomputed; "
                        f"event {seq} does not link to it)",
                    )
            # Go on from what is stored, so that one break is reported once.
            prev_hash = stored_hash
            expected = seq + 1
            last_seq = seq
            checked += 1
    return checked, last_seq, prev_hash


def _original_seq(row: dict[str, Any], seq: int) -> int | None:
    """The seq a stored event hashes correctly with, if not its own (reordering)."""
    values = dict(row)
    prev = str(row["prev_hash"])
    for distance in range(1, REORDER_WINDOW + 1):
        for candidate in (seq - distance, seq + distance):
            if candidate < 1:
                continue
            values["seq"] = candidate
            if event_hash(prev, values) == row["hash"]:
                return candidate
    return None


def _check_head(
    head: Any, checked: int, last_seq: int, last_hash: str, problems: _Problems
) -> None:
    if head is None:
        if checked:
            problems.add(BreakKind.HEAD_MISMATCH, None, "the chain head is missing")
        return
    head_seq, head_hash = int(head[0]), str(head[1])
    if head_seq > last_seq:
        problems.add(
            BreakKind.TRUNCATED,
            last_seq + 1,
            f"chain truncated: head at {head_seq} but chain ends at {last_seq}",
        )
    elif head_seq < last_seq:
        problems.add(
            BreakKind.HEAD_MISMATCH,
            head_seq + 1,
            f"the chain continues past its head: head at {head_seq}, chain ends at {last_seq}",
        )
    elif head_hash != (last_hash if checked else GENESIS_HASH):
        problems.add(
            BreakKind.HEAD_MISMATCH, last_seq, f"the chain head does not match event {last_seq}"
        )


def _checkpoint_pages(conn: Connection, batch_size: int) -> Iterator[list[Checkpoint]]:
    after: int | None = None
    while True:
        query = select(audit_checkpoints).order_by(audit_checkpoints.c.seq).limit(batch_size)
        if after is not None:
            query = query.where(audit_checkpoints.c.seq > after)
        rows = conn.execute(query).mappings().all()
        if not rows:
            return
        yield [
            Checkpoint(
                seq=int(r["seq"]),
                hash=str(r["hash"]),
                created_at=r["created_at"],
                kid=str(r["kid"]),
                signature=str(r["signature"]),
            )
            for r in rows
        ]
        after = int(rows[-1]["seq"])


def _file_pages(
    path: Path, size: int, batch_size: int, problems: _Problems
) -> Iterator[tuple[list[Checkpoint], list[int]]]:
    """Checkpoints of the first ``size`` bytes of the file, with their line numbers."""
    page: list[Checkpoint] = []
    numbers: list[int] = []
    consumed = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            consumed += len(raw)
            if consumed > size:
                break  # written after the snapshot was taken
            if not raw.endswith(b"\n"):
                problems.add(
                    BreakKind.CHECKPOINT_FILE,
                    None,
                    f"checkpoint file line {number} is incomplete",
                )
                break
            if not raw.strip():
                continue
            try:
                page.append(Checkpoint.from_dict(json.loads(raw)))
            except (ValueError, InvalidInput):
                problems.add(
                    BreakKind.CHECKPOINT_FILE, None, f"checkpoint file line {number} is malformed"
                )
                continue
            numbers.append(number)
            if len(page) >= batch_size:
                yield page, numbers
                page, numbers = [], []
    if page:
        yield page, numbers


def _check_checkpoints(
    conn: Connection,
    page: list[Checkpoint],
    last_seq: int,
    signer: CheckpointSigner | None,
    problems: _Problems,
    line_numbers: list[int] | None,
) -> int:
    """Check a page of checkpoints; return the newest seq among them."""
    wanted = sorted({cp.seq for cp in page if 1 <= cp.seq <= last_seq})
    stored: dict[int, str] = {}
    if wanted:
        rows = conn.execute(
            select(audit_events.c.seq, audit_events.c.hash).where(audit_events.c.seq.in_(wanted))
        )
        stored = {int(seq): str(hash_) for seq, hash_ in rows}
    newest = 0
    for index, cp in enumerate(page):
        where = "" if line_numbers is None else f" (checkpoint file line {line_numbers[index]})"
        if signer is not None and not cp.verify(signer):
            problems.add(
                BreakKind.SIGNATURE_INVALID, cp.seq, f"checkpoint {cp.seq}{where} signature invalid"
            )
            continue  # a forged checkpoint says nothing about the chain's length
        newest = max(newest, cp.seq)
        if cp.seq < 1:
            problems.add(
                BreakKind.CHECKPOINT_MISMATCH, None, f"checkpoint {cp.seq}{where} is not valid"
            )
        elif cp.seq in stored and stored[cp.seq] != cp.hash:
            problems.add(
                BreakKind.CHECKPOINT_MISMATCH,
                cp.seq,
                f"checkpoint {cp.seq}{where} does not match event {cp.seq} "
                f"(events up to {cp.seq} were rewritten)",
            )
        # Past the end: truncation, reported once by the caller. Absent in the
        # middle: already reported as a missing event.
    return newest
