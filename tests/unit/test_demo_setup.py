"""The demo's set-up pieces without a server: its folder rule, the HL7 profiles
it writes and the settings file."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import click
import pytest

from salus.config import load_settings
from salus.demo import generate
from salus.demo.cli import MARKER, _fresh_folder, _toml
from salus.demo.fhir_out import mrn_system
from salus.demo.setup import write_profiles
from salus.hl7.profiles import load_profiles


def test_fresh_folder_replaces_only_an_earlier_demo(tmp_path: Path) -> None:
    folder = tmp_path / "salus-demo"
    _fresh_folder(folder)  # new
    assert (folder / MARKER).is_file()
    (folder / "salus.db").write_text("old demo data")
    _fresh_folder(folder)  # an earlier demo: replaced
    assert not (folder / "salus.db").exists() and (folder / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    _fresh_folder(empty)  # an empty folder is fine
    other = tmp_path / "salus-data"
    other.mkdir()
    (other / "salus.db").write_text("real data")
    with pytest.raises(click.ClickException, match="not a demo folder"):
        _fresh_folder(other)
    assert (other / "salus.db").read_text() == "real data"
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(click.ClickException):
        _fresh_folder(file)


def test_hl7_profiles_map_each_facility_to_its_hospital(tmp_path: Path) -> None:
    network = generate(1, "tiny", as_of=date(2026, 11, 1))
    profiles = load_profiles(write_profiles(network, tmp_path))
    for spec in network.hospitals:
        profile = profiles.by_facility(spec.facility)
        assert profile is not None and profile.org_id == spec.org_id
        assert profile.client == f"{spec.org_id}-his"
        assert profile.system("mrn") == mrn_system(spec.org_id)
        assert profile.mrn_authorities == (spec.facility,)
        assert profile.timezone == spec.timezone


def test_settings_file_is_valid_toml_for_salus(tmp_path: Path) -> None:
    text = _toml(
        {
            "data_dir": tmp_path / 'odd "name"',
            "http_port": 8123,
            "dicom_enabled": True,
            "dicom_stable_seconds": 2.0,
        }
    )
    assert tomllib.loads(text)["data_dir"] == str(tmp_path / 'odd "name"')
    path = tmp_path / "salus.toml"
    path.write_text(text)
    settings = load_settings(path, {}, environ={})
    assert settings.http_port == 8123 and settings.dicom_enabled
    assert settings.dicom_stable_seconds == 2.0
