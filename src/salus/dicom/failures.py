"""A record of the instances the archive refused or failed to store.

A C-STORE (PS3.4 B.2.3) or STOW-RS part (PS3.18 10.5.3) that is refused
(unreadable file, duplicate under the ``reject`` policy, study or patient
mismatch...) or fails leaves no row in the index (ADR 9). So that the people
who run a hospital's feeds can see what did not arrive and why (the
console's integration inbox), each such failure is recorded as one audit
event: category ``dicom``, action ``C``, outcome 4 (refused) or 8 (failed),
flag ``store-failed``, the sender's organization, the channel, the status
(DIMSE status or STOW-RS FailureReason) and the SOP Class and Instance UIDs
when they can be read. No patient data: the instance itself is not kept
(the sender still has it and sends it again once the cause is fixed).

Refusals by the access policy (401/403) are audited by the edges already
(``security`` category) and are not recorded here again.
"""

from __future__ import annotations

import logging
from datetime import datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from salus.audit.events import AuditEvent, AuditOutcome
from salus.db.tables import audit_events
from salus.errors import SalusError

if TYPE_CHECKING:
    from salus.audit.chain import AuditLog
    from salus.db.engine import Database
    from salus.security.principal import Principal

__all__ = ["STORE_FAILED", "list_store_failures", "record_store_failure", "sop_uids"]

log = logging.getLogger("salus.dicom")

#: The audit flag of a refused or failed store.
STORE_FAILED = "store-failed"


def _uid(value: Any) -> str | None:
    text = str(value or "").strip()
    if text and len(text) <= 64 and all(c in "0123456789." for c in text):
        return text
    return None


def sop_uids(data: bytes | None) -> tuple[str | None, str | None]:
    """(SOP Class UID, SOP Instance UID) of a Part-10 file, when they can be read."""
    if not data:
        return None, None
    try:
        from pydicom import dcmread

        ds = dcmread(
            BytesIO(data),
            force=True,
            stop_before_pixels=True,
            specific_tags=[0x00080016, 0x00080018],
        )
        return _uid(ds.get("SOPClassUID")), _uid(ds.get("SOPInstanceUID"))
    except Exception:
        return None, None


def record_store_failure(
    audit: AuditLog,
    principal: Principal | None,
    channel: str,
    exc: BaseException,
    *,
    status: int,
    data: bytes | None = None,
    sop_class: str | None = None,
    sop_instance: str | None = None,
) -> None:
    """Record one refused or failed store (never raises: the sender's answer
    does not depend on it)."""
    try:
        if isinstance(exc, SalusError) and exc.http_status in (401, 403):
            return
        if sop_class is None or sop_instance is None:
            read_class, read_instance = sop_uids(data)
            sop_class = sop_class or read_class
            sop_instance = sop_instance or read_instance
        refused = isinstance(exc, SalusError) and exc.http_status < 500
        reason = exc.message if isinstance(exc, SalusError) else "processing failure"
        audit.record(
            [
                AuditEvent.for_principal(
                    principal,
                    category="dicom",
                    action="C",
                    outcome=AuditOutcome.MINOR if refused else AuditOutcome.SERIOUS,
                    entity=(
                        f"dicom:instances/{_uid(sop_instance)}"
                        if _uid(sop_instance)
                        else "dicom:instances"
                    ),
                    description=f"{channel} refused: {reason}"[:300],
                    flags=[STORE_FAILED],
                    detail={
                        "channel": channel,
                        "status": f"0x{status:04X}",
                        "reason": reason[:300],
                        "error": type(exc).__name__,
                        "sop_class_uid": _uid(sop_class),
                        "sop_instance_uid": _uid(sop_instance),
                    },
                )
            ]
        )
    except Exception:
        log.exception("could not record a refused DICOM store")


def list_store_failures(
    db: Database,
    *,
    org_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Recorded store failures, newest first (``org_id``: one sender's only;
    ``since`` inclusive, ``until`` exclusive)."""
    c = audit_events.c
    query = (
        select(
            c.seq,
            c.recorded_at,
            c.org_id,
            c.principal_kind,
            c.principal_id,
            c.address,
            c.outcome,
            c.description,
            c.detail,
        )
        .where(c.category == "dicom", c.flags == STORE_FAILED)
        .order_by(c.seq.desc())
        .limit(limit)
        .offset(offset)
    )
    if org_id is not None:
        query = query.where(c.org_id == org_id)
    if since is not None:
        query = query.where(c.recorded_at >= since)
    if until is not None:
        query = query.where(c.recorded_at < until)
    with db.read() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]
