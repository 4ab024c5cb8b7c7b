"""Open data on the small synthetic network of ``test_indicators`` (two hospitals,
October 2026), on SQLite and PostgreSQL: publication by the authority, anonymous
listing and download (unchanged, checksums), hand-computed suppression with
complementary cells, no identifiers or small cells in any file, refusals, CLI.

Hand computation, admissions by sex (k = 5):
            female  male  total
  hosp-a       4      3      7
  hosp-b       2      1      3
  network      6      4     10
Primary: every hospital cell, hosp-b's total and the network's male cell (< 5).
The network row would then give the female cell back (10 - 4): suppressed too;
the total column would give hosp-b (10 - 7 with hosp-a's total): hosp-a's total
too. Only the network total (10) is published. Laboratory volume: a 6, b 2:
b is small, a is suppressed with it, the network (8) is published.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner, Result

from salus.cli import main
from salus.warehouse.opendata.suppression import Cell, Table
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world
from tests.integration.test_indicators import PATIENTS, STAYS, seed_network
from tests.unit.test_opendata_suppression import attack

FHIR = "application/fhir+json"
REQUEST = {
    "title": "Hospital activity, October 2026",
    "indicators": [
        {"id": "admissions", "by": ["sex"]},
        "laboratory-volume",
        {"id": "bed-occupancy", "by": "ward"},
    ],
    "periods": ["2026-10"],
    "licence": "CC-BY-4.0",
}


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("opendata")) as built:
        seed_network(built, "beds")
        yield built


@pytest.fixture(scope="module")
def published(world: World) -> dict[str, Any]:
    response = world.call(
        "moh-analyst", "POST", "/api/v1/open-data/publications", json={**REQUEST, "refresh": True}
    )
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/open-data/publications/{response.json()['id']}"
    body: dict[str, Any] = response.json()
    return body


def download(world: World, record: dict[str, Any], name: str) -> bytes:
    response = world.call(None, "GET", f"/open-data/publications/{record['id']}/files/{name}")
    assert response.status_code == 200, response.text
    data: bytes = response.content
    return data


def rows(world: World, record: dict[str, Any], ind: str) -> dict[tuple[str, ...], dict[str, str]]:
    text = download(world, record, f"{ind}.csv").decode()
    reader = csv.DictReader(io.StringIO(text))
    dims = [
        c
        for c in reader.fieldnames or []
        if c not in ("numerator", "denominator", "value", "suppressed")
    ]
    return {tuple(r[d] for d in dims): r for r in reader}


def test_record_and_anonymous_listing(world: World, published: dict[str, Any]) -> None:
    assert published["publisher"] == "Health authority"
    assert published["publisherOrg"] == "moh" and published["publishedBy"].startswith("user:")
    assert [(i["id"], i["version"], i["by"]) for i in published["indicators"]] == [
        ("admissions", "1.0", ["sex"]),
        ("laboratory-volume", "1.0", []),
        ("bed-occupancy", "1.0", ["ward"]),
    ]
    assert published["periods"] == ["2026-10"]
    names = [f["name"] for f in published["files"]]
    assert names[0] == "datapackage.json" and len(names) == 7
    listing = world.call(None, "GET", "/open-data/publications")
    assert listing.status_code == 200
    public = {p["id"]: p for p in listing.json()["publications"]}[published["id"]]
    assert "publishedBy" not in public and public["files"] == published["files"]
    one = world.call(None, "GET", f"/open-data/publications/{published['id']}").json()
    assert one["suppression"] == published["suppression"]
    private = world.call("moh-analyst", "GET", "/api/v1/open-data/publications").json()
    assert any(p["publishedBy"] == published["publishedBy"] for p in private["publications"])
    assert world.call("a-admin", "GET", "/api/v1/open-data/publications").status_code == 403
    assert world.call(None, "GET", "/open-data/publications/nope").status_code == 404


def test_files_download_unchanged_with_checksums(world: World, published: dict[str, Any]) -> None:
    package = json.loads(download(world, published, "datapackage.json"))
    assert package["profile"] == "tabular-data-package"
    assert package["licenses"][0]["name"] == "CC-BY-4.0"
    assert package["contributors"] == [{"title": "Health authority", "role": "publisher"}]
    assert package["temporal"] == {"periods": ["2026-10"]}
    assert package["hospitals"] == {"hosp-a": "Bệnh viện A", "hosp-b": "병원 B"}
    assert package["suppression"]["minCell"] == 5
    assert package["suppression"]["counts"]["bed-occupancy"] == []
    definitions = {i["id"]: i["definition"] for i in package["indicators"]}
    assert definitions["admissions"]["version"] == "1.0"
    assert "sql" not in definitions["admissions"]
    by_name = {f["name"]: f for f in published["files"]}
    for resource in package["resources"]:
        data = download(world, published, resource["path"])
        digest = hashlib.sha256(data).hexdigest()
        assert (
            resource["hash"]
            == f"sha256:{digest}"
            == f"sha256:{by_name[resource['path']]['sha256']}"
        )
        assert resource["bytes"] == len(data)
    first = world.call(
        None, "GET", f"/open-data/publications/{published['id']}/files/admissions.csv"
    )
    again = world.call(
        None, "GET", f"/open-data/publications/{published['id']}/files/admissions.csv"
    )
    assert first.content == again.content and first.headers["etag"] == again.headers["etag"]
    assert first.headers["repr-digest"].startswith("sha-256=:")
    cached = world.client.get(
        f"/open-data/publications/{published['id']}/files/admissions.csv",
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert cached.status_code == 304
    assert (
        world.call(
            None, "GET", f"/open-data/publications/{published['id']}/files/x.csv"
        ).status_code
        == 404
    )


def test_hand_computed_suppression(world: World, published: dict[str, Any]) -> None:
    admissions = rows(world, published, "admissions")
    shown = {k: r["numerator"] for k, r in admissions.items() if r["suppressed"] == "false"}
    assert shown == {("network", "2026-10", "total"): "10"}
    assert len(admissions) == 9
    for r in admissions.values():
        if r["suppressed"] == "true":
            assert r["numerator"] == r["denominator"] == r["value"] == ""
    lab = rows(world, published, "laboratory-volume")
    assert {k: (r["numerator"], r["suppressed"]) for k, r in lab.items()} == {
        ("hosp-a", "2026-10"): ("", "true"),
        ("hosp-b", "2026-10"): ("", "true"),
        ("network", "2026-10"): ("8", "false"),
    }
    beds = rows(world, published, "bed-occupancy")  # facility data: nothing suppressed
    assert beds[("hosp-a", "2026-10", "W-ICU")]["value"] == str(round(290 / 310 * 100, 4))
    assert beds[("network", "2026-10", "total")]["numerator"] == "1890"
    assert beds[("network", "2026-10", "total")]["denominator"] == "2170"
    assert all(r["suppressed"] == "false" for r in beds.values())
    data = json.loads(download(world, published, "admissions.json"))
    assert data["totals"] == {"hospital": "network", "sex": "total"}
    assert data["cells"][-1] == {
        "hospital": "network",
        "period": "2026-10",
        "sex": "total",
        "numerator": 10,
        "denominator": None,
        "value": 10,
        "suppressed": False,
    }


def test_no_identifiers_and_no_small_cell_leaves(world: World, published: dict[str, Any]) -> None:
    texts = {f["name"]: download(world, published, f["name"]).decode() for f in published["files"]}
    everything = "\n".join(texts.values())
    for pid in PATIENTS:
        assert f"ind-{pid}" not in everything
    for eid in STAYS:
        assert f"ind-{eid}" not in everything
    scrubbed = _without_hashes(texts)  # the files' own SHA-256 sums are expected
    assert not re.search(r"Patient/|Encounter/|Organization/|p-[0-9a-f]{8}|[0-9a-f]{24}", scrubbed)
    for name, text in texts.items():
        if not name.endswith(".csv"):
            continue
        counted = json.loads(texts["datapackage.json"])["suppression"]["counts"][name[:-4]]
        reader = list(csv.DictReader(io.StringIO(text)))
        assert set(reader[0]) <= {
            "hospital",
            "period",
            "sex",
            "ward",
            "numerator",
            "denominator",
            "value",
            "suppressed",
        }
        for r in reader:
            for measure in counted:
                if r[measure] != "":
                    assert not 0 < float(r[measure]) < 5, (name, r)
        # an attacker using every published total cannot recompute any suppressed cell
        assert attack(_table(reader)) == set()


def _without_hashes(texts: dict[str, str]) -> str:
    return re.sub(r"sha256:[0-9a-f]{64}", "", "\n".join(texts.values()))


def _table(reader: list[dict[str, str]]) -> Table:
    dims = tuple(
        c for c in reader[0] if c not in ("numerator", "denominator", "value", "suppressed")
    )
    totals = {"hospital": "network", **{d: "total" for d in dims[2:]}}
    table = Table(dims, totals)
    for r in reader:
        key = tuple(r[d] for d in dims)
        margin = any(r[d] == label for d, label in totals.items())
        n = float(r["numerator"]) if r["numerator"] else None
        table.cells[key] = Cell(key, n, None, margin=margin, suppressed=r["suppressed"] == "true")
    return table


def test_refusals(world: World, published: dict[str, Any]) -> None:
    path = "/api/v1/open-data/publications"
    assert world.call(None, "POST", path, json=REQUEST).status_code == 401
    assert world.call("a-admin", "POST", path, json=REQUEST).status_code == 403  # a hospital
    assert world.call("uni-res", "POST", path, json=REQUEST).status_code == 403  # not the authority
    bad = world.call("moh-analyst", "POST", path, json={"indicators": []})
    assert bad.status_code == 400
    bad = world.call("moh-analyst", "POST", path, json={**REQUEST, "periods": ["2026-13"]})
    assert bad.status_code == 400
    bad = world.call("moh-analyst", "POST", path, json={**REQUEST, "licence": "mine"})
    assert bad.status_code == 400
    twice = world.call(
        "moh-analyst", "POST", path, json={"indicators": ["admissions", "admissions"]}
    )
    assert twice.status_code == 400
    empty = world.call("moh-analyst", "POST", path, json={**REQUEST, "periods": ["2020-01"]})
    assert empty.status_code == 400
    unknown = world.call("moh-analyst", "POST", path, json={"indicators": ["nope"]})
    assert unknown.status_code == 404
    wrong_by = world.call(
        "moh-analyst", "POST", path, json={"indicators": [{"id": "bed-occupancy", "by": ["sex"]}]}
    )
    assert wrong_by.status_code == 400
    listing = world.call(None, "GET", "/open-data/publications").json()["publications"]
    assert [p["id"] for p in listing] == [published["id"]]  # nothing half-published


def cli(world: World, *args: str) -> Result:
    settings = world.services.settings
    env = {"SALUS_DATA_DIR": str(settings.data_dir), "SALUS_JOBS_ENABLED": "false"}
    if settings.database_url is not None:
        env["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_publish_and_list(world: World, published: dict[str, Any]) -> None:
    result = cli(
        world,
        "warehouse",
        "opendata",
        "publish",
        "--org",
        "moh",
        "--indicator",
        "discharges:sex",
        "--period",
        "2026-10",
        "--title",
        "Discharges",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["publishedBy"].startswith("system:") and record["title"] == "Discharges"
    listed = cli(world, "warehouse", "opendata", "list")
    assert listed.exit_code == 0
    assert record["id"] in listed.output and published["id"] in listed.output
    refused = cli(
        world, "warehouse", "opendata", "publish", "--org", "hosp-a", "--indicator", "admissions"
    )
    assert refused.exit_code != 0


def test_cli_handoff_runs_the_indicator_sql_on_the_files(
    world: World, published: dict[str, Any], tmp_path: Path
) -> None:
    """The Parquet hand-off (Spark's own run: test_spark_handoff.py) gives the same
    cells through DuckDB over the files as the API."""
    result = cli(world, "warehouse", "handoff", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out"
    catalog = {i["id"]: i for i in json.loads((folder / "indicators.json").read_text())}
    con = duckdb.connect(":memory:")
    for path in folder.glob("*.parquet"):
        con.execute(f"CREATE VIEW {path.stem} AS SELECT * FROM read_parquet('{path}')")  # noqa: S608
    for statement in (folder / "prelude-duckdb.sql").read_text().split(";\n\n"):
        con.execute(statement.rstrip().rstrip(";"))
    got = con.execute(
        f"SELECT hospital, sum(numerator) FROM ({catalog['admissions']['sql']}) GROUP BY 1"  # noqa: S608
    ).fetchall()
    assert dict(got) == {"hosp-a": 7, "hosp-b": 3}
