"""The policy engine's decisions (no database: filters are checked in the
integration tests)."""

from __future__ import annotations

import pytest

from salus.security.policy import AccessRequest, Interaction, PolicyEngine
from salus.security.principal import Principal, PrincipalKind, Purpose
from salus.security.roles import scopes_for_roles

KINDS = {
    "hosp-a": "hospital",
    "hosp-b": "hospital",
    "ops": "operator",
    "moh": "authority",
    "uni": "research",
}
engine = PolicyEngine(KINDS.get)


def who(org: str, *roles: str, kind: PrincipalKind = PrincipalKind.USER) -> Principal:
    return Principal(
        kind=kind,
        id=f"{org}-{'-'.join(roles)}",
        org_id=org,
        roles=frozenset(roles),
        scopes=scopes_for_roles(set(roles)),
    )


def req(
    rtype: str = "Observation",
    interaction: Interaction = Interaction.READ,
    purpose: Purpose | None = None,
    target: str | None = None,
) -> AccessRequest:
    return AccessRequest(rtype, interaction, purpose, target)


def test_clinician_reads_with_care_sharing_and_writes_own_org_only() -> None:
    doc = who("hosp-a", "clinician")
    read = engine.decide(doc, req())
    assert read.allowed and read.purpose is Purpose.TREATMENT and not read.deidentify
    assert read.filter is not None and read.filter.care_sharing
    assert engine.decide(doc, req(interaction=Interaction.CREATE)).allowed
    refused = engine.decide(doc, req(interaction=Interaction.CREATE, target="hosp-b"))
    assert not refused.allowed and "own organization" in refused.reason


@pytest.mark.parametrize("role", ["researcher", "authority_analyst"])
def test_secondary_use_is_always_deidentified(role: str) -> None:
    principal = who("uni" if role == "researcher" else "moh", role)
    rtype = "Observation" if role == "researcher" else "MeasureReport"
    decision = engine.decide(principal, req(rtype))
    assert decision.allowed and decision.deidentify
    assert decision.filter is not None and decision.filter.all_orgs
    assert not engine.decide(principal, req(rtype, Interaction.CREATE)).allowed


def test_clinician_acting_for_research_is_deidentified_only_if_allowed() -> None:
    both = who("hosp-a", "clinician", "researcher")
    assert engine.decide(both, req(purpose=Purpose.RESEARCH)).deidentify
    assert not engine.decide(both, req(purpose=Purpose.TREATMENT)).deidentify
    assert not engine.decide(who("hosp-a", "clinician"), req(purpose=Purpose.RESEARCH)).allowed


def test_scopes_limit_types_and_interactions() -> None:
    steward = who("hosp-a", "data_steward")
    assert engine.decide(steward, req("Device", Interaction.CREATE)).allowed
    assert not engine.decide(steward, req("Observation")).allowed
    officer = who("hosp-a", "security_officer")
    assert engine.decide(officer, req("AuditEvent", Interaction.SEARCH)).allowed
    assert not engine.decide(officer, req("Patient")).allowed
    admin = who("ops", "administrator")
    assert not engine.decide(admin, req("Patient")).allowed
    assert not engine.decide(who("hosp-a"), req()).allowed  # no roles, nothing


def test_security_officer_scope_of_audit() -> None:
    local = engine.decide(who("hosp-a", "security_officer"), req("AuditEvent"))
    network = engine.decide(who("ops", "security_officer"), req("AuditEvent"))
    assert local.filter is not None and not local.filter.all_orgs
    assert network.filter is not None and network.filter.all_orgs


def test_integration_client_writes_into_its_own_hospital() -> None:
    feed = who("hosp-a", "hospital_integration", kind=PrincipalKind.CLIENT)
    ok = engine.decide(feed, req("Patient", Interaction.UPDATE))
    assert ok.allowed and ok.purpose is Purpose.OPERATIONS
    assert not engine.decide(feed, req("Patient", Interaction.UPDATE, target="hosp-b")).allowed
    read = engine.decide(feed, req("Patient"))
    assert read.filter is not None and not read.filter.care_sharing


def test_unknown_purpose_for_role_is_refused() -> None:
    assert not engine.decide(
        who("moh", "authority_analyst"), req("MeasureReport", purpose=Purpose.TREATMENT)
    ).allowed


def test_patient_scopes_need_a_launch_context() -> None:
    app = Principal(
        kind=PrincipalKind.CLIENT,
        id="app",
        org_id="hosp-a",
        roles=frozenset({"clinician"}),
        scopes=frozenset({"patient/*.rs"}),
    )
    assert not engine.decide(app, req()).allowed


def test_system_principal() -> None:
    system = Principal(kind=PrincipalKind.SYSTEM, id="salus", org_id="ops")
    decision = engine.decide(system, req())
    assert decision.allowed and decision.filter is not None and decision.filter.all_orgs


@pytest.mark.parametrize(
    "who_",
    [
        ("hosp-a", "clinician"),
        ("uni", "researcher"),
        ("hosp-a", "hospital_integration"),
        ("ops", "administrator"),
    ],
)
def test_wildcard_scopes_do_not_open_the_audit_trail(who_: tuple[str, str]) -> None:
    principal = who(*who_)
    for interaction in (Interaction.READ, Interaction.SEARCH, Interaction.CREATE):
        assert not engine.decide(principal, req("AuditEvent", interaction)).allowed
    officer = who("hosp-a", "security_officer")
    assert not engine.decide(officer, req("AuditEvent", Interaction.CREATE)).allowed
