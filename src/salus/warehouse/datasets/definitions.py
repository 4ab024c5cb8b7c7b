"""The published dataset schemas (data; see :mod:`.schema` for the format).

Bump a schema's ``version`` whenever its columns, codes or rules change;
submissions record the version they were validated against. The ATC list is
a small subset of the WHO Collaborating Centre's ATC index (ATC/DDD Index,
https://atcddd.fhi.no/atc_ddd_index/): the essential medicines the network
reports on. A code must have the ATC level-5 shape (letter, two digits, two
letters, two digits) *and* be on the list.
"""

from __future__ import annotations

from typing import Any

from salus.warehouse.datasets.schema import DatasetSchema, schema_from_data

__all__ = ["ATC_CODES", "ATC_PATTERN", "ATC_SYSTEM", "SCHEMAS", "schema_named"]

ATC_SYSTEM = "http://www.whocc.no/atc"
ATC_PATTERN = r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$"

#: ATC level-5 code -> substance (WHO ATC index).
ATC_CODES: dict[str, str] = {
    "A02BC01": "omeprazole",
    "A10AB01": "insulin (human)",
    "A10BA02": "metformin",
    "B01AB01": "heparin",
    "B01AC06": "acetylsalicylic acid",
    "B05BB01": "electrolytes (sodium chloride infusion)",
    "C03CA01": "furosemide",
    "C07AB07": "bisoprolol",
    "C08CA01": "amlodipine",
    "C09AA02": "enalapril",
    "C10AA01": "simvastatin",
    "H02AB02": "dexamethasone",
    "J01CA04": "amoxicillin",
    "J01CR02": "amoxicillin and beta-lactamase inhibitor",
    "J01DD04": "ceftriaxone",
    "J01MA02": "ciprofloxacin",
    "J02AC01": "fluconazole",
    "J04AB02": "rifampicin",
    "J05AF05": "lamivudine",
    "J07BB02": "influenza, inactivated, split virus or surface antigen",
    "M01AE01": "ibuprofen",
    "N01AX10": "propofol",
    "N02AA01": "morphine",
    "N02BE01": "paracetamol",
    "N05BA01": "diazepam",
    "P01BF01": "artemether and lumefantrine",
    "R03AC02": "salbutamol",
    "R06AB04": "chlorphenamine",
}

_ORG = {
    "name": "org",
    "type": "string",
    "required": True,
    "max_length": 64,
    "description": "The submitting organization's Salus id (must be the submitter's own).",
}
_PERIOD = {
    "name": "period",
    "type": "month",
    "required": True,
    "description": "The reporting month (YYYY-MM); not in the future.",
}
_WARD_TYPES = [
    "medical",
    "surgical",
    "icu",
    "pediatric",
    "maternity",
    "emergency",
    "psychiatric",
    "other",
]

_DATA: list[dict[str, Any]] = [
    {
        "name": "staff",
        "version": "1.0",
        "title": "Staff",
        "description": (
            "One row per staff member at the end of the month: identity (kept only in the "
            "sealed FHIR Practitioner), role, department and full-time equivalent."
        ),
        "key": ["staff_id"],
        "period": "period",
        "org": "org",
        "mode": "replace",
        "resources": ["Practitioner", "PractitionerRole"],
        "columns": [
            _ORG,
            _PERIOD,
            {
                "name": "staff_id",
                "type": "string",
                "required": True,
                "max_length": 64,
                "pattern": r"^[A-Za-z0-9._-]+$",
                "description": "The hospital's staff number (stable across months).",
            },
            {
                "name": "family_name",
                "type": "string",
                "required": True,
                "personal": True,
                "description": "Family name (personal: never stored in the warehouse table).",
            },
            {
                "name": "given_name",
                "type": "string",
                "required": False,
                "personal": True,
                "description": "Given name(s) (personal).",
            },
            {
                "name": "gender",
                "type": "code",
                "required": False,
                "values": ["male", "female", "other", "unknown"],
                "description": "Administrative gender (FHIR AdministrativeGender).",
            },
            {
                "name": "role",
                "type": "code",
                "required": True,
                "values": ["doctor", "nurse", "midwife", "pharmacist", "technician", "other"],
                "description": "Professional role.",
            },
            {
                "name": "department",
                "type": "string",
                "required": False,
                "max_length": 100,
                "description": "Department or ward.",
            },
            {
                "name": "fte",
                "type": "decimal",
                "required": True,
                "minimum": 0,
                "maximum": 1.5,
                "description": "Full-time equivalent (0 to 1.5).",
            },
            {
                "name": "start_date",
                "type": "date",
                "required": False,
                "description": "Date the person started in this role.",
            },
        ],
    },
    {
        "name": "equipment",
        "version": "1.0",
        "title": "Equipment",
        "description": (
            "One row per major device: type, status at the end of the month and downtime "
            "during the month."
        ),
        "key": ["device_id"],
        "period": "period",
        "org": "org",
        "mode": "replace",
        "resources": ["Device"],
        "columns": [
            _ORG,
            _PERIOD,
            {
                "name": "device_id",
                "type": "string",
                "required": True,
                "max_length": 64,
                "pattern": r"^[A-Za-z0-9._-]+$",
                "description": "The hospital's asset number.",
            },
            {
                "name": "device_type",
                "type": "code",
                "required": True,
                "values": [
                    "ct",
                    "mri",
                    "xray",
                    "ultrasound",
                    "ventilator",
                    "dialysis",
                    "monitor",
                    "infusion_pump",
                    "other",
                ],
                "description": "Kind of device.",
            },
            {
                "name": "manufacturer",
                "type": "string",
                "required": False,
                "description": "Manufacturer.",
            },
            {"name": "model", "type": "string", "required": False, "description": "Model."},
            {
                "name": "status",
                "type": "code",
                "required": True,
                "values": ["active", "inactive", "unknown"],
                "description": "FHIR Device.status at the end of the month.",
            },
            {
                "name": "downtime_hours",
                "type": "decimal",
                "required": True,
                "minimum": 0,
                "maximum": 744,
                "description": "Hours out of service during the month (0 to 744).",
            },
            {
                "name": "downtime_reason",
                "type": "code",
                "required": False,
                "values": ["breakdown", "maintenance", "supplies", "other"],
                "description": "Main reason for the downtime.",
            },
        ],
    },
    {
        "name": "medicines",
        "version": "1.0",
        "title": "Medicine stock and consumption",
        "description": (
            "One row per product: stock at the start and end of the month, quantities "
            "received and consumed, and days out of stock."
        ),
        "key": ["product_code"],
        "period": "period",
        "org": "org",
        "mode": "replace",
        "resources": ["Medication"],
        "columns": [
            _ORG,
            _PERIOD,
            {
                "name": "product_code",
                "type": "string",
                "required": True,
                "max_length": 64,
                "pattern": r"^[A-Za-z0-9._-]+$",
                "description": "The hospital's product code.",
            },
            {
                "name": "product_name",
                "type": "string",
                "required": True,
                "description": "Product name, strength and form.",
            },
            {
                "name": "atc_code",
                "type": "code",
                "required": True,
                "pattern": ATC_PATTERN,
                "values": sorted(ATC_CODES),
                "description": "WHO ATC level-5 code (on the network's list).",
            },
            {
                "name": "unit",
                "type": "code",
                "required": True,
                "values": [
                    "tablet",
                    "capsule",
                    "vial",
                    "ampoule",
                    "bottle",
                    "bag",
                    "tube",
                    "sachet",
                    "dose",
                ],
                "description": "Unit the quantities count.",
            },
            {
                "name": "opening_stock",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "description": "Stock on the first day.",
            },
            {
                "name": "received",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "description": "Quantity received.",
            },
            {
                "name": "consumed",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "description": "Quantity dispensed or used.",
            },
            {
                "name": "closing_stock",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "description": "Stock on the last day (opening + received - consumed, or less "
                "after losses).",
            },
            {
                "name": "stockout_days",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "maximum": 31,
                "description": "Days with no stock (0 to 31).",
            },
        ],
    },
    {
        "name": "beds",
        "version": "1.0",
        "title": "Beds and occupancy",
        "description": (
            "One row per ward: staffed beds, occupied bed-days, admissions and discharges "
            "in the month."
        ),
        "key": ["ward_id"],
        "period": "period",
        "org": "org",
        "mode": "replace",
        "resources": ["Location"],
        "columns": [
            _ORG,
            _PERIOD,
            {
                "name": "ward_id",
                "type": "string",
                "required": True,
                "max_length": 64,
                "pattern": r"^[A-Za-z0-9._-]+$",
                "description": "The hospital's ward code.",
            },
            {
                "name": "ward_name",
                "type": "string",
                "required": True,
                "description": "Ward name.",
            },
            {
                "name": "ward_type",
                "type": "code",
                "required": True,
                "values": _WARD_TYPES,
                "description": "Kind of ward.",
            },
            {
                "name": "beds",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "maximum": 2000,
                "description": "Staffed beds.",
            },
            {
                "name": "occupied_bed_days",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "description": "Occupied bed-days (at most beds x days in the month).",
            },
            {
                "name": "admissions",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "description": "Admissions to the ward.",
            },
            {
                "name": "discharges",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "description": "Discharges (deaths included).",
            },
        ],
    },
    {
        "name": "quality",
        "version": "1.0",
        "title": "Quality and patient-safety indicators",
        "description": (
            "Counts per indicator and ward (or the whole hospital when ward_id is empty): a "
            "numerator and, for rates, a denominator. Appended: wards may report separately; "
            "an indicator already reported for a ward and month is refused."
        ),
        "key": ["indicator", "ward_id"],
        "period": "period",
        "org": "org",
        "mode": "append",
        "resources": ["MeasureReport"],
        "columns": [
            _ORG,
            _PERIOD,
            {
                "name": "indicator",
                "type": "code",
                "required": True,
                "values": [
                    "incidents",
                    "infections",
                    "falls",
                    "readmissions_30d",
                    "pressure_ulcers",
                    "medication_errors",
                ],
                "description": "Indicator: patient-safety incidents, hospital-acquired "
                "infections, falls, readmissions within 30 days, pressure ulcers, medication "
                "errors.",
            },
            {
                "name": "ward_id",
                "type": "string",
                "required": False,
                "max_length": 64,
                "pattern": r"^[A-Za-z0-9._-]+$",
                "description": "Ward code; empty for the whole hospital.",
            },
            {
                "name": "numerator",
                "type": "integer",
                "required": True,
                "minimum": 0,
                "description": "Events counted.",
            },
            {
                "name": "denominator",
                "type": "integer",
                "required": False,
                "minimum": 1,
                "description": "Population (patient-days, discharges...) for a rate.",
            },
        ],
    },
]

SCHEMAS: dict[str, DatasetSchema] = {d["name"]: schema_from_data(d) for d in _DATA}


def schema_named(name: str) -> DatasetSchema:
    """The schema called ``name`` (:class:`~salus.errors.NotFound` otherwise)."""
    from salus.errors import NotFound

    try:
        return SCHEMAS[name]
    except KeyError:
        raise NotFound("No such dataset.") from None
