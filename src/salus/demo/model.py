"""The generated network as plain data (no I/O): what :mod:`.generator` draws and
the renderers (FHIR, HL7 v2, DICOM, CSV) turn into bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from salus.demo.catalog import HospitalSpec, Lab

__all__ = [
    "Diagnosis",
    "Encounter",
    "LabResult",
    "Login",
    "Network",
    "Person",
    "Prescription",
    "Registration",
    "Size",
    "Study",
]


@dataclass(frozen=True, slots=True)
class Size:
    """How much to generate (per hospital unless said otherwise)."""

    patients: int
    #: People registered at two hospitals (network-wide).
    shared: int
    studies: int
    #: Instances per CT and MR series (CR is one image).
    slices: int
    #: Rows and columns of every image.
    matrix: int
    max_encounters: int = 3


SIZES: dict[str, Size] = {
    "tiny": Size(patients=3, shared=1, studies=2, slices=2, matrix=64, max_encounters=2),
    "small": Size(patients=12, shared=4, studies=4, slices=4, matrix=64),
    "default": Size(patients=60, shared=16, studies=10, slices=8, matrix=128),
}


@dataclass(slots=True)
class Person:
    """Someone in the population (one human, possibly at several hospitals)."""

    key: str
    script: str
    family: str
    given: str
    gender: str  # FHIR AdministrativeGender
    birth_date: date
    national_id: str | None
    phone: str | None


@dataclass(slots=True)
class LabResult:
    lab: Lab
    value: float
    flag: str  # H, L or N (HL7 table 0078 / v3 ObservationInterpretation)


@dataclass(slots=True)
class Diagnosis:
    code: str  # ICD-10
    display: str


@dataclass(slots=True)
class Prescription:
    atc: str
    text: str
    dosage: str


@dataclass(slots=True)
class Encounter:
    visit: str  # the hospital's visit number
    cls: str  # v3 ActCode: AMB, IMP, EMER
    start: datetime  # naive, local time of the hospital
    end: datetime
    ward: str
    diagnoses: list[Diagnosis] = field(default_factory=list)
    labs: list[LabResult] = field(default_factory=list)
    prescriptions: list[Prescription] = field(default_factory=list)


@dataclass(slots=True)
class Registration:
    """A person as one hospital knows them: its own MRN, and demographics that
    may differ from the person's (typos, missing fields)."""

    org_id: str
    mrn: str
    person: str  # Person.key
    family: str
    given: str
    gender: str
    birth_date: date | None
    national_id: str | None
    phone: str | None
    address: str | None
    #: Generated imperfections, for the manifest ("typo in family name", "no birth date"...).
    quirks: list[str] = field(default_factory=list)
    encounters: list[Encounter] = field(default_factory=list)


@dataclass(slots=True)
class Study:
    org_id: str
    mrn: str
    modality: str
    description: str
    body_part: str
    series_description: str
    study_uid: str
    series_uid: str
    accession: str
    when: datetime
    instances: int
    #: "c-store" (DICOM DIMSE) or "stow-rs" (DICOMweb).
    route: str


@dataclass(frozen=True, slots=True)
class Login:
    """A user (``kind`` "user", signs in with a password) or a client."""

    kind: str
    name: str
    org_id: str
    role: str
    display: str
    password: str | None = None  # users only; clients get their secret from Salus


@dataclass(slots=True)
class Network:
    seed: int
    size_name: str
    size: Size
    as_of: date
    period: str  # the reporting month of the operational datasets (YYYY-MM)
    hospitals: tuple[HospitalSpec, ...]
    people: list[Person]
    registrations: list[Registration]
    studies: list[Study]
    logins: list[Login]

    def hospital(self, org_id: str) -> HospitalSpec:
        for spec in self.hospitals:
            if spec.org_id == org_id:
                return spec
        raise KeyError(org_id)

    def registrations_of(self, org_id: str) -> list[Registration]:
        return [r for r in self.registrations if r.org_id == org_id]
