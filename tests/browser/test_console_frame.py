"""The console's frame in a real browser: sign-in, the menu per role,
keyboard use, languages, sign-out."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import shot, sign_in
from tests.browser.live import LiveServer


def test_sign_in_with_the_keyboard_and_see_the_start_page(page: Any, live: LiveServer) -> None:
    page.goto("/")
    assert "/login" in page.url  # not signed in: sent to the form
    page.keyboard.press("Tab")  # the skip link is the first stop
    assert page.evaluate("document.activeElement.className") == "skip"
    sign_in(page, "a-doc")
    assert page.get_by_test_id("who").inner_text() == "a-doc · Bệnh viện A"
    assert page.locator("h1").inner_text() == "Welcome"
    shot(page, "start-page-clinician")


def test_wrong_password_shows_an_error_and_no_session(page: Any, live: LiveServer) -> None:
    page.goto("/login")
    page.get_by_label("Username").fill("a-doc")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    assert alert.inner_text() == "Invalid username, password or one-time code."
    assert not [c for c in page.context.cookies() if c["name"] == "salus_session"]


def test_language_menu_switches_to_vietnamese_and_french(page: Any, live: LiveServer) -> None:
    sign_in(page, "b-doc")
    page.get_by_label("Language").select_option("vi")
    page.wait_for_selector("html[lang=vi]")
    assert page.locator("h1").inner_text() == "Xin chào"
    shot(page, "start-page-vi")
    page.get_by_label("Ngôn ngữ").select_option("fr")
    page.wait_for_selector("html[lang=fr]")
    assert page.locator("h1").inner_text() == "Bienvenue"


def test_sign_out_ends_the_session(page: Any, live: LiveServer) -> None:
    sign_in(page, "moh-analyst")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    page.goto("/")
    assert "/login" in page.url
