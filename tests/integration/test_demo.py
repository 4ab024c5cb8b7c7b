"""``salus demo --size tiny`` end to end, as a user runs it: a subprocess that
generates the network, starts ``salus serve``, feeds it and keeps serving; then,
through the APIs, every item of its manifest is found where its interface put
it, and SIGTERM stops it cleanly.

SQLite only, on purpose: the demo always runs on the embedded default store (it
ignores ``SALUS_DATABASE_URL``); the interfaces it drives are tested on both
backends by their own tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from salus.cli import main
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(150)


class Api:
    def __init__(self, base: str, folder: Path) -> None:
        self.http = httpx.Client(base_url=base, timeout=30)
        self.logins = json.loads((folder / "logins.json").read_text())
        self.tokens: dict[str, str] = {}

    def client(self, client_id: str) -> dict[str, str]:
        if client_id not in self.tokens:
            response = self.http.post(
                "/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": self.logins["clients"][client_id],
                },
            )
            assert response.status_code == 200, response.text
            self.tokens[client_id] = response.json()["access_token"]
        return {"Authorization": f"Bearer {self.tokens[client_id]}"}

    def user(self, username: str) -> dict[str, str]:
        if username not in self.tokens:
            password = next(u["password"] for u in self.logins["users"] if u["name"] == username)
            response = self.http.post(
                "/auth/login", json={"username": username, "password": password}
            )
            assert response.status_code == 200, response.text
            self.tokens[username] = response.json()["access_token"]
        return {"Authorization": f"Bearer {self.tokens[username]}"}

    def search(self, who: dict[str, str], query: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/fhir/{query}", headers=who)
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert not any(link["relation"] == "next" for link in bundle.get("link", []))
        return [e["resource"] for e in bundle.get("entry", [])]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("demo") / "salus-demo"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    log = folder.parent / "demo.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603
            [
                sys.executable, "-m", "salus", "demo", "--size", "tiny", "--seed", "11",
                "--as-of", "2026-11-01", "--dir", str(folder), "--port", str(port),
                "--dicom-port", str(free_port()), "--mllp-port", str(free_port()),
            ],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 100
        while b"Serving until Ctrl-C" not in log.read_bytes():
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the demo did not finish ingesting in 100 s"
            time.sleep(0.3)
        yield folder, f"http://127.0.0.1:{port}"
        # SIGTERM stops the demo and its server cleanly; the port is free again.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=45) == 0
        with socket.socket() as sock:  # SO_REUSEADDR: the server's closed connections linger
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def manifest(demo: tuple[Path, str]) -> dict[str, Any]:
    return dict(json.loads((demo[0] / "generated" / "manifest.json").read_text()))


@pytest.fixture(scope="module")
def api(demo: tuple[Path, str]) -> Iterator[Api]:
    client = Api(demo[1], demo[0])
    yield client
    client.http.close()


def test_ingest_report_and_console_address(demo: tuple[Path, str]) -> None:
    folder, base = demo
    report = json.loads((folder / "ingest.json").read_text())
    assert report["errors"] == []
    assert all(count > 0 for count in report["items"].values())
    output = (folder.parent / "demo.out").read_text()
    assert f"{base}/" in output and "researcher" in output and "authority_analyst" in output


def test_hl7_messages_were_acknowledged_and_made_encounters(
    api: Api, manifest: dict[str, Any]
) -> None:
    hl7_hospitals = [o for o, h in manifest["hospitals"].items() if h["his"] == "hl7"]
    assert hl7_hospitals
    for org in hl7_hospitals:
        hospital = manifest["hospitals"][org]
        who = api.client(f"{org}-his")
        response = api.http.get("/api/hl7/messages", params={"limit": 500}, headers=who)
        assert response.status_code == 200
        stored = {m["control_id"]: m for m in response.json()["messages"]}
        mrns = {p["mrn"] for p in hospital["patients"]}
        for item in hospital["hl7"]:
            message = stored[item["control_id"]]
            assert (message["state"], message["ack_code"], message["source"]) == (
                "applied", "AA", "mllp"
            )  # fmt: skip
            assert message["sending_facility"] == hospital["facility"]
            if item["type"] in ("ADT^A01", "ADT^A04"):
                # The Encounter the message wrote carries the visit number (PV1-19) and
                # points at the Patient with the hospital's MRN (PID-3).
                ref = next(r for r in message["resources"] if r.startswith("Encounter/"))
                encounter = api.http.get(f"/fhir/{ref}", headers=who).json()
                assert encounter["identifier"][0] == {
                    "use": "official",
                    "system": hospital["encounter_system"],
                    "value": item["visit"],
                }
                patient = api.http.get(f"/fhir/{encounter['subject']['reference']}", headers=who)
                values = {(i["system"], i["value"]) for i in patient.json()["identifier"]}
                assert (hospital["mrn_system"], item["mrn"]) in values
                assert item["mrn"] in mrns


def test_every_patient_has_its_records(api: Api, manifest: dict[str, Any]) -> None:
    for org, hospital in manifest["hospitals"].items():
        who = api.client(f"{org}-his")
        for patient in hospital["patients"]:
            found = api.search(who, f"Patient?identifier={hospital['mrn_system']}|{patient['mrn']}")
            assert len(found) == 1, (org, patient["person"])
            pid = found[0]["id"]
            encounters = api.search(who, f"Encounter?subject=Patient/{pid}&_count=100")
            assert sorted(i["value"] for e in encounters for i in e["identifier"]) == sorted(
                patient["encounters"]
            )
            if hospital["his"] == "hl7":  # discharged by ADT^A03
                assert {e["status"] for e in encounters} == {"finished"}
            for kind, key in (
                ("Condition", "conditions"),
                ("Observation", "observations"),
                ("MedicationRequest", "medication_requests"),
            ):
                got = api.search(who, f"{kind}?subject=Patient/{pid}&_count=200")
                assert len(got) == patient[key], (org, kind)
            conditions = api.search(who, f"Condition?subject=Patient/{pid}&_count=200")
            assert all(
                c["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
                and c["encounter"]["reference"].startswith("Encounter/")
                for c in conditions
            )


def test_cross_hospital_patients_exist_at_each_hospital(api: Api, manifest: dict[str, Any]) -> None:
    assert manifest["cross_hospital"]
    for person in manifest["cross_hospital"]:
        ids = set()
        for reg in person["registrations"]:
            system = manifest["hospitals"][reg["org"]]["mrn_system"]
            found = api.search(
                api.client(f"{reg['org']}-his"), f"Patient?identifier={system}|{reg['mrn']}"
            )
            assert len(found) == 1
            ids.add(found[0]["id"])
        assert len(ids) == len(person["registrations"])  # one record per hospital


def test_imaging_studies_through_qido(api: Api, manifest: dict[str, Any]) -> None:
    routes = set()
    for org, hospital in manifest["hospitals"].items():
        who = {**api.client(f"{org}-pacs"), "Accept": "application/dicom+json"}
        for study in hospital["dicom"]:
            routes.add(study["route"])
            response = api.http.get(
                "/dicomweb/studies", params={"StudyInstanceUID": study["study_uid"]}, headers=who
            )
            assert response.status_code == 200, response.text
            (found,) = response.json()
            assert found["00100020"]["Value"] == [study["mrn"]]
            assert found["00080050"]["Value"] == [study["accession"]]
            instances = api.http.get(
                f"/dicomweb/studies/{study['study_uid']}/instances", headers=who
            ).json()
            assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted(
                study["instances"]
            )
    assert routes == {"c-store", "stow-rs"}


def test_imaging_studies_link_to_the_hospitals_patients(api: Api, manifest: dict[str, Any]) -> None:
    """The ImagingStudy mirror (written once a study is stable, 2 s in the demo) points
    at the Patient the hospital's HL7 or FHIR feed made, found by the MRN."""
    for org, hospital in manifest["hospitals"].items():
        who = api.client(f"{org}-his")
        for study in hospital["dicom"]:
            query = f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study['study_uid']}"
            deadline = time.monotonic() + 30
            while not (found := api.search(who, query)):
                assert time.monotonic() < deadline, "no ImagingStudy after 30 s"
                time.sleep(0.5)
            patient = api.search(who, f"Patient?identifier={hospital['mrn_system']}|{study['mrn']}")
            assert found[0]["subject"]["reference"] == f"Patient/{patient[0]['id']}"
            assert found[0]["numberOfInstances"] == len(study["instances"])


def test_dataset_submissions_accepted(api: Api, manifest: dict[str, Any]) -> None:
    for org, hospital in manifest["hospitals"].items():
        who = api.user(f"{org}.steward")
        response = api.http.get("/api/v1/datasets/submissions", headers=who)
        assert response.status_code == 200, response.text
        submissions = response.json()["submissions"]
        for dataset in hospital["datasets"]:
            mine = [s for s in submissions if s["dataset"] == dataset["name"]]
            assert len(mine) == 1, (org, dataset["name"], submissions)
            assert mine[0]["period"] == dataset["period"]
            assert mine[0]["rows"] == dataset["rows"]


def test_refuses_a_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not a demo")
    result = CliRunner().invoke(main, ["demo", "--size", "tiny", "--dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "not a demo folder" in result.output
    assert (tmp_path / "precious.txt").read_text() == "not a demo"


def test_indicators_were_computed_for_every_hospital(api: Api, manifest: dict[str, Any]) -> None:
    """The demo stores the indicators' snapshots after ingest: each hospital's
    own figures count its laboratory results (results are attributed through
    their Encounter's serviceProvider, for HL7- and FHIR-fed hospitals alike)."""
    for org in manifest["hospitals"]:
        response = api.http.get(
            "/api/v1/indicators/laboratory-volume", headers=api.user(f"{org}.steward")
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert "computedAt" in body  # read from the stored snapshot
        own = [c for c in body["cells"] if c["hospital"] == org]
        assert sum(c["numerator"] or 0 for c in own) > 0, org
