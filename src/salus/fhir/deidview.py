"""De-identified views of resources for research and public-health readers.

The policy engine marks such reads ``deidentify``; this module removes what
directly identifies a person before anything leaves Salus (in the spirit of
the HIPAA Safe Harbor list and DICOM PS3.15 Annex E's basic profile):
names, contact points, addresses below the state level, identifiers, photos
and attachments, contacts, narrative text, reference display strings, free
text notes; dates of birth are cut to the year; resource ids and references
are replaced by keyed pseudonyms (HMAC-SHA256), consistent within Salus so
that a researcher can still link a patient's records, but not reversible
without the server's secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

__all__ = ["Pseudonymizer", "deidentify"]

_DROP = frozenset(
    {
        "name",
        "telecom",
        "identifier",
        "photo",
        "contact",
        "text",
        "note",
        "communication",
        "link",
        "generalPractitioner",
        "managingOrganization",
        "attachment",
        "content",
        "presentedForm",
        "signature",
        "comment",
        "description",
    }
)
_ADDRESS_KEEP = ("state", "country", "use", "type")
#: Pseudonyms remembered per Pseudonymizer (a resource's references repeat).
_CACHE_SIZE = 65_536


class Pseudonymizer:
    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"salus-deid-pseudonyms/1", hashlib.sha256).digest()
        self._cache: dict[str, str] = {}

    def id(self, res_type: str, res_id: str) -> str:
        key = f"{res_type}/{res_id}"
        found = self._cache.get(key)
        if found is None:
            digest = hmac.new(self._key, key.encode(), hashlib.sha256)
            found = "p-" + digest.hexdigest()[:40]
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # a bounded memo: patients recur in bursts
            self._cache[key] = found
        return found

    def reference(self, reference: str) -> str | None:
        parts = reference.split("/")
        if len(parts) >= 2 and parts[-2][:1].isupper() and "_history" not in parts:
            return f"{parts[-2]}/{self.id(parts[-2], parts[-1])}"
        if "_history" in parts:
            index = parts.index("_history")
            return f"{parts[index - 2]}/{self.id(parts[index - 2], parts[index - 1])}"
        return None  # absolute or urn references: dropped


def _empty(value: Any) -> bool:
    """None, ``{}`` or ``[]`` (what a cleaned branch leaves when nothing is kept)."""
    return value is None or (type(value) in (dict, list) and not value)


def _clean(value: Any, pseudo: Pseudonymizer) -> Any:
    kind = type(value)
    if kind is list:
        cleaned = [_clean(item, pseudo) for item in value]
        return [item for item in cleaned if not _empty(item)]
    if kind is not dict:
        if not isinstance(value, Mapping):
            return value  # a primitive (the common case: checked without the ABC)
        value = dict(value)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in _DROP or key[:1] == "_":
            continue
        if key == "display" and "reference" in value:
            continue
        if key == "reference" and isinstance(item, str):
            replaced = pseudo.reference(item)
            if replaced is not None:
                out[key] = replaced
            continue
        if key == "address" and isinstance(item, list):
            kept = [
                {k: v for k, v in a.items() if k in _ADDRESS_KEEP}
                for a in item
                if isinstance(a, Mapping)
            ]
            kept = [a for a in kept if a]
            if kept:
                out[key] = kept
            continue
        if key == "birthDate" and isinstance(item, str):
            out[key] = item[:4]
            continue
        if type(item) in (str, int, float, bool):
            out[key] = item
            continue
        cleaned = _clean(item, pseudo)
        if not _empty(cleaned):
            out[key] = cleaned
    return out


def deidentify(resource: Mapping[str, Any], pseudo: Pseudonymizer) -> dict[str, Any]:
    """A copy of ``resource`` without direct identifiers (see the module docstring)."""
    res_type = str(resource.get("resourceType", ""))
    cleaned = _clean(resource, pseudo)
    assert isinstance(cleaned, dict)  # noqa: S101 - a mapping stays a mapping
    if "id" in resource:
        cleaned["id"] = pseudo.id(res_type, str(resource["id"]))
    cleaned["resourceType"] = res_type
    meta = dict(cleaned.get("meta") or {})
    meta.pop("source", None)
    security = list(meta.get("security") or [])
    security.append(
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "PSEUDED",
            "display": "pseudonymized",
        }
    )
    meta["security"] = security
    cleaned["meta"] = meta
    cleaned.pop("contained", None)
    return cleaned
