"""The warehouse dashboards in a real browser (issue 7 item 4: "the browser test
of the dashboards") against ``salus serve``.

A small network is seeded through the real APIs, in June 2026 (a month no
other browser test uses): FHIR transactions of patients and inpatient stays
as ``a-feed`` and ``b-feed``, and dataset CSV submissions (beds for both
hospitals, staff for hosp-a, and May's beds of hosp-a for the time series).
The indicators are then computed through the API (``refresh=true``: views
materialized, snapshots stored), as the schedule would.

By hand (June 2026):
  hosp-a: 6 stays (3 female, 3 male), 5 of 3 days and 1 of 5 days ending in
          death: admissions 6, length of stay 20/6 = 3.3 days, mortality 1/6
  hosp-b: 3 stays of 2 days: admissions 3 (a small cell for everyone but B)
  network admissions 9
  beds: a June 990/1200 = 82.5 %, a May 1085/1240 = 87.5 %, b June 300/600 = 50 %,
        network June 1290/1800 = 71.7 %
  completeness (4 datasets expected): a 2/4 = 50 %, b 1/4 = 25 %; timeliness 0
  (submitted after the 15th of July): quality score a 25.0, b 12.5

Render times (the footer) are printed and checked under 500 ms.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.browser.conftest import shot, sign_in
from tests.browser.live import LiveServer

_STATES: dict[tuple[str, str], Any] = {}
HEADLINE = (
    "admissions",
    "average-length-of-stay",
    "bed-occupancy",
    "in-hospital-mortality",
    "readmissions-30d",
    "medicine-stock-outs",
    "equipment-availability",
    "data-timeliness",
    "data-completeness",
)
BEDS = "org,period,ward_id,ward_name,ward_type,beds,occupied_bed_days,admissions,discharges\n"
SUBMISSIONS = [
    ("a-feed", "beds", BEDS + "hosp-a,2026-06,D-MED,Medicine,medical,30,720,80,80\n"
                              "hosp-a,2026-06,D-SURG,Surgery,surgical,10,270,30,30\n"),
    ("a-feed", "beds", BEDS + "hosp-a,2026-05,D-MED,Medicine,medical,30,837,80,80\n"
                              "hosp-a,2026-05,D-SURG,Surgery,surgical,10,248,30,30\n"),
    ("b-feed", "beds", BEDS + "hosp-b,2026-06,D-GEN,General,medical,20,300,40,40\n"),
    ("a-feed", "staff", "org,period,staff_id,family_name,given_name,gender,role,department,fte,"
                        "start_date\nhosp-a,2026-06,D001,Doe,Jane,female,doctor,Medicine,1.0,\n"),
]  # fmt: skip


def _stays(hospital: str) -> dict[str, Any]:
    if hospital == "hosp-a":
        stays = [("female", "06-01", "06-04", "home")] * 3 + [
            ("male", "06-01", "06-04", "home")
        ] * 2
        stays.append(("male", "06-10", "06-15", "exp"))
    else:
        stays = [("female", "06-02", "06-04", "home")] * 3
    entries: list[dict[str, Any]] = []
    for n, (sex, start, end, disposition) in enumerate(stays):
        pid, eid = f"dash-{hospital}-p{n}", f"dash-{hospital}-e{n}"
        patient = {"resourceType": "Patient", "id": pid, "gender": sex, "birthDate": "1970-03-01"}
        encounter = {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/{pid}"},
            "serviceProvider": {"reference": f"Organization/{hospital}"},
            "period": {
                "start": f"2026-{start}T09:00:00+07:00",
                "end": f"2026-{end}T10:00:00+07:00",
            },
            "hospitalization": {
                "dischargeDisposition": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
                            "code": disposition,
                        }
                    ]
                }
            },
        }
        for resource in (patient, encounter):
            url = f"{resource['resourceType']}/{resource['id']}"
            entries.append({"resource": resource, "request": {"method": "PUT", "url": url}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.fixture(scope="module")
def network(live: LiveServer) -> LiveServer:
    for hospital, feed in (("hosp-a", "a-feed"), ("hosp-b", "b-feed")):
        response = live.api(feed, "POST", "/fhir", json=_stays(hospital))
        assert response.status_code == 200, response.text[:500]
    for feed, dataset, body in SUBMISSIONS:
        response = live.api(
            feed,
            "POST",
            f"/api/v1/datasets/{dataset}/submissions",
            content=body.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert response.status_code in (200, 201), response.text[:500]
    for ind in HEADLINE:  # as the schedule does: views materialized, snapshots stored
        response = live.api(
            "moh-analyst", "GET", f"/api/v1/indicators/{ind}", params={"refresh": "true"}
        )
        assert response.status_code == 200, response.text[:500]
    return live


@contextmanager
def signed_in(browser: Any, live: LiveServer, username: str) -> Iterator[Any]:
    """A fresh context signed in as ``username`` (the form is used once per person)."""
    key = (live.base_url, username)
    options = {"base_url": live.base_url, "viewport": {"width": 1366, "height": 800}}
    if key not in _STATES:
        first = browser.new_context(locale="en-GB", **options)
        sign_in(first.new_page(), username)
        _STATES[key] = first.storage_state()
        first.close()
    context = browser.new_context(locale="en-GB", storage_state=_STATES[key], **options)
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def render_ms(page: Any, what: str) -> int:
    text = page.get_by_test_id("render-time").inner_text()
    found = re.match(r"(\d+) ms", text)
    assert found, text
    ms = int(found.group(1))
    print(f"render time {what}: {ms} ms")  # noqa: T201 - reported figures
    return ms


def row(page: Any, table: str, key: str) -> list[str]:
    cells = page.locator(f'[data-testid="{table}"] tr[data-hospital="{key}"], '
                         f'[data-testid="{table}"] tr[data-indicator="{key}"], '
                         f'[data-testid="{table}"] tr[data-key="{key}"]').first  # fmt: skip
    texts: list[str] = cells.locator("th, td").all_inner_texts()
    return [" ".join(t.split()) for t in texts]


def test_analyst_overview_compare_trend_and_drill_down(browser: Any, network: LiveServer) -> None:
    with signed_in(browser, network, "moh-analyst") as page:
        page.goto("/")
        page.get_by_role("link", name="Dashboards").first.click()
        page.wait_for_url("**/dashboards")
        render_ms(page, "overview, first view")
        page.get_by_label("Month", exact=True).select_option("2026-06")
        page.get_by_role("button", name="Show").click()
        page.wait_for_url("**/dashboards?period=2026-06")
        render_ms(page, "overview")
        card = page.locator(
            '[data-testid="headline"] li[data-indicator="admissions"] .value > .fig'
        )
        assert card.inner_text() == "9"
        mortality = page.locator(
            '[data-testid="headline"] li[data-indicator="in-hospital-mortality"]'
        )
        assert "suppressed" in mortality.inner_text()  # one death in the network
        a = row(page, "hospitals", "hosp-a")
        assert a[:4] == ["Bệnh viện A", "6", "3.3 days", "82.5%"]
        assert row(page, "hospitals", "hosp-b")[:4] == ["병원 B", "suppressed", "suppressed", "50%"]
        computed = page.get_by_test_id("computed-at").inner_text()  # the snapshots' time
        assert re.fullmatch(r"Figures computed at \d{4}-\d\d-\d\d \d\d:\d\d UTC\.", computed)
        shot(page, "dashboards-overview-analyst")

        page.get_by_role("link", name="Compare hospitals").click()
        page.get_by_label("Indicator", exact=True).select_option("bed-occupancy")
        page.get_by_label("Month", exact=True).select_option("2026-06")
        page.get_by_role("button", name="Show").click()
        page.wait_for_url(re.compile(r".*/dashboards/compare\?indicator=bed-occupancy.*"))
        render_ms(page, "compare")
        chart = page.locator("svg#compare-chart")
        assert chart.get_attribute("role") == "img"
        assert (
            chart.locator("title").first.inner_html() == "Bed occupancy rate by hospital, 2026-06"
        )
        assert chart.locator("rect.bar").count() == 3  # network, A, B
        assert row(page, "compare", "network")[1:] == ["1290", "1800", "71.7%"]
        assert row(page, "compare", "hosp-a")[1:] == ["990", "1200", "82.5%"]
        assert page.get_by_test_id("csv").get_attribute("href") == (
            "/api/v1/indicators/bed-occupancy?format=csv&period=2026-06"
        )
        shot(page, "dashboards-compare-bed-occupancy")

        page.get_by_role("link", name="Time series").click()
        page.get_by_label("Indicator", exact=True).select_option("bed-occupancy")
        page.get_by_label("Hospital", exact=True).select_option("hosp-a")
        page.get_by_label("From (YYYY-MM)").fill("2026-05")
        page.get_by_label("To (YYYY-MM)").fill("2026-06")
        page.get_by_label("To (YYYY-MM)").press("Enter")
        page.wait_for_url(re.compile(r".*/dashboards/trend\?.*hospital=hosp-a.*"))
        render_ms(page, "trend")
        assert row(page, "trend", "hosp-a") == ["Bệnh viện A", "87.5%", "82.5%"]
        assert page.locator("svg#trend-chart polyline").count() >= 1
        shot(page, "dashboards-trend-bed-occupancy")

        page.goto("/dashboards?period=2026-06")
        page.get_by_role("link", name="Bệnh viện A").click()
        page.wait_for_url(re.compile(r".*/dashboards/hospitals/hosp-a.*"))
        render_ms(page, "drill-down")
        assert row(page, "figures", "admissions") == ["Admissions", "6", "9"]
        assert row(page, "split-sex", "female") == ["female", "suppressed"]  # 3: a small cell
        assert row(page, "split-sex", "male") == ["male", "suppressed"]
        shot(page, "dashboards-drill-down-analyst")


def test_hospital_a_sees_its_own_detail_and_its_quality_score(
    browser: Any, network: LiveServer
) -> None:
    with signed_in(browser, network, "a-admin") as page:
        page.goto("/")
        page.get_by_role("link", name="Dashboards").first.click()
        page.wait_for_url("**/dashboards/hospital")
        render_ms(page, "hospital A, first view")
        page.get_by_label("Month", exact=True).select_option("2026-06")
        page.get_by_role("button", name="Show").first.click()
        page.wait_for_url(re.compile(r".*period=2026-06.*"))
        render_ms(page, "hospital A")
        assert row(page, "figures", "admissions") == ["Admissions", "6", "9"]
        assert row(page, "figures", "in-hospital-mortality") == [
            "In-hospital mortality", "16.7%", "suppressed",
        ]  # fmt: skip
        assert row(page, "split-sex", "female") == ["female", "3"]  # its own small cells
        assert page.get_by_test_id("quality-score").inner_text() == "25.0 / 100"
        body = page.locator("main").inner_text()
        assert "병원 B" not in body  # nothing about the other hospital
        shot(page, "dashboards-hospital-a")
        response = page.goto("/dashboards/compare")
        assert response is not None and response.status == 403
        assert page.locator("h1").inner_text() == "Not allowed"


def test_hospital_b_and_a_clinician(browser: Any, network: LiveServer) -> None:
    with signed_in(browser, network, "b-admin") as page:
        page.goto("/dashboards/hospital?period=2026-06")
        render_ms(page, "hospital B")
        assert row(page, "figures", "admissions") == ["Admissions", "3", "9"]
        assert page.get_by_test_id("quality-score").inner_text() == "12.5 / 100"
        assert "Bệnh viện A" not in page.locator("main").inner_text()
        shot(page, "dashboards-hospital-b")
        page.get_by_label("Language").select_option("vi")
        page.wait_for_selector("html[lang=vi]")
        assert page.locator("h1").inner_text() == "Bảng điều khiển của 병원 B"
        assert page.get_by_test_id("quality-score").inner_text() == "12,5 / 100"
        shot(page, "dashboards-hospital-b-vi")
    with signed_in(browser, network, "a-doc") as page:
        page.goto("/")
        assert page.get_by_role("link", name="Dashboards").count() == 0
        response = page.goto("/dashboards")
        assert response is not None and response.status == 403
        shot(page, "dashboards-refused-clinician")
