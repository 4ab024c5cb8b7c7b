"""The generated network as the bytes each interface carries, plus the manifest
that says what was generated, per hospital and per interface, with the
identifiers that find each item in Salus.

:func:`render` is pure (same network → same bytes); :func:`write` puts the
items under a folder (``manifest.json``, ``hl7/``, ``fhir/``, ``dicom/``,
``csv/``) so that they can be inspected or fed again by other tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salus.demo.catalog import OTHER_ORGS
from salus.demo.fhir_out import bundle_for, encounter_system, mrn_system
from salus.demo.hl7_out import messages_for
from salus.demo.imaging import render_study
from salus.demo.model import Network
from salus.demo.operational import DATASETS, dataset_csv

__all__ = ["DicomItem", "Rendered", "render", "write"]


@dataclass(frozen=True, slots=True)
class DicomItem:
    org_id: str
    study_uid: str
    route: str  # "c-store" or "stow-rs"
    instances: tuple[tuple[str, bytes], ...]


@dataclass(slots=True)
class Rendered:
    manifest: dict[str, Any]
    #: (org, control id, message text) in sending order.
    hl7: list[tuple[str, str, str]] = field(default_factory=list)
    #: (org, MRN, transaction Bundle JSON bytes) in sending order.
    fhir: list[tuple[str, str, bytes]] = field(default_factory=list)
    dicom: list[DicomItem] = field(default_factory=list)
    #: (org, dataset name, CSV bytes).
    csv: list[tuple[str, str, bytes]] = field(default_factory=list)


def _json(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def render(network: Network) -> Rendered:
    orgs = [{"id": s.org_id, "name": s.name, "kind": "hospital"} for s in network.hospitals]
    orgs += [{"id": i, "name": n, "kind": k} for i, n, k in OTHER_ORGS]
    manifest: dict[str, Any] = {
        "seed": network.seed,
        "size": network.size_name,
        "as_of": network.as_of.isoformat(),
        "period": network.period,
        "organizations": orgs,
        "hospitals": {},
        "cross_hospital": [],
        "logins": [
            {
                "kind": x.kind,
                "name": x.name,
                "org": x.org_id,
                "role": x.role,
                "display": x.display,
                **({"password": x.password} if x.password else {}),
            }
            for x in network.logins
        ],  # fmt: skip
    }
    out = Rendered(manifest)
    scripts = {p.key: p.script for p in network.people}
    for spec in network.hospitals:
        entry: dict[str, Any] = {
            "name": spec.name,
            "his": spec.his,
            "facility": spec.facility,
            "ae_title": spec.ae_title,
            "mrn_system": mrn_system(spec.org_id),
            "encounter_system": encounter_system(spec.org_id),
            "patients": [],
            "hl7": [],
            "fhir": [],
            "dicom": [],
            "datasets": [],
        }
        manifest["hospitals"][spec.org_id] = entry
        for reg in network.registrations_of(spec.org_id):
            entry["patients"].append(
                {
                    "mrn": reg.mrn,
                    "person": reg.person,
                    "script": scripts[reg.person],
                    "family": reg.family,
                    "quirks": reg.quirks,
                    "via": "hl7" if spec.his == "hl7" else "fhir",
                    "encounters": [e.visit for e in reg.encounters],
                    "conditions": sum(len(e.diagnoses) for e in reg.encounters),
                    "observations": sum(len(e.labs) for e in reg.encounters),
                    "medication_requests": sum(len(e.prescriptions) for e in reg.encounters),
                }
            )
            if spec.his == "hl7":
                for msg in messages_for(network, reg):
                    out.hl7.append((spec.org_id, msg.control_id, msg.text))
                    entry["hl7"].append(
                        {"control_id": msg.control_id, "type": msg.message_type,
                         "mrn": reg.mrn, "visit": msg.visit}
                    )  # fmt: skip
            bundle = bundle_for(network, reg)
            if bundle is not None:
                out.fhir.append((spec.org_id, reg.mrn, _json(bundle)))
                entry["fhir"].append({"mrn": reg.mrn, "entries": len(bundle["entry"])})
        for study in (s for s in network.studies if s.org_id == spec.org_id):
            instances = tuple(render_study(network, study, network.seed))
            out.dicom.append(DicomItem(spec.org_id, study.study_uid, study.route, instances))
            entry["dicom"].append(
                {
                    "study_uid": study.study_uid,
                    "accession": study.accession,
                    "mrn": study.mrn,
                    "modality": study.modality,
                    "route": study.route,
                    "instances": [uid for uid, _ in instances],
                }
            )
        for name in DATASETS:
            data, rows = dataset_csv(network, spec, name)
            out.csv.append((spec.org_id, name, data))
            entry["datasets"].append({"name": name, "rows": rows, "period": network.period})
    by_person: dict[str, list[dict[str, str]]] = {}
    for reg in network.registrations:
        by_person.setdefault(reg.person, []).append({"org": reg.org_id, "mrn": reg.mrn})
    manifest["cross_hospital"] = [
        {"person": key, "registrations": regs} for key, regs in by_person.items() if len(regs) > 1
    ]
    return out


def write(rendered: Rendered, folder: Path) -> None:
    """Write the manifest and every item under ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_bytes(_json(rendered.manifest))
    for org, control, text in rendered.hl7:
        path = folder / "hl7" / org / f"{control}.hl7"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    for org, mrn, data in rendered.fhir:
        path = folder / "fhir" / org / f"{mrn}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for item in rendered.dicom:
        study = folder / "dicom" / item.org_id / item.study_uid
        study.mkdir(parents=True, exist_ok=True)
        for uid, data in item.instances:
            (study / f"{uid}.dcm").write_bytes(data)
    for org, name, data in rendered.csv:
        path = folder / "csv" / org / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
