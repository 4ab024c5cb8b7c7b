"""The patient pages of the console over real HTTP routing, on SQLite and
PostgreSQL: search (names in any script, identifiers, birth date, sex), the
record across hospitals (A's own records; B's only with consent or
break-the-glass), documents, refusals for roles that may not open a record,
the break-the-glass flow with CSRF and the security officer's review queue,
and the image viewer's access rules."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from salus.jobs import Worker
from tests.conftest import BACKENDS
from tests.integration.dicom_world import stow_body
from tests.integration.security_world import PASSWORD, World, make_world
from tests.integration.test_console_patients_data import (
    Person,
    bundle_a,
    bundle_b,
    ct_series,
    new_person,
)


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("patients")
    with make_world(request.param, folder, rate_limit_login_per_minute=1000) as built:
        yield built


def seed(world: World) -> Person:
    p = new_person()
    for who, bundle in (("a-feed", bundle_a(p)), ("b-feed", bundle_b(p))):
        response = world.call(who, "POST", "/fhir", json=bundle)
        assert response.status_code == 200, response.text
    return p


_SESSIONS: dict[tuple[int, str], dict[str, str]] = {}


def sign_in(world: World, username: str) -> None:
    """Sign in through the form once per person and world; later calls reuse the cookies."""
    world.client.cookies.clear()
    key = (id(world), username)
    if key not in _SESSIONS:
        response = world.client.post(
            "/login",
            data={"username": username, "password": PASSWORD, "next": "/"},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        _SESSIONS[key] = dict(world.client.cookies.items())
        world.client.cookies.clear()
    for name, value in _SESSIONS[key].items():
        world.client.cookies.set(name, value)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def timeline_ids(page: str) -> set[str]:
    return set(re.findall(r'data-kind="([a-z]+)"', page))


def test_search_by_name_in_any_script_identifier_birth_date_and_sex(world: World) -> None:
    p = seed(world)
    sign_in(world, "a-doc")
    for name in ("Nguyễn", "nguyen", "NGUYEN THI"[:6]):
        page = world.client.get("/patients", params={"name": name, "identifier": p.national_id})
        assert page.status_code == 200
        assert f'href="/patients/{p.a_patient}"' in page.text, name
    page = world.client.get("/patients", params={"identifier": p.a_mrn}).text
    assert f"/patients/{p.a_patient}" in page and "Bệnh viện A" in page
    # hospital B's Patient of the same person is not visible to A's clinician
    page = world.client.get("/patients", params={"identifier": p.national_id}).text
    assert f"/patients/{p.a_patient}" in page and f"/patients/{p.b_patient}" not in page
    both = {"identifier": p.national_id}
    assert (
        p.a_patient
        in world.client.get("/patients", params={**both, "birthdate": "1984-03-12"}).text
    )
    assert (
        p.a_patient not in world.client.get("/patients", params={**both, "birthdate": "1990"}).text
    )
    assert p.a_patient in world.client.get("/patients", params={**both, "gender": "female"}).text
    assert p.a_patient not in world.client.get("/patients", params={**both, "gender": "male"}).text
    assert world.client.get("/patients", params={"birthdate": "12/03/1984"}).status_code == 400
    sign_in(world, "b-doc")
    page = world.client.get("/patients", params={"name": p.hangul[:1], "identifier": p.b_mrn}).text
    assert f"/patients/{p.b_patient}" in page and p.hangul in page and "병원 B" in page
    page = world.client.get("/patients", params={"name": p.hangul, "birthdate": "1984-03-12"}).text
    assert f"/patients/{p.b_patient}" in page


def test_search_is_paginated(world: World) -> None:
    seed(world)
    seed(world)
    sign_in(world, "a-doc")
    first = world.client.get("/patients", params={"name": "Nguyễn", "size": "1"}).text
    assert first.count('<a href="/patients/pa-') == 1
    assert 'rel="next"' in first
    second = world.client.get("/patients", params={"name": "Nguyễn", "size": "1", "page": "2"}).text
    assert second.count('<a href="/patients/pa-') == 1 and 'rel="prev"' in second
    assert (
        re.findall(r"/patients/(pa-\w+)", first)[0] != re.findall(r"/patients/(pa-\w+)", second)[0]
    )


def test_record_shows_own_hospital_then_other_hospital_only_with_consent(world: World) -> None:
    p = seed(world)
    sign_in(world, "a-doc")
    page = world.client.get(f"/patients/{p.a_patient}")
    assert page.status_code == 200
    assert timeline_ids(page.text) == {"encounter", "condition", "document"}
    assert "J18.9" in page.text and p.a_mrn in page.text and "Glucose" not in page.text
    # hospital B's feed records the patient's consent to share with hospital A
    consent = world.call(
        "b-feed",
        "POST",
        "/api/v1/care/consents",
        json={
            "patient": p.b_patient,
            "decision": "permit",
            "grantee_org": "hosp-a",
            "source": "form",
        },
    )
    assert consent.status_code == 201
    page = world.client.get(f"/patients/{p.a_patient}").text
    assert timeline_ids(page) == {"encounter", "condition", "document", "observation", "medication"}
    assert "Glucose" in page and "212 mg/dL" in page and "70 – 99" in page
    assert 'class="flag"' in page and "A10BA02" in page and "metformin" in page
    assert p.b_mrn in page and p.hangul in page and "병원 B" in page
    assert 'data-testid="emergency"' not in page
    only_b = world.client.get(f"/patients/{p.a_patient}", params={"org": "hosp-b"}).text
    assert timeline_ids(only_b) == {"observation", "medication"}
    only_results = world.client.get(f"/patients/{p.a_patient}", params={"kind": "observation"}).text
    assert timeline_ids(only_results) == {"observation"}
    paged = world.client.get(f"/patients/{p.a_patient}", params={"size": "2", "page": "3"}).text
    assert len(re.findall(r'data-kind="', paged)) == 1 and "Page 3 of 3" in paged


def test_treatment_relationship_opens_the_other_hospitals_records(world: World) -> None:
    p = seed(world)
    sign_in(world, "a-doc")
    refused = world.client.get(f"/patients/{p.b_patient}")
    assert refused.status_code == 403 and "✘" in refused.text
    # hospital A's feed records the treatment relationship (e.g. a referral from B)
    related = world.call(
        "a-feed",
        "POST",
        "/api/v1/care/treatment-relationships",
        json={"patient": p.b_patient, "source": "referral"},
    )
    assert related.status_code == 201
    page = world.client.get(f"/patients/{p.b_patient}")
    assert page.status_code == 200 and 'data-testid="emergency"' not in page.text
    assert timeline_ids(page.text) == {
        "encounter",
        "condition",
        "document",
        "observation",
        "medication",
    }


def test_document_attachment_opens_sandboxed(world: World) -> None:
    p = seed(world)
    sign_in(world, "a-doc")
    response = world.client.get(f"/patients/{p.a_patient}/documents/doc-a-{p.tag}/0")
    assert response.status_code == 200
    assert response.text.startswith(f"Discharge letter {p.tag}")
    assert response.headers["content-type"].startswith("text/plain")
    assert "sandbox" in response.headers["content-security-policy"]
    assert world.client.get(f"/patients/{p.a_patient}/documents/doc-a-{p.tag}/5").status_code == 404
    sign_in(world, "b-doc")
    assert world.client.get(f"/patients/{p.a_patient}/documents/doc-a-{p.tag}/0").status_code == 404


@pytest.mark.parametrize("who", ["uni-res", "moh-analyst", "a-sec", "a-admin"])
def test_roles_that_may_not_open_a_record_are_refused(world: World, who: str) -> None:
    p = seed(world)
    sign_in(world, who)
    for path in ("/patients", f"/patients/{p.a_patient}"):
        response = world.client.get(path)
        assert response.status_code == 403, (who, path)
        assert p.family not in response.text and p.a_mrn not in response.text
    assert 'href="/patients"' not in world.client.get("/").text


def test_break_the_glass_flow_banner_and_review(world: World) -> None:
    p = seed(world)
    sign_in(world, "a-doc")
    refused = world.client.get(f"/patients/{p.b_patient}")
    assert refused.status_code == 403
    assert "Emergency access (break-the-glass)" in refused.text and p.hangul not in refused.text
    csrf = csrf_of(refused.text)
    url = f"/patients/{p.b_patient}/break-glass"
    no_token = world.client.post(url, data={"reason": "unconscious in the ER, allergies unknown"})
    assert no_token.status_code == 403
    short = world.client.post(url, data={"reason": "urgent", "csrf": csrf})
    assert short.status_code == 400 and "at least 10 characters" in short.text
    granted = world.client.post(
        url,
        data={"reason": "unconscious in the ER, allergies unknown", "csrf": csrf},
        follow_redirects=False,
    )
    assert granted.status_code == 303 and granted.headers["location"] == f"/patients/{p.b_patient}"
    record = world.client.get(f"/patients/{p.b_patient}")
    assert record.status_code == 200
    assert 'data-testid="emergency"' in record.text and "audited" in record.text
    # B's records and, linked by the national id, A's own
    assert {"observation", "medication", "encounter", "condition"} <= timeline_ids(record.text)
    # a clinician of B cannot break the glass for A's patient with a forged form
    sign_in(world, "b-doc")
    assert world.client.get(f"/patients/{p.a_patient}").status_code == 403
    # the security officer of A reviews it
    sign_in(world, "a-sec")
    queue = world.client.get("/break-glass/reviews")
    assert (
        queue.status_code == 200
        and "unconscious in the ER" in queue.text
        and p.b_patient in queue.text
    )
    grant = re.search(rf'<tr data-grant="(\d+)">(?:(?!</tr>).)*{p.b_patient}', queue.text, re.S)
    assert grant, queue.text
    review = f"/break-glass/reviews/{grant.group(1)}"
    assert world.client.post(review, data={"outcome": "accepted"}).status_code == 403  # no CSRF
    done = world.client.post(
        review,
        data={"outcome": "accepted", "note": "ER record confirms", "csrf": csrf_of(queue.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    accepted = world.client.get("/break-glass/reviews", params={"status": "accepted"}).text
    assert "ER record confirms" in accepted
    again = world.client.post(review, data={"outcome": "rejected", "csrf": csrf_of(queue.text)})
    assert again.status_code == 409
    sign_in(world, "b-sec")
    assert "unconscious in the ER" not in world.client.get("/break-glass/reviews").text
    sign_in(world, "a-doc")
    assert world.client.get("/break-glass/reviews").status_code == 403


def test_viewer_lists_series_and_follows_dicomweb_access(world: World) -> None:
    p = seed(world)
    study, series, sops, files = ct_series(p, p.a_mrn, count=3)
    body, content_type = stow_body(files)
    stored = world.client.post(
        "/dicomweb/studies",
        content=body,
        headers=world.headers("a-feed", **{"Content-Type": content_type}),
    )
    assert stored.is_success, stored.text
    Worker(world.services.jobs, world.services.job_handlers).drain()  # the ImagingStudy
    sign_in(world, "a-doc")
    record = world.client.get(f"/patients/{p.a_patient}", params={"kind": "imaging"}).text
    assert f'href="/viewer/{study}"' in record
    page = world.client.get(f"/viewer/{study}")
    assert page.status_code == 200
    assert f'data-series="{series}"' in page.text and " ".join(sops) in page.text
    image = world.client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sops[0]}/rendered",
        params={"window": "40,400,linear"},
        headers={"Accept": "image/*"},
    )
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    for who in ("b-doc", "uni-res"):
        sign_in(world, who)
        refused = world.client.get(f"/viewer/{study}")
        assert refused.status_code == 403 and series not in refused.text
    assert world.client.get("/viewer/not-a-uid").status_code == 400
