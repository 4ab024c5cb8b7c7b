"""Data categories of FHIR resources, for consent rules.

A consent rule names a category ("mental-health", "hiv", …) or ``*``. A
resource's category comes from its security labels (``meta.security``, HL7
v3 ActCode sensitivity codes, FHIR R4 security-labels.html), else
"general".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["GENERAL", "SENSITIVITY_CATEGORIES", "category_of"]

GENERAL = "general"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

#: v3 ActCode sensitivity codes → consent category.
SENSITIVITY_CATEGORIES: Mapping[str, str] = {
    "PSY": "mental-health",
    "PSYTHPN": "mental-health",
    "HIV": "hiv",
    "ETH": "substance-use",
    "SDV": "sexual-violence",
    "SEX": "sexuality",
    "STD": "sexual-health",
    "GDIS": "genetics",
    "SICKLE": "genetics",
}


def category_of(resource: Mapping[str, Any]) -> str:
    meta = resource.get("meta")
    labels = meta.get("security") if isinstance(meta, Mapping) else None
    if isinstance(labels, list):
        for label in labels:
            if isinstance(label, Mapping) and label.get("system") == _ACT_CODE:
                category = SENSITIVITY_CATEGORIES.get(str(label.get("code")))
                if category:
                    return category
    return GENERAL
