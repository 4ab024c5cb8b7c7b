"""HL7 v2 data types → FHIR R4 data types (HL7 v2.8 chapter 2A; the
HL7 v2-to-FHIR mapping IG's data type maps are the model: DTM, CX, XPN, XAD,
XTN, CWE/CE, XCN, SN, NM).

Every function returns ``None`` (or an empty list) when the source is empty,
and :func:`prune` removes empty values before a resource is written (FHIR
``ele-1``). Malformed values raise :class:`InvalidInput` with the HL7
location and ERR code 102, never echoing the value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, overload
from zoneinfo import ZoneInfo

from salus.errors import InvalidInput
from salus.hl7.errors import DATA_TYPE_ERROR, Location, hl7_error
from salus.hl7.parse import Rep

__all__ = [
    "codeable",
    "coding_system",
    "dtm",
    "dtm_date",
    "human_name",
    "address",
    "telecom",
    "decimal",
    "prune",
    "xcn_display",
]

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")

#: HL7 table 0396 coding system names → FHIR system URIs.
SYSTEMS = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNM3": "http://snomed.info/sct",
    "UCUM": "http://unitsofmeasure.org",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "MVX": "http://terminology.hl7.org/CodeSystem/MVX",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "ISO3166_1": "urn:iso:std:iso:3166",
    "ISO+": "urn:iso:std:iso:11073:10101",
    "NCIT": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
}
_TABLE = re.compile(r"^HL7(\d{4})$")
_LOCAL = re.compile(r"[^A-Za-z0-9.\-]")


def coding_system(name: str) -> str | None:
    """A coding system name (table 0396) as a URI; local names become a Salus URN."""
    name = name.strip()
    if not name:
        return None
    upper = name.upper()
    if upper in SYSTEMS:
        return SYSTEMS[upper]
    table = _TABLE.match(upper)
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    if name.startswith(("http://", "https://", "urn:")):
        return name
    return "urn:salus:hl7:cs:" + (_LOCAL.sub("-", name)[:60] or "local")


def dtm(value: str, tz: ZoneInfo | timezone, where: Location) -> str | None:
    """DTM/TS → FHIR dateTime (a time zone is added when the value has a time)."""
    value = value.strip()
    if not value:
        return None
    found = _DTM.match(value)
    if not found:
        raise hl7_error(InvalidInput(f"{where} is not an HL7 date/time."), DATA_TYPE_ERROR, where)
    year, month, day, hour, minute, second, frac, offset = found.groups()
    try:
        if hour is None:
            datetime(int(year), int(month or 1), int(day or 1))
            return "-".join(p for p in (year, month, day) if p)
        zone: Any = tz
        if offset:
            sign = 1 if offset[0] == "+" else -1
            minutes = int(offset[1:3]) * 60 + int(offset[3:5])
            zone = timezone(sign * timedelta(minutes=minutes))
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour),
            int(minute or 0),
            int(second or 0),
            int((frac or "0").ljust(6, "0")[:6]),
            tzinfo=zone,
        )
    except ValueError:
        raise hl7_error(
            InvalidInput(f"{where} is not a valid date/time."), DATA_TYPE_ERROR, where
        ) from None
    text = moment.isoformat(timespec="milliseconds" if frac else "seconds")
    return text.replace("+00:00", "Z") if isinstance(zone, ZoneInfo) or offset else text


def dtm_date(value: str, where: Location) -> str | None:
    """The date part of a DTM (FHIR ``date``: birth dates)."""
    value = value.strip()[:8]
    if not value:
        return None
    return dtm(value, UTC, where)


def decimal(value: str, where: Location) -> float | int:
    text = value.strip()
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", text):
        raise hl7_error(InvalidInput(f"{where} is not a number."), DATA_TYPE_ERROR, where)
    number = float(text)
    return int(number) if number.is_integer() and "." not in text else number


def codeable(rep: Rep, *, alternate: bool = True) -> dict[str, Any] | None:
    """CE/CWE/CNE → CodeableConcept (identifier^text^system, alternates 4-6, text 9)."""
    codings = []
    for start in (1, 4) if alternate else (1,):
        code = rep.c(start)
        if code:
            coding = {
                "system": coding_system(rep.c(start + 2)),
                "code": code,
                "display": rep.c(start + 1) or None,
            }
            codings.append(coding)
    text = rep.c(9) or rep.c(2) or (rep.c(1) if not codings else "")
    concept = prune({"coding": codings, "text": text or None})
    return concept or None


def human_name(rep: Rep) -> dict[str, Any] | None:
    """XPN → HumanName (family 1.1, given 2 and 3, suffix 4, prefix 5, use from 7)."""
    uses = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "anonymous",
            "B": "official", "C": "official", "P": "usual", "T": "temp", "S": "anonymous",
            "U": "usual"}  # fmt: skip
    family = rep.c(1, 1)
    given = [g for g in (rep.c(2), rep.c(3)) if g]
    name = prune(
        {
            "family": family or None,
            "given": given,
            "suffix": [rep.c(4)] if rep.c(4) else [],
            "prefix": [rep.c(5)] if rep.c(5) else [],
            "use": uses.get(rep.c(7).upper()),
        }
    )
    return name if (name.get("family") or name.get("given")) else None


def address(rep: Rep) -> dict[str, Any] | None:
    """XAD → Address (street 1.1, other 2, city 3, state 4, zip 5, country 6, type 7)."""
    kind = rep.c(7).upper()
    lines = [x for x in (rep.c(1, 1), rep.c(2)) if x]
    result = prune(
        {
            "line": lines,
            "city": rep.c(3) or None,
            "state": rep.c(4) or None,
            "postalCode": rep.c(5) or None,
            "country": rep.c(6) or None,
            "district": rep.c(9) or None,
            "use": {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "billing"}.get(kind),
            "type": {"M": "postal", "SH": "physical"}.get(kind),
        }
    )
    return result or None


def telecom(rep: Rep, default_use: str) -> dict[str, Any] | None:
    """XTN → ContactPoint (number 1 or 6-7-8, use 2, equipment 3, email 4)."""
    equipment = rep.c(3).upper()
    system = {
        "PH": "phone",
        "CP": "phone",
        "FX": "fax",
        "BP": "pager",
        "INTERNET": "email",
        "X.400": "email",
        "MD": "other",
    }.get(equipment, "phone")
    value = rep.c(4) if system == "email" else ""
    if not value:
        local = "".join(p for p in (rep.c(6), rep.c(7)) if p)
        value = rep.c(12) or rep.c(1) or local
        if rep.c(8) and value:
            value = f"{value} x{rep.c(8)}"
    if not value:
        return None
    use = {"PRN": "home", "ORN": "home", "WPN": "work", "VHN": "temp", "EMR": "temp"}.get(
        rep.c(2).upper(), default_use
    )
    if equipment == "CP":
        use = "mobile"
    return prune({"system": system, "value": value, "use": use})


def xcn_display(rep: Rep) -> str | None:
    """XCN → a display name (prefix given family), for references without a target."""
    parts = [rep.c(6), rep.c(3), rep.c(2, 1), rep.c(5)]
    display = " ".join(p for p in parts if p)
    return display or (rep.c(1) or None)


@overload
def prune(value: dict[str, Any]) -> dict[str, Any]: ...
@overload
def prune(value: Any) -> Any: ...
def prune(value: Any) -> Any:
    """Remove None, empty strings, lists and objects, recursively (FHIR ele-1)."""
    if isinstance(value, dict):
        out = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        items = [prune(v) for v in value]
        return [v for v in items if v not in (None, "", [], {})]
    if isinstance(value, str):
        return value.strip() or None
    return value
