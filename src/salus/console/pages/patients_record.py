"""The integrated patient record as the console shows it: FHIR R4 resources of one
person, from every hospital the reader may see, turned into display rows.

Pure functions over resources (no I/O), so they are unit-tested on their own.
What is read: Patient (patient.html: name, identifier, birthDate, gender,
address, telecom, link), Encounter (encounter.html), Condition (ICD-10 codes,
condition.html), Observation (values, units, referenceRange, interpretation;
observation.html), MedicationRequest / MedicationStatement (ATC codes),
DocumentReference (attachments, documentreference.html) and ImagingStudy
(imagingstudy.html; the Study Instance UID opens the viewer).

**Linking one person across hospitals.** Salus has no master patient index
yet: each hospital's Patient is its own resource. The record joins the
Patients that share a national identifier (system
:data:`NATIONAL_ID_SYSTEM`, as the FHIR feeds and the HL7 v2 mapping write it,
or an identifier typed ``NI``) and those named by ``Patient.link`` (HL7 A40
merges, ``seealso``), each read under the reader's own access rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from salus.console.i18n import N_

__all__ = [
    "KINDS",
    "NATIONAL_ID_SYSTEM",
    "Demographics",
    "Entry",
    "demographics",
    "entries_of",
    "link_targets",
    "national_ids",
    "patient_label",
]

NATIONAL_ID_SYSTEM = "urn:salus:national-id"
ATC_SYSTEM = "http://www.whocc.no/atc"
LOINC_SYSTEM = "http://loinc.org"
ICD10_MARKERS = ("icd-10", "icd10")
#: Observation interpretation codes that mean "outside normal" (v3 ObservationInterpretation).
ABNORMAL = frozenset({"H", "HH", "HU", "L", "LL", "LU", "A", "AA", "<", ">", "POS", "DET", "R"})

#: Kinds of timeline entries: (key, label, FHIR types).
KINDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("encounter", N_("Encounters"), ("Encounter",)),
    ("condition", N_("Diagnoses"), ("Condition",)),
    ("observation", N_("Results"), ("Observation",)),
    ("medication", N_("Medications"), ("MedicationRequest", "MedicationStatement")),
    ("document", N_("Documents"), ("DocumentReference",)),
    ("imaging", N_("Imaging studies"), ("ImagingStudy",)),
)
KIND_OF_TYPE = {t: key for key, _label, types in KINDS for t in types}


def _text(concept: Mapping[str, Any] | None) -> str:
    if not concept:
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    for coding in concept.get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def _code(concept: Mapping[str, Any] | None, wanted: Iterable[str]) -> str:
    """The first code whose system contains one of ``wanted`` (case-insensitive)."""
    markers = [w.lower() for w in wanted]
    for coding in (concept or {}).get("coding") or []:
        system = str(coding.get("system", "")).lower()
        if coding.get("code") and any(m in system for m in markers):
            return str(coding["code"])
    return ""


def _name(name: Mapping[str, Any]) -> str:
    if name.get("text"):
        return str(name["text"])
    given = " ".join(str(g) for g in name.get("given") or [])
    family = str(name.get("family") or "")
    return " ".join(p for p in (family, given) if p)


def patient_label(patient: Mapping[str, Any]) -> str:
    """The first name of a Patient (official first), or its id."""
    names = sorted(patient.get("name") or [], key=lambda n: n.get("use") != "official")
    for name in names:
        label = _name(name)
        if label:
            return label
    return str(patient.get("id", ""))


def national_ids(patient: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(system, value) of the Patient's national identifiers."""
    found = []
    for ident in patient.get("identifier") or []:
        system, value = str(ident.get("system") or ""), str(ident.get("value") or "")
        codes = {str(c.get("code")) for c in (ident.get("type") or {}).get("coding") or []}
        if value and system and (system == NATIONAL_ID_SYSTEM or "NI" in codes):
            found.append((system, value))
    return found


def link_targets(patient: Mapping[str, Any]) -> list[str]:
    """Ids of the Patients that ``Patient.link`` names (``Patient/<id>`` references)."""
    ids = []
    for link in patient.get("link") or []:
        ref = str((link.get("other") or {}).get("reference") or "")
        if ref.startswith("Patient/") and "/" not in ref[8:] and ref[8:]:
            ids.append(ref[8:])
    return ids


@dataclass(frozen=True, slots=True)
class Identifier:
    system: str
    value: str
    label: str
    org: str


@dataclass
class Demographics:
    id: str
    org: str
    names: list[str]
    birth_date: str
    gender: str
    addresses: list[str]
    telecom: list[str]
    identifiers: list[Identifier] = field(default_factory=list)


def _identifier_label(ident: Mapping[str, Any]) -> str:
    system = str(ident.get("system") or "")
    if system == NATIONAL_ID_SYSTEM:
        return N_("National id")
    type_text = _text(ident.get("type"))
    if type_text in ("MR", "MRN") or "mrn" in system.lower():
        return N_("Medical record number")
    return type_text or system or N_("Identifier")


def demographics(patient: Mapping[str, Any], org: str) -> Demographics:
    addresses = []
    for address in patient.get("address") or []:
        parts = [*(address.get("line") or []), address.get("city"), address.get("country")]
        text = address.get("text") or ", ".join(str(p) for p in parts if p)
        if text:
            addresses.append(str(text))
    return Demographics(
        id=str(patient.get("id", "")),
        org=org,
        names=[n for n in (_name(name) for name in patient.get("name") or []) if n],
        birth_date=str(patient.get("birthDate") or ""),
        gender=str(patient.get("gender") or ""),
        addresses=addresses,
        telecom=[str(t.get("value")) for t in patient.get("telecom") or [] if t.get("value")],
        identifiers=[
            Identifier(
                str(i.get("system") or ""), str(i.get("value") or ""), _identifier_label(i), org
            )
            for i in patient.get("identifier") or []
            if i.get("value")
        ],
    )


@dataclass
class Entry:
    """One row of the timeline."""

    kind: str
    res_type: str
    res_id: str
    date: str
    title: str
    org: str
    patient: str
    code: str = ""
    code_system: str = ""
    status: str = ""
    detail: str = ""
    value: str = ""
    unit: str = ""
    range: str = ""
    interpretation: str = ""
    abnormal: bool = False
    #: (label, href) of a document's attachments.
    links: list[tuple[str, str]] = field(default_factory=list)
    #: An ImagingStudy's Study Instance UID (opens the viewer).
    study_uid: str = ""


def _period_start(period: Mapping[str, Any] | None) -> str:
    return str((period or {}).get("start") or "")


def _quantity(q: Mapping[str, Any] | None) -> tuple[str, str]:
    if not q or q.get("value") is None:
        return "", ""
    return f"{q['value']:g}" if isinstance(q["value"], float) else str(q["value"]), str(
        q.get("unit") or q.get("code") or ""
    )


def _observation(resource: Mapping[str, Any], entry: Entry) -> None:
    code = resource.get("code")
    entry.code, entry.code_system = _code(code, ["loinc"]), "LOINC"
    entry.date = str(
        resource.get("effectiveDateTime")
        or _period_start(resource.get("effectivePeriod"))
        or resource.get("effectiveInstant")
        or resource.get("issued")
        or ""
    )
    number: float | None = None
    if "valueQuantity" in resource:
        entry.value, entry.unit = _quantity(resource["valueQuantity"])
        raw = resource["valueQuantity"].get("value")
        number = float(raw) if isinstance(raw, int | float) else None
    elif "valueCodeableConcept" in resource:
        entry.value = _text(resource["valueCodeableConcept"])
    elif "valueString" in resource:
        entry.value = str(resource["valueString"])
    elif "valueBoolean" in resource or "valueInteger" in resource:
        entry.value = str(resource.get("valueBoolean", resource.get("valueInteger")))
    ranges = resource.get("referenceRange") or []
    low = high = None
    if ranges:
        first = ranges[0]
        low_v, _u = _quantity(first.get("low"))
        high_v, _u = _quantity(first.get("high"))
        low, high = (first.get("low") or {}).get("value"), (first.get("high") or {}).get("value")
        if first.get("text"):
            entry.range = str(first["text"])
        elif low_v or high_v:
            entry.range = f"{low_v or '…'} – {high_v or '…'}"
    codes = [
        str(c.get("code"))
        for concept in resource.get("interpretation") or []
        for c in concept.get("coding") or []
        if c.get("code")
    ]
    texts = [_text(concept) for concept in resource.get("interpretation") or []]
    entry.interpretation = ", ".join(t for t in texts if t)
    outside = number is not None and (
        (isinstance(low, int | float) and number < low)
        or (isinstance(high, int | float) and number > high)
    )
    entry.abnormal = bool(ABNORMAL.intersection(codes)) or outside
    if outside and not entry.interpretation:
        entry.interpretation = "H" if isinstance(high, int | float) and number > high else "L"  # type: ignore[operator]


def _entry(resource: Mapping[str, Any], org: str, patient: str) -> Entry | None:
    res_type = str(resource.get("resourceType"))
    kind = KIND_OF_TYPE.get(res_type)
    if kind is None:
        return None
    res_id = str(resource.get("id", ""))
    entry = Entry(
        kind, res_type, res_id, "", "", org, patient, status=str(resource.get("status") or "")
    )
    if res_type == "Encounter":
        types = resource.get("type") or []
        klass = resource.get("class") or {}
        entry.title = (
            _text(types[0]) if types else str(klass.get("display") or klass.get("code") or "")
        )
        entry.date = _period_start(resource.get("period"))
        end = str((resource.get("period") or {}).get("end") or "")
        reasons = [_text(r) for r in resource.get("reasonCode") or []]
        entry.detail = "; ".join(
            p
            for p in [*(r for r in reasons if r), f"→ {end[:16].replace('T', ' ')}" if end else ""]
            if p
        )
    elif res_type == "Condition":
        entry.title = _text(resource.get("code"))
        entry.code, entry.code_system = _code(resource.get("code"), ICD10_MARKERS), "ICD-10"
        entry.date = str(
            resource.get("onsetDateTime")
            or _period_start(resource.get("onsetPeriod"))
            or resource.get("recordedDate")
            or ""
        )
        entry.status = _text(resource.get("clinicalStatus")) or entry.status
    elif res_type == "Observation":
        entry.title = _text(resource.get("code"))
        _observation(resource, entry)
    elif res_type in ("MedicationRequest", "MedicationStatement"):
        medication = resource.get("medicationCodeableConcept")
        entry.title = _text(medication) or str(
            (resource.get("medicationReference") or {}).get("display") or ""
        )
        entry.code, entry.code_system = _code(medication, ["atc"]), "ATC"
        entry.date = str(
            resource.get("authoredOn")
            or resource.get("effectiveDateTime")
            or _period_start(resource.get("effectivePeriod"))
            or resource.get("dateAsserted")
            or ""
        )
        dosage = resource.get("dosageInstruction") or resource.get("dosage") or []
        entry.detail = str(dosage[0].get("text") or "") if dosage else ""
    elif res_type == "DocumentReference":
        entry.title = str(resource.get("description") or _text(resource.get("type")))
        entry.date = str(resource.get("date") or "")
        for index, content in enumerate(resource.get("content") or []):
            attachment = content.get("attachment") or {}
            label = str(attachment.get("title") or attachment.get("contentType") or index + 1)
            entry.links.append((label, f"/patients/{patient}/documents/{res_id}/{index}"))
    elif res_type == "ImagingStudy":
        entry.title = str(resource.get("description") or "")
        entry.date = str(resource.get("started") or "")
        modalities = sorted(
            {
                str(m.get("code"))
                for s in resource.get("series") or []
                for m in [s.get("modality") or {}]
                if m.get("code")
            }
            | {str(m.get("code")) for m in resource.get("modality") or [] if m.get("code")}
        )
        entry.code = " ".join(modalities)
        entry.value = str(resource.get("numberOfSeries") or len(resource.get("series") or []))
        entry.unit = str(resource.get("numberOfInstances") or "")
        entry.study_uid = study_uid(resource)
    return entry


def study_uid(resource: Mapping[str, Any]) -> str:
    """The Study Instance UID of an ImagingStudy (its ``urn:dicom:uid`` identifier)."""
    for ident in resource.get("identifier") or []:
        value = str(ident.get("value") or "")
        if ident.get("system") == "urn:dicom:uid" and value:
            return value.removeprefix("urn:oid:")
    res_id = str(resource.get("id") or "")
    return res_id if res_id.replace(".", "").isdigit() else ""


def entries_of(
    resources: Iterable[Mapping[str, Any]],
    holders: Mapping[str, str],
    patient_of: Mapping[str, str],
) -> list[Entry]:
    """Timeline rows, newest first. ``holders``: ``Type/id`` → organization;
    ``patient_of``: ``Type/id`` → the Patient id the record belongs to."""
    rows = []
    for resource in resources:
        key = f"{resource.get('resourceType')}/{resource.get('id')}"
        entry = _entry(resource, holders.get(key, ""), patient_of.get(key, ""))
        if entry is not None:
            rows.append(entry)
    rows.sort(key=lambda e: (e.date, e.res_type, e.res_id), reverse=True)
    return rows


def subject_of(resource: Mapping[str, Any]) -> str:
    """The Patient id a clinical resource refers to (subject or patient)."""
    for name in ("subject", "patient"):
        ref = str((resource.get(name) or {}).get("reference") or "")
        if ref.startswith("Patient/"):
            return ref[8:]
    return ""
