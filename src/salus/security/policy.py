"""The policy engine: (principal, purpose, request) → refusal, or a filter that
the storage layer applies *inside* the query.

The decision itself touches no database (it runs on every request and must
stay well under a millisecond); what depends on data (treatment relationships,
consent, break-the-glass) becomes correlated sub-queries of the filter, so a
search, an ``_include``, a history page, an export or a DICOM query can never
return a record first and check it afterwards.

Rules, in order:

1. **Scopes** (SMART v2): some granted scope must allow the resource type and
   the interaction (c r u d s).
2. **Purpose of use**: the requested purpose must be one the principal's roles
   may act under; otherwise the role's default is used. Research and public
   health purposes, and principals whose every role is a de-identified one
   (researchers, authority analysts), get ``deidentify=True``: no direct
   identifiers, whatever their scopes say.
3. **Tenancy**: writes land in the principal's own organization only (a
   hospital cannot write records as another). Reads see the principal's own
   organization's records, plus:
   - clinicians (treatment purpose): another hospital's records of a patient
     with whom the clinician's hospital has a current treatment relationship
     or for whom a permit consent covers the clinician's organization and the
     record's category, unless a deny consent covers them (**deny wins**); and
     any record of a patient for whom the clinician holds a current
     break-the-glass grant (which overrides consent, and is reviewed);
   - de-identified readers (research, public health): records of every
     organization, except patients who deny the ``research`` (or
     ``public-health``) category;
   - network-wide roles of an ``operator`` organization (security officers)
     for the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    String,
    Table,
    and_,
    bindparam,
    exists,
    false,
    or_,
    select,
    true,
)

from salus.db.tables import btg_grants, consents, treatment_relationships
from salus.db.types import UTCDateTime, utcnow
from salus.errors import Forbidden
from salus.security.principal import Principal, PrincipalKind, Purpose
from salus.security.roles import ROLES, parse_scope

__all__ = [
    "AccessRequest",
    "Decision",
    "Interaction",
    "PolicyEngine",
    "RecordColumns",
    "RecordFilter",
]


class Interaction(StrEnum):
    CREATE = "c"
    READ = "r"
    UPDATE = "u"
    DELETE = "d"
    SEARCH = "s"


WRITES = frozenset({Interaction.CREATE, Interaction.UPDATE, Interaction.DELETE})
#: Resource types that only security roles read and only Salus writes.
SECURITY_TYPES = frozenset({"AuditEvent"})


@dataclass(frozen=True, slots=True)
class AccessRequest:
    resource_type: str
    interaction: Interaction
    purpose: Purpose | None = None
    #: For writes: the organization the record will belong to (default: the principal's).
    target_org: str | None = None


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """Where a table keeps what the filter needs (FHIR resources, DICOM studies…)."""

    org: ColumnElement[str]
    patient: ColumnElement[str] | None = None
    category: ColumnElement[str] | None = None


# Parameters of the filter's SQL: the condition is built once per shape and
# cached; each request supplies only these values (see RecordFilter.params).
_P_ORG = "policy_org"
_P_KIND = "policy_principal_kind"
_P_ID = "policy_principal_id"
_P_NOW = "policy_now"
_P_CATEGORY = "policy_category"
_P_PATIENTS = "policy_patients"
_SHAPES: dict[tuple[Any, ...], ColumnElement[bool]] = {}


def _param(name: str) -> BindParameter[Any]:
    if name == _P_NOW:
        return bindparam(name, type_=UTCDateTime())
    if name == _P_PATIENTS:
        return bindparam(name, expanding=True)
    return bindparam(name, type_=String())


def _valid(table: Table) -> ColumnElement[bool]:
    now = _param(_P_NOW)
    return and_(
        table.c.valid_from <= now, or_(table.c.valid_until.is_(None), table.c.valid_until > now)
    )


def _treatment(patient: ColumnElement[str]) -> ColumnElement[bool]:
    t = treatment_relationships
    return exists(
        select(t.c.id).where(t.c.patient_key == patient, t.c.org_id == _param(_P_ORG), _valid(t))
    )


def _consent(cols: RecordColumns, decision: str, *, secondary_use: bool) -> ColumnElement[bool]:
    c = consents
    assert cols.patient is not None  # noqa: S101 - checked by the callers
    conditions = [c.c.patient_key == cols.patient, c.c.decision == decision, _valid(c)]
    if secondary_use:  # any organization's rule about this secondary use
        conditions.append(c.c.category.in_([_param(_P_CATEGORY), "*"]))
    else:
        conditions.append(or_(c.c.grantee_org_id == _param(_P_ORG), c.c.grantee_org_id.is_(None)))
        if cols.category is not None:
            conditions.append(or_(c.c.category == "*", c.c.category == cols.category))
        else:
            conditions.append(c.c.category == "*")
    return exists(select(c.c.id).where(*conditions))


def _btg(patient: ColumnElement[str]) -> ColumnElement[bool]:
    b = btg_grants
    now = _param(_P_NOW)
    return exists(
        select(b.c.id).where(
            b.c.patient_key == patient,
            b.c.principal_kind == _param(_P_KIND),
            b.c.principal_id == _param(_P_ID),
            b.c.granted_at <= now,
            b.c.expires_at > now,
        )
    )


def _build(
    cols: RecordColumns, all_orgs: bool, care_sharing: bool, secondary_use: bool, restricted: bool
) -> ColumnElement[bool]:
    condition: ColumnElement[bool]
    if all_orgs:
        condition = true()
        if secondary_use and cols.patient is not None:
            condition = ~_consent(cols, "deny", secondary_use=True)
    elif care_sharing and cols.patient is not None:
        own = cols.org == _param(_P_ORG)
        shared = and_(
            cols.patient.is_not(None),
            or_(_treatment(cols.patient), _consent(cols, "permit", secondary_use=False)),
            ~_consent(cols, "deny", secondary_use=False),
        )
        condition = or_(own, shared, and_(cols.patient.is_not(None), _btg(cols.patient)))
    else:
        condition = cols.org == _param(_P_ORG)
    if restricted:
        if cols.patient is None:
            return false()
        condition = and_(condition, cols.patient.in_(_param(_P_PATIENTS)))
    return condition


#: The condition that lets nothing through (one object: statement caches key on it).
_NOTHING = false()


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records a decision lets through, as a SQL condition plus its values.

    Use both: ``conn.execute(select(...).where(f.where(cols)), f.params())``.
    The condition is built once per shape and reused (building SQLAlchemy
    expressions costs more than the decision itself); a query run without the
    parameters fails, it never runs unfiltered.
    """

    own_org: str
    all_orgs: bool = False
    #: Cross-organization sharing for care (treatment relationship, consent, BTG).
    care_sharing: bool = False
    #: Consent category a de-identified reader's access is subject to.
    secondary_use_category: str | None = None
    principal_kind: str = ""
    principal_id: str = ""
    #: Restrict to these patients (SMART ``patient/`` scopes).
    patients: frozenset[str] | None = None
    now: datetime = field(default_factory=utcnow)

    def where(self, cols: RecordColumns) -> ColumnElement[bool]:
        if self.patients is not None and not self.patients:
            return _NOTHING
        key = (
            id(cols.org),
            id(cols.patient),
            id(cols.category),
            self.all_orgs,
            self.care_sharing,
            self.secondary_use_category is not None,
            self.patients is not None,
        )
        condition = _SHAPES.get(key)
        if condition is None:
            condition = _build(
                cols,
                self.all_orgs,
                self.care_sharing,
                self.secondary_use_category is not None,
                self.patients is not None,
            )
            _SHAPES[key] = condition
        return condition

    def params(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            _P_ORG: self.own_org,
            _P_KIND: self.principal_kind,
            _P_ID: self.principal_id,
            _P_NOW: self.now,
            _P_CATEGORY: self.secondary_use_category or "",
        }
        if self.patients is not None:
            values[_P_PATIENTS] = sorted(self.patients)
        return values


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    purpose: Purpose
    filter: RecordFilter | None = None
    deidentify: bool = False

    def require(self) -> RecordFilter:
        if not self.allowed or self.filter is None:
            raise Forbidden(self.reason)
        return self.filter


class PolicyEngine:
    """Pure decisions; ``org_kinds`` says which organizations are network operators."""

    def __init__(
        self, org_kind: Callable[[str], str | None], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._org_kind = org_kind
        self.clock = clock

    def decide(self, principal: Principal, request: AccessRequest) -> Decision:
        roles = [ROLES[name] for name in principal.roles if name in ROLES]
        allowed_purposes = [p for role in roles for p in role.purposes]
        default = allowed_purposes[0] if allowed_purposes else Purpose.OPERATIONS
        purpose = request.purpose or default

        def refuse(reason: str) -> Decision:
            return Decision(False, reason, purpose)

        if principal.kind is PrincipalKind.SYSTEM:
            return Decision(True, "system", purpose, RecordFilter(principal.org_id, all_orgs=True))
        if not roles:
            return refuse("No role grants access to this resource.")
        if purpose not in allowed_purposes:
            return refuse("This purpose of use is not allowed for your roles.")
        if not self._scope_allows(principal, request):
            return refuse("Your scopes do not allow this interaction on this resource type.")

        if request.resource_type in SECURITY_TYPES:
            # Scopes are necessary, never sufficient: a wildcard scope does not
            # open the audit trail, and nobody writes it through an API.
            if request.interaction in WRITES:
                return refuse("The audit trail is written by Salus only.")
            if not any(role.security for role in roles):
                return refuse("Only security officers read the audit trail.")
        deidentify = purpose in (Purpose.RESEARCH, Purpose.PUBLIC_HEALTH) or all(
            role.deidentified for role in roles
        )
        if request.interaction in WRITES:
            target = request.target_org or principal.org_id
            if target != principal.org_id:
                return refuse("Records can only be written into your own organization.")
            if deidentify:
                return refuse("De-identified access is read-only.")
            return Decision(
                True, "own organization", purpose, RecordFilter(principal.org_id), deidentify
            )

        kind = PrincipalKind(principal.kind)
        base = RecordFilter(
            own_org=principal.org_id,
            principal_kind=kind.value,
            principal_id=principal.id,
            now=self.clock(),
        )
        if deidentify:
            category = "research" if purpose is Purpose.RESEARCH else "public-health"
            flt = RecordFilter(
                own_org=principal.org_id,
                all_orgs=True,
                secondary_use_category=category,
                now=base.now,
            )
            return Decision(True, "de-identified secondary use", purpose, flt, True)
        if request.resource_type in SECURITY_TYPES:
            network = self._org_kind(principal.org_id) == "operator"
            flt = RecordFilter(own_org=principal.org_id, all_orgs=network, now=base.now)
            return Decision(True, "security review", purpose, flt)
        if purpose is Purpose.TREATMENT and any(r.break_glass for r in roles):
            flt = RecordFilter(
                own_org=principal.org_id,
                care_sharing=True,
                principal_kind=kind.value,
                principal_id=principal.id,
                now=base.now,
            )
            return Decision(True, "treatment", purpose, flt)
        return Decision(
            True, "own organization", purpose, RecordFilter(own_org=principal.org_id, now=base.now)
        )

    def authorize(self, principal: Principal, request: AccessRequest) -> Decision:
        """:meth:`decide`, raising :class:`Forbidden` on refusal."""
        decision = self.decide(principal, request)
        if not decision.allowed:
            raise Forbidden(decision.reason)
        return decision

    @staticmethod
    def _scope_allows(principal: Principal, request: AccessRequest) -> bool:
        for text in principal.scopes:
            try:
                scope = parse_scope(text)
            except Exception:  # noqa: S112 - an unparsable scope grants nothing
                continue
            if scope.context == "patient":
                continue  # patient-context apps need a launch context (not offered yet)
            if scope.allows(request.resource_type, request.interaction.value):
                return True
        return False
