"""Roles and the SMART v2 scopes they grant (SMART App Launch v2, scopes-and-launch-context).

Roles are data: a role names the scopes it grants, the purposes of use it may
act under (the first is its default) and whether its holders may ever see
direct identifiers. Scopes say what resource types and interactions are
allowed; *which records* is the policy engine's job (tenancy, treatment
relationship, consent, break-the-glass).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from salus.errors import InvalidInput
from salus.security.principal import Purpose

__all__ = ["ROLES", "Role", "Scope", "parse_scope", "scopes_for_roles"]

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(c?r?u?d?s?)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_V1_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*)$")


@dataclass(frozen=True, slots=True)
class Scope:
    """One SMART scope: context (patient, user, system), resource type, permissions."""

    context: str
    resource_type: str  # "*" for all
    permissions: frozenset[str]  # subset of c r u d s

    def allows(self, resource_type: str, permission: str) -> bool:
        return permission in self.permissions and self.resource_type in ("*", resource_type)

    def __str__(self) -> str:
        perms = "".join(p for p in "cruds" if p in self.permissions)
        return f"{self.context}/{self.resource_type}.{perms}"


def parse_scope(text: str) -> Scope:
    """Parse a SMART v2 scope (v1 ``.read``/``.write`` accepted and converted)."""
    match = _SCOPE.match(text)
    if match and match.group(3):
        return Scope(match.group(1), match.group(2), frozenset(match.group(3)))
    legacy = _V1_SCOPE.match(text)
    if legacy:
        return Scope(legacy.group(1), legacy.group(2), frozenset(_V1[legacy.group(3)]))
    raise InvalidInput("Not a SMART resource scope.")


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    title: str
    scopes: tuple[str, ...]
    purposes: tuple[Purpose, ...]
    #: Holders never receive direct identifiers, whatever their scopes say.
    deidentified: bool = False
    #: May administer organizations, users, clients and roles (no clinical data).
    admin: bool = False
    #: May read the audit trail and review break-the-glass access.
    security: bool = False
    #: May use break-the-glass.
    break_glass: bool = False


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role("clinician", "Clinician", ("user/*.cruds",), (Purpose.TREATMENT,), break_glass=True),
        Role(
            "hospital_integration",
            "Hospital integration",
            ("system/*.cruds",),
            (Purpose.OPERATIONS, Purpose.TREATMENT),
        ),
        Role(
            "data_steward",
            "Hospital data steward",
            (
                "user/Practitioner.cruds",
                "user/PractitionerRole.cruds",
                "user/Device.cruds",
                "user/Location.cruds",
                "user/Medication.cruds",
                "user/MeasureReport.cruds",
                "user/Organization.rs",
            ),
            (Purpose.OPERATIONS,),
        ),
        Role(
            "authority_analyst",
            "Health authority analyst",
            ("user/MeasureReport.rs", "user/Organization.rs", "user/Location.rs"),
            (Purpose.PUBLIC_HEALTH, Purpose.OPERATIONS),
            deidentified=True,
        ),
        Role("researcher", "Researcher", ("user/*.rs",), (Purpose.RESEARCH,), deidentified=True),
        Role(
            "security_officer",
            "Security officer",
            ("user/AuditEvent.rs",),
            (Purpose.OPERATIONS,),
            security=True,
        ),
        Role(
            "administrator",
            "Administrator",
            ("user/Organization.rs",),
            (Purpose.OPERATIONS,),
            admin=True,
        ),
    )
}


def scopes_for_roles(roles: frozenset[str] | set[str]) -> frozenset[str]:
    """The union of the scopes the roles grant (unknown roles grant nothing)."""
    granted: set[str] = set()
    for name in roles:
        role = ROLES.get(name)
        if role is not None:
            granted.update(role.scopes)
    return frozenset(granted)
