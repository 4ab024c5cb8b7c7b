"""The console's frame: sign-in (password and second factor), sessions, CSRF,
error pages, language choice and the menu per role, over real HTTP routing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from tests.integration.security_world import PASSWORD, SYSTEM, World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world("sqlite", tmp_path_factory.mktemp("console")) as built:
        yield built


def sign_in(world: World, username: str, code: str | None = None, next_: str = "/") -> None:
    world.client.cookies.clear()
    form = {"username": username, "password": PASSWORD, "next": next_}
    if code:
        form["code"] = code
    response = world.client.post("/login", data=form, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == next_


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def test_visitor_is_sent_to_the_sign_in_page_with_the_page_to_come_back_to(world: World) -> None:
    world.client.cookies.clear()
    response = world.client.get("/?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2F%3Fx%3D1"
    page = world.client.get("/login")
    assert page.status_code == 200
    assert 'name="password"' in page.text and 'autocomplete="one-time-code"' in page.text


def test_wrong_password_is_refused_with_a_message_that_names_no_account(world: World) -> None:
    world.client.cookies.clear()
    response = world.client.post(
        "/login", data={"username": "a-doc", "password": "nope", "next": "/"}
    )
    assert response.status_code == 401
    assert "Invalid username, password or one-time code." in response.text
    assert "salus_session" not in response.cookies


def test_sign_in_sets_httponly_strict_cookies_and_shows_the_menu_for_the_role(
    world: World,
) -> None:
    world.client.cookies.clear()
    response = world.client.post(
        "/login",
        data={"username": "a-doc", "password": PASSWORD, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"  # no open redirect
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("salus_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session
    home = world.client.get("/")
    assert home.status_code == 200
    assert "a-doc · Bệnh viện A" in home.text
    assert '<span class="tag">clinician</span>' in home.text


def test_sign_out_needs_the_forms_csrf_token(world: World) -> None:
    sign_in(world, "b-doc")
    home = world.client.get("/")
    refused = world.client.post("/logout", data={"csrf": "forged"}, follow_redirects=False)
    assert refused.status_code == 403
    assert "The form has expired" in refused.text
    assert world.client.get("/", follow_redirects=False).status_code == 200  # still signed in
    done = world.client.post("/logout", data={"csrf": csrf_of(home.text)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/login"
    world.client.cookies.clear()
    assert world.client.get("/", follow_redirects=False).status_code == 303


def test_second_factor_is_asked_for_and_checked(world: World) -> None:
    uri = world.services.signin.enroll_totp(SYSTEM, world.user_ids["a-doc2"])
    secret = pyotp.parse_uri(uri).secret
    world.client.cookies.clear()
    missing = world.client.post(
        "/login", data={"username": "a-doc2", "password": PASSWORD, "next": "/"}
    )
    assert missing.status_code == 401
    assert "A one-time code is required." in missing.text
    sign_in(world, "a-doc2", code=pyotp.TOTP(secret).now())
    assert world.client.get("/", follow_redirects=False).status_code == 200


def test_bearer_tokens_of_applications_do_not_open_the_console(world: World) -> None:
    world.client.cookies.clear()
    response = world.client.get("/", headers=world.headers("a-feed"))
    assert response.status_code == 403
    assert "text/html" in response.headers["content-type"]
    assert "applications use the APIs" in response.text


def test_language_follows_the_menu_then_the_browser(world: World) -> None:
    world.client.cookies.clear()
    page = world.client.get("/login", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
    assert '<html lang="fr">' in page.text and "Se connecter à Salus" in page.text
    chosen = world.client.get("/lang?code=vi&next=/login", follow_redirects=False)
    assert chosen.headers["location"] == "/login"
    world.client.cookies.set("salus_lang", "vi")
    page = world.client.get("/login", headers={"Accept-Language": "fr"})
    assert '<html lang="vi">' in page.text and "Đăng nhập vào Salus" in page.text
    world.client.cookies.clear()


def test_static_assets_are_served_locally(world: World) -> None:
    css = world.client.get("/static/console/console.css")
    assert css.status_code == 200 and "font-family" in css.text
    page = world.client.get("/login")
    assert "http://" not in page.text.replace("http://www.w3.org", "")
    assert "https://" not in page.text


def test_every_console_string_is_translated_into_vietnamese_and_french() -> None:
    from salus.console.i18n import extract_catalog, load_catalog

    wanted = {message.id for message in extract_catalog() if message.id}
    assert len(wanted) > 20
    for code in ("vi", "fr"):
        catalog = load_catalog(code)  # every .po file of the language (one per group of pages)
        missing = sorted(
            str(mid)
            for mid in wanted
            if not (catalog.get(mid) and catalog.get(mid).string and not catalog.get(mid).fuzzy)
        )
        assert not missing, f"{code}: untranslated: {missing[:10]}"


def test_locale_files_exist() -> None:
    from salus.console.i18n import LOCALE_DIR

    assert (Path(LOCALE_DIR) / "vi" / "LC_MESSAGES" / "messages.po").is_file()
