"""The image viewer in a real browser: a small synthetic CT series stored through
STOW-RS as hospital A's feed, opened from the patient record; scrolling
(keyboard, wheel, slider) and window/level (keys, preset, inputs) change the
rendered image; B's clinician and a researcher get 403."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser.conftest import shot
from tests.browser.live import LiveServer
from tests.browser.test_patients import render_ms, seed, signed_in
from tests.integration.dicom_world import stow_body
from tests.integration.test_console_patients_data import ct_series

_LOADED = """([fragment]) => {
  const img = document.getElementById('image');
  return img.complete && img.naturalWidth > 0 && img.getAttribute('src').includes(fragment);
}"""


@pytest.fixture(scope="module")
def study(live: LiveServer) -> dict[str, Any]:
    p = seed(live)
    study_uid, series, sops, files = ct_series(p, p.a_mrn, count=4)
    body, content_type = stow_body(files)
    stored = live.api(
        "a-feed",
        "POST",
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    assert stored.status_code == 200, stored.text
    deadline = time.monotonic() + 30
    while True:  # the ImagingStudy is written by a job
        found = live.api("a-feed", "GET", f"/fhir/ImagingStudy/{study_uid}")
        if found.status_code == 200:
            break
        assert time.monotonic() < deadline, "ImagingStudy not written in 30 s"
        time.sleep(0.3)
    return {"person": p, "study": study_uid, "series": series, "sops": sops}


def image_bytes(page: Any, fragment: str) -> bytes:
    page.wait_for_function(_LOADED, arg=[fragment])
    shown: bytes = page.locator("#image").screenshot()
    return shown


def test_viewer_scrolls_and_changes_window_with_the_keyboard(
    browser: Any, live: LiveServer, study: dict[str, Any]
) -> None:
    p, sops = study["person"], study["sops"]
    with signed_in(browser, live, "a-doc") as page:
        page.goto(f"/patients/{p.a_patient}?kind=imaging")
        page.get_by_role("link", name="Open in the viewer").click()
        page.wait_for_url(f"**/viewer/{study['study']}")
        render_ms(page, "image viewer")
        first = image_bytes(page, sops[0])
        assert "window=40%2C400%2Clinear" in page.locator("#image").get_attribute(
            "src"
        )  # CT preset
        # window/level from the keyboard (on the first slice, whose disc is inside
        # the soft-tissue window): W widens it, D raises its center
        page.locator("#frame").focus()
        for _ in range(3):
            page.keyboard.press("w")
        page.keyboard.press("d")
        window = page.locator("#viewer").get_attribute("data-window")
        assert window and window != "40,400"
        windowed = image_bytes(page, f"window={window.replace(',', '%2C')}")
        assert windowed != first
        shot(page, "viewer-ct-window-changed")
        # scrolling from the keyboard
        page.keyboard.press("ArrowDown")
        second = image_bytes(page, sops[1])
        assert page.locator("#viewer").get_attribute("data-index") == "1" and second != windowed
        page.keyboard.press("End")
        assert image_bytes(page, sops[3]) != second
        assert page.locator("#slice-label").inner_text() == "4 / 4"
        shot(page, "viewer-ct-last-slice")
        # preset and inputs
        page.get_by_label("Window preset").select_option(label="Lung (-600/1500)")
        image_bytes(page, "window=-600%2C1500")
        page.get_by_label("Window center").fill("300")
        page.get_by_label("Window width").fill("1500")
        page.get_by_label("Window width").press("Enter")
        image_bytes(page, "window=300%2C1500")
        # the slider and the mouse wheel scroll too
        page.locator("#slice").fill("2")
        image_bytes(page, sops[1])
        page.locator("#frame").hover()
        page.mouse.wheel(0, 120)
        image_bytes(page, sops[2])
        shot(page, "viewer-ct")


@pytest.mark.parametrize("who", ["b-doc", "uni-res"])
def test_viewer_refuses_who_may_not_see_the_study(
    browser: Any, live: LiveServer, study: dict[str, Any], who: str
) -> None:
    with signed_in(browser, live, who) as page:
        response = page.goto(f"/viewer/{study['study']}")
        assert response is not None and response.status == 403
        assert study["series"] not in page.content()
        rendered = page.request.get(
            f"/dicomweb/studies/{study['study']}/series/{study['series']}"
            f"/instances/{study['sops'][0]}/rendered"
        )
        assert rendered.status in (403, 404)  # DICOMweb: invisible (404) or forbidden (403)
