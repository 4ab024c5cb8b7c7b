"""STOW-RS: ``POST /dicomweb/studies[/{study}]`` (PS3.18 10.5).

The request body is ``multipart/related; type="application/dicom"``, one
DICOM File (PS3.10) per part. It is parsed as it arrives
(:class:`~salus.dicom.web.media.MultipartReader`): each part is stored
(``DicomArchive.store``: kept as received, indexed, audited) before the next
one is read, so at most one instance is held in memory; the server-wide
``SALUS_HTTP_MAX_BODY_BYTES`` bounds the whole body (413; instances stored
before the limit was hit stay stored, and storing them again is a no-op).

The response is the Store Instances Response Module (PS3.18 10.5.3,
Table 10.5.3-2) as DICOM JSON, or XML when the client accepts only
``application/dicom+xml``:

* ``ReferencedSOPSequence`` (0008,1199): each stored instance, with its
  ``RetrieveURL`` and a ``WarningReason`` when one applies: 0xB000 coercion
  (the index kept the stored patient identity: ``SALUS_DICOM_PATIENT_CONFLICT
  =keep``), 0xB006 elements discarded (a different instance with this UID is
  kept: duplicate policy ``keep``);
* ``FailedSOPSequence`` (0008,1198): each refused part with its
  ``FailureReason``: 0xC000 cannot understand (not a readable DICOM file),
  0xA900 data set does not match (a required UID is missing, the instance
  belongs to another study than the one in the URL, or to a study or patient
  held otherwise), 0x0111 duplicate SOP instance (policy ``reject``, or the
  UID is another organization's), 0x0124 not authorized, 0xA700 out of
  resources, 0x0110 processing failure (anything else), 0xC122 for a part
  that is not application/dicom;
* ``RetrieveURL`` (0008,1190) of the study when every instance is of one study.

HTTP status (Table 10.5.3-1): 200 all stored without warnings, 202 some
stored with failures or warnings, 409 none stored, 400 a body with no part,
415 a request that is not multipart/related application/dicom.
"""

from __future__ import annotations

import asyncio
import json
import logging
from io import BytesIO
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from salus.dicom.archive import DuplicateInstance, StoreResult, StudyMismatch
from salus.dicom.failures import record_store_failure
from salus.dicom.index import PatientConflict, StudyOwnedElsewhere
from salus.dicom.parse import Unreadable
from salus.dicom.web.common import PREFIX, archive_of, check_uid, dicomweb_root
from salus.dicom.web.dicomjson import element, to_xml
from salus.dicom.web.media import (
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    MULTIPART,
    MultipartReader,
    parse_accept,
    parse_media_type,
)
from salus.errors import (
    Forbidden,
    InvalidInput,
    NotAcceptable,
    NotAuthenticated,
    PayloadTooLarge,
    RateLimited,
    SalusError,
    Unavailable,
    UnsupportedMediaType,
)
from salus.security.policy import Interaction
from salus.security.principal import Principal
from salus.server.security import CurrentPrincipal, audit_access

__all__ = ["failure_reason", "router"]

log = logging.getLogger("salus.dicom.web")
router = APIRouter(prefix=PREFIX)

PROCESSING_FAILURE = 0x0110
DUPLICATE = 0x0111
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
SYNTAX_NOT_SUPPORTED = 0xC122
COERCED = 0xB000
DISCARDED = 0xB006


def failure_reason(exc: BaseException) -> int:
    """The STOW-RS FailureReason of a refused instance (PS3.18 10.5.3)."""
    if isinstance(exc, Unreadable):
        return CANNOT_UNDERSTAND
    if isinstance(exc, DuplicateInstance):
        return DUPLICATE
    if isinstance(exc, StudyMismatch | PatientConflict | StudyOwnedElsewhere):
        return DOES_NOT_MATCH
    if isinstance(exc, PayloadTooLarge | Unavailable | RateLimited):
        return OUT_OF_RESOURCES
    if isinstance(exc, Forbidden | NotAuthenticated):
        return NOT_AUTHORIZED
    if isinstance(exc, InvalidInput):
        return DOES_NOT_MATCH
    return PROCESSING_FAILURE


def _uids(data: bytes) -> tuple[str | None, str | None]:
    """SOP Class and Instance UIDs of a refused part, when they can be read."""
    try:
        from pydicom import dcmread

        ds = dcmread(
            BytesIO(data),
            force=True,
            stop_before_pixels=True,
            specific_tags=[0x00080016, 0x00080018],
        )
        sop_class = str(ds.get("SOPClassUID", "") or "").strip() or None
        sop_instance = str(ds.get("SOPInstanceUID", "") or "").strip() or None
    except Exception:
        return None, None
    ok = [
        u if u and len(u) <= 64 and all(c in "0123456789." for c in u) else None
        for u in (sop_class, sop_instance)
    ]
    return ok[0], ok[1]


class StowResponse:
    """The Store Instances Response being built."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.referenced: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.studies: set[str] = set()
        self.warnings = 0

    def stored(self, result: StoreResult) -> None:
        url = (
            f"{self.root}/studies/{result.study_uid}/series/{result.series_uid}"
            f"/instances/{result.sop_instance_uid}"
        )
        item = {
            "00081150": element("ReferencedSOPClassUID", result.sop_class_uid),
            "00081155": element("ReferencedSOPInstanceUID", result.sop_instance_uid),
            "00081190": element("RetrieveURL", url),
        }
        warning = COERCED if result.coerced else DISCARDED if result.outcome == "kept" else None
        if warning is not None:
            item["00081196"] = element("WarningReason", warning)
            self.warnings += 1
        self.referenced.append(item)
        self.studies.add(result.study_uid)

    def failure(self, data: bytes | None, reason: int) -> None:
        sop_class, sop_instance = _uids(data) if data else (None, None)
        self.failed.append(
            {
                "00081150": element("ReferencedSOPClassUID", sop_class),
                "00081155": element("ReferencedSOPInstanceUID", sop_instance),
                "00081197": element("FailureReason", reason),
            }
        )

    def status(self) -> int:
        if not self.referenced:
            return 409
        return 202 if self.failed or self.warnings else 200

    def dataset(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if len(self.studies) == 1:
            out["00081190"] = element(
                "RetrieveURL", f"{self.root}/studies/{next(iter(self.studies))}"
            )
        if self.failed:
            out["00081198"] = {"vr": "SQ", "Value": self.failed}
        if self.referenced:
            out["00081199"] = {"vr": "SQ", "Value": self.referenced}
        return out


def _response_type(request: Request) -> str:
    for media in parse_accept(request.headers.get("accept")):
        if media.type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return DICOM_JSON
        if media.type == DICOM_XML or (media.type == MULTIPART and media.inner == DICOM_XML):
            return DICOM_XML
    raise NotAcceptable("STOW-RS answers application/dicom+json or application/dicom+xml.")


def _boundary(request: Request) -> str:
    media, params = parse_media_type(request.headers.get("content-type", ""))
    if media != MULTIPART:
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom".')
    inner = params.get("type", DICOM).lower()
    if inner != DICOM:
        raise UnsupportedMediaType(
            'Only multipart/related; type="application/dicom" is stored (no metadata + bulk data).'
        )
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidInput("The multipart/related Content-Type has no boundary.")
    return boundary


async def _store_failed(
    archive: Any, who: Principal, exc: BaseException, reason: int, data: bytes
) -> None:
    """Record a refused or failed part for the integration inbox (failures.py)."""
    sop_class, sop_instance = _uids(data)
    await asyncio.to_thread(
        record_store_failure,
        archive.audit,
        who,
        "STOW-RS",
        exc,
        status=reason,
        sop_class=sop_class,
        sop_instance=sop_instance,
    )


async def stow(request: Request, who: Principal, study: str | None) -> Response:
    archive = archive_of(request)
    archive.authorize(who, Interaction.CREATE)  # refuse before reading the body
    response_type = _response_type(request)
    reader = MultipartReader(_boundary(request))
    result = StowResponse(dicomweb_root(request))
    parts = 0
    async for part in reader.parts(request.stream()):
        parts += 1
        media, _ = parse_media_type(part.content_type or DICOM)
        if media != DICOM:
            result.failure(None, SYNTAX_NOT_SUPPORTED)
            continue
        try:
            stored = await asyncio.to_thread(archive.store, who, part.body, study)
        except SalusError as exc:
            result.failure(part.body, failure_reason(exc))
            await _store_failed(archive, who, exc, failure_reason(exc), part.body)
            continue
        except Exception as exc:
            log.error("STOW-RS store failed: %s", type(exc).__name__)
            result.failure(part.body, PROCESSING_FAILURE)
            await _store_failed(archive, who, exc, PROCESSING_FAILURE, part.body)
            continue
        result.stored(stored)
    if parts == 0:
        raise InvalidInput("The multipart body has no part.")
    await audit_access(
        request,
        who,
        category="dicom",
        action="C",
        entity="dicom:studies" + (f"/{study}" if study else ""),
        description=f"STOW-RS: {len(result.referenced)} stored, {len(result.failed)} failed",
    )
    dataset = result.dataset()
    if response_type == DICOM_XML:
        return Response(to_xml(dataset), status_code=result.status(), media_type=DICOM_XML)
    return Response(
        json.dumps(dataset, separators=(",", ":")).encode(),
        status_code=result.status(),
        media_type=DICOM_JSON,
    )


@router.post("/studies", tags=["dicomweb"])
async def stow_studies(request: Request, who: CurrentPrincipal) -> Response:
    """STOW-RS: store instances of any study (PS3.18 10.5)."""
    return await stow(request, who, None)


@router.post("/studies/{study}", tags=["dicomweb"])
async def stow_study(request: Request, study: str, who: CurrentPrincipal) -> Response:
    """STOW-RS: store instances of one study (others fail with 0xA900)."""
    return await stow(request, who, check_uid(study, "StudyInstanceUID"))
