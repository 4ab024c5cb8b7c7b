"""The console's administration pages: organizations, users (create, disable,
unlock, reset password, second factor shown once), applications (secret shown
once), role grants; the network operator's administrators manage the network,
a hospital's only its own organization, everybody else nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pyotp
import pytest
from sqlalchemy import select, update

from salus.db.tables import organizations, users
from tests.integration.security_world import PASSWORD, World, make_world

NEW_PASSWORD = "another long passphrase 42"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # The directory's queries are the API's (tested on both backends there).
    with make_world(
        "sqlite", tmp_path_factory.mktemp("admin"), rate_limit_login_per_minute=1000
    ) as built:
        yield built


def sign_in(world: World, username: str, password: str = PASSWORD, code: str | None = None) -> int:
    world.client.cookies.clear()
    form = {"username": username, "password": password, "next": "/"}
    if code:
        form["code"] = code
    return world.client.post("/login", data=form).status_code


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def post(world: World, path: str, **form: str) -> httpx.Response:
    page = world.client.get("/admin/users")
    return world.client.post(path, data={"csrf": csrf_of(page.text), **form})


def test_only_administrators_open_the_administration(world: World) -> None:
    for who in ("a-doc", "a-sec", "ops-sec", "a-steward"):
        assert sign_in(world, who) == 200
        assert 'href="/admin"' not in world.client.get("/").text
        for path in ("/admin", "/admin/users", "/admin/clients", "/admin/organizations"):
            assert world.client.get(path).status_code == 403, (who, path)


def test_network_administrator_manages_organizations(world: World) -> None:
    client = world.client
    assert sign_in(world, "ops-admin") == 200
    assert client.get("/admin", follow_redirects=False).headers["location"] == "/admin/users"
    page = client.get("/admin/organizations")
    assert "hosp-b" in page.text and "New organization" in page.text
    assert "data-confirm=" in page.text
    created = client.post(
        "/admin/organizations",
        data={"csrf": csrf_of(page.text), "id": "hosp-c", "name": "Hôpital C", "kind": "hospital"},
    )
    assert created.status_code == 200 and "The organization was created." in created.text
    assert "Hôpital C" in created.text
    again = client.post(
        "/admin/organizations",
        data={"csrf": csrf_of(page.text), "id": "hosp-c", "name": "C", "kind": "hospital"},
    )
    assert again.status_code == 422 and "already exists" in again.text
    bad = client.post(
        "/admin/organizations",
        data={"csrf": csrf_of(page.text), "id": "X", "name": "x", "kind": "hospital"},
    )
    assert bad.status_code == 422
    disabled = client.post(
        "/admin/organizations/hosp-c/active", data={"csrf": csrf_of(page.text), "active": "0"}
    )
    assert "The organization was disabled." in disabled.text
    with world.services.db.read() as conn:
        active = conn.execute(
            select(organizations.c.active).where(organizations.c.id == "hosp-c")
        ).scalar_one()
    assert not active
    forged = client.post("/admin/organizations/hosp-c/active", data={"active": "1"})
    assert forged.status_code == 403


def test_hospital_administrator_sees_and_manages_only_its_own_organization(world: World) -> None:
    client = world.client
    assert sign_in(world, "a-admin") == 200
    listing = client.get("/admin/users")
    assert "a-doc" in listing.text and "b-doc" not in listing.text
    assert client.get(f"/admin/users/{world.user_ids['b-doc']}").status_code == 404
    orgs = client.get("/admin/organizations")
    assert (
        "hosp-a" in orgs.text and "hosp-b" not in orgs.text and "New organization" not in orgs.text
    )
    token = csrf_of(listing.text)
    # Forged forms for another hospital are refused by the directory.
    refused = client.post(
        f"/admin/users/{world.user_ids['b-doc']}/active", data={"csrf": token, "active": "0"}
    )
    assert refused.status_code == 403
    other = client.post(
        "/admin/users",
        data={
            "csrf": token,
            "username": "a-sneaky",
            "org": "hosp-b",
            "password": NEW_PASSWORD,
            "role_clinician": "on",
        },
    )
    assert other.status_code == 403
    assert (
        client.post(
            "/admin/organizations/hosp-b/active", data={"csrf": token, "active": "0"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/admin/clients",
            data={"csrf": token, "client_id": "b-app", "org": "hosp-b"},
        ).status_code
        == 403
    )


def test_create_a_user_who_then_signs_in(world: World) -> None:
    client = world.client
    assert sign_in(world, "a-admin") == 200
    page = client.get("/admin/users")
    weak = client.post(
        "/admin/users",
        data={"csrf": csrf_of(page.text), "username": "a-nurse", "password": "short"},
    )
    assert weak.status_code == 422 and "at least" in weak.text
    created = client.post(
        "/admin/users",
        data={
            "csrf": csrf_of(page.text),
            "username": "a-nurse",
            "display_name": "Lê Thị Hoa",
            "org": "hosp-a",
            "password": NEW_PASSWORD,
            "role_clinician": "on",
        },
        follow_redirects=False,
    )
    assert created.status_code == 303
    shown = client.get(created.headers["location"])
    assert "The user was created." in shown.text and "Lê Thị Hoa" in shown.text
    assert "Clinician" in shown.text
    assert sign_in(world, "a-nurse", NEW_PASSWORD) == 200
    assert client.get("/admin/users").status_code == 403  # a clinician now


def test_user_actions_roles_password_unlock_disable(world: World) -> None:
    assert sign_in(world, "a-admin") == 200
    user_id = world.user_ids["a-doc2"]
    base = f"/admin/users/{user_id}"
    granted = post(world, f"{base}/grant", role="data_steward")
    assert "The role was granted." in granted.text
    assert "Hospital data steward" in granted.text
    revoked = post(world, f"{base}/revoke", role="data_steward")
    assert "The role was revoked." in revoked.text
    bad_role = post(world, f"{base}/grant", role="emperor")
    assert bad_role.status_code == 422
    with world.services.db.write() as conn:
        conn.execute(update(users).where(users.c.id == user_id).values(failed_logins=9))
    unlocked = post(world, f"{base}/unlock")
    assert "The user was unlocked." in unlocked.text
    reset = post(world, f"{base}/password", password=NEW_PASSWORD)
    assert "The password was changed." in reset.text
    assert sign_in(world, "a-doc2", NEW_PASSWORD) == 200
    assert sign_in(world, "a-admin") == 200
    disabled = post(world, f"{base}/active", active="0")
    assert "The user was disabled." in disabled.text
    assert sign_in(world, "a-doc2", NEW_PASSWORD) == 401
    assert sign_in(world, "a-admin") == 200
    post(world, f"{base}/active", active="1")
    assert sign_in(world, "a-doc2", NEW_PASSWORD) == 200


def test_second_factor_is_shown_once_as_qr_code_and_uri(world: World) -> None:
    client = world.client
    assert sign_in(world, "a-admin") == 200
    user_id = world.user_ids["a-steward"]
    enrolled = post(world, f"/admin/users/{user_id}/totp")
    text = enrolled.text
    uri = re.search(r'data-testid="otpauth">([^<]+)<', text)
    assert uri and uri.group(1).startswith("otpauth://totp/")
    assert "<svg" in text and 'class="qr"' in text
    again = client.get(f"/admin/users/{user_id}")
    assert "otpauth://" not in again.text  # shown once
    secret = pyotp.parse_uri(uri.group(1).replace("&amp;", "&")).secret
    assert sign_in(world, "a-steward") == 401  # the code is now required
    assert sign_in(world, "a-steward", code=pyotp.TOTP(secret).now()) == 200


def test_applications_secret_shown_once_roles_and_disable(world: World) -> None:
    client = world.client
    assert sign_in(world, "a-admin") == 200
    page = client.get("/admin/clients")
    assert "a-feed" in page.text and "b-feed" not in page.text
    created = client.post(
        "/admin/clients",
        data={
            "csrf": csrf_of(page.text),
            "client_id": "a-lab",
            "name": "Laboratory",
            "org": "hosp-a",
            "role_hospital_integration": "on",
        },
    )
    assert created.status_code == 200 and created.headers["cache-control"] == "no-store"
    secret = re.search(r'data-testid="secret">([^<]+)<', created.text)
    assert secret
    token = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "a-lab",
            "client_secret": secret.group(1),
        },
    )
    assert token.status_code == 200, token.text
    assert 'data-testid="secret"' not in client.get("/admin/clients").text
    detail = client.get("/admin/clients/a-lab")
    assert "Hospital integration" in detail.text
    assert client.get("/admin/clients/b-feed").status_code == 404
    disabled = post(world, "/admin/clients/a-lab/active", active="0")
    assert "The application was disabled." in disabled.text
    refused = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "a-lab",
            "client_secret": secret.group(1),
        },
    )
    assert refused.status_code in (400, 401)
