"""`salus fhir import` (NDJSON, idempotent, validated) and `salus fhir reindex`,
on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select

from salus.cli import main
from salus.config import Settings
from salus.db.tables import fhir_idx_string, fhir_resources
from salus.services import Services

SYNTHEA = Path(__file__).resolve().parents[1] / "data" / "fhir" / "synthea"


@pytest.fixture
def env(settings_factory: Any) -> tuple[Settings, dict[str, str]]:
    settings: Settings = settings_factory()
    values = {"SALUS_DATA_DIR": str(settings.data_dir)}
    if settings.database_url is not None:
        values["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    runner = CliRunner()
    assert runner.invoke(main, ["init"], env=values).exit_code == 0
    assert (
        runner.invoke(
            main, ["org", "create", "hosp-a", "--name", "A", "--kind", "hospital"], env=values
        ).exit_code
        == 0
    )
    return settings, values


def _ndjson(folder: Path) -> tuple[Path, int]:
    bundle = json.load(gzip.open(sorted(SYNTHEA.glob("*.json.gz"))[0], "rt"))
    resources = []
    for number, entry in enumerate(bundle["entry"]):
        resource = dict(entry["resource"])
        resource["id"] = f"imp-{number}"
        resources.append(resource)
    path = folder / "export.ndjson.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for resource in resources:
            handle.write(json.dumps(resource, ensure_ascii=False) + "\n")
    return path, len(resources)


def _count(settings: Settings) -> int:
    services = Services.build(settings)
    try:
        with services.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(fhir_resources)).scalar_one())
    finally:
        services.close()


def test_import_is_idempotent(env: tuple[Settings, dict[str, str]], tmp_path: Path) -> None:
    settings, values = env
    path, total = _ndjson(tmp_path)
    first = CliRunner().invoke(main, ["fhir", "import", str(path), "--org", "hosp-a"], env=values)
    assert first.exit_code == 0, first.output
    assert f"{total} created, 0 updated, 0 rejected" in first.output
    again = CliRunner().invoke(main, ["fhir", "import", str(path), "--org", "hosp-a"], env=values)
    assert f"0 created, {total} updated" in again.output
    assert _count(settings) == total


def test_invalid_lines(env: tuple[Settings, dict[str, str]], tmp_path: Path) -> None:
    settings, values = env
    path = tmp_path / "bad.ndjson"
    path.write_text(
        '{"resourceType":"Patient","id":"ok-1"}\nnot json\n'
        '{"resourceType":"Patient","id":"bad-1","gender":"nope"}\n'
        '{"resourceType":"Patient","id":"ok-2"}\n'
        '{"resourceType":"Patient","id":"bad-2","name":[{"family":"\\ud800"}]}\n'
        + "[" * 50_000
        + "\n"
    )
    strict = CliRunner().invoke(main, ["fhir", "import", str(path), "--org", "hosp-a"], env=values)
    assert strict.exit_code == 2 and "line 2" in strict.output
    assert _count(settings) == 0
    lenient = CliRunner().invoke(
        main, ["fhir", "import", str(path), "--org", "hosp-a", "--skip-invalid"], env=values
    )
    assert lenient.exit_code == 0
    assert "2 created, 0 updated, 4 rejected" in lenient.output
    assert "bad.ndjson:3" in lenient.output and "bad.ndjson:5" in lenient.output
    assert "bad.ndjson:6" in lenient.output and "nope" not in lenient.output


def test_reindex_restores_search(env: tuple[Settings, dict[str, str]], tmp_path: Path) -> None:
    settings, values = env
    path, _ = _ndjson(tmp_path)
    assert (
        CliRunner()
        .invoke(main, ["fhir", "import", str(path), "--org", "hosp-a"], env=values)
        .exit_code
        == 0
    )
    services = Services.build(settings)
    try:
        with services.db.write() as conn:
            before = conn.execute(select(func.count()).select_from(fhir_idx_string)).scalar_one()
            conn.execute(delete(fhir_idx_string))
    finally:
        services.close()
    result = CliRunner().invoke(main, ["fhir", "reindex"], env=values)
    assert result.exit_code == 0 and "re-indexed" in result.output
    services = Services.build(settings)
    try:
        with services.db.read() as conn:
            after = conn.execute(select(func.count()).select_from(fhir_idx_string)).scalar_one()
    finally:
        services.close()
    assert after == before > 0
