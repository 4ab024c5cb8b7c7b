"""FHIR R4 resources made from accepted rows.

Ids are derived from (organization, dataset, kind, key) so that a later
submission updates the same resources instead of duplicating them:
``ds-`` + 40 hex digits of SHA-256 (FHIR ids allow 64 characters,
``datatypes.html#id``). Entities (Practitioner, PractitionerRole, Device,
Medication, Location) are keyed without the period: the latest submission
describes them. A MeasureReport is per period.

* staff -> Practitioner (``practitioner.html``: identifier, name, gender) and
  PractitionerRole (``practitionerrole.html``: practitioner, organization,
  code, specialty as the department text, period.start);
* equipment -> Device (``device.html``: identifier, status, type, manufacturer,
  modelNumber, owner; downtime as ``property`` with a Quantity in hours);
* medicines -> Medication (``medication.html``: code with the WHO ATC coding,
  identifier, the product name as code.text);
* beds -> Location (``location.html``: identifier, name, type, physicalType
  ``wa`` (ward), managingOrganization); the counts stay in the warehouse table;
* quality -> MeasureReport (``measurereport.html``: status complete, type
  summary, measure ``urn:salus:measure:<indicator>``, period, reporter,
  a group with numerator/denominator populations and the score).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from salus.warehouse.datasets.definitions import ATC_CODES, ATC_SYSTEM

__all__ = ["CODE_SYSTEM", "IDENTIFIER_SYSTEM", "map_row", "resource_id"]

CODE_SYSTEM = "urn:salus:codesystem:dataset"
ORG_SYSTEM = "urn:salus:org"


def IDENTIFIER_SYSTEM(org: str, dataset: str) -> str:  # noqa: N802 - a constant per org
    """The identifier system of a hospital's keys in one dataset."""
    return f"urn:salus:org:{org}:dataset:{dataset}"


def resource_id(org: str, dataset: str, kind: str, key: str) -> str:
    digest = hashlib.sha256(f"{org}|{dataset}|{kind}|{key}".encode()).hexdigest()
    return f"ds-{digest[:40]}"


def _org_ref(org: str) -> dict[str, Any]:
    return {"reference": f"Organization/{org}", "identifier": {"system": ORG_SYSTEM, "value": org}}


def _coding(dataset: str, column: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{CODE_SYSTEM}:{dataset}:{column}", "code": code}]}


def _month_bounds(period: str) -> tuple[str, str]:
    import calendar

    year, month = int(period[:4]), int(period[5:7])
    last = calendar.monthrange(year, month)[1]
    return f"{period}-01", f"{period}-{last:02d}"


def _identifier(org: str, dataset: str, value: str) -> list[dict[str, Any]]:
    return [{"system": IDENTIFIER_SYSTEM(org, dataset), "value": value}]


def _staff(org: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    key = row["staff_id"]
    practitioner_id = resource_id(org, "staff", "Practitioner", key)
    name: dict[str, Any] = {"use": "official", "family": row["family_name"]}
    if row.get("given_name"):
        name["given"] = row["given_name"].split()
    practitioner: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": practitioner_id,
        "identifier": _identifier(org, "staff", key),
        "active": True,
        "name": [name],
    }
    if row.get("gender"):
        practitioner["gender"] = row["gender"]
    role: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": resource_id(org, "staff", "PractitionerRole", key),
        "identifier": _identifier(org, "staff", key),
        "active": True,
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "organization": _org_ref(org),
        "code": [_coding("staff", "role", row["role"])],
    }
    if row.get("department"):
        role["specialty"] = [{"text": row["department"]}]
    if row.get("start_date"):
        role["period"] = {"start": row["start_date"]}
    return [practitioner, role]


def _equipment(org: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    key = row["device_id"]
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": resource_id(org, "equipment", "Device", key),
        "identifier": _identifier(org, "equipment", key),
        "status": row["status"],
        "type": _coding("equipment", "device_type", row["device_type"]),
        "owner": _org_ref(org),
        "property": [
            {
                "type": {
                    **_coding("equipment", "property", "downtime-hours"),
                    "text": f"Downtime in {row['period']}",
                },
                "valueQuantity": [
                    {
                        "value": row["downtime_hours"],
                        "unit": "h",
                        "system": "http://unitsofmeasure.org",
                        "code": "h",
                    }
                ],
            }
        ],
    }
    if row.get("downtime_reason"):
        device["property"][0]["valueCode"] = [
            _coding("equipment", "downtime_reason", row["downtime_reason"])
        ]
    if row.get("manufacturer"):
        device["manufacturer"] = row["manufacturer"]
    if row.get("model"):
        device["modelNumber"] = row["model"]
    return [device]


def _medicines(org: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    key = row["product_code"]
    atc = row["atc_code"]
    return [
        {
            "resourceType": "Medication",
            "id": resource_id(org, "medicines", "Medication", key),
            "identifier": _identifier(org, "medicines", key),
            "status": "active",
            "code": {
                "coding": [{"system": ATC_SYSTEM, "code": atc, "display": ATC_CODES[atc]}],
                "text": row["product_name"],
            },
        }
    ]


def _beds(org: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    key = row["ward_id"]
    return [
        {
            "resourceType": "Location",
            "id": resource_id(org, "beds", "Location", key),
            "identifier": _identifier(org, "beds", key),
            "status": "active",
            "name": row["ward_name"],
            "mode": "instance",
            "type": [_coding("beds", "ward_type", row["ward_type"])],
            "physicalType": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                        "code": "wa",
                    }
                ]
            },
            "managingOrganization": _org_ref(org),
        }
    ]


def _quality(org: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    indicator, ward, period = row["indicator"], row.get("ward_id") or "", row["period"]
    start, end = _month_bounds(period)
    population = [
        {
            "code": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/measure-population",
                        "code": "numerator",
                    }
                ]
            },
            "count": row["numerator"],
        }
    ]
    group: dict[str, Any] = {
        "code": _coding("quality", "indicator", indicator),
        "population": population,
    }
    if row.get("denominator") is not None:
        population.append(
            {
                "code": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/measure-population",
                            "code": "denominator",
                        }
                    ]
                },
                "count": row["denominator"],
            }
        )
        group["measureScore"] = {"value": round(row["numerator"] / row["denominator"], 6)}
    report: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "id": resource_id(org, "quality", "MeasureReport", f"{period}|{indicator}|{ward}"),
        "identifier": _identifier(org, "quality", f"{period}.{indicator}.{ward or 'all'}"),
        "status": "complete",
        "type": "summary",
        "measure": f"urn:salus:measure:{indicator}",
        "date": f"{end}T23:59:59Z",
        "period": {"start": start, "end": end},
        "reporter": _org_ref(org),
        "group": [group],
    }
    if ward:
        report["group"][0]["stratifier"] = [
            {
                "code": [_coding("quality", "stratifier", "ward")],
                "stratum": [
                    {
                        "value": {"text": ward},
                        "population": [dict(p) for p in population],
                    }
                ],
            }
        ]
    return [report]


_MAPPERS: dict[str, Callable[[str, dict[str, Any]], list[dict[str, Any]]]] = {
    "staff": _staff,
    "equipment": _equipment,
    "medicines": _medicines,
    "beds": _beds,
    "quality": _quality,
}


def map_row(dataset: str, org: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The FHIR resources (with their ids) one accepted row produces."""
    return _MAPPERS[dataset](org, row)
