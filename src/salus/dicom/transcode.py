"""Transfer syntaxes on retrieval: the stored bytes when acceptable, otherwise a
conversion to a native syntax; frames and bulk data values out of a stored file.

Salus keeps every instance as received (ADR 9) and never re-compresses. What
a DICOMweb client may get besides the stored bytes (PS3.18 8.7.3.5):

* **native** (Explicit VR Little Endian, Implicit VR Little Endian) from any
  stored syntax pydicom can decode: compressed pixel data is decompressed
  (pydicom's decoders with the pylibjpeg, openjpeg and CharLS plugins;
  :func:`pydicom.pixels.decompress`, colour converted to RGB as PS3.5 8.2
  allows, the SOP Instance UID unchanged because the pixel values are not
  changed again), deflated data sets are inflated, big endian values are
  byte-swapped;
* **frames** (PS3.18 8.6.1.2.2, 10.4.1.1.3): a compressed frame exactly as
  stored (its fragment(s)), or the frame's native pixels in little endian;
* **bulk data** (PS3.18 8.6.2): the value of a binary element, little endian.

Failures to decode raise :class:`NotConvertible` (406 on the HTTP edge).
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from salus.dicom.parse import part10_from_dimse
from salus.errors import InvalidInput, NotAcceptable, NotFound

__all__ = [
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "NATIVE",
    "NotConvertible",
    "bulk_value",
    "frame_count",
    "iter_frames",
    "media_type_of",
    "read_dataset",
    "to_native",
]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
#: The syntaxes Salus converts to (PS3.18 8.7.3.5.2: Explicit VR Little Endian is the default).
NATIVE = (EXPLICIT_LE, IMPLICIT_LE)

#: PS3.18 Table 8.7.3-5: the media type of a frame in a compressed transfer syntax.
_FRAME_MEDIA: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class NotConvertible(NotAcceptable):
    """The stored data cannot be given in any representation the client accepts."""

    code = "dicom-not-convertible"

    @classmethod
    def default_message(cls) -> str:
        return "The instance cannot be converted to an accepted transfer syntax."


def media_type_of(transfer_syntax: str) -> str:
    """The media type of one frame (or bulk pixel data) in ``transfer_syntax``."""
    return _FRAME_MEDIA.get(transfer_syntax, "application/octet-stream")


def is_compressed(transfer_syntax: str) -> bool:
    return transfer_syntax in _FRAME_MEDIA or UID(transfer_syntax).is_compressed


def read_dataset(part10: bytes | bytearray) -> Dataset:
    try:
        return dcmread(BytesIO(bytes(part10)))
    except Exception:
        raise InvalidInput("The stored instance cannot be read.") from None


def _swap_to_little_endian(ds: Dataset) -> None:
    """Byte-swap the binary values pydicom keeps raw (OW, OF, OL, OD, OV) of a data
    set read from Explicit VR Big Endian (retired, PS3.5 A.3)."""
    import numpy as np

    for elem in ds.iterall():
        width = _SWAP_WIDTH.get(str(elem.VR))
        if width and isinstance(elem.value, bytes | bytearray) and len(elem.value) % width == 0:
            elem.value = (
                np.frombuffer(elem.value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
            )


def to_native(part10: bytes | bytearray, stored: str, target: str) -> bytes:
    """A Part-10 file of the same instance in ``target`` (a native syntax)."""
    if target not in NATIVE:
        raise NotConvertible()
    ds = read_dataset(part10)
    try:
        if is_compressed(stored):
            # Keeps the SOP Instance UID: the values are those already stored.
            ds.decompress(generate_instance_uid=False)
        elif stored == BIG_ENDIAN:
            _swap_to_little_endian(ds)
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = target == IMPLICIT_LE
        write_dataset(fp, ds)
    except NotAcceptable:
        raise
    except Exception:
        raise NotConvertible() from None
    return part10_from_dimse(fp.getvalue(), str(ds.SOPClassUID), str(ds.SOPInstanceUID), target)


def frame_count(ds: Dataset) -> int:
    if "PixelData" not in ds:
        return 0
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _native_frame_size(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    if bits == 1:
        raise NotConvertible("Frames of 1-bit pixel data are not offered.")
    return pixels * bits // 8


def iter_frames(
    ds: Dataset, stored: str, numbers: list[int], *, native: bool
) -> Iterator[tuple[bytes, str, str]]:
    """(bytes, media type, transfer syntax) of each 1-based frame in ``numbers``.

    ``native=False`` gives a compressed frame exactly as stored; native frames
    are little endian (PS3.18 8.7.3.3.2).
    """
    count = frame_count(ds)
    for number in numbers:
        if not 1 <= number <= count:
            raise NotFound("No such frame in this instance.")
    compressed = is_compressed(stored)
    if compressed and not native:
        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        for number in numbers:
            yield frames[number - 1], media_type_of(stored), stored
        return
    if not compressed and stored != BIG_ENDIAN:
        data = ds.PixelData
        size = _native_frame_size(ds)
        for number in numbers:
            start = (number - 1) * size
            yield bytes(data[start : start + size]), "application/octet-stream", EXPLICIT_LE
        return
    from pydicom.pixels.utils import pixel_array

    for number in numbers:
        try:
            array: Any = pixel_array(ds, index=number - 1)
        except Exception:
            raise NotConvertible("The frame cannot be decoded.") from None
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        yield little.tobytes(), "application/octet-stream", EXPLICIT_LE


def bulk_value(ds: Dataset, stored: str, path: str) -> tuple[bytes, str]:
    """The value at a BulkDataURI tag path (``7FE00010``, ``00540016/0/00181072``),
    little endian (PS3.18 8.6.2), and its media type."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or len(parts) % 2 == 0:
        raise NotFound("No such bulk data.")
    item: Dataset = ds
    try:
        for index in range(0, len(parts) - 1, 2):
            sequence = item[int(parts[index], 16)]
            item = sequence.value[int(parts[index + 1])]
        elem = item[int(parts[-1], 16)]
    except (KeyError, IndexError, ValueError, TypeError):
        raise NotFound("No such bulk data.") from None
    value = elem.value
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        width = _SWAP_WIDTH.get(str(elem.VR))
        if stored == BIG_ENDIAN and width and len(data) % width == 0:
            import numpy as np

            data = np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()
        return data, "application/octet-stream"
    if isinstance(value, str):
        return value.encode("utf-8"), "text/plain"
    raise NotFound("No such bulk data.")
