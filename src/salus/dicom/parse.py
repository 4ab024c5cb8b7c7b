"""Reading a received instance: Part-10 framing, the index attributes and DICOM JSON.

An instance is kept exactly as received: a DICOM File (PS3.10 7.1: preamble,
``DICM``, File Meta Information, then the data set in the transfer syntax
named by (0002,0010)). C-STORE hands Salus only the data set and the
negotiated transfer syntax, so :func:`part10_from_dimse` adds the File Meta
Information in front of the unchanged data set bytes.

:func:`parse_part10` reads a file once (pydicom), refuses what cannot be
indexed (:class:`~salus.errors.InvalidInput`, which DIMSE turns into 0xA900
and STOW-RS into a failure reason) and returns a :class:`ParsedInstance`:
the index attributes, the DICOM JSON (PS3.18 F.2) with every bulk data value
replaced by a BulkDataURI, and where the data set starts in the file.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from salus.dicom.structure import Incomplete, check_complete
from salus.dicom.wire import Element, Unsupported, encode_elements
from salus.errors import InvalidInput

__all__ = [
    "BULK_DATA_THRESHOLD",
    "IMPLEMENTATION_CLASS_UID",
    "NEWER_TRANSFER_SYNTAXES",
    "ParsedInstance",
    "Unreadable",
    "bulkdata_uri",
    "dataset_json",
    "dataset_offset",
    "norm_pn",
    "parse_part10",
    "part10_from_dimse",
    "time_key",
]

#: Values of binary VRs longer than this become BulkDataURIs in the metadata.
BULK_DATA_THRESHOLD = 1024
#: Our File Meta (0002,0012); pydicom's root, as files Salus frames are written by pydicom.
IMPLEMENTATION_CLASS_UID = PYDICOM_IMPLEMENTATION_UID
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Transfer syntaxes of the standard newer than pydicom's dictionary (PS3.6 A-1, 2024):
#: all explicit VR little endian with encapsulated pixel data (PS3.5 A.4), kept as
#: received and sent as stored; none of them is converted (no decoder here).
NEWER_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.8.1": ("Deflated Image Frame Compression", "DeflatedImageFrameCompression"),
    "1.2.840.10008.1.2.4.110": ("JPEG XL Lossless", "JPEGXLLossless"),
    "1.2.840.10008.1.2.4.111": ("JPEG XL JPEG Recompression", "JPEGXLJPEGRecompression"),
    "1.2.840.10008.1.2.4.112": ("JPEG XL", "JPEGXL"),
}


def _register_newer_transfer_syntaxes() -> None:
    """Make pydicom's ``UID`` know them as (encapsulated) transfer syntaxes."""
    from pydicom._uid_dict import UID_dictionary

    for uid, (name, keyword) in NEWER_TRANSFER_SYNTAXES.items():
        UID_dictionary.setdefault(uid, (name, "Transfer Syntax", "", "", keyword))


def _quiet_pydicom() -> None:
    """The archive keeps values as received, valid or not, so pydicom is told not
    to validate them when reading or setting them: its warnings quote the
    offending value (patient data in logs) and would only repeat on every read.
    Its logger keeps errors only, for the same reason."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)


_register_newer_transfer_syntaxes()
_quiet_pydicom()

_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


class Unreadable(InvalidInput):
    """Not a readable DICOM File: no File Meta Information, truncated, malformed
    (C-STORE 0xA900 like any invalid data set; STOW-RS FailureReason 0xC000,
    "cannot understand")."""

    code = "dicom-unreadable"

    @classmethod
    def default_message(cls) -> str:
        return "The file is not a readable DICOM data set."


def norm_pn(value: str | None) -> str | None:
    """Person Name folded for case-insensitive matching (PS3.4 C.2.2.2.1: PN may
    match case-insensitively): upper case, trailing empty components dropped."""
    if value is None:
        return None
    groups = [re.sub(r"\^+$", "", group.strip()) for group in value.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).upper() or None


def time_key(value: str | None) -> str | None:
    """A TM value (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.F…``, colons of old
    ACR-NEMA files tolerated) as ``HHMMSS.FFFFFF`` so that text order is time order."""
    if not value:
        return None
    text = value.strip().replace(":", "")
    match = _TIME.match(text)
    if not match:
        return None
    hh, mm, ss, frac = match.groups()
    return f"{hh}{mm or '00'}{ss or '00'}.{(frac or '.')[1:].ljust(6, '0')}"


def _element(ds: Dataset, keyword: str) -> DataElement | None:
    return ds.data_element(keyword) if keyword in ds else None


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    elem = _element(ds, keyword)
    if elem is None or elem.value is None or elem.value == "":
        return None
    value = elem.value
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip()
    return text[:limit] if text else None


def _int(ds: Dataset, keyword: str) -> int | None:
    elem = _element(ds, keyword)
    if elem is None or elem.value is None or elem.value == "":
        return None
    value = elem.value
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**31) <= number < 2**31 else None


def _uid(ds: Dataset, keyword: str, *, required: bool) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text:
        if required:
            raise InvalidInput(f"The data set has no {keyword}.", expression=[keyword])
        return None
    if len(text) > 64 or not _UID.match(text):
        raise InvalidInput(f"{keyword} is not a valid UID.", expression=[keyword])
    return text


def bulkdata_uri(study: str, series: str, instance: str, path: str) -> str:
    """The BulkDataURI of a value, relative to the DICOMweb root (PS3.18 8.6.2).

    ``path`` is the tag path: ``7FE00010`` at the top level, ``00540016/0/00181072``
    (sequence tag / item index / tag) inside sequences.
    """
    return f"studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}"


def dataset_json(ds: Dataset, uri: Callable[[str], str]) -> dict[str, Any]:
    """PS3.18 F.2 DICOM JSON of ``ds``; binary values over the threshold become
    ``BulkDataURI`` (``uri(tag path)``), smaller ones ``InlineBinary``."""

    def walk(item: Dataset, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for elem in item:
            tag = f"{elem.tag:08X}"
            if elem.tag.group == 0x0002:
                continue
            if elem.VR == "SQ":
                out[tag] = {
                    "vr": "SQ",
                    "Value": [
                        walk(sub, f"{prefix}{tag}/{index}/") for index, sub in enumerate(elem.value)
                    ],
                }
                if not out[tag]["Value"]:
                    del out[tag]["Value"]
                continue
            path = f"{prefix}{tag}"

            def handler(_elem: DataElement, path: str = path) -> str:
                return uri(path)

            try:
                out[tag] = elem.to_json_dict(handler, BULK_DATA_THRESHOLD)
            except Exception:
                # A value pydicom cannot render (bad VR content): keep the VR, drop the value.
                out[tag] = {"vr": str(elem.VR)}
        return out

    return walk(ds, "")


@dataclass(slots=True)
class ParsedInstance:
    """What the index needs of one instance (keywords as in PS3.6)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    dataset_offset: int
    patient: dict[str, str | None] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: (RequestedProcedureID, ScheduledProcedureStepID) of each Request Attributes
    #: Sequence item ("" when absent).
    requests: list[tuple[str, str]] = field(default_factory=list)


def part10_from_dimse(
    dataset: bytes, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str
) -> bytes:
    """A DICOM File (PS3.10 7.1) around a data set received by C-STORE, which stays
    byte for byte as it came off the wire. The File Meta Information is encoded
    directly (what pydicom's ``write_file_meta_info`` writes; pydicom when a UID
    does not encode)."""
    try:
        elements: list[Element] = [
            (0x00020001, "OB", b"\x00\x01"),
            (0x00020002, "UI", sop_class_uid),
            (0x00020003, "UI", sop_instance_uid),
            (0x00020010, "UI", transfer_syntax_uid),
            (0x00020012, "UI", str(IMPLEMENTATION_CLASS_UID)),
            (0x00020013, "SH", "SALUS"),
        ]
        body = encode_elements(elements, False, True, "ascii")
        head = encode_elements([(0x00020000, "UL", len(body))], False, True)
    except (Unsupported, UnicodeError, ValueError):
        return _part10_from_dimse_pydicom(
            dataset, sop_class_uid, sop_instance_uid, transfer_syntax_uid
        )
    return b"".join((_PREAMBLE, head, body, dataset))


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _part10_from_dimse_pydicom(
    dataset: bytes, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "SALUS"
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)  # type: ignore[arg-type]
    buffer.write(dataset)
    return buffer.getvalue()


def dataset_offset(data: bytes) -> int:
    """Where the data set starts: after the preamble and the group 0002 elements
    (explicit VR little endian, PS3.10 7.1)."""
    if data[128:132] != b"DICM":
        raise Unreadable("The file has no DICOM File Meta Information (no 'DICM' prefix).")
    pos = 132
    size = len(data)
    while pos + 8 <= size:
        group = int.from_bytes(data[pos : pos + 2], "little")
        if group != 0x0002:
            return pos
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            if pos + 12 > size:
                break
            length = int.from_bytes(data[pos + 8 : pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(data[pos + 6 : pos + 8], "little")
            pos += 8 + length
    if pos == size:
        return pos
    raise Unreadable("The File Meta Information is truncated.")


def _check_pixel_data(ds: Dataset, ts: str) -> None:
    """Native (not encapsulated) Pixel Data must be as long as the image module says
    (PS3.5 8.1.1, PS3.3 C.7.6.3; YBR_FULL_422 keeps two values per pixel, C.7.6.3.1.2;
    1-bit data is packed): a shorter value is a truncated file. An unreadable
    Number of Frames counts as one frame."""
    if "PixelData" not in ds:
        return
    elem = ds["PixelData"]
    if elem.is_undefined_length or UID(ts).is_compressed:
        return
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise InvalidInput("The image pixel module is incomplete.") from None
    try:
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        frames = 1
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if len(elem.value or b"") < expected:
        raise Unreadable("The Pixel Data is shorter than the image attributes say (truncated).")


def parse_part10(data: bytes) -> ParsedInstance:
    """Read a Part-10 file for the index; :class:`InvalidInput` when it cannot be kept."""
    offset = dataset_offset(data)
    try:
        with warnings.catch_warnings():
            # e.g. "Expected explicit VR, but found implicit VR": pydicom reads such
            # data sets as they are, and so does the archive (kept as received).
            warnings.simplefilter("ignore")
            ds = dcmread(BytesIO(data), force=False)
            # Touch every top-level element now, so a truncated or malformed file fails
            # here (pydicom reads values lazily) rather than later, half-way through.
            for _elem in ds:
                pass
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError):
        raise Unreadable() from None
    except Exception:  # pydicom raises many kinds on malformed input
        raise Unreadable() from None
    ts = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta is not None else None
    if not ts:
        raise InvalidInput("The file names no transfer syntax.", expression=["TransferSyntaxUID"])
    ts_text = str(ts).strip().rstrip("\x00")
    if not _UID.match(ts_text):
        raise InvalidInput("The transfer syntax is not a valid UID.")
    sop_class = _uid(ds, "SOPClassUID", required=True)
    sop_instance = _uid(ds, "SOPInstanceUID", required=True)
    study_uid = _uid(ds, "StudyInstanceUID", required=True)
    series_uid = _uid(ds, "SeriesInstanceUID", required=True)
    assert sop_class and sop_instance and study_uid and series_uid  # noqa: S101 - required
    _check_pixel_data(ds, ts_text)
    try:
        check_complete(data, offset, ts_text)
    except Incomplete:
        raise Unreadable("The data set ends before its elements do (truncated).") from None
    try:
        patient_name = _text(ds, "PatientName", 324)
        referring = _text(ds, "ReferringPhysicianName", 324)
        parsed = ParsedInstance(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            study_uid=study_uid,
            series_uid=series_uid,
            transfer_syntax_uid=ts_text,
            dataset_offset=offset,
        )
        parsed.patient = {
            "patient_id": _text(ds, "PatientID", 64) or "",
            "issuer": _text(ds, "IssuerOfPatientID", 64) or "",
            "patient_name": patient_name,
            "patient_name_norm": norm_pn(patient_name),
            "birth_date": _text(ds, "PatientBirthDate", 8),
            "sex": _text(ds, "PatientSex", 16),
        }
        issuer_seq = ds.get("IssuerOfAccessionNumberSequence")
        accession_issuer = None
        if issuer_seq:
            accession_issuer = _text(issuer_seq[0], "LocalNamespaceEntityID", 64)
        study_time = _text(ds, "StudyTime", 16)
        parsed.study = {
            "study_date": _text(ds, "StudyDate", 8),
            "study_time": study_time,
            "study_time_key": time_key(study_time),
            "accession_number": _text(ds, "AccessionNumber", 16),
            "accession_issuer": accession_issuer,
            "referring_physician_name": referring,
            "referring_physician_name_norm": norm_pn(referring),
            "study_id": _text(ds, "StudyID", 16),
            "study_description": _text(ds, "StudyDescription", 64),
        }
        pps_time = _text(ds, "PerformedProcedureStepStartTime", 16)
        parsed.series = {
            "modality": _text(ds, "Modality", 16),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription", 64),
            "body_part_examined": _text(ds, "BodyPartExamined", 16),
            "laterality": _text(ds, "Laterality", 16),
            "series_date": _text(ds, "SeriesDate", 8),
            "series_time": _text(ds, "SeriesTime", 16),
            "pps_start_date": _text(ds, "PerformedProcedureStepStartDate", 8),
            "pps_start_time": pps_time,
            "pps_start_time_key": time_key(pps_time),
        }
        for item in ds.get("RequestAttributesSequence") or []:
            request = (
                _text(item, "RequestedProcedureID", 16) or "",
                _text(item, "ScheduledProcedureStepID", 16) or "",
            )
            if any(request) and request not in parsed.requests:
                parsed.requests.append(request)
        parsed.instance = {
            "sop_class_uid": sop_class,
            "instance_number": _int(ds, "InstanceNumber"),
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "number_of_frames": _int(ds, "NumberOfFrames"),
            "bits_allocated": _int(ds, "BitsAllocated"),
            "content_date": _text(ds, "ContentDate", 8),
            "content_time": _text(ds, "ContentTime", 16),
            "transfer_syntax_uid": ts_text,
        }
        metadata = dataset_json(
            ds, lambda path: bulkdata_uri(study_uid, series_uid, sop_instance, path)
        )
    except InvalidInput:
        raise
    except Exception:
        raise InvalidInput("The data set has values that cannot be read.") from None
    # PS3.18 10.4.1.2 / F.2: the stored transfer syntax, so WADO clients know it.
    metadata["00083002"] = {"vr": "UI", "Value": [ts_text]}
    parsed.metadata = metadata
    return parsed
