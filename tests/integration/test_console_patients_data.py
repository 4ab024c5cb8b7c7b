"""Synthetic data for the patient pages' tests (TestClient and browser): one
person known to hospital A and hospital B under different record numbers and
the same national id, a record at each hospital (FHIR transactions), and a
small CT series (pydicom). Also unit tests of the record's display rows
(:mod:`salus.console.pages.patients_record`) on that data.

Every call makes fresh ids, so tests (and browser test modules sharing one
server) never see each other's patients.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Any

NATIONAL = "urn:salus:national-id"


@dataclass(frozen=True)
class Person:
    tag: str
    a_patient: str
    b_patient: str
    national_id: str
    a_mrn: str
    b_mrn: str
    family: str = "Nguyễn"
    given: str = "Thị Hoa"
    hangul: str = "김하나"


def new_person() -> Person:
    tag = uuid.uuid4().hex[:8]
    return Person(
        tag=tag,
        a_patient=f"pa-{tag}",
        b_patient=f"pb-{tag}",
        national_id=f"0790{int(tag, 16) % 10**8:08d}",
        a_mrn=f"A-{tag}",
        b_mrn=f"B-{tag}",
    )


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def bundle_a(p: Person) -> dict[str, Any]:
    """Hospital A: the Patient, an encounter, a diagnosis (ICD-10), a document."""
    subject = {"reference": f"Patient/{p.a_patient}"}
    note = base64.b64encode(f"Discharge letter {p.tag}: pneumonia, improving.".encode()).decode()
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _put(
                {
                    "resourceType": "Patient",
                    "id": p.a_patient,
                    "identifier": [
                        {"system": "urn:hosp-a:mrn", "value": p.a_mrn},
                        {"system": NATIONAL, "value": p.national_id},
                    ],
                    "name": [{"use": "official", "family": p.family, "given": p.given.split()}],
                    "gender": "female",
                    "birthDate": "1984-03-12",
                    "address": [{"city": "Hà Nội", "country": "VN"}],
                }
            ),
            _put(
                {
                    "resourceType": "Encounter",
                    "id": f"enc-a-{p.tag}",
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "IMP",
                        "display": "inpatient encounter",
                    },
                    "subject": subject,
                    "period": {"start": "2026-10-01T08:00:00Z", "end": "2026-10-05T12:00:00Z"},
                }
            ),
            _put(
                {
                    "resourceType": "Condition",
                    "id": f"cond-a-{p.tag}",
                    "subject": subject,
                    "code": {
                        "coding": [
                            {
                                "system": "http://hl7.org/fhir/sid/icd-10",
                                "code": "J18.9",
                                "display": "Pneumonia, unspecified organism",
                            }
                        ]
                    },
                    "recordedDate": "2026-10-01",
                }
            ),
            _put(
                {
                    "resourceType": "DocumentReference",
                    "id": f"doc-a-{p.tag}",
                    "status": "current",
                    "subject": subject,
                    "date": "2026-10-05T12:00:00Z",
                    "description": "Discharge letter",
                    "content": [
                        {
                            "attachment": {
                                "contentType": "text/plain",
                                "title": "letter.txt",
                                "data": note,
                            }
                        }
                    ],
                }
            ),
        ],
    }


def bundle_b(p: Person) -> dict[str, Any]:
    """Hospital B: the Patient (Hangul name), a high glucose result, a prescription (ATC)."""
    subject = {"reference": f"Patient/{p.b_patient}"}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _put(
                {
                    "resourceType": "Patient",
                    "id": p.b_patient,
                    "identifier": [
                        {"system": "urn:hosp-b:mrn", "value": p.b_mrn},
                        {"system": NATIONAL, "value": p.national_id},
                    ],
                    "name": [{"text": p.hangul, "family": p.hangul[0], "given": [p.hangul[1:]]}],
                    "gender": "female",
                    "birthDate": "1984-03-12",
                }
            ),
            _put(
                {
                    "resourceType": "Observation",
                    "id": f"obs-b-{p.tag}",
                    "status": "final",
                    "code": {
                        "coding": [
                            {
                                "system": "http://loinc.org",
                                "code": "2345-7",
                                "display": "Glucose [Mass/volume] in Serum or Plasma",
                            }
                        ]
                    },
                    "subject": subject,
                    "effectiveDateTime": "2026-11-02T09:30:00Z",
                    "valueQuantity": {
                        "value": 212,
                        "unit": "mg/dL",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg/dL",
                    },
                    "referenceRange": [
                        {
                            "low": {"value": 70, "unit": "mg/dL"},
                            "high": {"value": 99, "unit": "mg/dL"},
                        }
                    ],
                    "interpretation": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                    "code": "H",
                                    "display": "High",
                                }
                            ]
                        }
                    ],
                }
            ),
            _put(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"med-b-{p.tag}",
                    "status": "active",
                    "intent": "order",
                    "subject": subject,
                    "authoredOn": "2026-11-02",
                    "medicationCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.whocc.no/atc",
                                "code": "A10BA02",
                                "display": "metformin",
                            }
                        ]
                    },
                    "dosageInstruction": [{"text": "500 mg twice a day"}],
                }
            ),
        ],
    }


def ct_series(p: Person, mrn: str, count: int = 4) -> tuple[str, str, list[str], list[bytes]]:
    """A small synthetic CT series (``count`` 64×64 slices of a disc whose
    density and size change per slice): study, series, SOP UIDs, Part-10 files."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series = generate_uid(), generate_uid()
    sops, files = [], []
    yy, xx = np.mgrid[0:64, 0:64]
    for n in range(count):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = mrn, "Nguyen^Thi Hoa"
        ds.PatientBirthDate, ds.PatientSex = "19840312", "F"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20261003", "101500", "1"
        ds.AccessionNumber = f"ACC{p.tag}"[:16]
        ds.StudyDescription = f"CT chest {p.tag}"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, n + 1
        ds.SeriesDescription = "Axial 5mm"
        ds.Rows, ds.Columns = 64, 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 5
        radius = 10 + 4 * n
        inside = (yy - 32) ** 2 + (xx - 32) ** 2 < radius**2
        pixels = np.where(inside, 1024 + 60 + 200 * n, 1024 - 900).astype(np.int16)
        ds.PixelData = pixels.tobytes()
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        sops.append(sop)
        files.append(buffer.getvalue())
    return study, series, sops, files


# -- the display rows, on the data above --------------------------------------------


def _resources(p: Person) -> list[dict[str, Any]]:
    return [e["resource"] for b in (bundle_a(p), bundle_b(p)) for e in b["entry"]]


def test_timeline_rows_carry_codes_values_ranges_flags_and_hospitals() -> None:
    from salus.console.pages.patients_record import entries_of, subject_of

    p = new_person()
    resources = [r for r in _resources(p) if r["resourceType"] != "Patient"]
    holders = {
        f"{r['resourceType']}/{r['id']}": "hosp-a" if "-a-" in r["id"] else "hosp-b"
        for r in resources
    }
    rows = entries_of(
        resources, holders, {k: subject_of(r) for k, r in zip(holders, resources, strict=True)}
    )
    by_kind = {row.kind: row for row in rows}
    assert [row.date[:10] for row in rows] == sorted((row.date[:10] for row in rows), reverse=True)
    glucose = by_kind["observation"]
    assert (glucose.value, glucose.unit, glucose.range, glucose.abnormal) == (
        "212",
        "mg/dL",
        "70 – 99",
        True,
    )
    assert (glucose.code_system, glucose.code, glucose.org) == ("LOINC", "2345-7", "hosp-b")
    assert (by_kind["condition"].code_system, by_kind["condition"].code) == ("ICD-10", "J18.9")
    assert (by_kind["medication"].code, by_kind["medication"].detail) == (
        "A10BA02",
        "500 mg twice a day",
    )
    assert by_kind["document"].links == [
        ("letter.txt", f"/patients/{p.a_patient}/documents/doc-a-{p.tag}/0")
    ]
    assert by_kind["encounter"].title == "inpatient encounter"


def test_a_value_outside_the_range_is_flagged_without_an_interpretation() -> None:
    from salus.console.pages.patients_record import entries_of

    p = new_person()
    obs = next(r for r in _resources(p) if r["resourceType"] == "Observation")
    del obs["interpretation"]
    (row,) = entries_of([obs], {}, {})
    assert row.abnormal and row.interpretation == "H"
    obs["valueQuantity"]["value"] = 80
    (row,) = entries_of([obs], {}, {})
    assert not row.abnormal and row.interpretation == ""


def test_national_ids_and_links_name_the_same_person() -> None:
    from salus.console.pages.patients_record import link_targets, national_ids, patient_label

    p = new_person()
    patient = _resources(p)[0]
    assert national_ids(patient) == [(NATIONAL, p.national_id)]
    patient["link"] = [
        {"other": {"reference": "Patient/old-1"}, "type": "replaces"},
        {"other": {"reference": "RelatedPerson/x"}, "type": "seealso"},
    ]
    assert link_targets(patient) == ["old-1"]
    assert patient_label(patient) == "Nguyễn Thị Hoa"
