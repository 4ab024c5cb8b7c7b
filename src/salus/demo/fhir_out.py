"""FHIR R4 transaction Bundles (http.html#transaction) of the generated records.

A hospital whose information system speaks FHIR sends one transaction per
patient: Patient, Encounters, Conditions (ICD-10), Observations (LOINC, UCUM,
reference ranges, interpretation) and MedicationRequests (ATC), linked by
``urn:uuid:`` full URLs, every create conditional (``ifNoneExist`` on the
hospital's identifier) so that sending it again changes nothing.

A hospital that sends ADT and ORU over MLLP sends its diagnoses and
prescriptions as transactions too, pointing at the Patient and Encounter the
HL7 messages created by conditional references (``Patient?identifier=…``,
http.html#trules).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from salus.demo.catalog import FAMILY_FIRST, HospitalSpec
from salus.demo.model import Encounter, Network, Registration

__all__ = [
    "ICD10",
    "bundle_for",
    "encounter_system",
    "mrn_system",
    "observation_system",
]

ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"
NATIONAL_ID = "urn:salus:national-id"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_NS = uuid.UUID("6f1c1b8e-3d0a-4b8e-9a57-5a1d5e2f0c11")
_CLASS = {"AMB": "ambulatory", "IMP": "inpatient encounter", "EMER": "emergency"}
_FLAG = {"H": "High", "L": "Low", "N": "Normal"}


def mrn_system(org_id: str) -> str:
    """The hospital's MRN system: the HL7 profile's default (docs/hl7.md)."""
    return f"urn:salus:org:{org_id}:mrn"


def encounter_system(org_id: str) -> str:
    return f"urn:salus:org:{org_id}:visit"


def observation_system(org_id: str) -> str:
    return f"urn:salus:org:{org_id}:lab-result"


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, '/'.join(parts))}"


def fhir_time(when: datetime, spec: HospitalSpec) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S") + spec.utc_offset


def patient_resource(reg: Registration, spec: HospitalSpec, script: str) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [
        {
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "system": mrn_system(reg.org_id),
            "value": reg.mrn,
        }
    ]
    if reg.national_id:
        identifiers.append(
            {
                "use": "official",
                "type": {"coding": [{"system": V2_0203, "code": "NI"}]},
                "system": NATIONAL_ID,
                "value": reg.national_id,
            }
        )
    text = f"{reg.family} {reg.given}" if script in FAMILY_FIRST else f"{reg.given} {reg.family}"
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": identifiers,
        "active": True,
        "name": [
            {"use": "official", "text": text, "family": reg.family, "given": reg.given.split()}
        ],
        "gender": reg.gender,
    }
    if reg.birth_date:
        patient["birthDate"] = reg.birth_date.isoformat()
    if reg.phone:
        patient["telecom"] = [{"system": "phone", "value": reg.phone, "use": "mobile"}]
    if reg.address:
        patient["address"] = [{"text": reg.address, "city": spec.city, "country": spec.country}]
    return patient


def _encounter(reg: Registration, enc: Encounter, spec: HospitalSpec, patient: str) -> Any:
    return {
        "resourceType": "Encounter",
        "identifier": [
            {"use": "official", "system": encounter_system(reg.org_id), "value": enc.visit}
        ],
        "status": "finished",
        "class": {"system": V3_ACT, "code": enc.cls, "display": _CLASS[enc.cls]},
        "subject": {"reference": patient},
        "period": {"start": fhir_time(enc.start, spec), "end": fhir_time(enc.end, spec)},
        # The hospital that provides the care (the indicators count encounters by it).
        "serviceProvider": {
            "reference": f"Organization/{reg.org_id}",
            "identifier": {"system": "urn:salus:org", "value": reg.org_id},
        },
    }


def _clinical(
    reg: Registration, enc: Encounter, spec: HospitalSpec, patient: str, encounter: str,
    *, with_labs: bool,
) -> list[dict[str, Any]]:  # fmt: skip
    """Conditions, (Observations) and MedicationRequests of one encounter."""
    out: list[dict[str, Any]] = []
    when = fhir_time(enc.start, spec)
    for dx in enc.diagnoses:
        out.append(
            {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "verificationStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                            "code": "confirmed",
                        }
                    ]
                },
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                "code": "encounter-diagnosis",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": ICD10, "code": dx.code, "display": dx.display}]},
                "subject": {"reference": patient},
                "encounter": {"reference": encounter},
                "recordedDate": when,
            }
        )
    if with_labs:
        for lab in enc.labs:
            out.append(
                {
                    "resourceType": "Observation",
                    "identifier": [
                        {
                            "system": observation_system(reg.org_id),
                            "value": f"{enc.visit}-{lab.lab.loinc}",
                        }
                    ],
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {
                        "coding": [
                            {"system": LOINC, "code": lab.lab.loinc, "display": lab.lab.display}
                        ]
                    },
                    "subject": {"reference": patient},
                    "encounter": {"reference": encounter},
                    "effectiveDateTime": when,
                    "valueQuantity": {
                        "value": lab.value,
                        "unit": lab.lab.unit,
                        "system": UCUM,
                        "code": lab.lab.unit,
                    },
                    "interpretation": [
                        {
                            "coding": [
                                {
                                    "system": INTERPRETATION,
                                    "code": lab.flag,
                                    "display": _FLAG[lab.flag],
                                }
                            ]
                        }
                    ],
                    "referenceRange": [
                        {
                            "low": {
                                "value": lab.lab.low,
                                "unit": lab.lab.unit,
                                "system": UCUM,
                                "code": lab.lab.unit,
                            },
                            "high": {
                                "value": lab.lab.high,
                                "unit": lab.lab.unit,
                                "system": UCUM,
                                "code": lab.lab.unit,
                            },
                        }  # fmt: skip
                    ],
                }
            )
    for rx in enc.prescriptions:
        out.append(
            {
                "resourceType": "MedicationRequest",
                "status": "completed",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [{"system": ATC, "code": rx.atc}],
                    "text": rx.text,
                },
                "subject": {"reference": patient},
                "encounter": {"reference": encounter},
                "authoredOn": when,
                "dosageInstruction": [{"text": rx.dosage}],
            }
        )
    return out


def _entry(full_url: str, resource: dict[str, Any], if_none_exist: str | None) -> Any:
    request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url, "resource": resource, "request": request}


def bundle_for(network: Network, reg: Registration) -> dict[str, Any] | None:
    """The transaction this hospital sends for this patient (None: nothing to send)."""
    spec = network.hospital(reg.org_id)
    script = next(p.script for p in network.people if p.key == reg.person)
    entries: list[dict[str, Any]] = []
    if spec.his == "fhir":
        patient = _urn(reg.org_id, reg.mrn)
        entries.append(
            _entry(
                patient,
                patient_resource(reg, spec, script),
                f"identifier={mrn_system(reg.org_id)}|{reg.mrn}",
            )
        )
    else:
        patient = f"Patient?identifier={mrn_system(reg.org_id)}|{reg.mrn}"
    for enc in reg.encounters:
        if spec.his == "fhir":
            encounter = _urn(reg.org_id, reg.mrn, enc.visit)
            entries.append(
                _entry(
                    encounter,
                    _encounter(reg, enc, spec, patient),
                    f"identifier={encounter_system(reg.org_id)}|{enc.visit}",
                )
            )
        else:
            encounter = f"Encounter?identifier={encounter_system(reg.org_id)}|{enc.visit}"
        resources = _clinical(reg, enc, spec, patient, encounter, with_labs=spec.his == "fhir")
        for n, resource in enumerate(resources):
            entries.append(_entry(_urn(reg.org_id, reg.mrn, enc.visit, str(n)), resource, None))
    if not entries:
        return None
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
