"""The warehouse dashboards in the console (issue 7 item 4), over real HTTP
routing on the small network of ``test_indicators`` (two hospitals, October
2026, values computed by hand there) plus a September beds submission of
hosp-a for the time series.

What is checked: every page renders for the roles it is for and answers 403
to the others; an analyst (and the operator) sees aggregates with the
indicators API's small-cell suppression, a hospital its own cells
unsuppressed and nothing of another hospital's detail; the figures shown are
the API's; the CSV links are the API's CSV; new data shows at once.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from tests.integration.security_world import PASSWORD, World, make_world
from tests.integration.test_indicators import DATA, FHIR, _bundle

SEPTEMBER_BEDS = (
    "org,period,ward_id,ward_name,ward_type,beds,occupied_bed_days,admissions,discharges\n"
    "hosp-a,2026-09,W-MED,Medicine,medical,40,1000,150,150\n"
    "hosp-a,2026-09,W-ICU,Intensive care,icu,10,250,20,20\n"
)


class _Tables(HTMLParser):
    """Tables by ``data-testid``: rows of (the row's ``data-*`` key, cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[str | None, list[str]]]] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self._table: str | None = None
        self._row: tuple[str | None, list[str]] | None = None
        self._cell: list[str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if "data-testid" in found:
            self.attrs[found["data-testid"]] = found
        if tag == "table" and "data-testid" in found:
            self._table = found["data-testid"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = (
                found.get("data-hospital") or found.get("data-indicator") or found.get("data-key"),
                [],
            )
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row[1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, dict[str | None, list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return {name: dict(rows) for name, rows in parser.tables.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world("sqlite", tmp_path_factory.mktemp("dashboards")) as built:
        assert built.services.warehouse is not None
        built.services.warehouse.materializer.lag = timedelta(0)
        for hospital, feed in (("hosp-a", "a-feed"), ("hosp-b", "b-feed")):
            response = built.client.post(
                "/fhir",
                content=json.dumps(_bundle(hospital)),
                headers=built.headers(feed, **{"Content-Type": FHIR}),
            )
            assert response.status_code == 200, response.text[:800]
        uploads = [(p.stem.split("_", 1), p.read_bytes()) for p in sorted(DATA.glob("*.csv"))]
        uploads.append((["hosp-a", "beds"], SEPTEMBER_BEDS.encode()))
        for (hospital, dataset), body in uploads:
            feed = {"hosp-a": "a-feed", "hosp-b": "b-feed"}[hospital]
            response = built.client.post(
                f"/api/v1/datasets/{dataset}/submissions",
                content=body,
                headers=built.headers(feed, **{"Content-Type": "text/csv"}),
            )
            assert response.status_code in (200, 201), response.text[:800]
        response = built.call(
            "moh-analyst", "GET", "/api/v1/indicators/admissions", params={"refresh": "true"}
        )
        assert response.status_code == 200, response.text
        yield built


def page(world: World, who: str, path: str, status: int = 200, **params: Any) -> str:
    response = world.call(who, "GET", path, params=params or None)
    assert response.status_code == status, response.text[-1500:]
    return str(response.text)


def api_cells(world: World, who: str, ind: str, **params: Any) -> dict[tuple[Any, ...], Any]:
    body = world.call(who, "GET", f"/api/v1/indicators/{ind}", params=params).json()
    return {tuple(c[d] for d in body["dimensions"]): c for c in body["cells"]}


def test_overview_shows_the_network_and_each_hospital_with_suppression(world: World) -> None:
    html = page(world, "moh-analyst", "/dashboards")
    assert 'aria-current="page">Network overview' in html
    assert "The network in 2026-10" in html  # the latest month by default
    cards = re.findall(
        r'data-indicator="([a-z0-9-]+)">\s*<span class="label">[^<]+</span>\s*'
        r'<span class="value"><span class="fig (\w+)"[^>]*>([^<]*)<',
        html,
    )
    shown = {ind: (state, text) for ind, state, text in cards}
    assert shown["admissions"] == ("value", "10")
    assert shown["in-hospital-mortality"] == ("suppressed", "suppressed")  # 1 death
    assert shown["bed-occupancy"] == ("value", "87.1%")  # 1890 / 2170
    hospitals = tables(html)["hospitals"]
    assert hospitals["hosp-a"][:4] == ["Bệnh viện A", "7", "3.5 days", "89.7%"]
    assert hospitals["hosp-b"][:3] == ["병원 B", "suppressed", "suppressed"]  # 3 admissions
    assert hospitals["hosp-b"][3] == "80.6%"  # facility data: never suppressed
    # the operator's administrator sees the same aggregates
    assert tables(page(world, "ops-admin", "/dashboards"))["hospitals"] == hospitals


def test_who_may_open_which_dashboard(world: World) -> None:
    for who in ("a-doc", "b-doc", "uni-res", "ops-sec", "a-sec"):
        html = page(world, who, "/dashboards", 403)
        assert "Not allowed" in html
        page(world, who, "/dashboards/hospital", 403)
    for who in ("a-admin", "a-steward", "b-admin"):
        response = world.call(who, "GET", "/dashboards")
        assert response.status_code == 200 and response.url.path == "/dashboards/hospital"
        page(world, who, "/dashboards/compare", 403)
        page(world, who, "/dashboards/trend", 403)
        page(world, who, "/dashboards/hospitals/hosp-a", 403)
    page(world, "moh-analyst", "/dashboards/hospital", 403)
    menu = page(world, "a-doc", "/")
    assert 'href="/dashboards"' not in menu
    assert 'href="/dashboards"' in page(world, "a-steward", "/")
    world.client.cookies.clear()
    response = world.client.get("/dashboards", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_hospital_dashboard_shows_its_own_detail_and_the_network_suppressed(world: World) -> None:
    html = page(world, "a-admin", "/dashboards/hospital", period="2026-10")
    figures = tables(html)["figures"]
    assert figures["admissions"] == ["Admissions", "7", "10"]
    assert figures["in-hospital-mortality"] == ["In-hospital mortality", "16.7%", "suppressed"]
    assert figures["readmissions-30d"][1] == "20%"
    split = tables(html)["split-sex"]
    assert split == {None: ["Sex", "Value"], "female": ["female", "4"], "male": ["male", "3"]}
    assert "병원 B" not in html and "hosp-b" not in html  # nothing of the other hospital
    # hosp-b sees its own three admissions, and hosp-a's dashboard is not reachable for it
    b = tables(page(world, "b-admin", "/dashboards/hospital"))["figures"]
    assert b["admissions"] == ["Admissions", "3", "10"]
    assert b["average-length-of-stay"][1] == "2.3 days"  # 7 / 3


def test_data_quality_score_and_its_components(world: World) -> None:
    html = page(world, "b-admin", "/dashboards/hospital")
    score = re.search(r'data-testid="quality-score">([^<]+)<', html)
    assert score and score.group(1).strip() == "25.0 / 100"  # (50 % complete + 0 % on time) / 2
    assert "Data completeness" in html and "Data timeliness" in html
    a = re.search(
        r'data-testid="quality-score">([^<]+)<', page(world, "a-admin", "/dashboards/hospital")
    )
    assert a and a.group(1).strip() == "50.0 / 100"  # (100 % + 0 %) / 2


def test_compare_matches_the_indicators_api_and_links_its_csv(world: World) -> None:
    html = page(world, "moh-analyst", "/dashboards/compare", indicator="average-length-of-stay")
    rows = tables(html)["compare"]
    api = api_cells(world, "moh-analyst", "average-length-of-stay")
    for org in ("hosp-a", "hosp-b", "network"):
        cell = api[(org, "2026-10")]
        shown = rows[org]
        expected = "suppressed" if cell["suppressed"] else f"{cell['value']:.1f} days"
        assert shown[3] == expected, (org, shown)
        assert shown[1] == ("" if cell["numerator"] is None else str(cell["numerator"]))
    assert rows["hosp-b"][1:] == ["", "", "suppressed"]
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="chart bars"' in html
    assert '<title id="compare-chart-t">Average length of stay by hospital, 2026-10</title>' in html
    href = re.search(r'href="([^"]+)" data-testid="csv"', html)
    assert href is not None
    link = href.group(1).replace("&amp;", "&")
    assert link.startswith("/api/v1/indicators/average-length-of-stay?format=csv")
    body = world.call("moh-analyst", "GET", link).text
    got = {r["hospital"]: r for r in csv.DictReader(io.StringIO(body))}
    assert got["hosp-a"]["value"] == "3.5" and got["hosp-b"]["suppressed"] == "True"


def test_time_series_over_months_and_its_filters(world: World) -> None:
    html = page(world, "moh-analyst", "/dashboards/trend", indicator="bed-occupancy")
    trend = tables(html)["trend"]
    assert trend[None][1:] == ["2026-09", "2026-10"]
    assert trend["hosp-a"] == ["Bệnh viện A", "83.3%", "89.7%"]  # 1250/1500, 1390/1550
    assert trend["hosp-b"] == ["병원 B", "no data", "80.6%"]
    assert trend["network"] == ["Network", "83.3%", "87.1%"]
    assert html.count("<polyline") >= 2
    months: dict[str, Any] = {"from": "2026-10", "to": "2026-10"}
    one = page(world, "moh-analyst", "/dashboards/trend", indicator="bed-occupancy",
               hospital="hosp-a", **months)  # fmt: skip
    only = tables(one)["trend"]
    assert set(only) == {None, "network", "hosp-a"} and only["hosp-a"][1:] == ["89.7%"]
    link = re.search(r'href="([^"]+)" data-testid="trend-csv"', one)
    assert link is not None
    href = link.group(1).replace("&amp;", "&")
    assert href == (
        "/api/v1/indicators/bed-occupancy?format=csv&hospital=hosp-a&from=2026-10&to=2026-10"
    )
    rows = list(csv.DictReader(io.StringIO(world.call("moh-analyst", "GET", href).text)))
    assert [(r["hospital"], r["period"], r["value"]) for r in rows] == [
        ("hosp-a", "2026-10", str(round(1390 / 1550 * 100, 4)))
    ]
    every = world.call("moh-analyst", "GET", "/api/v1/indicators/bed-occupancy",
                       params={"from": "2026-09"}).json()["cells"]  # fmt: skip
    assert {c["period"] for c in every} == {"2026-09", "2026-10"}
    assert world.call("moh-analyst", "GET", "/api/v1/indicators/bed-occupancy",
                      params={"to": "Oct"}).status_code == 400  # fmt: skip
    page(world, "moh-analyst", "/dashboards/trend", 400, **{"from": "2026-11", "to": "2026-10"})
    page(world, "moh-analyst", "/dashboards/trend", 400, **{"from": "October"})
    page(world, "moh-analyst", "/dashboards/trend", 404, hospital="nowhere")
    page(world, "moh-analyst", "/dashboards/compare", 404, indicator="nope")


def test_drill_down_to_a_hospital_with_disaggregations(world: World) -> None:
    html = page(world, "moh-analyst", "/dashboards/hospitals/hosp-a", indicator="admissions")
    got = tables(html)
    assert got["figures"]["admissions"] == ["Admissions", "7", "10"]
    assert got["figures"]["in-hospital-mortality"][1:] == ["suppressed", "suppressed"]
    assert got["split-sex"]["female"] == ["female", "suppressed"]  # 4 and 3: small cells
    assert got["split-sex"]["male"] == ["male", "suppressed"]
    assert got["split-age_band"]["65+"] == ["65+", "suppressed"]
    assert "split-ward" not in got  # admissions have no ward
    wards = tables(page(world, "moh-analyst", "/dashboards/hospitals/hosp-a",
                        indicator="bed-occupancy", period="2026-10"))["split-ward"]  # fmt: skip
    assert (wards["W-ICU"], wards["W-MED"]) == (["W-ICU", "93.5%"], ["W-MED", "88.7%"])
    api = api_cells(world, "moh-analyst", "bed-occupancy", by="ward", hospital="hosp-a")
    assert round(api[("hosp-a", "2026-10", "W-MED")]["value"], 1) == 88.7
    page(world, "moh-analyst", "/dashboards/hospitals/nowhere", 404)


def test_new_data_shows_at_once_and_views_are_audited(world: World) -> None:
    before = page(world, "b-admin", "/dashboards/hospital")
    assert "25.0 / 100" in before
    equipment = (
        "org,period,device_id,device_type,manufacturer,model,status,downtime_hours,downtime_reason\n"
        "hosp-b,2026-10,XR-01,xray,,,active,0,\n"
    )
    response = world.client.post(
        "/api/v1/datasets/equipment/submissions",
        content=equipment.encode(),
        headers=world.headers("b-feed", **{"Content-Type": "text/csv"}),
    )
    assert response.status_code in (200, 201), response.text
    after = page(world, "b-admin", "/dashboards/hospital")
    score = re.search(r'data-testid="quality-score">([^<]+)<', after)
    assert score and score.group(1).strip() == "37.5 / 100"  # 3 of 4 datasets now
    events = world.call(
        "ops-sec", "GET", "/api/v1/audit/events", params={"agent": world.user_ids["b-admin"]}
    )
    assert events.status_code == 200
    assert "dashboard/hospital" in events.text and "indicator/data-completeness" in events.text


def test_rejections_are_counted_beside_the_score(world: World) -> None:
    before = tables(page(world, "b-admin", "/dashboards/hospital"))["rejections"]
    bad = world.client.post(
        "/api/v1/datasets/beds/submissions",
        content=b"org,period,ward_id\nhosp-b,2026-10,W-GEN\n",
        headers=world.headers("b-feed", **{"Content-Type": "text/csv"}),
    )
    assert bad.status_code == 422
    after = tables(page(world, "b-admin", "/dashboards/hospital"))["rejections"]
    assert int(after["datasets"][1]) == int(before["datasets"][1]) + 1
    assert after["hl7"][1] == "0"
    # hosp-a's figures do not move, and the score does not count rejections
    a = page(world, "a-steward", "/dashboards/hospital")
    assert tables(a)["rejections"]["datasets"][1] == "0"


def test_the_authority_asks_for_a_computation_with_the_form(world: World) -> None:
    world.client.cookies.clear()
    signed = world.client.post(
        "/login", data={"username": "moh-analyst", "password": PASSWORD, "next": "/dashboards"}
    )
    assert signed.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', signed.text)
    assert csrf is not None
    forged = world.client.post("/dashboards/compute", data={"csrf": "forged"})
    assert forged.status_code == 403
    done = world.client.post(
        "/dashboards/compute", data={"csrf": csrf.group(1)}, follow_redirects=False
    )
    assert done.status_code == 303
    job_id = int(done.headers["location"].rsplit("=", 1)[1])
    assert world.services.jobs.get(job_id).kind == "warehouse.indicators"
    again = world.client.post(
        "/dashboards/compute", data={"csrf": csrf.group(1)}, follow_redirects=False
    )
    assert again.headers["location"] == done.headers["location"]  # one job a minute
    shown = world.client.get(done.headers["location"])
    assert "The computation is queued" in shown.text
    world.client.cookies.clear()
    sign = world.client.post(
        "/login", data={"username": "a-admin", "password": PASSWORD, "next": "/"}
    )
    assert sign.status_code == 200
    own = re.search(r'name="csrf" value="([^"]+)"', sign.text)
    assert own is not None
    refused = world.client.post("/dashboards/compute", data={"csrf": own.group(1)})
    assert refused.status_code == 403
    world.client.cookies.clear()


def test_pages_render_in_vietnamese_and_french(world: World) -> None:
    world.client.cookies.set("salus_lang", "vi")
    try:
        html = page(world, "moh-analyst", "/dashboards")
        assert 'lang="vi"' in html and "<h1>Tổng quan mạng lưới</h1>" in html
        assert "Thời gian nằm viện trung bình" in html and "3,5 ngày" in html
        world.client.cookies.set("salus_lang", "fr")
        french = page(world, "a-admin", "/dashboards/hospital")
        assert 'lang="fr"' in french and "Score de qualité des données" in french
        assert "Mortalité hospitalière" in french
    finally:
        world.client.cookies.clear()
