"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

Resources: ``/studies``, ``/studies/{study}/series``, ``/series``,
``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances``,
``/instances``. Answers come from the index (``DicomArchive.find``, one SQL
statement under the policy filter), never from the files, as DICOM JSON
(``application/dicom+json``; an empty array when nothing matches).

Query parameters (PS3.18 8.3.4):

* ``{attributeID}={value}``: the attribute by keyword (``PatientID``) or tag
  (``00100020``); a sequence item key as ``Sequence.Key``
  (``IssuerOfAccessionNumberSequence.LocalNamespaceEntityID``). Values follow
  PS3.4 C.2.2.2 (wild cards, ranges, UID lists with ``\\`` or ``,``); a
  repeated parameter is a list of values. Keys of lower levels are relational
  (EXISTS). Keys Salus does not index are accepted and ignored for matching
  (C.2.2.1.1); an unknown keyword or tag is a 400.
* ``includefield``: more attributes to return (comma-separated or repeated,
  keyword or tag), or ``all``: every indexed attribute of the level and the
  levels above. Attributes not in the index are not returned.
* ``fuzzymatching=true``: person names (PN keys) without wild cards match as a
  case-insensitive substring (``smi`` finds ``SMITH^JOHN``); case is ignored
  for PN anyway. Other keys are unaffected.
* ``limit`` (at most ``SALUS_DICOMWEB_QIDO_MAX_RESULTS``, which is also the
  default) and ``offset``; when more matches exist a ``Warning: 299`` header
  says so (PS3.18 8.3.4.4).

Default attributes (PS3.18 Tables 10.6.3-3 to -5): the indexed keys of the
level; of the levels above too when their UID is not in the path; always
``RetrieveURL`` and ``InstanceAvailability`` (``ONLINE``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from salus.dicom.matching import KEYS, Level, QueryValue
from salus.dicom.query import Match
from salus.dicom.web.common import PREFIX, archive_of, check_uid, dicomweb_root
from salus.dicom.web.dicomjson import element, tag_of
from salus.dicom.web.media import DICOM_JSON, parse_accept
from salus.errors import InvalidInput, NotAcceptable
from salus.server.security import CurrentPrincipal, requested_purpose, services_of

__all__ = ["QidoQuery", "parse_query", "router"]

router = APIRouter(prefix=PREFIX)

_RESERVED = {"includefield", "fuzzymatching", "limit", "offset"}
_LEVEL_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]


def attribute_keyword(attribute_id: str) -> str:
    """A QIDO attributeID (keyword or 8 hex digits tag) as its keyword."""
    text = attribute_id.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        keyword = keyword_for_tag(int(text, 16))
        if keyword:
            return str(keyword)
    elif tag_for_keyword(text) is not None:
        return text
    raise InvalidInput("Unknown attribute in the query.", expression=[text[:64]])


class QidoQuery:
    """The parsed query string of one QIDO-RS request."""

    def __init__(self) -> None:
        self.identifier: dict[str, QueryValue] = {}
        self.include: set[str] = set()
        self.include_all = False
        self.fuzzy = False
        self.limit: int | None = None
        self.offset = 0


def _int(name: str, text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"{name} is a non-negative integer.", expression=[name]) from None
    if number < 0:
        raise InvalidInput(f"{name} is a non-negative integer.", expression=[name])
    return number


def parse_query(items: list[tuple[str, str]]) -> QidoQuery:
    query = QidoQuery()
    values: dict[str, list[str]] = {}
    sequences: dict[str, dict[str, Any]] = {}
    for name, value in items:
        if name == "includefield":
            for field in value.split(","):
                if field.strip().lower() == "all":
                    query.include_all = True
                elif field.strip():
                    query.include.add(attribute_keyword(field))
        elif name == "fuzzymatching":
            query.fuzzy = value.strip().lower() == "true"
        elif name == "limit":
            query.limit = _int("limit", value)
        elif name == "offset":
            query.offset = _int("offset", value)
        elif "." in name:
            outer, _, inner = name.partition(".")
            seq = attribute_keyword(outer)
            sequences.setdefault(seq, {})[attribute_keyword(inner)] = value
        else:
            values.setdefault(attribute_keyword(name), []).append(value)
    for keyword, texts in values.items():
        key = KEYS.get(keyword)
        if key is not None and key.kind == "UI":
            texts = [t.replace(",", "\\") for t in texts]
        if query.fuzzy and key is not None and key.kind == "PN":
            texts = [_fuzzy(t) for t in texts]
        query.identifier[keyword] = "\\".join(texts)
    for keyword, item in sequences.items():
        query.identifier[keyword] = [item]
    return query


def _fuzzy(value: str) -> str:
    if not value or "*" in value or "?" in value:
        return value
    return f"*{value}*"


def _level_keys(level: Level) -> list[str]:
    return [k.keyword for k in KEYS.values() if k.level is level]


def returned_keys(level: Level, in_path: set[Level], query: QidoQuery) -> list[str]:
    """The attributes a response carries (PS3.18 10.6.3.3)."""
    levels = [lv for lv in _LEVEL_ORDER if lv.depth <= level.depth]
    keys: list[str] = []
    for lv in levels:
        if lv is level or query.include_all or lv not in in_path:
            if lv is Level.PATIENT and Level.STUDY in in_path and not query.include_all:
                continue
            keys.extend(_level_keys(lv))
    for keyword in sorted(query.include):
        key = KEYS.get(keyword)
        if key is not None and key.level.depth <= level.depth and keyword not in keys:
            keys.append(keyword)
    return keys


def _dataset(match: Match, keys: list[str], root: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword in keys:
        key = KEYS[keyword]
        value = match.attributes.get(keyword)
        out[tag_of(keyword)] = element(keyword, value, key.vr)
    url = f"{root}/studies/{match.study_uid}"
    if match.level.depth >= Level.SERIES.depth:
        url += f"/series/{match.series_uid}"
    if match.level is Level.IMAGE:
        url += f"/instances/{match.sop_instance_uid}"
    out["00081190"] = element("RetrieveURL", url)
    out["00080056"] = element("InstanceAvailability", "ONLINE")
    if "00080005" not in out:
        out["00080005"] = element("SpecificCharacterSet", "ISO_IR 192")
    return dict(sorted(out.items()))


def _accepts_json(request: Request) -> None:
    for media in parse_accept(request.headers.get("accept")):
        if media.type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable("QIDO-RS answers application/dicom+json.")


async def search(
    request: Request,
    who: Any,
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    _accepts_json(request)
    archive = archive_of(request)
    query = parse_query(list(request.query_params.multi_items()))
    in_path: set[Level] = set()
    if study is not None:
        query.identifier["StudyInstanceUID"] = check_uid(study, "StudyInstanceUID")
        in_path.add(Level.STUDY)
    if series is not None:
        query.identifier["SeriesInstanceUID"] = check_uid(series, "SeriesInstanceUID")
        in_path.add(Level.SERIES)
    maximum = services_of(request).settings.dicomweb_qido_max_results
    limit = min(query.limit, maximum) if query.limit else maximum
    matches = await asyncio.to_thread(
        archive.find,
        who,
        level,
        query.identifier,
        limit=limit + 1,
        offset=query.offset,
        purpose=requested_purpose(request),
        combined_datetime=True,  # PS3.4 C.2.2.2.5.1 for date and time keys given together
    )
    headers: dict[str, str] = {}
    if len(matches) > limit:
        matches = matches[:limit]
        headers["Warning"] = '299 salus "There are more results: ask again with a greater offset."'
    root = dicomweb_root(request)
    keys = returned_keys(level, in_path, query)
    body = [_dataset(m, keys, root) for m in matches]
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        media_type=DICOM_JSON,
        headers=headers,
    )


@router.get("/studies", tags=["dicomweb"])
async def search_studies(request: Request, who: CurrentPrincipal) -> Response:
    """QIDO-RS: studies (PS3.18 10.6.1)."""
    return await search(request, who, Level.STUDY)


@router.get("/studies/{study}/series", tags=["dicomweb"])
async def search_study_series(request: Request, study: str, who: CurrentPrincipal) -> Response:
    """QIDO-RS: the series of a study."""
    return await search(request, who, Level.SERIES, study)


@router.get("/series", tags=["dicomweb"])
async def search_series(request: Request, who: CurrentPrincipal) -> Response:
    """QIDO-RS: series of any study."""
    return await search(request, who, Level.SERIES)


@router.get("/studies/{study}/series/{series}/instances", tags=["dicomweb"])
async def search_series_instances(
    request: Request, study: str, series: str, who: CurrentPrincipal
) -> Response:
    """QIDO-RS: the instances of a series."""
    return await search(request, who, Level.IMAGE, study, series)


@router.get("/studies/{study}/instances", tags=["dicomweb"])
async def search_study_instances(request: Request, study: str, who: CurrentPrincipal) -> Response:
    """QIDO-RS: the instances of a study."""
    return await search(request, who, Level.IMAGE, study)


@router.get("/instances", tags=["dicomweb"])
async def search_instances(request: Request, who: CurrentPrincipal) -> Response:
    """QIDO-RS: instances of any study."""
    return await search(request, who, Level.IMAGE)
