"""The console's integration inbox: failed and rejected HL7 v2 messages (sent
over real MLLP), DICOM instances a STOW-RS refused, refused dataset
submissions; who sees which hospital's entries, who sees message bodies, and
replay (with its CSRF token), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from salus.db.tables import audit_events
from salus.hl7.mapping import SUPPORTED
from tests.conftest import BACKENDS
from tests.integration.dicom_world import stow_body, web_sample
from tests.integration.hl7_world import Hl7World, ack_code, adt, hl7_world
from tests.integration.security_world import PASSWORD, SYSTEM, World


@pytest.fixture(scope="module", params=BACKENDS)
def w(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hl7World]:
    with hl7_world(
        request.param, tmp_path_factory.mktemp("inbox"), rate_limit_login_per_minute=1000
    ) as world:
        world.world.user_ids["a-integ"] = world.world.services.directory.create_user(
            SYSTEM,
            username="a-integ",
            org_id="hosp-a",
            display_name="a-integ",
            password=PASSWORD,
            roles=["hospital_integration"],
        )
        yield world


def sign_in(world: World, username: str) -> None:
    world.client.cookies.clear()
    response = world.client.post(
        "/login", data={"username": username, "password": PASSWORD, "next": "/"}
    )
    assert response.status_code == 200, response.text


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture(scope="module")
def feeds(w: Hl7World) -> dict[str, str]:
    """What the feeds sent: a failed ADT (a mapping bug), a message from an
    unknown facility, a STOW-RS part that is not DICOM, a refused CSV."""
    original = SUPPORTED["ADT"]["A01"]

    def broken(_ctx: object) -> object:
        raise KeyError("a mapping bug")

    SUPPORTED["ADT"]["A01"] = broken
    try:
        c = w.client()
        assert ack_code(c.send(adt("INBOX-P1", "A01", mrn="INBOX1"))) == "AE"
    finally:
        SUPPORTED["ADT"]["A01"] = original
    stranger = adt("INBOX-X1", "A28", mrn="X1").replace(b"|HOSPA|SALUS|", b"|NOWHERE|SALUS|")
    assert ack_code(w.client().send(stranger)) == "AR"
    store = w.runtime.store
    rows = {r["control_id"]: r for r in store.list(limit=100)}
    world = w.world
    body, content_type = stow_body([b"this is not a DICOM file", web_sample("CT_small.dcm")])
    stowed = world.client.post(
        "/dicomweb/studies",
        content=body,
        headers=world.headers("a-feed", **{"Content-Type": content_type}),
    )
    assert stowed.status_code == 202, stowed.text
    refused = world.client.post(
        "/api/v1/datasets/beds/submissions",
        content=b"org,period,ward_id\n",
        headers=world.headers("a-feed", **{"Content-Type": "text/csv"}),
    )
    assert refused.status_code == 422
    return {"failed": rows["INBOX-P1"]["uid"], "stranger": rows["INBOX-X1"]["uid"]}


def test_a_clinician_cannot_open_the_inbox(w: Hl7World, feeds: dict[str, str]) -> None:
    sign_in(w.world, "a-doc")
    assert 'href="/inbox"' not in w.world.client.get("/").text
    page = w.world.client.get("/inbox")
    assert page.status_code == 403 and "text/html" in page.headers["content-type"]
    assert w.world.client.get(f"/inbox/hl7/{feeds['failed']}").status_code == 403


def test_a_data_steward_sees_the_hospitals_failures_without_message_bodies(
    w: Hl7World, feeds: dict[str, str]
) -> None:
    client = w.world.client
    sign_in(w.world, "a-steward")
    assert 'href="/inbox"' in client.get("/").text
    page = client.get("/inbox")
    assert page.status_code == 200
    assert "INBOX-P1" in page.text and "failed" in page.text and "AE" in page.text
    assert "INBOX-X1" not in page.text  # an unknown sender's message is not hosp-a's
    shown = client.get(f"/inbox/hl7/{feeds['failed']}")
    assert shown.status_code == 200
    assert 'data-testid="no-body"' in shown.text and "INBOX1" not in shown.text
    assert "/replay" not in shown.text  # data stewards do not replay
    assert client.get(f"/inbox/hl7/{feeds['stranger']}").status_code == 404
    dicom = client.get("/inbox?kind=dicom")
    assert "STOW-RS" in dicom.text and "0xC000" in dicom.text
    datasets = client.get("/inbox?kind=datasets")
    assert "beds" in datasets.text
    [seq] = re.findall(r'href="/inbox/datasets/(\d+)"', datasets.text)
    report = client.get(f"/inbox/datasets/{seq}")
    assert report.status_code == 200
    assert "missing-column" in report.text and "A required column is missing." in report.text
    # A hospital cannot look at another organization's feeds.
    assert client.get("/inbox?org=hosp-b").status_code == 403


def test_another_hospital_sees_none_of_it(w: Hl7World, feeds: dict[str, str]) -> None:
    client = w.world.client
    sign_in(w.world, "b-admin")
    for kind in ("hl7", "dicom", "datasets"):
        page = client.get(f"/inbox?kind={kind}")
        assert page.status_code == 200
        assert "Nothing to show" in page.text, kind
    assert client.get(f"/inbox/hl7/{feeds['failed']}").status_code == 404
    datasets = client.get("/inbox?kind=datasets&org=hosp-a")
    assert datasets.status_code == 403


def test_the_network_operator_sees_every_hospital_and_unknown_senders(
    w: Hl7World, feeds: dict[str, str]
) -> None:
    client = w.world.client
    sign_in(w.world, "ops-admin")
    page = client.get("/inbox")
    assert "INBOX-P1" in page.text and "INBOX-X1" in page.text
    assert "unknown sender" in page.text and 'name="org"' in page.text
    only_b = client.get("/inbox?org=hosp-b")
    assert "INBOX-P1" not in only_b.text
    # Administrators see the metadata, not the message (no clinical data).
    shown = client.get(f"/inbox/hl7/{feeds['stranger']}")
    assert shown.status_code == 200 and 'data-testid="no-body"' in shown.text


def test_date_filter_and_paging(w: Hl7World, feeds: dict[str, str]) -> None:
    client = w.world.client
    sign_in(w.world, "ops-admin")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    today = (datetime.now(UTC) - timedelta(hours=1)).date().isoformat()
    assert "Nothing to show" in client.get(f"/inbox?since={tomorrow}").text
    assert "INBOX-P1" in client.get(f"/inbox?since={today}&until={tomorrow}").text
    assert client.get("/inbox?since=yesterday").status_code == 400
    first = client.get("/inbox?size=1")
    assert first.text.count('href="/inbox/hl7/') == 1 and 'rel="next"' in first.text
    second = client.get("/inbox?size=1&page=2")
    assert second.text.count('href="/inbox/hl7/') == 1 and 'rel="next"' not in second.text


def test_integration_engineer_reads_the_message_and_replays_it_with_csrf(
    w: Hl7World, feeds: dict[str, str]
) -> None:
    client = w.world.client
    uid = feeds["failed"]
    sign_in(w.world, "a-integ")
    shown = client.get(f"/inbox/hl7/{uid}")
    assert 'data-testid="message-body"' in shown.text and "INBOX1^^^HOSPA^MR" in shown.text
    with w.world.services.db.read() as conn:
        viewed = conn.execute(
            select(audit_events.c.description).where(
                audit_events.c.entity == f"HL7Message/{uid}",
                audit_events.c.principal_id == w.world.user_ids["a-integ"],
            )
        ).scalars()
        assert "read" in list(viewed)
    forged = client.post(f"/inbox/hl7/{uid}/replay", data={"csrf": "forged"})
    assert forged.status_code == 403
    assert w.runtime.store.by_uid(uid)["state"] == "failed"
    replayed = client.post(f"/inbox/hl7/{uid}/replay", data={"csrf": csrf_of(shown.text)})
    assert replayed.status_code == 200, replayed.text
    assert "the message was applied (AA)" in replayed.text
    assert w.runtime.store.by_uid(uid)["state"] == "applied"
    assert "INBOX-P1" not in client.get("/inbox").text  # no longer in the inbox
    # Replaying an unknown sender's message again says why it still does not get in.
    sign_in(w.world, "ops-admin")
    page = client.get(f"/inbox/hl7/{feeds['stranger']}")
    again = client.post(f"/inbox/hl7/{feeds['stranger']}/replay", data={"csrf": csrf_of(page.text)})
    assert again.status_code == 200 and "did not get in" in again.text
    assert "This sender is not known here." in again.text


def test_replay_needs_a_role_that_may_replay(w: Hl7World, feeds: dict[str, str]) -> None:
    client = w.world.client
    sign_in(w.world, "a-steward")
    page = client.get("/inbox")
    refused = client.post(
        f"/inbox/hl7/{feeds['stranger']}/replay", data={"csrf": csrf_of(page.text)}
    )
    assert refused.status_code == 403
