"""Is a data set complete? A walk over its element framing (PS3.5 7.1, 7.5).

pydicom reads what a truncated file still holds without complaint when the cut
falls inside a value or a sequence (it takes the bytes that are there), so the
archive checks the framing itself before it keeps a file: every element's
value length fits in what is left of its container, every undefined-length
sequence and item is closed by its delimitation item, and encapsulated Pixel
Data ends with its Sequence Delimiter (PS3.5 A.4). A deflated data set
(PS3.5 A.5) must be one complete deflate stream. Values are skipped, never
interpreted.
"""

from __future__ import annotations

import zlib
from typing import Literal

__all__ = ["Incomplete", "check_complete"]

_LONG_VRS = {
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"
}  # fmt: skip
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 64
_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


class Incomplete(ValueError):
    """The data set ends before its framing says it does."""


class _Walker:
    """Only undefined lengths need a look inside: a cut within a defined-length
    value makes that value (or its container) run past the end, which the
    length check of the element itself catches."""

    def __init__(self, data: bytes | memoryview, little: bool) -> None:
        self.data = data
        self.order: Literal["little", "big"] = "little" if little else "big"

    def _uint(self, pos: int, size: int, end: int) -> int:
        if pos + size > end:
            raise Incomplete("an element header runs past the end")
        return int.from_bytes(self.data[pos : pos + size], self.order)

    def _tag(self, pos: int, end: int) -> int:
        return (self._uint(pos, 2, end) << 16) | self._uint(pos + 2, 2, end)

    def elements(self, pos: int, end: int, implicit: bool, depth: int, closed: bool) -> int:
        """Walk elements from ``pos`` to ``end``, or to an Item Delimitation Item when
        ``closed`` (an undefined-length item); returns where they end."""
        if depth > _MAX_DEPTH:
            raise Incomplete("sequences nest too deeply")
        while pos < end:
            tag = self._tag(pos, end)
            if closed and tag == _ITEM_END:
                return pos + 8
            if tag in (_ITEM, _ITEM_END, _SEQ_END):
                raise Incomplete("a delimitation item where an element was expected")
            vr = b""
            if implicit:
                length, pos = self._uint(pos + 4, 4, end), pos + 8
            else:
                vr = bytes(self.data[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    length, pos = self._uint(pos + 8, 4, end), pos + 12
                else:
                    length, pos = self._uint(pos + 6, 2, end), pos + 8
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA:  # encapsulated: fragments, then a delimiter
                    pos = self.items(pos, end, implicit, depth + 1, fragments=True)
                else:  # a sequence; an undefined-length UN holds implicit VR LE (PS3.5 6.2.2)
                    pos = self.items(pos, end, implicit or vr == b"UN", depth + 1)
                continue
            if pos + length > end:
                raise Incomplete("a value runs past the end of its container")
            pos += length
        if closed:
            raise Incomplete("an undefined-length item is not closed")
        return pos

    def items(self, pos: int, end: int, implicit: bool, depth: int, fragments: bool = False) -> int:
        """The items of an undefined-length sequence, up to its Sequence Delimitation Item."""
        while pos < end:
            tag = self._tag(pos, end)
            length = self._uint(pos + 4, 4, end)
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise Incomplete("a sequence holds something other than items")
            if length == _UNDEFINED and not fragments:
                pos = self.elements(pos, end, implicit, depth, closed=True)
                continue
            if length == _UNDEFINED or pos + length > end:
                raise Incomplete("an item runs past the end of its sequence")
            pos += length
        raise Incomplete("an undefined-length sequence is not closed")


def check_complete(data: bytes, offset: int, transfer_syntax: str) -> None:
    """Raise :class:`Incomplete` when the data set at ``offset`` is cut short."""
    body: bytes | memoryview = memoryview(data)[offset:]  # no copy of the pixel data
    if transfer_syntax == _DEFLATED:
        inflater = zlib.decompressobj(-15)
        try:
            body = inflater.decompress(body) + inflater.flush()
        except zlib.error:
            raise Incomplete("the deflated data set is corrupt") from None
        if not inflater.eof:
            raise Incomplete("the deflated data set ends early")
    walker = _Walker(body, transfer_syntax != _BIG_ENDIAN)
    implicit = transfer_syntax == _IMPLICIT
    try:
        walker.elements(0, len(body), implicit, 0, closed=False)
    except Incomplete:
        if implicit or transfer_syntax == _BIG_ENDIAN:
            raise
        # Some writers put implicit VR data sets under an explicit VR syntax;
        # pydicom reads them as what they are, so this check does too.
        walker.elements(0, len(body), True, 0, closed=False)
