"""The demo's synthetic network generator: deterministic, realistic enough, and
in the formats the interfaces accept (parsed here with the field's libraries)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import unicodedata
from datetime import date
from pathlib import Path

import hl7
import numpy as np
import pydicom
import pytest

from salus.demo import generate, render, size_named, write
from salus.demo.generator import reporting_period
from salus.security.roles import ROLES
from salus.warehouse.datasets.definitions import schema_named
from salus.warehouse.datasets.validate import Report, parse_rows, validate_rows

AS_OF = date(2026, 11, 1)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_same_seed_gives_byte_identical_output(tmp_path: Path) -> None:
    write(render(generate(7, "tiny", as_of=AS_OF)), tmp_path / "a")
    write(render(generate(7, "tiny", as_of=AS_OF)), tmp_path / "b")
    first, second = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert first == second
    assert any(name.endswith(".dcm") for name in first)
    assert any(name.endswith(".hl7") for name in first)
    write(render(generate(8, "tiny", as_of=AS_OF)), tmp_path / "c")
    assert _tree(tmp_path / "c")["manifest.json"] != first["manifest.json"]


def test_same_seed_same_bytes_across_processes(tmp_path: Path) -> None:
    """Nothing depends on string hashing (PYTHONHASHSEED) or on the process."""
    script = (
        "import sys; from datetime import date; from pathlib import Path; "
        "from salus.demo import generate, render, write; "
        "write(render(generate(7, 'tiny', as_of=date(2026, 11, 1))), Path(sys.argv[1]))"
    )
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run(  # noqa: S603
            [sys.executable, "-c", script, str(tmp_path / hash_seed)], env=env, check=True
        )
    assert _tree(tmp_path / "1") == _tree(tmp_path / "2")
    write(render(generate(7, "tiny", as_of=AS_OF)), tmp_path / "here")
    assert _tree(tmp_path / "here") == _tree(tmp_path / "1")


def test_sizes_and_overrides() -> None:
    tiny = generate(1, "tiny", as_of=AS_OF)
    bigger = generate(1, "tiny", as_of=AS_OF, size=size_named("tiny", patients=5, studies=3))
    assert len(bigger.registrations) > len(tiny.registrations)
    assert len(bigger.studies) == 3 * len(bigger.hospitals)
    assert reporting_period(date(2026, 1, 15)) == "2025-12"


def test_cross_hospital_patients_have_different_mrns() -> None:
    network = generate(3, "small", as_of=AS_OF)
    manifest = render(network).manifest
    shared = manifest["cross_hospital"]
    assert len(shared) >= network.size.shared - 1  # two draws may pick the same person
    for item in shared:
        orgs = [r["org"] for r in item["registrations"]]
        mrns = [r["mrn"] for r in item["registrations"]]
        assert len(set(orgs)) == len(orgs) >= 2
        assert len(set(mrns)) == len(mrns)
    # The later registration carries an imperfection (typo, missing field...).
    quirks = {
        (o, p["mrn"]): p["quirks"] for o, h in manifest["hospitals"].items() for p in h["patients"]
    }
    for item in shared:
        assert any(quirks[(r["org"], r["mrn"])] for r in item["registrations"])


def test_names_in_several_writing_systems() -> None:
    network = generate(11, "small", as_of=AS_OF)
    names = [r.family + r.given for r in network.registrations]
    assert any("\uac00" <= ch <= "\ud7a3" for n in names for ch in n)  # Hangul syllables
    assert any(ch in "ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ" for n in names
               for ch in n.lower())  # fmt: skip
    hospitals = [h.name for h in network.hospitals]
    assert "Bệnh viện Đa khoa Sông Hồng" in hospitals and "한빛대학교병원" in hospitals
    for name in hospitals:
        assert unicodedata.is_normalized("NFC", name)


def test_every_role_has_a_login() -> None:
    network = generate(5, "tiny", as_of=AS_OF)
    roles = {login.role for login in network.logins}
    assert roles == set(ROLES)
    users = [x for x in network.logins if x.kind == "user"]
    assert all(x.password and len(x.password) >= 12 for x in users)
    assert len({x.name for x in network.logins}) == len(network.logins)
    for spec in network.hospitals:
        clinicians = [x for x in users if x.org_id == spec.org_id and x.role == "clinician"]
        assert clinicians


def test_hl7_messages_parse_and_carry_the_hospital_identifiers() -> None:
    network = generate(2, "tiny", as_of=AS_OF)
    rendered = render(network)
    assert rendered.hl7
    for org, control, text in rendered.hl7:
        message = hl7.parse(text)
        spec = network.hospital(org)
        assert str(message.segment("MSH")[10]) == control
        assert str(message.segment("MSH")[4]) == spec.facility
        assert str(message.segment("MSH")[18]) == "UNICODE UTF-8"
        pid = message.segment("PID")
        assert str(pid[3][0][3]) == spec.facility and str(pid[3][0][4]) == "MR"
        if str(message.segment("MSH")[9][0]) == "ORU":
            for obx in message.segments("OBX"):
                assert str(obx[3][0][2]) == "LN"
                assert str(obx[8]) in {"H", "L", "N"}


def test_fhir_bundles_are_transactions_with_codes() -> None:
    rendered = render(generate(2, "tiny", as_of=AS_OF))
    systems: set[str] = set()
    for _org, _mrn, data in rendered.fhir:
        bundle = json.loads(data)
        assert bundle["type"] == "transaction"
        for entry in bundle["entry"]:
            resource = entry["resource"]
            for key in ("code", "medicationCodeableConcept"):
                for coding in resource.get(key, {}).get("coding", []):
                    systems.add(coding["system"])
    assert {
        "http://hl7.org/fhir/sid/icd-10",
        "http://loinc.org",
        "http://www.whocc.no/atc",
    } <= systems


@pytest.mark.parametrize("modality", ["CT", "MR", "CR"])
def test_dicom_images_have_plausible_headers_and_pixels(modality: str) -> None:
    network = generate(4, "small", as_of=AS_OF)
    rendered = render(network)
    item = next(
        d
        for d in rendered.dicom
        if pydicom.dcmread(io.BytesIO(d.instances[0][1])).Modality == modality
    )
    ds = pydicom.dcmread(io.BytesIO(item.instances[0][1]))
    assert ds.StudyInstanceUID == item.study_uid
    assert ds.IssuerOfPatientID == f"urn:salus:org:{item.org_id}:mrn"
    assert ds.Rows == ds.Columns == network.size.matrix and ds.BitsStored == 12
    pixels = ds.pixel_array
    assert pixels.shape == (network.size.matrix, network.size.matrix)
    assert np.std(pixels) > 10  # a phantom, not a flat image
    if modality == "CT":
        hu = pixels * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert hu.min() < -900 and hu.max() > 500  # air and bone
    if modality == "CR":
        assert len(item.instances) == 1 and ds.ViewPosition == "PA"
    else:
        assert len(item.instances) == network.size.slices


def test_operational_csvs_pass_the_dataset_schemas() -> None:
    network = generate(9, "small", as_of=AS_OF)
    rendered = render(network)
    assert {name for _org, name, _data in rendered.csv} == {
        "staff", "equipment", "medicines", "beds", "quality"
    }  # fmt: skip
    for org, name, data in rendered.csv:
        report = Report()
        columns, rows, comma = parse_rows(data, "csv", report, max_rows=10_000)
        submission = validate_rows(
            schema_named(name), columns, rows, report, org=org, period=None,
            today=AS_OF, decimal_comma=comma,
        )  # fmt: skip
        assert not report, (org, name, report.to_json())
        assert submission.rows and submission.period == network.period
