"""Media types of DICOMweb: Accept negotiation and multipart/related bodies.

* :func:`parse_accept` reads an ``Accept`` header (RFC 9110 12.5.1: media
  ranges with parameters and ``q`` weights) into :class:`MediaRange` objects,
  most preferred first; :func:`dicom_syntaxes` turns them into the transfer
  syntaxes acceptable for ``application/dicom`` parts (PS3.18 8.7.3.5).
* :func:`multipart_part` and :func:`closing` write a multipart/related body
  (RFC 2387) part by part, so a retrieval streams.
* :class:`MultipartReader` parses a multipart/related request body as it
  arrives, keeping at most one part (plus one network chunk) in memory.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from salus.dicom.transcode import EXPLICIT_LE
from salus.errors import InvalidInput, NotAcceptable

__all__ = [
    "ANY_SYNTAX",
    "MediaRange",
    "MultipartReader",
    "closing",
    "dicom_syntaxes",
    "multipart_part",
    "new_boundary",
    "parse_accept",
    "parse_media_type",
]

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
OCTET = "application/octet-stream"
MULTIPART = "multipart/related"
#: ``transfer-syntax=*``: the origin server may send the stored syntax (PS3.18 8.7.3.5.2).
ANY_SYNTAX = "*"


@dataclass(frozen=True, slots=True)
class MediaRange:
    type: str  # lower case, e.g. "multipart/related", "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def inner(self) -> str | None:
        """The ``type`` parameter of a multipart range (the parts' media type)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        """Whether this range accepts ``media_type`` (``*/*``, ``image/*``)."""
        if self.type == "*/*":
            return True
        major, _, minor = self.type.partition("/")
        want_major, _, _ = media_type.partition("/")
        if minor == "*":
            return major == want_major
        return self.type == media_type


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; name=value; …`` → (lower-cased type, parameters)."""
    pieces = _split(text, ";")
    media = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if not sep:
            continue
        params[name.strip().lower()] = value.strip().strip('"')
    return media, params


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, most preferred first (q, then order);
    ``q=0`` ranges are dropped. No header means ``*/*``."""
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, item in enumerate(_split(header, ",")):
        if not item.strip():
            continue
        media, params = parse_media_type(item)
        q = 1.0
        if "q" in params:
            try:
                q = float(params.pop("q"))
            except ValueError:
                q = 0.0
        if q <= 0 or "/" not in media:
            continue
        ranges.append((-q, position, MediaRange(media, params, q)))
    ranges.sort(key=lambda entry: (entry[0], entry[1]))
    return [entry[2] for entry in ranges]


def dicom_syntaxes(ranges: list[MediaRange]) -> list[str]:
    """The transfer syntaxes acceptable for application/dicom parts, preferred
    first (``*`` for any). A range naming no syntax means Explicit VR Little
    Endian (PS3.18 8.7.3.5.2); ``*/*`` and a bare ``multipart/related`` mean
    any. :class:`NotAcceptable` when no range allows DICOM parts."""
    out: list[str] = []
    for media in ranges:
        if media.type in ("*/*", "multipart/*"):
            out.append(ANY_SYNTAX)
        elif media.type == MULTIPART:
            inner = media.inner
            if inner is None:
                out.append(ANY_SYNTAX)
            elif inner == DICOM:
                out.append(media.transfer_syntax or EXPLICIT_LE)
    if not out:
        raise NotAcceptable(
            'Accept multipart/related; type="application/dicom" for DICOM instances.'
        )
    return out


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_type(boundary: str, inner: str) -> str:
    return f'multipart/related; type="{inner}"; boundary={boundary}'


def multipart_part(
    boundary: str, content_type: str, body: bytes, location: str | None = None
) -> bytes:
    """One part of a multipart/related body (RFC 2046 5.1.1), delimiter included."""
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    if location:
        head += f"Content-Location: {location}\r\n"
    return head.encode("latin-1") + b"\r\n" + body + b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")


@dataclass(slots=True)
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class MultipartReader:
    """An incremental multipart/related parser (RFC 2046 5.1.1) over an async
    stream of byte chunks. Malformed framing raises :class:`InvalidInput`."""

    def __init__(self, boundary: str, max_header_bytes: int = 16 * 1024) -> None:
        if not boundary or len(boundary) > 70:
            raise InvalidInput("The multipart boundary is missing or too long.")
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.max_header_bytes = max_header_bytes

    async def parts(self, stream: AsyncIterator[bytes]) -> AsyncIterator[Part]:
        buf = bytearray()
        chunks = stream.__aiter__()
        eof = False

        async def more() -> bool:
            nonlocal eof
            if eof:
                return False
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                eof = True
                return False
            buf.extend(chunk)
            return True

        # Preamble: up to the first delimiter, at the start or after a CRLF.
        while True:
            if buf.startswith(self.delimiter):
                start = 0
                break
            found = buf.find(b"\r\n" + self.delimiter)
            if found >= 0:
                start = found + 2
                break
            if len(buf) > 64 * 1024:  # a preamble this long is no multipart body
                raise InvalidInput("The multipart body has no opening boundary.")
            if not await more():
                raise InvalidInput("The multipart body has no opening boundary.")
        del buf[: start + len(self.delimiter)]
        while True:
            # After a delimiter: "--" closes, otherwise padding then CRLF.
            while len(buf) < 2 and await more():
                pass
            if buf[:2] == b"--":
                return
            while b"\r\n" not in buf[:1024]:
                if not await more():
                    raise InvalidInput("The multipart body is truncated.")
            del buf[: buf.index(b"\r\n") + 2]
            headers = await self._headers(buf, more)
            scan = 0
            marker = b"\r\n" + self.delimiter
            while True:
                found = buf.find(marker, scan)
                if found >= 0:
                    verdict = self._is_delimiter(buf, found + len(marker))
                    if verdict is True:
                        break
                    if verdict is False:  # the boundary text inside a value: data
                        scan = found + 1
                        continue
                else:
                    scan = max(0, len(buf) - len(marker))
                if not await more():
                    raise InvalidInput("The multipart body is truncated.")
            body = bytes(buf[:found])
            del buf[: found + len(marker)]
            yield Part(headers, body)

    @staticmethod
    def _is_delimiter(buf: bytearray, end: int) -> bool | None:
        """Whether the boundary ending at ``end`` is a delimiter: followed by
        ``--`` or by optional white space and CRLF (RFC 2046 5.1.1); None when
        more bytes are needed to tell."""
        tail = bytes(buf[end : end + 80])
        if tail.startswith(b"--"):
            return True
        stripped = tail.lstrip(b" \t")
        if stripped.startswith(b"\r\n"):
            return True
        if len(stripped) < 2 and len(tail) < 80:
            return None if stripped in (b"", b"\r", b"-") else False
        return False

    async def _headers(
        self, buf: bytearray, fetch: Callable[[], Awaitable[bool]]
    ) -> dict[str, str]:
        while True:
            if buf.startswith(b"\r\n"):  # no headers at all
                del buf[:2]
                return {}
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > self.max_header_bytes:
                raise InvalidInput("The headers of a multipart part are too long.")
            if not await fetch():
                raise InvalidInput("The multipart body is truncated.")
        text = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        headers: dict[str, str] = {}
        for line in text.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return headers
