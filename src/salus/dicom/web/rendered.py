"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.4, 10.4.1.1.6) and
WADO-URI (PS3.18 9).

* ``…/rendered`` of an instance (its first frame), of a frame
  (``…/frames/{n}/rendered``), of a series or a study (their first image
  instance in series and instance order): ``image/jpeg`` (default) or
  ``image/png`` by Accept; query ``window=center,width[,function]``,
  ``viewport=vw,vh[,sx,sy,sw,sh]``, ``quality`` (JPEG), see
  :mod:`salus.dicom.render`. ``annotation`` and ``iccprofile`` are accepted and
  not applied (no burned-in text, no ICC transform).
* ``…/thumbnail``: the same image fitted to 128 × 128 unless ``viewport``
  says otherwise.
* ``GET /dicomweb/wado?requestType=WADO&studyUID=&seriesUID=&objectUID=``
  (WADO-URI): ``contentType`` ``application/dicom`` (with ``transferSyntax``;
  default Explicit VR Little Endian, ``*`` for as stored) or ``image/jpeg`` /
  ``image/png`` (default for images; ``frameNumber``, ``rows``,
  ``columns``, ``windowCenter``, ``windowWidth``, ``imageQuality``);
  ``anonymize=yes`` is not offered (501).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from salus.dicom.matching import Level
from salus.dicom.query import InstanceRef
from salus.dicom.render import (
    RENDERED_TYPES,
    THUMBNAIL_SIZE,
    RenderOptions,
    Viewport,
    Window,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
)
from salus.dicom.transcode import EXPLICIT_LE, read_dataset
from salus.dicom.web.common import IDENTITY, PREFIX, archive_of, check_uid
from salus.dicom.web.media import DICOM, parse_accept
from salus.dicom.web.retrieve import instance_refs, prepare_instance
from salus.errors import InvalidInput, NotAcceptable, NotFound, NotSupported
from salus.security.principal import Principal
from salus.server.security import CurrentPrincipal, requested_purpose

__all__ = ["router"]

router = APIRouter(prefix=PREFIX)


def _rendered_type(request: Request) -> str:
    for media in parse_accept(request.headers.get("accept")):
        for candidate in RENDERED_TYPES:
            if media.matches(candidate):
                return candidate
    raise NotAcceptable("Rendered images are offered as image/jpeg or image/png.")


def _options(request: Request, thumbnail: bool) -> RenderOptions:
    params = request.query_params
    viewport = parse_viewport(params.get("viewport"))
    if viewport is None and thumbnail:
        viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    return RenderOptions(
        media_type=_rendered_type(request),
        window=parse_window(params.get("window")),
        viewport=viewport,
        quality=parse_quality(params.get("quality")),
    )


async def _first_image(
    request: Request, who: Principal, study: str, series: str | None
) -> InstanceRef:
    """The first instance with pixel data of a study or series, from the index."""
    archive = archive_of(request)
    identifier: dict[str, Any] = {"StudyInstanceUID": check_uid(study, "StudyInstanceUID")}
    if series is not None:
        identifier["SeriesInstanceUID"] = check_uid(series, "SeriesInstanceUID")
    identifier["Rows"] = ""
    matches = await asyncio.to_thread(
        archive.find, who, Level.IMAGE, identifier, purpose=requested_purpose(request)
    )
    images = [m for m in matches if m.attributes.get("Rows")]
    if not images:
        raise NotFound("No image to render here.")
    first = images[0]
    refs = await instance_refs(
        request, who, study, str(first.series_uid), str(first.sop_instance_uid)
    )
    return refs[0]


async def _render(
    request: Request, ref: InstanceRef, frame: int, options: RenderOptions
) -> Response:
    data = await asyncio.to_thread(archive_of(request).read, ref)
    image = await asyncio.to_thread(lambda: render(read_dataset(data), frame, options))
    return Response(image, media_type=options.media_type)


async def rendered(
    request: Request,
    who: Principal,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    frame: int = 1,
    *,
    thumbnail: bool = False,
) -> Response:
    options = _options(request, thumbnail)
    if instance is not None and series is not None:
        ref = (await instance_refs(request, who, study, series, instance))[0]
    else:
        ref = await _first_image(request, who, study, series)
    return await _render(request, ref, frame, options)


def _frame(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise NotFound("No such frame.") from None
    return number


for _kind, _thumb in (("rendered", False), ("thumbnail", True)):

    def _routes(kind: str, thumb: bool) -> None:
        @router.get(f"/studies/{{study}}/{kind}", tags=["dicomweb"], name=f"study_{kind}")
        async def study_image(request: Request, study: str, who: CurrentPrincipal) -> Response:
            """A rendered image of the study's first image instance."""
            return await rendered(request, who, study, thumbnail=thumb)

        @router.get(
            f"/studies/{{study}}/series/{{series}}/{kind}", tags=["dicomweb"], name=f"series_{kind}"
        )
        async def series_image(
            request: Request, study: str, series: str, who: CurrentPrincipal
        ) -> Response:
            """A rendered image of the series' first image instance."""
            return await rendered(request, who, study, series, thumbnail=thumb)

        @router.get(
            f"/studies/{{study}}/series/{{series}}/instances/{{instance}}/{kind}",
            tags=["dicomweb"],
            name=f"instance_{kind}",
        )
        async def instance_image(
            request: Request, study: str, series: str, instance: str, who: CurrentPrincipal
        ) -> Response:
            """A rendered image of an instance (its first frame)."""
            return await rendered(request, who, study, series, instance, thumbnail=thumb)

        @router.get(
            f"/studies/{{study}}/series/{{series}}/instances/{{instance}}/frames/{{frame}}/{kind}",
            tags=["dicomweb"],
            name=f"frame_{kind}",
        )
        async def frame_image(
            request: Request,
            study: str,
            series: str,
            instance: str,
            frame: str,
            who: CurrentPrincipal,
        ) -> Response:
            """A rendered image of one frame."""
            return await rendered(
                request, who, study, series, instance, _frame(frame), thumbnail=thumb
            )

    _routes(_kind, _thumb)


# -- WADO-URI --------------------------------------------------------------------------
def _float(params: Any, name: str) -> float | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"{name} is a number.", expression=[name]) from None


def _uri_options(params: Any, media_type: str) -> RenderOptions:
    center, width = _float(params, "windowCenter"), _float(params, "windowWidth")
    window = None
    if center is not None or width is not None:
        if center is None or width is None or width < 1:
            raise InvalidInput("windowCenter and windowWidth go together (width >= 1).")
        window = Window(center, width)
    rows, columns = _float(params, "rows"), _float(params, "columns")
    viewport = None
    if rows is not None or columns is not None:
        viewport = Viewport(int(columns or 8192), int(rows or 8192))
        if not (0 < viewport.width <= 8192 and 0 < viewport.height <= 8192):
            raise InvalidInput("rows and columns are 1-8192.")
    return RenderOptions(
        media_type=media_type,
        window=window,
        viewport=viewport,
        quality=parse_quality(params.get("imageQuality")),
    )


@router.get("/wado", tags=["dicomweb"])
async def wado_uri(request: Request, who: CurrentPrincipal) -> Response:
    """WADO-URI (PS3.18 9.1): one instance as application/dicom or a rendered image."""
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise InvalidInput("requestType must be WADO.", expression=["requestType"])
    study, series, instance = (params.get(n) for n in ("studyUID", "seriesUID", "objectUID"))
    if not study or not series or not instance:
        raise InvalidInput("studyUID, seriesUID and objectUID are required.")
    if (params.get("anonymize") or "").lower() == "yes":
        raise NotSupported("De-identified WADO-URI retrieval is not offered.")
    ref = (await instance_refs(request, who, study, series, instance))[0]
    wanted = [t.strip().split(";")[0].lower() for t in (params.get("contentType") or "").split(",")]
    wanted = [t for t in wanted if t]
    choices = wanted or ["image/jpeg", DICOM]
    for media_type in choices:
        if media_type == DICOM:
            syntax = params.get("transferSyntax") or EXPLICIT_LE
            data = await asyncio.to_thread(archive_of(request).read, ref)
            body, _syntax = await asyncio.to_thread(prepare_instance, data, ref, [syntax])
            return Response(body, media_type=DICOM, headers=IDENTITY)
        if media_type in RENDERED_TYPES or media_type in ("image/*", "*/*"):
            target = media_type if media_type in RENDERED_TYPES else "image/jpeg"
            frame = int(_float(params, "frameNumber") or 1)
            try:
                return await _render(request, ref, frame, _uri_options(params, target))
            except NotFound:
                if wanted:
                    raise
                continue  # no image: the default falls back to application/dicom
    raise NotAcceptable("contentType must be application/dicom, image/jpeg or image/png.")
