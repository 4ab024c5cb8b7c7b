"""Profiles known to the server: StructureDefinitions (and the ValueSets their
bindings name) stored like any resource under ``/fhir`` and found by canonical
URL (FHIR R4 ``references.html#canonical``, ``url|version``).

Several organizations may store a StructureDefinition with the same URL. A
canonical URL is meant to be globally unique, so one of them is chosen
deterministically, and not by whoever wrote last: a network operator's or the
health authority's first, then the oldest one. A hospital therefore cannot
replace the national profile another hospital is held to. Profiles are
conformance resources and carry no patient data; finding one ignores the
record filter, and only validation issues reach the caller.

Compiled profiles are cached by (row, version), so a new version of a
StructureDefinition is picked up by every process at its next use.

With ``SALUS_FHIR_ENFORCE_PROFILES`` the store's validator also checks each
written resource against the known profiles its ``meta.profile`` names
(unknown ones are ignored): every write path (REST, Bundles, bulk import,
HL7 v2 mapping) goes through it, and a violation is a 422 with one issue per
problem (FHIR ``http.html``: "the proposed resource violated applicable FHIR
profiles").
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from salus.db.tables import fhir_idx_uri, fhir_resources
from salus.errors import SalusError, UnprocessableContent
from salus.fhir.profiles import CORE_PREFIX, Profile, ProfileIssue, compile_profile, value_set_codes
from salus.fhir.store import FhirStore

if TYPE_CHECKING:
    from salus.db.engine import Database
    from salus.services import Services

__all__ = ["ProfileRegistry", "ProfileViolation", "declared_profiles", "install_profiles"]

#: Profiles compiled and value sets enumerated, kept per process.
CACHE_SIZE = 256
#: Profiles derived from profiles: how deep ``baseDefinition`` is followed.
MAX_DEPTH = 5
_TRUSTED_KINDS = ("operator", "authority")

R = fhir_resources
U = fhir_idx_uri


class ProfileViolation(UnprocessableContent):
    """A resource that breaks a profile its ``meta.profile`` names: 422 (FHIR
    R4 http.html: "the proposed resource violated applicable FHIR profiles"),
    one OperationOutcome issue per problem, each naming its element."""

    code = "profile-violation"

    def __init__(self, issues: Sequence[ProfileIssue] = ()) -> None:
        self.issues = list(issues)
        if not self.issues:
            super().__init__("The resource does not conform to its declared profile.")
            return
        first = self.issues[0]
        more = f" (and {len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        super().__init__(f"{first.message}{more}", expression=[first.expression])

    def to_operation_outcome(self, request_id: str | None = None) -> dict[str, Any]:
        outcome = super().to_operation_outcome(request_id)
        if self.issues:
            outcome["issue"] = [
                {
                    "severity": "error",
                    "code": issue.code,
                    "details": {
                        "coding": [{"system": "urn:salus:error", "code": self.code}],
                        "text": issue.message,
                    },
                    "diagnostics": issue.message,
                    "expression": [issue.expression],
                }
                for issue in self.issues
            ]
        return outcome


def declared_profiles(resource: Mapping[str, Any]) -> list[str]:
    """``meta.profile`` canonicals, the R4 base definitions left out."""
    meta = resource.get("meta")
    found = meta.get("profile") if isinstance(meta, Mapping) else None
    if not isinstance(found, list):
        return []
    return [
        url for url in found if isinstance(url, str) and url and not url.startswith(CORE_PREFIX)
    ]


class ProfileRegistry:
    def __init__(
        self,
        db: Database,
        store: FhirStore,
        org_kind: Callable[[str], str | None] | None = None,
        *,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.db = db
        self.store = store
        self.org_kind = org_kind
        self.cache_size = cache_size
        self._profiles: OrderedDict[tuple[int, int], Profile | None] = OrderedDict()
        self._value_sets: OrderedDict[tuple[int, int], Mapping[str, frozenset[str]] | None] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    # -- finding -----------------------------------------------------------------------
    def _find(self, res_type: str, canonical: str) -> tuple[int, int] | None:
        """(rid, version) of the chosen current resource of ``res_type`` with this
        canonical URL (``url`` or ``url|version``)."""
        url, _, version = canonical.partition("|")
        query = (
            select(R.c.rid, R.c.version, R.c.org_id)
            .join(U, U.c.rid == R.c.rid)
            .where(
                U.c.res_type == res_type,
                U.c.param == "url",
                U.c.value == url[:1024],
                R.c.res_type == res_type,
                R.c.deleted.is_(False),
            )
            .order_by(R.c.rid)
        )
        with self.db.read() as conn:
            rows = conn.execute(query).all()
            if rows and version:
                stored = self.store.by_rids(conn, [int(r.rid) for r in rows])
                rows = [
                    r for r in rows if (stored[int(r.rid)].resource or {}).get("version") == version
                ]
        if not rows:
            return None
        trusted = [r for r in rows if self._trusted(str(r.org_id))]
        chosen = (trusted or rows)[0]
        return int(chosen.rid), int(chosen.version)

    def _body(self, key: tuple[int, int]) -> dict[str, Any] | None:
        with self.db.read() as conn:
            found = self.store.by_rids(conn, [key[0]]).get(key[0])
        if found is None or found.resource is None or found.version != key[1]:
            return None
        return found.resource

    def _trusted(self, org_id: str) -> bool:
        return self.org_kind is not None and self.org_kind(org_id) in _TRUSTED_KINDS

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)

    def profile(self, canonical: str) -> Profile | None:
        """The compiled profile for a canonical URL; None when unknown or unusable."""
        key = self._find("StructureDefinition", canonical)
        if key is None:
            return None
        with self._lock:
            if key in self._profiles:
                self._profiles.move_to_end(key)
                return self._profiles[key]
        resource = self._body(key)
        if resource is None:
            return None  # changed meanwhile: found again at the next use
        try:
            compiled: Profile | None = compile_profile(resource)
        except SalusError:
            compiled = None
        self._remember(self._profiles, key, compiled)
        return compiled

    def value_set(self, canonical: str) -> Mapping[str, frozenset[str]] | None:
        """The codes of a ValueSet stored on the server, when it lists them."""
        key = self._find("ValueSet", canonical)
        if key is None:
            return None
        with self._lock:
            if key in self._value_sets:
                self._value_sets.move_to_end(key)
                return self._value_sets[key]
        resource = self._body(key)
        if resource is None:
            return None
        codes = value_set_codes(resource)
        self._remember(self._value_sets, key, codes)
        return codes

    # -- validating --------------------------------------------------------------------
    def validate(self, resource: Mapping[str, Any], canonical: str) -> list[ProfileIssue] | None:
        """Findings of the profile (and the profiles it derives from); None if unknown."""
        profile = self.profile(canonical)
        if profile is None:
            return None
        issues: list[ProfileIssue] = [
            ProfileIssue("warning", "informational", problem, "StructureDefinition")
            for problem in profile.problems
        ]
        seen = {canonical}
        current: Profile | None = profile
        depth = 0
        while current is not None and depth < MAX_DEPTH:
            issues.extend(current.validate(resource, self.value_set))
            base = current.base
            if base is None or base in seen:
                break
            seen.add(base)
            current = self.profile(base)
            depth += 1
        return issues

    def enforce(self, resource: Mapping[str, Any]) -> None:
        """Raise :class:`ProfileViolation` when a known declared profile is broken."""
        errors: list[ProfileIssue] = []
        for canonical in declared_profiles(resource):
            issues = self.validate(resource, canonical)
            errors.extend(i for i in issues or () if i.severity == "error")
        if errors:
            raise ProfileViolation(errors)


def install_profiles(services: Services) -> ProfileRegistry:
    """Give the FHIR router its registry (``$validate``), and with
    ``SALUS_FHIR_ENFORCE_PROFILES`` check ``meta.profile`` on every write."""
    registry = ProfileRegistry(services.db, services.fhir_store, services.org_kinds.kind)
    services.fhir_router.profiles = registry
    if services.settings.fhir_enforce_profiles:
        store = services.fhir_store
        base = store.validator

        def validator(resource: Mapping[str, Any]) -> None:
            if base is not None:
                base(resource)
            if declared_profiles(resource):
                registry.enforce(resource)

        store.validator = validator
    return registry
