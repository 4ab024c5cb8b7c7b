"""The policy engine's filter, applied inside SQL queries on SQLite and
PostgreSQL: tenancy, treatment relationships, consent (deny wins),
break-the-glass and de-identified secondary use."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select

from salus.audit.chain import AuditLog
from salus.db import Database
from salus.db.tables import organizations
from salus.db.types import utcnow
from salus.errors import Forbidden, InvalidInput
from salus.security.care import CareService
from salus.security.policy import AccessRequest, Interaction, PolicyEngine, RecordColumns
from salus.security.principal import AuthMethod, Principal, PrincipalKind, Purpose
from salus.security.roles import scopes_for_roles

meta = MetaData()
records = Table(
    "policy_test_records",
    meta,
    Column("id", Integer, primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("patient_key", String(64)),
    Column("category", String(64), nullable=False),
)
COLS = RecordColumns(
    org=records.c.org_id, patient=records.c.patient_key, category=records.c.category
)
KINDS = {
    "hosp-a": "hospital",
    "hosp-b": "hospital",
    "hosp-c": "hospital",
    "uni": "research",
    "moh": "authority",
    "ops": "operator",
}
SYSTEM = Principal(kind=PrincipalKind.SYSTEM, id="t", org_id="ops")

# (id, org, patient, category)
ROWS = [
    (1, "hosp-a", "P1", "general"),
    (2, "hosp-b", "P1", "general"),
    (3, "hosp-b", "P1", "mental-health"),
    (4, "hosp-c", "P1", "general"),
    (5, "hosp-b", "P2", "general"),
    (6, "hosp-b", None, "general"),
    (7, "hosp-b", "P3", "general"),
    (8, "hosp-c", "P3", "general"),
]


def who(org: str, role: str, pid: str | None = None) -> Principal:
    return Principal(
        kind=PrincipalKind.USER,
        id=pid or f"{org}-{role}",
        org_id=org,
        roles=frozenset({role}),
        scopes=scopes_for_roles({role}),
        auth_method=AuthMethod.PASSWORD,
    )


class World:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock_now = utcnow()
        self.policy = PolicyEngine(KINDS.get, clock=lambda: self.clock_now)
        self.care = CareService(db, AuditLog(db), btg_minutes=30, clock=lambda: self.clock_now)

    def visible(self, principal: Principal, purpose: Purpose | None = None) -> set[int]:
        decision = self.policy.authorize(
            principal, AccessRequest("Observation", Interaction.SEARCH, purpose)
        )
        flt = decision.require()
        with self.db.read() as conn:
            return set(
                conn.execute(select(records.c.id).where(flt.where(COLS)), flt.params()).scalars()
            )


@pytest.fixture
def world(db: Database) -> World:
    meta.create_all(db.engine)
    with db.write() as conn:
        for org, kind in KINDS.items():
            conn.execute(
                insert(organizations).values(
                    id=org, name=org, kind=kind, active=True, created_at=utcnow()
                )
            )
        conn.execute(
            insert(records),
            [{"id": i, "org_id": o, "patient_key": p, "category": c} for i, o, p, c in ROWS],
        )
    return World(db)


def feed(org: str) -> Principal:
    return who(org, "hospital_integration")


def test_own_organization_only_without_relationship(world: World) -> None:
    assert world.visible(who("hosp-a", "clinician")) == {1}
    assert world.visible(who("hosp-b", "clinician")) == {2, 3, 5, 6, 7}
    assert world.visible(feed("hosp-b")) == {2, 3, 5, 6, 7}


def test_treatment_relationship_opens_other_hospitals(world: World) -> None:
    world.care.record_treatment(
        feed("hosp-a"), patient_key="P1", org_id="hosp-a", source="Encounter/e1"
    )
    assert world.visible(who("hosp-a", "clinician")) == {1, 2, 3, 4}
    # The relationship belongs to hosp-a: hosp-c's clinicians gain nothing, and an
    # integration client (no care purpose) neither.
    assert world.visible(who("hosp-c", "clinician")) == {4, 8}
    assert world.visible(feed("hosp-a")) == {1}


def test_expired_relationship_does_not_count(world: World) -> None:
    past = world.clock_now - timedelta(days=30)
    world.care.record_treatment(
        feed("hosp-a"),
        patient_key="P1",
        org_id="hosp-a",
        source="Encounter/old",
        valid_from=past,
        valid_until=past + timedelta(days=2),
    )
    assert world.visible(who("hosp-a", "clinician")) == {1}


def test_deny_wins_over_relationship(world: World) -> None:
    world.care.record_treatment(
        feed("hosp-a"), patient_key="P1", org_id="hosp-a", source="Encounter/e1"
    )
    world.care.record_consent(
        feed("hosp-b"),
        patient_key="P1",
        decision="deny",
        grantee_org_id=None,
        category="mental-health",
        source="Consent/mh",
    )
    assert world.visible(who("hosp-a", "clinician")) == {1, 2, 4}
    world.care.record_consent(
        feed("hosp-c"),
        patient_key="P1",
        decision="deny",
        grantee_org_id="hosp-a",
        category="*",
        source="Consent/all",
    )
    assert world.visible(who("hosp-a", "clinician")) == {1}
    # The hospitals that hold the records keep seeing them.
    assert world.visible(who("hosp-b", "clinician")) == {2, 3, 5, 6, 7}


def test_permit_consent_without_relationship(world: World) -> None:
    consent = world.care.record_consent(
        feed("hosp-b"),
        patient_key="P3",
        decision="permit",
        grantee_org_id="hosp-a",
        category="*",
        source="Consent/p3",
    )
    assert world.visible(who("hosp-a", "clinician")) == {1, 7, 8}
    assert world.visible(who("hosp-c", "clinician")) == {4, 8}  # only hosp-a is permitted
    world.care.withdraw_consent(feed("hosp-b"), consent)
    world.clock_now += timedelta(seconds=1)
    assert world.visible(who("hosp-a", "clinician")) == {1}


def test_break_the_glass_overrides_consent_for_a_limited_time(world: World) -> None:
    world.care.record_consent(
        feed("hosp-b"),
        patient_key="P1",
        decision="deny",
        grantee_org_id=None,
        category="*",
        source="Consent/deny",
    )
    doctor = who("hosp-a", "clinician", "doc-1")
    colleague = who("hosp-a", "clinician", "doc-2")
    assert world.visible(doctor) == {1}
    with pytest.raises(InvalidInput):
        world.care.break_glass(doctor, "P1", "urgent")  # a reason must be given
    with pytest.raises(Forbidden):
        world.care.break_glass(feed("hosp-a"), "P1", "integration cannot break glass")
    grant = world.care.break_glass(doctor, "P1", "unconscious patient in the emergency room")
    assert world.visible(doctor) == {1, 2, 3, 4}
    assert world.visible(colleague) == {1}  # the grant is personal
    world.clock_now += timedelta(minutes=31)
    assert world.visible(doctor) == {1}
    pending = world.care.list_break_glass(SYSTEM)
    assert [g["id"] for g in pending] == [grant["id"]]
    assert pending[0]["reason"] == "unconscious patient in the emergency room"


def test_rejected_break_glass_ends_at_once(world: World) -> None:
    doctor = who("hosp-a", "clinician", "doc-1")
    grant = world.care.break_glass(doctor, "P2", "suspected overdose, no history available")
    assert 5 in world.visible(doctor)
    officer = who("ops", "security_officer")
    world.care.review_break_glass(officer, grant["id"], "rejected", "no emergency recorded")
    assert 5 not in world.visible(doctor)
    assert world.care.list_break_glass(officer, "rejected")[0]["reviewed_by"] == officer.label


def test_secondary_use_sees_every_hospital_except_opt_outs(world: World) -> None:
    researcher = who("uni", "researcher")
    assert world.visible(researcher) == {1, 2, 3, 4, 5, 6, 7, 8}
    world.care.record_consent(
        feed("hosp-b"),
        patient_key="P3",
        decision="deny",
        grantee_org_id=None,
        category="research",
        source="Consent/r",
    )
    assert world.visible(researcher) == {1, 2, 3, 4, 5, 6}
    decision = world.policy.decide(researcher, AccessRequest("Observation", Interaction.READ))
    assert decision.deidentify


def test_patient_restricted_filter(world: World) -> None:
    from dataclasses import replace

    decision = world.policy.authorize(
        who("hosp-b", "clinician"), AccessRequest("Observation", Interaction.READ)
    )
    restricted = replace(decision.require(), patients=frozenset({"P2"}))
    with world.db.read() as conn:
        ids = set(
            conn.execute(
                select(records.c.id).where(restricted.where(COLS)), restricted.params()
            ).scalars()
        )
    assert ids == {5}


def test_care_writes_stay_in_own_organization(world: World) -> None:
    with pytest.raises(Forbidden):
        world.care.record_treatment(
            feed("hosp-a"), patient_key="P1", org_id="hosp-b", source="Encounter/x"
        )
    with pytest.raises(Forbidden):
        world.care.record_consent(
            who("moh", "authority_analyst"),
            patient_key="P1",
            decision="permit",
            grantee_org_id=None,
            source="Consent/x",
        )


def test_audit_of_care_changes(world: World, db: Database) -> None:
    from salus.audit.verify import verify_chain

    world.care.break_glass(who("hosp-a", "clinician"), "P1", "patient collapsed in clinic")
    rows: list[Any]
    from salus.db.tables import audit_events

    with db.read() as conn:
        rows = list(
            conn.execute(
                select(audit_events.c.flags, audit_events.c.patient_key, audit_events.c.purpose)
            ).all()
        )
    assert ("break-glass", "P1", "ETREAT") in [tuple(r) for r in rows]
    assert verify_chain(db).ok


def test_a_query_without_the_filter_values_fails_closed(world: World) -> None:
    decision = world.policy.authorize(
        who("hosp-a", "clinician"), AccessRequest("Observation", Interaction.SEARCH)
    )
    with pytest.raises(Exception, match="policy_"), world.db.read() as conn:
        conn.execute(select(records.c.id).where(decision.require().where(COLS))).all()


def test_filter_shapes_are_reused(world: World) -> None:
    a = world.policy.authorize(
        who("hosp-a", "clinician"), AccessRequest("Observation", Interaction.SEARCH)
    ).require()
    b = world.policy.authorize(
        who("hosp-b", "clinician", "other"), AccessRequest("Observation", Interaction.SEARCH)
    ).require()
    assert a.where(COLS) is b.where(COLS)
    assert a.params()["policy_org"] == "hosp-a" and b.params()["policy_org"] == "hosp-b"
