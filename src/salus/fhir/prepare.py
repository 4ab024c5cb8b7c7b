"""New resources prepared before their write transaction (FHIR R4
http.html#create, transaction Bundles, bulk import).

Everything a create needs that needs no database is done here, outside the
transaction: validation, ids, ``meta``, sealing, index values and audit
events (:func:`prepare_creates`). The write itself is
:meth:`~salus.fhir.store.FhirStore.commit_creates`, which turns a
:class:`PreparedCreates` into rows in the caller's transaction; concurrent
batches are written together (:func:`merge_prepared`, :func:`split_created`;
:mod:`salus.fhir.groupcommit`, :mod:`salus.fhir.bundle`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table

from salus import jsoncodec
from salus.audit.events import AuditEvent
from salus.audit.sqliteappend import PreparedEvents
from salus.errors import Conflict, SalusError, UnprocessableContent
from salus.fhir.categories import category_of
from salus.fhir.storereads import Stored, check_id, new_id
from salus.fhir.writegate import GATE
from salus.fhir.writerows import EncodedCreates, concat_encoded
from salus.security.principal import Principal

if TYPE_CHECKING:
    from salus.fhir.store import FhirStore

__all__ = [
    "PreparedCreates",
    "created",
    "json_bytes",
    "merge_prepared",
    "prepare_creates",
    "split_created",
    "type_of",
    "write_event",
]


def json_bytes(resource: Mapping[str, Any]) -> bytes:
    """A body as stored: compact UTF-8 JSON (what Starlette's JSONResponse writes too)."""
    return jsoncodec.dumps(resource)


def write_event(
    principal: Principal,
    action: str,
    res_type: str,
    res_id: str,
    version: int,
    patient_key: str | None,
) -> AuditEvent:
    """The audit event of a write of one version: ``action`` C (create),
    U (update) or D (delete); a Patient is its own record's patient."""
    return AuditEvent.for_principal(
        principal,
        category="rest",
        action=action,
        entity=f"{res_type}/{res_id}",
        patient_key=res_id if res_type == "Patient" else patient_key,
        description={"C": "create", "U": "update", "D": "delete"}[action],
        detail={"version": version},
    )


def type_of(resource: Mapping[str, Any]) -> str:
    """``resourceType`` (422 when missing)."""
    res_type = resource.get("resourceType")
    if not isinstance(res_type, str) or not res_type:
        raise UnprocessableContent("The resource has no resourceType.", expression=["resourceType"])
    return res_type


@dataclass(slots=True)
class PreparedCreates:
    """New resources ready to be written (see :func:`prepare_creates`)."""

    principal: Principal
    now: datetime
    prepared: list[tuple[str, str, dict[str, Any]]]
    chosen_ids: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    index_rows: list[dict[Table, list[dict[str, Any]]]]
    #: Their audit events (:class:`~salus.audit.sqliteappend.PreparedEvents`
    #: once :meth:`FhirStore.encode` prepared them for SQLite).
    events: Sequence[AuditEvent]
    #: Each body as the JSON that was sealed (the create's response body).
    raws: list[bytes] = field(default_factory=list)
    #: The rows as driver values, made before the write lock (SQLite only;
    #: :meth:`FhirStore.encode`).
    encoded: EncodedCreates | None = None


def prepare_creates(
    store: FhirStore,
    principal: Principal,
    items: Sequence[tuple[Mapping[str, Any], str | None]],
    new_ids: bool = False,
) -> PreparedCreates:
    """:meth:`FhirStore.prepare_creates`: ``items`` (resource, id or None)
    validated, given ids and ``meta``, sealed, indexed and audited, for
    ``store``'s :meth:`~salus.fhir.store.FhirStore.commit_creates`."""
    now = store.clock()
    prepared: list[tuple[str, str, dict[str, Any]]] = []
    for position, (resource, res_id) in enumerate(items):
        GATE.checkpoint()
        res_type = type_of(resource)
        rid_id = check_id(res_id) if res_id else new_id()
        try:
            body = store._prepare(resource, res_type, rid_id, 1, now)
        except SalusError as exc:
            exc.resource_index = position  # type: ignore[attr-defined]
            raise
        prepared.append((res_type, rid_id, body))
    # Ids the server assigns are UUIDs with 74 random bits (new_id); only ids the
    # caller chose (bulk import) can already be taken. The unique key stays the
    # last word.
    chosen = [
        (t, i)
        for (t, i, _), (_, given) in zip(prepared, items, strict=True)
        if given and not new_ids
    ]
    if len(set(chosen)) != len(chosen):
        raise Conflict("The same resource id appears twice.")
    rows: list[dict[str, Any]] = []
    index_rows: list[dict[Table, list[dict[str, Any]]]] = []
    events: list[AuditEvent] = []
    raws: list[bytes] = []
    for res_type, res_id, body in prepared:
        GATE.checkpoint()
        # The index values once: the compartment (an Observation's subject…)
        # is read from them rather than extracted a second time.
        values = store.indexer.extract(body)
        patient_key = store.compartment(body, values)
        raws.append(json_bytes(body))
        rows.append(
            {
                "res_type": res_type,
                "res_id": res_id,
                "version": 1,
                "org_id": principal.org_id,
                "patient_key": patient_key,
                "category": category_of(body),
                "deleted": False,
                "last_updated": now,
                "body": store._seal_raw(res_type, res_id, 1, raws[-1]),
            }
        )
        index_rows.append(store.indexer.rows(0, res_type, body, values))
        events.append(write_event(principal, "C", res_type, res_id, 1, patient_key))
    return PreparedCreates(principal, now, prepared, chosen, rows, index_rows, events, raws)


def created(batch: PreparedCreates) -> list[Stored]:
    """What a committed ``batch`` stored, in order."""
    raws: list[bytes | None] = list(batch.raws) or [None] * len(batch.rows)
    return [
        Stored(t, i, 1, row["last_updated"], False, row["org_id"], body, row["patient_key"], raw)
        for (t, i, body), row, raw in zip(batch.prepared, batch.rows, raws, strict=True)
    ]


def merge_prepared(batches: Sequence[PreparedCreates]) -> PreparedCreates:
    """Several :class:`PreparedCreates` as one (rows in order; the SQLite
    driver values joined when every batch has them), to be written by one
    :meth:`FhirStore.commit_creates`; :func:`split_created` splits its result."""
    if len(batches) == 1:
        return batches[0]
    merged = PreparedCreates(
        batches[0].principal,
        batches[0].now,
        [p for b in batches for p in b.prepared],
        [c for b in batches for c in b.chosen_ids],
        [r for b in batches for r in b.rows],
        [x for b in batches for x in b.index_rows],
        _merged_events([b.events for b in batches]),
        [r for b in batches for r in b.raws] if all(b.raws for b in batches) else [],
    )
    parts = [b.encoded for b in batches if b.encoded is not None]
    if len(parts) == len(batches):
        merged.encoded = concat_encoded(parts)
    if len(set(merged.chosen_ids)) != len(merged.chosen_ids):
        raise Conflict("The same resource id appears twice.")
    return merged


def _merged_events(parts: Sequence[Sequence[AuditEvent]]) -> Sequence[AuditEvent]:
    """The batches' audit events in order, still prepared if every part is."""
    prepared = [p for p in parts if isinstance(p, PreparedEvents)]
    if len(prepared) == len(parts) and len({p.dialect for p in prepared}) == 1:
        return PreparedEvents.concat(prepared)
    return [e for part in parts for e in part]


def split_created(batches: Sequence[PreparedCreates], stored: list[Stored]) -> list[list[Stored]]:
    """The results of a :func:`merge_prepared` batch, per original batch."""
    out: list[list[Stored]] = []
    start = 0
    for batch in batches:
        out.append(stored[start : start + len(batch.rows)])
        start += len(batch.rows)
    return out
