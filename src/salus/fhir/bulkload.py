"""Bulk loading and re-indexing of FHIR resources (the CLI and jobs use these).

``import_ndjson`` loads NDJSON files (one resource per line, ``.gz`` allowed):
resources with an id are created or updated under that id (so an import can
be run again), others get a new one; each batch is one transaction with one
insert per table. ``reindex`` rebuilds the search index of every current
resource, after a change of the search parameter definitions.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from salus import jsoncodec
from salus.db.engine import Database
from salus.db.keys import pairs_in
from salus.db.tables import fhir_resources
from salus.errors import InvalidInput, SalusError
from salus.fhir.store import FhirStore
from salus.security.principal import Principal

__all__ = ["ImportReport", "import_ndjson", "reindex"]

Progress = Callable[[int], None]


@dataclass(slots=True)
class ImportReport:
    created: int = 0
    updated: int = 0
    rejected: list[tuple[str, int, str]] = field(default_factory=list)  # file, line, reason


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def import_ndjson(
    db: Database,
    store: FhirStore,
    principal: Principal,
    paths: list[Path],
    *,
    batch_size: int = 500,
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Load NDJSON files as ``principal`` (their organization owns the records)."""
    report = ImportReport()
    batch: list[tuple[str, int, dict[str, Any]]] = []

    def flush() -> None:
        if not batch:
            return
        _load_batch(db, store, principal, batch, report, skip_invalid)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for path in paths:
        for number, line in _lines(path):
            try:
                resource = jsoncodec.loads(line, strict=True)
                if not isinstance(resource, dict) or "resourceType" not in resource:
                    raise ValueError
            except ValueError:
                if not skip_invalid:
                    raise InvalidInput(
                        f"{path.name} line {number} is not a FHIR resource."
                    ) from None
                report.rejected.append((path.name, number, "not a FHIR resource"))
                continue
            batch.append((path.name, number, resource))
            if len(batch) >= batch_size:
                flush()
    flush()
    return report


def _load_batch(
    db: Database,
    store: FhirStore,
    principal: Principal,
    batch: list[tuple[str, int, dict[str, Any]]],
    report: ImportReport,
    skip_invalid: bool,
) -> None:
    keys = [(r["resourceType"], str(r["id"])) for _, _, r in batch if r.get("id")]
    with db.read() as conn:
        rows = (
            conn.execute(
                select(fhir_resources.c.res_type, fhir_resources.c.res_id).where(
                    pairs_in(fhir_resources.c.res_type, fhir_resources.c.res_id, keys)
                )
            ).all()
            if keys
            else []
        )
        existing = {(str(t), str(i)) for t, i in rows}
    creates = [
        (name, number, r)
        for name, number, r in batch
        if (r["resourceType"], str(r.get("id"))) not in existing
    ]
    updates = [
        (name, number, r)
        for name, number, r in batch
        if (r["resourceType"], str(r.get("id"))) in existing
    ]
    try:
        # Validation, index values and sealing need no database: done before the
        # write transaction so that it stays short (SQLite has one writer at a
        # time) and several import processes overlap their work.
        prepared = store.prepare_creates(principal, [(r, r.get("id")) for _, _, r in creates])
        with db.write() as conn:
            store.commit_creates(conn, prepared)
            for _, _, resource in updates:
                store.update(
                    conn, principal, resource["resourceType"], str(resource["id"]), resource
                )
        report.created += len(creates)
        report.updated += len(updates)
    except SalusError as exc:
        if not skip_invalid:
            raise
        if len(batch) == 1:
            name, number, _ = batch[0]
            report.rejected.append((name, number, exc.message))
            return
        for item in batch:  # find the bad ones: one transaction each
            _load_batch(db, store, principal, [item], report, skip_invalid)


def reindex(
    db: Database,
    store: FhirStore,
    *,
    res_type: str | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> int:
    """Rebuild the search index of every current resource; returns how many."""
    done = 0
    last_rid = 0
    while True:
        query = (
            select(fhir_resources)
            .where(fhir_resources.c.rid > last_rid, fhir_resources.c.deleted.is_(False))
            .order_by(fhir_resources.c.rid)
            .limit(batch_size)
        )
        if res_type:
            query = query.where(fhir_resources.c.res_type == res_type)
        with db.write() as conn:
            rows = conn.execute(query).mappings().all()
            if not rows:
                return done
            for row in rows:
                stored = store.stored_from_row(row)
                if stored.resource is not None:
                    store.indexer.replace(conn, int(row["rid"]), stored.res_type, stored.resource)
        done += len(rows)
        last_rid = int(rows[-1]["rid"])
        if progress is not None:
            progress(len(rows))
