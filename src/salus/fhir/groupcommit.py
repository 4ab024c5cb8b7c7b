"""Group commit of concurrent one-by-one creates (FHIR R4 ``http.html#create``).

Each ``POST [type]`` is validated, sealed, indexed and given its audit event
before any transaction (:meth:`FhirStore.prepare_creates`). What remains is
the write: a few inserts, the audit append and a commit, which on SQLite
holds the one writer lock and pays an fsync, and on PostgreSQL holds the
audit chain's head lock and pays a WAL flush. Concurrent creates of one
process therefore share one transaction:

* a request queues its prepared create and waits for the writer lock of the
  group (a thread lock: requests run in worker threads);
* whoever holds that lock waits for the database's writer lock (SQLite:
  another process, a Bundle or an audit batch may be writing), then takes
  every create queued so far (up to ``max_batch``: those queued while it
  waited too) and writes them together, in one transaction with one
  audit append (each resource's own event, in the same transaction as its
  change: ADR 7), then marks each create done;
* a request whose create was written by another thread returns its result
  as soon as it gets the lock, without writing anything.

No create is answered before the transaction holding it has committed
(SQLite ``synchronous=FULL``, PostgreSQL ``synchronous_commit``): the
durability promise of a lone create is kept. If the shared transaction
fails, each create of the group is retried in a transaction of its own, so
that one bad create cannot fail the others; each request then gets its own
outcome. ADR 21 records the decision.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from salus.fhir import pgcreate
from salus.fhir.prepare import PreparedCreates
from salus.fhir.store import FhirStore, Stored

__all__ = ["CreateGroup"]

log = logging.getLogger("salus.fhir")


@dataclass(slots=True)
class _Slot:
    batch: PreparedCreates
    done: bool = False
    result: list[Stored] = field(default_factory=list)
    error: BaseException | None = None


class CreateGroup:
    """Write concurrent :class:`PreparedCreates` in shared transactions."""

    def __init__(self, db: Any, store: FhirStore, *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self.db = db
        self.store = store
        self.max_batch = max_batch
        #: Transactions written and creates written (for tests and metrics).
        self.transactions = 0
        self.creates = 0
        self._queue: list[_Slot] = []
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()

    def commit(self, batch: PreparedCreates) -> list[Stored]:
        """Write ``batch`` (in a group when others wait); return once committed."""
        slot = _Slot(self.store.encode(batch, self.db.engine.dialect))
        with self._queue_lock:
            self._queue.append(slot)
        while True:
            with self._writer:
                if not slot.done:
                    # SQLite: take the group only once the database's writer
                    # lock is held (re-entered by the transaction): the writes
                    # queued while another process or a Bundle wrote join it.
                    with self.db.writer_lock():
                        with self._queue_lock:
                            group = self._queue[: self.max_batch]
                            del self._queue[: self.max_batch]
                        self._write(group)
            if slot.done:
                break
            # Not reached only if more than max_batch creates queued before ours.
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _write(self, group: list[_Slot]) -> None:
        try:
            if len(group) == 1:
                self._write_one(group[0])
                return
            try:
                results = self._commit([s.batch for s in group])
            except Exception:
                log.warning("a group of %d creates failed; retrying one by one", len(group))
                for slot in group:
                    self._write_one(slot)
                return
            self.transactions += 1
            self.creates += len(group)
            for slot, result in zip(group, results, strict=True):
                slot.result = result
                slot.done = True
        finally:
            for slot in group:  # never leave a waiter without an outcome
                if not slot.done:
                    slot.error = RuntimeError("The create was not written.")
                    slot.done = True

    def _commit(self, batches: list[PreparedCreates]) -> list[list[Stored]]:
        """Write ``batches`` in one transaction: on PostgreSQL one statement in
        autocommit (:mod:`salus.fhir.pgcreate`: one round trip), else the
        store's inserts, audit append and commit."""
        if pgcreate.applies(self.db.engine, batches):
            return pgcreate.write_creates(self.db, self.store.audit, batches)
        with self.db.write() as conn:
            return self.store.commit_create_groups(conn, batches)

    def _write_one(self, slot: _Slot) -> None:
        try:
            slot.result = self._commit([slot.batch])[0]
            self.transactions += 1
            self.creates += 1
        except Exception as exc:  # handed to the request that owns it
            slot.error = exc
        slot.done = True
