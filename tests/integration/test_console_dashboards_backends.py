"""The dashboards' own database reads on both backends (SQLite and PostgreSQL):
the hospital names, the data stamp that keeps the result cache honest, and the
rejection counts beside the data-quality score. The operational-dataset
indicators need no materialized view, so this network is datasets only.

Hand computation (October 2026): hosp-a submits beds (40 beds, 1100
occupied bed-days of 1240) then staff; completeness 1/4 then 2/4; a refused
beds file counts as one refusal and changes no figure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

BEDS = (
    "org,period,ward_id,ward_name,ward_type,beds,occupied_bed_days,admissions,discharges\n"
    "hosp-a,2026-10,W-MED,Medicine,medical,40,1100,160,155\n"
)
STAFF = (
    "org,period,staff_id,family_name,given_name,gender,role,department,fte,start_date\n"
    "hosp-a,2026-10,S001,Doe,Jane,female,doctor,Medicine,1.0,\n"
)


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("dash-backends")) as built:
        yield built


def submit(world: World, dataset: str, body: str) -> int:
    response = world.client.post(
        f"/api/v1/datasets/{dataset}/submissions",
        content=body.encode(),
        headers=world.headers("a-feed", **{"Content-Type": "text/csv"}),
    )
    return int(response.status_code)


def score(world: World) -> str:
    response = world.call("a-steward", "GET", "/dashboards/hospital", params={"period": "2026-10"})
    assert response.status_code == 200, response.text[-800:]
    found = re.search(r'data-testid="quality-score">([^<]+)<', response.text)
    assert found
    return found.group(1).strip()


def refused(world: World) -> int:
    html = world.call("a-admin", "GET", "/dashboards/hospital").text
    found = re.search(r'<tr data-key="datasets">.*?<td class="num">(\d+)', html, re.S)
    assert found
    return int(found.group(1))


def test_empty_network_renders(world: World) -> None:
    html = world.call("moh-analyst", "GET", "/dashboards").text
    assert "no data yet" in html  # no month to choose
    assert 'data-hospital="hosp-a"' in html and "Bệnh viện A" in html
    assert score(world) == "no data"


def test_figures_follow_new_submissions_and_refusals_are_counted(world: World) -> None:
    assert submit(world, "beds", BEDS) in (200, 201)
    assert score(world) == "12.5 / 100"  # 1 of 4 datasets, none on time
    overview = world.call("moh-analyst", "GET", "/dashboards", params={"period": "2026-10"}).text
    assert "88.7%" in overview  # 1100 / 1240
    before = refused(world)
    assert submit(world, "beds", "org,period,ward_id\nhosp-a,2026-10,W-MED\n") == 422
    assert refused(world) == before + 1
    assert submit(world, "staff", STAFF) in (200, 201)
    assert score(world) == "25.0 / 100"  # the cached page result was dropped
