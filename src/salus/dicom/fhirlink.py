"""Each study mirrored as a FHIR R4 ImagingStudy (imagingstudy.html), linked to its Patient.

The ``dicom.imagingstudy-sync`` job writes through ``services.fhir_store`` (so
the resource is validated, versioned, indexed and audited like any other),
acting as Salus (a system principal) inside the study's organization:

* the ImagingStudy's id is the Study Instance UID (both are at most 64 of
  ``0-9 .``, a valid FHIR id); identifier ``urn:dicom:uid`` /
  ``urn:oid:<uid>`` (imagingstudy.html#notes);
* ``subject``: the organization's Patient with identifier value = PatientID
  and system = IssuerOfPatientID (the issuer itself when it is a URI, else
  ``urn:salus:dicom-issuer:<issuer>``; without issuer any system of that
  organization matches and ``urn:salus:org:<org>:dicom-patient-id`` is
  used); one is created from the DICOM patient module when none exists;
* ``endpoint``: the organization's ``Endpoint/dicomweb-<org>`` (connection
  type ``dicom-wado-rs``, address ``<base URL>/dicomweb``), created once;
* series and instances as the index holds them; a deleted study's
  ImagingStudy is deleted.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, RowMapping

from salus.db.tables import fhir_idx_token, fhir_resources
from salus.db.tables_dicom import dicom_instances, dicom_patients, dicom_series, dicom_studies
from salus.jobs import JobContext
from salus.security.principal import AuthMethod, Principal, PrincipalKind

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["ImagingStudySync", "patient_resource", "patient_system"]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
_ID_CHARS = re.compile(r"[^A-Za-z0-9\-.]")
_SEX = {"M": "male", "F": "female", "O": "other"}


def patient_system(org_id: str, issuer: str) -> str:
    if issuer and ":" in issuer:
        return issuer
    if issuer:
        return f"urn:salus:dicom-issuer:{issuer}"
    return f"urn:salus:org:{org_id}:dicom-patient-id"


def _date(value: str | None) -> str | None:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return None


def _started(date: str | None) -> str | None:
    """The date only: DICOM times are local, and a FHIR dateTime with a time needs a
    zone (datatypes.html#dateTime) that a data set rarely carries."""
    return _date(date)


def patient_resource(org_id: str, row: RowMapping) -> dict[str, Any]:
    """A FHIR Patient from the DICOM patient module (PS3.3 C.7.1.1)."""
    resource: dict[str, Any] = {"resourceType": "Patient"}
    if row["patient_id"]:
        resource["identifier"] = [
            {"system": patient_system(org_id, row["issuer"]), "value": row["patient_id"]}
        ]
    name = (row["patient_name"] or "").split("=")[0]
    if name.strip("^ "):
        parts = name.split("^")
        human: dict[str, Any] = {"text": " ".join(p for p in parts if p).strip()}
        if parts[0]:
            human["family"] = parts[0]
        given = [p for p in parts[1:3] if p]
        if given:
            human["given"] = given
        resource["name"] = [human]
    gender = _SEX.get((row["sex"] or "").upper())
    if gender:
        resource["gender"] = gender
    birth = _date(row["birth_date"])
    if birth:
        resource["birthDate"] = birth
    return resource


class ImagingStudySync:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.fhir_store
        self.dicomweb = services.settings.base_url() + "/dicomweb"

    def run(self, ctx: JobContext) -> None:
        study_uid = str(ctx.payload["study"])
        org_id = str(ctx.payload["org"])
        principal = Principal(
            kind=PrincipalKind.SYSTEM,
            id="dicom-archive",
            org_id=org_id,
            auth_method=AuthMethod.LOCAL,
        )
        s = dicom_studies.c
        with self.services.db.write() as conn:
            study = (
                conn.execute(
                    select(dicom_studies).where(s.study_uid == study_uid).with_for_update()
                )
                .mappings()
                .first()
            )
            if study is None:
                fhir_id = ctx.payload.get("fhir_id")
                if fhir_id:
                    self.store.delete(conn, principal, "ImagingStudy", str(fhir_id))
                return
            conn.execute(
                update(dicom_studies).where(s.pk == study["pk"]).values(fhir_sync_pending=False)
            )
            patient_key = self._patient(conn, principal, int(study["patient_pk"]))
            endpoint = self._endpoint(conn, principal)
            resource = self._imaging_study(conn, study, patient_key, endpoint)
            fhir_id = str(study["fhir_id"] or study_uid)
            self.store.update(conn, principal, "ImagingStudy", fhir_id, {**resource, "id": fhir_id})
            if study["fhir_id"] != fhir_id:
                conn.execute(
                    update(dicom_studies).where(s.pk == study["pk"]).values(fhir_id=fhir_id)
                )

    # -- the Patient -------------------------------------------------------------------
    def _patient(self, conn: Connection, principal: Principal, patient_pk: int) -> str:
        p = dicom_patients.c
        row = (
            conn.execute(select(dicom_patients).where(p.pk == patient_pk).with_for_update())
            .mappings()
            .one()
        )
        if row["patient_key"]:
            return str(row["patient_key"])
        key = self._find_patient(conn, principal.org_id, row)
        if key is None:
            key = self.store.create(conn, principal, patient_resource(principal.org_id, row)).res_id
        conn.execute(update(dicom_patients).where(p.pk == patient_pk).values(patient_key=key))
        conn.execute(
            update(dicom_studies)
            .where(dicom_studies.c.patient_pk == patient_pk)
            .values(patient_key=key)
        )
        return key

    @staticmethod
    def _find_patient(conn: Connection, org_id: str, row: RowMapping) -> str | None:
        if not row["patient_id"]:
            return None
        t, f = fhir_idx_token.c, fhir_resources.c
        query = (
            select(f.res_id)
            .select_from(fhir_resources.join(fhir_idx_token, t.rid == f.rid))
            .where(
                t.res_type == "Patient",
                t.param == "identifier",
                t.code == row["patient_id"],
                f.org_id == org_id,
                f.deleted.is_(False),
            )
            .order_by(f.rid)
            .limit(1)
        )
        if row["issuer"]:
            query = query.where(
                t.system.in_({row["issuer"], patient_system(org_id, row["issuer"])})
            )
        found = conn.execute(query).scalar_one_or_none()
        return str(found) if found is not None else None

    # -- the Endpoint ------------------------------------------------------------------
    def _endpoint(self, conn: Connection, principal: Principal) -> str:
        endpoint_id = ("dicomweb-" + _ID_CHARS.sub("-", principal.org_id))[:64]
        exists = conn.execute(
            select(fhir_resources.c.rid).where(
                fhir_resources.c.res_type == "Endpoint",
                fhir_resources.c.res_id == endpoint_id,
                fhir_resources.c.deleted.is_(False),
            )
        ).first()
        if exists is None:
            self.store.update(
                conn,
                principal,
                "Endpoint",
                endpoint_id,
                {
                    "resourceType": "Endpoint",
                    "id": endpoint_id,
                    "status": "active",
                    "connectionType": {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                        "code": "dicom-wado-rs",
                    },
                    "name": "Salus DICOMweb",
                    "payloadType": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                                    "code": "DICOM",
                                }
                            ]
                        }
                    ],
                    "payloadMimeType": ["application/dicom"],
                    "address": self.dicomweb,
                },
            )
        return endpoint_id

    # -- the ImagingStudy --------------------------------------------------------------
    def _imaging_study(
        self, conn: Connection, study: RowMapping, patient_key: str, endpoint: str
    ) -> dict[str, Any]:
        r, i = dicom_series.c, dicom_instances.c
        series_rows = (
            conn.execute(
                select(dicom_series)
                .where(r.study_pk == study["pk"])
                .order_by(r.series_number, r.pk)
            )
            .mappings()
            .all()
        )
        instances: dict[int, list[dict[str, Any]]] = {}
        for pk, sop, sop_class, number in conn.execute(
            select(i.series_pk, i.sop_instance_uid, i.sop_class_uid, i.instance_number)
            .where(i.study_pk == study["pk"])
            .order_by(i.instance_number, i.pk)
        ).all():
            item: dict[str, Any] = {
                "uid": sop,
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{sop_class}"},
            }
            if number is not None and number >= 0:
                item["number"] = number
            instances.setdefault(int(pk), []).append(item)
        series: list[dict[str, Any]] = []
        for row in series_rows:
            entry: dict[str, Any] = {
                "uid": row["series_uid"],
                "modality": {"system": DCM, "code": row["modality"] or "OT"},
                "numberOfInstances": row["num_instances"],
                "endpoint": [{"reference": f"Endpoint/{endpoint}"}],
            }
            if row["series_number"] is not None and row["series_number"] >= 0:
                entry["number"] = row["series_number"]
            if row["series_description"]:
                entry["description"] = row["series_description"]
            if row["body_part_examined"]:
                entry["bodySite"] = {"display": row["body_part_examined"]}
            started = _started(row["series_date"])
            if started:
                entry["started"] = started
            entry["instance"] = instances.get(int(row["pk"]), [])
            series.append(entry)
        resource: dict[str, Any] = {
            "resourceType": "ImagingStudy",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study['study_uid']}"}],
            "status": "available",
            "subject": {"reference": f"Patient/{patient_key}"},
            "endpoint": [{"reference": f"Endpoint/{endpoint}"}],
            "numberOfSeries": study["num_series"],
            "numberOfInstances": study["num_instances"],
            "series": series,
        }
        if study["accession_number"]:
            resource["identifier"].append(
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "ACSN",
                            }
                        ]
                    },
                    "value": study["accession_number"],
                }
            )
        modalities = [m for m in (study["modalities"] or "").split("\\") if m]
        if modalities:
            resource["modality"] = [{"system": DCM, "code": m} for m in modalities]
        started = _started(study["study_date"])
        if started:
            resource["started"] = started
        if study["study_description"]:
            resource["description"] = study["study_description"]
        return resource
