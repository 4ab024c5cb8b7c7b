"""Care relationships, consent and break-the-glass: the data the policy
engine's cross-organization filter consults.

* **Treatment relationships** come from encounters and referrals at an
  organization (the FHIR and HL7 v2 ingestion records them; hospitals'
  integration clients may also post them).
* **Consent rules** come from FHIR ``Consent`` resources: permit or deny, for
  one organization or all, for one data category or all (``*``).
* **Break-the-glass**: a clinician states a reason and receives access to one
  patient's records across hospitals for a limited time; the grant is
  flagged, audited and queued for the security officer's review.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from salus.audit.chain import AuditLog
from salus.audit.events import AuditEvent
from salus.db.engine import Database
from salus.db.tables import btg_grants, consents, organizations, treatment_relationships
from salus.db.types import utcnow
from salus.errors import Conflict, Forbidden, InvalidInput, NotFound
from salus.security.principal import Principal, PrincipalKind, Purpose
from salus.security.roles import ROLES

__all__ = ["CareService"]

_KEY_MAX = 64
MIN_REASON = 10


def _check_patient(patient_key: str) -> str:
    key = patient_key.strip()
    if not key or len(key) > _KEY_MAX:
        raise InvalidInput("A patient key is 1-64 characters.", expression=["patient"])
    return key


class CareService:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        btg_minutes: int = 60,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.audit = audit
        self.btg_duration = timedelta(minutes=btg_minutes)
        self.clock = clock

    def _own_org_writer(self, actor: Principal, org_id: str) -> None:
        if actor.kind is PrincipalKind.SYSTEM:
            return
        if actor.org_id != org_id:
            raise Forbidden("Records can only be written into your own organization.")
        if not actor.roles & {"hospital_integration", "clinician"}:
            raise Forbidden("Only clinicians and hospital integration clients record care data.")

    def _audit(
        self,
        conn: Connection,
        actor: Principal,
        action: str,
        entity: str,
        patient_key: str | None,
        description: str,
        flags: str | None = None,
        purpose: str | None = None,
    ) -> None:
        self.audit.append(
            conn,
            [
                AuditEvent.for_principal(
                    actor,
                    category="security",
                    action=action,
                    outcome=0,
                    entity=entity,
                    patient_key=patient_key,
                    description=description,
                    flags=flags,
                    purpose=purpose,
                )
            ],
        )

    def record_treatment(
        self,
        actor: Principal,
        *,
        patient_key: str,
        org_id: str,
        source: str,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
    ) -> int:
        patient_key = _check_patient(patient_key)
        self._own_org_writer(actor, org_id)
        now = self.clock()
        with self.db.write() as conn:
            new_id = conn.execute(
                insert(treatment_relationships)
                .values(
                    patient_key=patient_key,
                    org_id=org_id,
                    source=source[:200],
                    valid_from=valid_from or now,
                    valid_until=valid_until,
                    created_at=now,
                )
                .returning(treatment_relationships.c.id)
            ).scalar_one()
            self._audit(
                conn,
                actor,
                "C",
                f"TreatmentRelationship/{new_id}",
                patient_key,
                "treatment relationship recorded",
            )
        return int(new_id)

    def record_consent(
        self,
        actor: Principal,
        *,
        patient_key: str,
        decision: str,
        grantee_org_id: str | None,
        category: str = "*",
        source: str,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
    ) -> int:
        patient_key = _check_patient(patient_key)
        if decision not in ("permit", "deny"):
            raise InvalidInput("A consent decision is permit or deny.", expression=["decision"])
        if not category or len(category) > 64:
            raise InvalidInput("A consent category is 1-64 characters.", expression=["category"])
        self._own_org_writer(actor, actor.org_id)
        now = self.clock()
        with self.db.write() as conn:
            if (
                grantee_org_id is not None
                and conn.execute(
                    select(organizations.c.id).where(organizations.c.id == grantee_org_id)
                ).first()
                is None
            ):
                raise NotFound("No such organization.")
            new_id = conn.execute(
                insert(consents)
                .values(
                    patient_key=patient_key,
                    grantee_org_id=grantee_org_id,
                    category=category,
                    decision=decision,
                    valid_from=valid_from or now,
                    valid_until=valid_until,
                    source=source[:200],
                    created_at=now,
                )
                .returning(consents.c.id)
            ).scalar_one()
            self._audit(
                conn, actor, "C", f"Consent/{new_id}", patient_key, f"consent recorded: {decision}"
            )
        return int(new_id)

    def withdraw_consent(self, actor: Principal, consent_id: int) -> None:
        self._own_org_writer(actor, actor.org_id)
        now = self.clock()
        with self.db.write() as conn:
            row = (
                conn.execute(select(consents).where(consents.c.id == consent_id)).mappings().first()
            )
            if row is None:
                raise NotFound("No such consent.")
            conn.execute(
                update(consents).where(consents.c.id == consent_id).values(valid_until=now)
            )
            self._audit(
                conn,
                actor,
                "U",
                f"Consent/{consent_id}",
                str(row["patient_key"]),
                "consent withdrawn",
            )

    # -- break-the-glass ---------------------------------------------------------------
    def break_glass(self, actor: Principal, patient_key: str, reason: str) -> dict[str, Any]:
        patient_key = _check_patient(patient_key)
        if not any(ROLES[r].break_glass for r in actor.roles if r in ROLES):
            raise Forbidden("Your roles do not allow break-the-glass access.")
        reason = " ".join(reason.split())
        if len(reason) < MIN_REASON:
            raise InvalidInput(
                f"State the reason for emergency access (at least {MIN_REASON} characters).",
                expression=["reason"],
            )
        now = self.clock()
        grant: dict[str, Any] = {
            "principal_kind": PrincipalKind(actor.kind).value,
            "principal_id": actor.id,
            "org_id": actor.org_id,
            "patient_key": patient_key,
            "reason": reason[:2000],
            "granted_at": now,
            "expires_at": now + self.btg_duration,
            "review_status": "pending",
        }
        with self.db.write() as conn:
            grant["id"] = int(
                conn.execute(
                    insert(btg_grants).values(**grant).returning(btg_grants.c.id)
                ).scalar_one()
            )
            self._audit(
                conn,
                actor,
                "E",
                f"BreakGlass/{grant['id']}",
                patient_key,
                "break-the-glass access granted",
                flags="break-glass",
                purpose=Purpose.EMERGENCY.value,
            )
        return grant

    def list_break_glass(
        self, actor: Principal, status: str | None = "pending", limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        self._require_reviewer(actor)
        query = (
            select(btg_grants).order_by(btg_grants.c.granted_at.desc()).limit(limit).offset(offset)
        )
        if status:
            query = query.where(btg_grants.c.review_status == status)
        if not self._network_reviewer(actor):
            query = query.where(btg_grants.c.org_id == actor.org_id)
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def review_break_glass(
        self, actor: Principal, grant_id: int, outcome: str, note: str = ""
    ) -> None:
        self._require_reviewer(actor)
        if outcome not in ("accepted", "rejected"):
            raise InvalidInput("A review outcome is accepted or rejected.", expression=["outcome"])
        now = self.clock()
        with self.db.write() as conn:
            row = (
                conn.execute(select(btg_grants).where(btg_grants.c.id == grant_id))
                .mappings()
                .first()
            )
            if row is None or (not self._network_reviewer(actor) and row["org_id"] != actor.org_id):
                raise NotFound("No such break-the-glass grant.")
            if row["review_status"] != "pending":
                raise Conflict("This grant was already reviewed.")
            values: dict[str, Any] = {
                "review_status": outcome,
                "reviewed_by": actor.label,
                "reviewed_at": now,
                "review_note": note[:2000],
            }
            if outcome == "rejected" and row["expires_at"] > now:
                values["expires_at"] = now  # a rejected grant ends at once
            conn.execute(update(btg_grants).where(btg_grants.c.id == grant_id).values(**values))
            self._audit(
                conn,
                actor,
                "U",
                f"BreakGlass/{grant_id}",
                str(row["patient_key"]),
                f"break-the-glass reviewed: {outcome}",
                flags="break-glass",
            )

    def _require_reviewer(self, actor: Principal) -> None:
        if actor.kind is PrincipalKind.SYSTEM:
            return
        if not any(ROLES[r].security for r in actor.roles if r in ROLES):
            raise Forbidden("Only security officers review break-the-glass access.")

    def _network_reviewer(self, actor: Principal) -> bool:
        if actor.kind is PrincipalKind.SYSTEM:
            return True
        with self.db.read() as conn:
            kind = conn.execute(
                select(organizations.c.kind).where(organizations.c.id == actor.org_id)
            ).scalar_one_or_none()
        return kind == "operator"
