"""WADO-RS: instances, metadata, frames and bulk data (PS3.18 10.4).

* **Instances** (``/studies/{s}``, ``…/series/{se}``, ``…/instances/{i}``):
  ``multipart/related; type="application/dicom"``, one DICOM File per part,
  streamed. Each instance goes out as stored when the Accept header allows its
  transfer syntax (``transfer-syntax=*``, the stored UID, ``*/*``), otherwise
  converted to the first acceptable native syntax (no ``transfer-syntax``
  parameter means Explicit VR Little Endian, PS3.18 8.7.3.5.2), see
  :mod:`salus.dicom.transcode`. A request none of whose ranges can be met
  for the first instance is a 406; a later instance that cannot be converted
  is left out (and logged).
* **Metadata** (``…/metadata``): DICOM JSON from the index rows only, never a
  file; BulkDataURIs are absolute.
* **Frames** (``…/instances/{i}/frames/{list}``): each frame as stored
  (``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jphc``,
  ``image/dicom-rle`` … when accepted), or native pixels as
  ``application/octet-stream`` (Explicit VR Little Endian), decoded when
  stored compressed.
* **Bulk data** (the BulkDataURIs of the metadata, ``…/bulkdata/{tag path}``):
  the value as ``application/octet-stream``; Pixel Data gives every frame as
  the frames resource does.

Every retrieval is authorized and audited by the archive (one event per study).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from salus.dicom.matching import Level, QueryValue
from salus.dicom.query import InstanceRef
from salus.dicom.transcode import (
    EXPLICIT_LE,
    NATIVE,
    NotConvertible,
    bulk_value,
    frame_count,
    is_compressed,
    iter_frames,
    media_type_of,
    read_dataset,
    to_native,
)
from salus.dicom.web.common import PREFIX, archive_of, check_uid, dicomweb_root, stream_multipart
from salus.dicom.web.media import (
    ANY_SYNTAX,
    DICOM,
    DICOM_JSON,
    MULTIPART,
    OCTET,
    MediaRange,
    dicom_syntaxes,
    multipart_part,
    new_boundary,
    parse_accept,
)
from salus.errors import NotAcceptable, NotFound
from salus.security.principal import Principal
from salus.server.security import CurrentPrincipal, requested_purpose

__all__ = ["choose_syntax", "router"]

log = logging.getLogger("salus.dicom.web")
router = APIRouter(prefix=PREFIX)


def choose_syntax(stored: str, acceptable: list[str]) -> str | None:
    """The transfer syntax to send an instance stored in ``stored``: the first
    acceptable one that is the stored one (or ``*``) or a native one; None when
    none is possible."""
    for syntax in acceptable:
        if syntax in (ANY_SYNTAX, stored):
            return stored
        if syntax in NATIVE:
            return syntax
    return None


def _identifier(
    study: str, series: str | None, instance: str | None
) -> tuple[Level, dict[str, QueryValue]]:
    identifier: dict[str, QueryValue] = {"StudyInstanceUID": check_uid(study, "StudyInstanceUID")}
    level = Level.STUDY
    if series is not None:
        identifier["SeriesInstanceUID"] = check_uid(series, "SeriesInstanceUID")
        level = Level.SERIES
    if instance is not None:
        identifier["SOPInstanceUID"] = check_uid(instance, "SOPInstanceUID")
        level = Level.IMAGE
    return level, identifier


async def instance_refs(
    request: Request, who: Principal, study: str, series: str | None, instance: str | None
) -> list[InstanceRef]:
    level, identifier = _identifier(study, series, instance)
    archive = archive_of(request)
    refs = await asyncio.to_thread(
        archive.instances, who, level, identifier, purpose=requested_purpose(request)
    )
    if not refs:
        raise NotFound("No such study, series or instance here.")
    return refs


def _instance_url(root: str, ref: InstanceRef) -> str:
    return (
        f"{root}/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{ref.sop_instance_uid}"
    )


def prepare_instance(
    data: bytes | bytearray, ref: InstanceRef, acceptable: list[str]
) -> tuple[bytes, str]:
    syntax = choose_syntax(ref.transfer_syntax_uid, acceptable)
    if syntax is None:
        raise NotConvertible()
    if syntax == ref.transfer_syntax_uid:
        return bytes(data), syntax
    return to_native(data, ref.transfer_syntax_uid, syntax), syntax


async def retrieve_instances(
    request: Request, who: Principal, study: str, series: str | None, instance: str | None
) -> Response:
    acceptable = dicom_syntaxes(parse_accept(request.headers.get("accept")))
    refs = await instance_refs(request, who, study, series, instance)
    archive = archive_of(request)
    root = dicomweb_root(request)
    boundary = new_boundary()

    async def one(ref: InstanceRef) -> bytes:
        data = await asyncio.to_thread(archive.read, ref)
        body, syntax = await asyncio.to_thread(prepare_instance, data, ref, acceptable)
        return multipart_part(
            boundary, f"{DICOM}; transfer-syntax={syntax}", body, _instance_url(root, ref)
        )

    first = await one(refs[0])  # errors before the response starts are proper errors

    async def parts() -> AsyncIterator[bytes]:
        yield first
        for ref in refs[1:]:
            try:
                yield await one(ref)
            except NotConvertible:
                log.warning("WADO-RS left out an instance that cannot be converted")

    return stream_multipart(parts(), DICOM, boundary)


@router.get("/studies/{study}", tags=["dicomweb"])
async def retrieve_study(request: Request, study: str, who: CurrentPrincipal) -> Response:
    """WADO-RS: every instance of a study (PS3.18 10.4.1.1.1)."""
    return await retrieve_instances(request, who, study, None, None)


@router.get("/studies/{study}/series/{series}", tags=["dicomweb"])
async def retrieve_series(
    request: Request, study: str, series: str, who: CurrentPrincipal
) -> Response:
    """WADO-RS: every instance of a series."""
    return await retrieve_instances(request, who, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}", tags=["dicomweb"])
async def retrieve_instance(
    request: Request, study: str, series: str, instance: str, who: CurrentPrincipal
) -> Response:
    """WADO-RS: one instance."""
    return await retrieve_instances(request, who, study, series, instance)


# -- metadata ------------------------------------------------------------------------
def _accepts_dicom_json(request: Request) -> None:
    for media in parse_accept(request.headers.get("accept")):
        if media.type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable("Metadata is offered as application/dicom+json.")


async def metadata(
    request: Request, who: Principal, study: str, series: str | None, instance: str | None
) -> Response:
    _accepts_dicom_json(request)
    _level, identifier = _identifier(study, series, instance)
    archive = archive_of(request)
    items = await asyncio.to_thread(
        archive.metadata_json,
        who,
        str(identifier["StudyInstanceUID"]),
        series,
        instance,
        purpose=requested_purpose(request),
    )
    # Each instance's JSON as stored (compact, UTF-8), not parsed again. The index
    # keeps BulkDataURIs relative to the service root (parse.bulkdata_uri); inside a
    # compact JSON text '"BulkDataURI":"' can only be that member (quotes in values
    # are escaped).
    text = b"[" + b",".join(items) + b"]"
    root = json.dumps(dicomweb_root(request) + "/", ensure_ascii=False)[1:-1].encode()
    text = text.replace(b'"BulkDataURI":"studies/', b'"BulkDataURI":"' + root + b"studies/")
    return Response(text, media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata", tags=["dicomweb"])
async def study_metadata(request: Request, study: str, who: CurrentPrincipal) -> Response:
    """WADO-RS: metadata of every instance of a study (PS3.18 10.4.1.1.2)."""
    return await metadata(request, who, study, None, None)


@router.get("/studies/{study}/series/{series}/metadata", tags=["dicomweb"])
async def series_metadata(
    request: Request, study: str, series: str, who: CurrentPrincipal
) -> Response:
    """WADO-RS: metadata of every instance of a series."""
    return await metadata(request, who, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata", tags=["dicomweb"])
async def instance_metadata(
    request: Request, study: str, series: str, instance: str, who: CurrentPrincipal
) -> Response:
    """WADO-RS: metadata of one instance."""
    return await metadata(request, who, study, series, instance)


# -- frames and bulk data ------------------------------------------------------------
def frames_native(ranges: list[MediaRange], stored: str) -> bool:
    """Whether frames go out as native pixels (True) or as stored (False),
    following the client's preferences (PS3.18 8.7.3.3, 8.7.3.5): ``*/*`` means
    as stored; ``application/octet-stream`` (Explicit VR Little Endian or ``*``)
    native; the stored syntax's media type (``image/jpeg``…) as stored."""
    compressed = is_compressed(stored)
    for media in ranges:
        if media.type == MULTIPART:
            inner = media.inner or "*/*"
        elif media.type == "multipart/*":
            inner = "*/*"
        else:
            inner = media.type
        syntax = media.transfer_syntax
        if inner == "*/*":
            return not compressed
        if compressed and MediaRange(inner).matches(media_type_of(stored)):
            if syntax in (None, ANY_SYNTAX, stored):
                return False
        if MediaRange(inner).matches(OCTET) and syntax in (None, ANY_SYNTAX, EXPLICIT_LE):
            return True
    raise NotAcceptable(
        'Frames are offered as multipart/related; type="application/octet-stream" or in '
        "the media type of their stored transfer syntax."
    )


def _frame_numbers(text: str) -> list[int]:
    numbers: list[int] = []
    for part in text.split(","):
        try:
            number = int(part.strip())
        except ValueError:
            raise NotFound("Frame numbers are positive integers.") from None
        numbers.append(number)
    if not numbers or len(numbers) > 10_000:
        raise NotFound("No such frame.")
    return numbers


async def _one_instance(
    request: Request, who: Principal, study: str, series: str, instance: str
) -> tuple[InstanceRef, bytes | bytearray]:
    refs = await instance_refs(request, who, study, series, instance)
    data = await asyncio.to_thread(archive_of(request).read, refs[0])
    return refs[0], data


def _frame_parts(
    data: bytes | bytearray,
    ref: InstanceRef,
    numbers: list[int] | None,
    native: bool,
    boundary: str,
) -> list[bytes]:
    ds = read_dataset(data)
    if numbers is None:
        numbers = list(range(1, frame_count(ds) + 1))
        if not numbers:
            raise NotFound("This instance has no pixel data.")
    return [
        multipart_part(boundary, f"{media}; transfer-syntax={syntax}", body)
        for body, media, syntax in iter_frames(ds, ref.transfer_syntax_uid, numbers, native=native)
    ]


async def _frames_response(
    request: Request, ref: InstanceRef, data: bytes | bytearray, numbers: list[int] | None
) -> Response:
    ranges = parse_accept(request.headers.get("accept"))
    native = frames_native(ranges, ref.transfer_syntax_uid)
    boundary = new_boundary()
    parts = await asyncio.to_thread(_frame_parts, data, ref, numbers, native, boundary)
    inner = OCTET if native else media_type_of(ref.transfer_syntax_uid)

    async def gen() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return stream_multipart(gen(), inner, boundary)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", tags=["dicomweb"]
)
async def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frames: str, who: CurrentPrincipal
) -> Response:
    """WADO-RS: frames of an instance, 1-based, comma-separated (PS3.18 10.4.1.1.3)."""
    numbers = _frame_numbers(frames)
    ref, data = await _one_instance(request, who, study, series, instance)
    return await _frames_response(request, ref, data, numbers)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}",
    tags=["dicomweb"],
)
async def retrieve_bulkdata(
    request: Request, study: str, series: str, instance: str, path: str, who: CurrentPrincipal
) -> Response:
    """WADO-RS: a bulk data value named by a BulkDataURI (PS3.18 10.4.1.1.5)."""
    ref, data = await _one_instance(request, who, study, series, instance)
    if path.strip("/").upper() == "7FE00010":
        return await _frames_response(request, ref, data, None)
    accepted = False
    for media in parse_accept(request.headers.get("accept")):
        inner = media.inner if media.type == MULTIPART else None
        if media.type in ("*/*", "multipart/*") or (
            media.type == MULTIPART and (inner is None or MediaRange(inner).matches(OCTET))
        ):
            accepted = True
            break
    if not accepted:
        raise NotAcceptable(
            'Bulk data is offered as multipart/related; type="application/octet-stream".'
        )
    value, media_type = await asyncio.to_thread(
        lambda: bulk_value(read_dataset(data), ref.transfer_syntax_uid, path)
    )
    boundary = new_boundary()

    async def gen() -> AsyncIterator[bytes]:
        yield multipart_part(boundary, media_type, value)

    return stream_multipart(gen(), OCTET, boundary)
