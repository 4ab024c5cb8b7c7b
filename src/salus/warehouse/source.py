"""Resources for views: current versions of one type, paged, under an access filter.

Views read ``fhir_resources`` directly (one query per page returns the
sealed bodies, opened by the FHIR store's opener), keyset-paged on
``(last_updated, rid)`` like the Bulk Data export, with the policy engine's
:class:`~salus.security.policy.RecordFilter` inside the SQL. Deleted
resources can be included (``with_deleted``): an incremental
materialization needs them to drop their rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select

from salus.db import Database
from salus.db.tables import fhir_resources
from salus.fhir.store import RESOURCE_COLUMNS, FhirStore
from salus.security.policy import RecordFilter

__all__ = ["Key", "SourceRow", "pages"]

R = fhir_resources
#: A position in keyset order: (last_updated, rid).
Key = tuple[datetime, int]


@dataclass(frozen=True, slots=True)
class SourceRow:
    rid: int
    last_updated: datetime
    patient_key: str | None
    #: The opened body; None for a deleted resource.
    resource: dict[str, Any] | None

    @property
    def key(self) -> Key:
        return (self.last_updated, self.rid)


def pages(
    db: Database,
    store: FhirStore,
    res_type: str,
    flt: RecordFilter,
    *,
    page_size: int,
    after: Key | None = None,
    until: datetime | None = None,
    since: datetime | None = None,
    patients: Sequence[str] | None = None,
    with_deleted: bool = False,
) -> Iterator[list[SourceRow]]:
    """Pages of ``res_type`` in keyset order after ``after``, each read in its own
    short transaction; ``since``: last updated at or after; ``until``: not after."""
    if patients is not None and not patients:
        return
    conditions: list[Any] = [R.c.res_type == res_type, flt.where(RESOURCE_COLUMNS)]
    if not with_deleted:
        conditions.append(R.c.deleted.is_(False))
    if until is not None:
        conditions.append(R.c.last_updated <= until)
    if since is not None:
        conditions.append(R.c.last_updated >= since)
    if patients is not None:
        conditions.append(R.c.patient_key.in_(list(patients)))
    params = flt.params()
    while True:
        where = list(conditions)
        if after is not None:
            later = and_(R.c.last_updated == after[0], R.c.rid > after[1])
            where.append(or_(R.c.last_updated > after[0], later))
        query = select(R).where(*where).order_by(R.c.last_updated, R.c.rid).limit(page_size)
        with db.read() as conn:
            rows = conn.execute(query, params).mappings().all()
        if not rows:
            return
        page = []
        for row in rows:
            stored = store.stored_from_row(row)
            page.append(
                SourceRow(int(row["rid"]), row["last_updated"], row["patient_key"], stored.resource)
            )
        yield page
        if len(rows) < page_size:
            return
        after = page[-1].key
