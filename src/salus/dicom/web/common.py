"""What every DICOMweb route shares: the archive, UID checks, the service root URL
and streamed multipart responses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from salus.dicom.archive import DicomArchive
from salus.dicom.web.media import closing, multipart_type, new_boundary
from salus.errors import InvalidInput, NotFound
from salus.server.security import services_of

__all__ = ["archive_of", "check_uid", "dicomweb_root", "stream_multipart"]

PREFIX = "/dicomweb"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Binary bodies are not worth compressing (and gzip would cost CPU per byte):
#: a Content-Encoding set by the route keeps the GZip middleware away.
IDENTITY = {"content-encoding": "identity"}


def archive_of(request: Request) -> DicomArchive:
    archive = services_of(request).dicom
    if archive is None:
        raise NotFound("The DICOM archive is not installed.")
    return archive


def check_uid(value: str, name: str) -> str:
    """A UID from a path or query (PS3.5 9.1); 400 when it is not one."""
    if len(value) > 64 or not _UID.match(value):
        raise InvalidInput(f"{name} is not a valid UID.", expression=[name])
    return value


def dicomweb_root(request: Request) -> str:
    """The absolute URL of /dicomweb: the configured public URL, else the request's."""
    settings = services_of(request).settings
    if settings.public_url:
        return settings.public_url.rstrip("/") + PREFIX
    return str(request.base_url).rstrip("/") + PREFIX


def stream_multipart(
    parts: AsyncIterator[bytes], inner: str, boundary: str | None = None, status: int = 200
) -> StreamingResponse:
    """A multipart/related response whose parts (from :func:`media.multipart_part`)
    are produced as they are sent."""
    boundary = boundary or new_boundary()

    async def body() -> AsyncIterator[bytes]:
        async for part in parts:
            yield part
        yield closing(boundary)

    return StreamingResponse(
        body(),
        status_code=status,
        media_type=multipart_type(boundary, inner),
        headers=IDENTITY,
    )
