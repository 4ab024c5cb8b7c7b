"""The image viewer (issue 8): ``GET /viewer/{study_uid}``.

The page lists the study's series (thumbnails from the WADO-RS ``thumbnail``
resource, PS3.18 10.4.1.1.6) and shows one instance at a time from the
``rendered`` resource (PS3.18 10.4.1.1.4) with ``window=center,width,linear``
(PS3.18 8.3.5.1.4). ``viewer.js`` scrolls (wheel, arrow keys, a slider) and
changes the window (presets per modality, inputs, dragging on the image).

The series and instances come from the archive's query (PS3.4 C.6, the same
as QIDO-RS) with the signed-in person's principal, so the DICOMweb access
rules and audit apply; the images are then fetched by the browser from
``/dicomweb`` with the same session. A study the person may not see (or that
does not exist) answers 403 without saying which.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from salus.console import i18n
from salus.console.i18n import N_
from salus.console.web import ConsoleUser, console_router, render
from salus.dicom.matching import Level
from salus.dicom.web.common import archive_of, check_uid
from salus.errors import Forbidden
from salus.security.principal import Principal

__all__ = ["PRESETS", "install"]

_ = i18n.gettext

#: Window presets (center, width) per modality, the usual ones of radiology viewers.
PRESETS: dict[str, list[tuple[str, int, int]]] = {
    "CT": [
        (N_("Soft tissue"), 40, 400),
        (N_("Lung"), -600, 1500),
        (N_("Bone"), 300, 1500),
        (N_("Brain"), 40, 80),
    ],
    "MR": [(N_("Brain"), 600, 1200), (N_("Body"), 500, 1000)],
    "CR": [(N_("Chest"), 2048, 4096)],
    "DX": [(N_("Chest"), 2048, 4096)],
}


def _value(match: Any, keyword: str) -> str:
    value = match.attributes.get(keyword)
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _date(text: str) -> str:
    """A DICOM DA (PS3.5 6.2) as YYYY-MM-DD."""
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _number(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 0


#: Instances listed for one study (a larger study shows its first ones).
MAX_INSTANCES = 5000


def _study(request: Request, principal: Principal, study_uid: str) -> dict[str, Any]:
    """The study's series and image instances from one instance-level query (its
    matches carry the study and series attributes too, PS3.4 C.6.1.1.5)."""
    images = archive_of(request).find(
        principal,
        Level.IMAGE,
        {
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": "",
            "SOPInstanceUID": "",
            "InstanceNumber": "",
            "Rows": "",
        },
        limit=MAX_INSTANCES,
    )
    if not images:
        raise Forbidden(N_("This study is not available to you."))
    by_series: dict[str, list[tuple[int, str]]] = {}
    first_of: dict[str, Any] = {}
    for image in images:
        uid = str(image.series_uid)
        first_of.setdefault(uid, image)
        if image.attributes.get("Rows"):  # not structured reports, presentation states
            by_series.setdefault(uid, []).append(
                (_number(_value(image, "InstanceNumber")), str(image.sop_instance_uid))
            )
    rows = []
    for uid, instances in by_series.items():
        one = first_of[uid]
        modality = _value(one, "Modality")
        rows.append(
            {
                "uid": uid,
                "number": _number(_value(one, "SeriesNumber")),
                "modality": modality,
                "description": _value(one, "SeriesDescription"),
                "instances": [sop for _n, sop in sorted(instances)],
                "presets": PRESETS.get(modality, []),
            }
        )
    rows.sort(key=lambda r: (r["number"], r["uid"]))
    study = images[0]
    return {
        "uid": study_uid,
        "description": _value(study, "StudyDescription"),
        "date": _date(_value(study, "StudyDate")),
        "modalities": _value(study, "ModalitiesInStudy"),
        "series": rows,
    }


def install(api: FastAPI) -> None:
    router = console_router()

    @router.get("/viewer/{study_uid}")
    async def viewer(request: Request, study_uid: str, principal: ConsoleUser) -> Response:
        check_uid(study_uid, "StudyInstanceUID")
        study = await asyncio.to_thread(_study, request, principal, study_uid)
        return render(
            request,
            "viewer/viewer.html",
            {"study": study, "presets": PRESETS},
            title=_("Image viewer"),
        )

    api.include_router(router)
