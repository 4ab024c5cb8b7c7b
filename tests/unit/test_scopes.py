"""SMART v2 scopes and the role catalogue."""

from __future__ import annotations

import pytest

from salus.errors import InvalidInput
from salus.security.principal import Purpose
from salus.security.roles import ROLES, parse_scope, scopes_for_roles


@pytest.mark.parametrize(
    ("text", "context", "rtype", "perms"),
    [
        ("user/Observation.rs", "user", "Observation", "rs"),
        ("system/*.cruds", "system", "*", "cruds"),
        ("patient/Patient.r", "patient", "Patient", "r"),
        ("user/Observation.read", "user", "Observation", "rs"),  # SMART v1
        ("system/*.write", "system", "*", "cud"),
        ("user/*.*", "user", "*", "cruds"),
    ],
)
def test_parse(text: str, context: str, rtype: str, perms: str) -> None:
    scope = parse_scope(text)
    assert (scope.context, scope.resource_type, scope.permissions) == (
        context,
        rtype,
        frozenset(perms),
    )


@pytest.mark.parametrize(
    "text", ["user/observation.rs", "user/Observation.sr", "admin/*.r", "user/*", "openid", ""]
)
def test_refuse_malformed(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_scope(text)


def test_allows_and_str() -> None:
    scope = parse_scope("user/Observation.rs")
    assert scope.allows("Observation", "r") and scope.allows("Observation", "s")
    assert not scope.allows("Observation", "c") and not scope.allows("Patient", "r")
    assert str(scope) == "user/Observation.rs"
    assert parse_scope("system/*.cruds").allows("Anything", "d")


def test_role_catalogue() -> None:
    for role in ROLES.values():
        assert role.purposes, role.name
        for scope in role.scopes:
            parse_scope(scope)
    assert ROLES["researcher"].deidentified and ROLES["authority_analyst"].deidentified
    assert not ROLES["clinician"].deidentified and ROLES["clinician"].break_glass
    assert ROLES["administrator"].admin and not ROLES["administrator"].break_glass
    # Separation of duties: the administrator and the security officer get no clinical data.
    clinical = {"Patient", "Observation", "Condition", "Encounter", "*"}
    for name in ("administrator", "security_officer"):
        assert not {parse_scope(s).resource_type for s in ROLES[name].scopes} & clinical
    assert ROLES["researcher"].purposes == (Purpose.RESEARCH,)


def test_scopes_for_roles() -> None:
    assert scopes_for_roles({"clinician"}) == frozenset({"user/*.cruds"})
    assert "user/AuditEvent.rs" in scopes_for_roles({"security_officer", "unknown"})
    assert scopes_for_roles(set()) == frozenset()
