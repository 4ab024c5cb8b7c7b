"""DICOM JSON (PS3.18 F.2) and Native DICOM Model XML (PS3.19 A.1) of response data sets.

Index values (keyword → text) become DICOM JSON elements with their VR from
the data dictionary: PN as ``{"Alphabetic", "Ideographic", "Phonetic"}``
groups (F.2.2), IS/DS/US… as numbers, backslash-separated values as several
``Value`` entries, empty values without ``Value`` (F.2.5).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - we only write XML
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

__all__ = ["element", "tag_of", "to_xml"]

_NUMBER_VRS = {"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def tag_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def _number(vr: str, text: str) -> int | float | str:
    try:
        if vr in ("DS", "FL", "FD"):
            number = float(text)
            return int(number) if number.is_integer() and vr == "DS" else number
        return int(text)
    except ValueError:
        return text


def element(keyword: str, value: Any, vr: str | None = None) -> dict[str, Any]:
    """One DICOM JSON element for an index value (None or "" → no Value)."""
    vr = vr or dictionary_VR(keyword)
    out: dict[str, Any] = {"vr": vr}
    if value is None or value == "" or value == []:
        return out
    if vr == "SQ":
        out["Value"] = [
            {tag_of(k): element(k, v) for k, v in item.items() if tag_for_keyword(k)}
            for item in value
        ]
        return out
    values = value if isinstance(value, list) else str(value).split("\\")
    if isinstance(value, int | float) and not isinstance(value, bool):
        out["Value"] = [value]
        return out
    if vr == "PN":
        names = []
        for text in values:
            groups = str(text).split("=")
            names.append({g: t for g, t in zip(_PN_GROUPS, groups, strict=False) if t})
        out["Value"] = names
    elif vr in _NUMBER_VRS:
        out["Value"] = [_number(vr, str(v).strip()) for v in values]
    else:
        out["Value"] = [str(v) for v in values]
    return out


def _xml_attribute(parent: ET.Element, tag: str, elem: dict[str, Any]) -> None:
    vr = str(elem.get("vr", "UN"))
    attrs = {"tag": tag, "vr": vr}
    try:
        keyword = keyword_for_tag(int(tag, 16))
    except ValueError:
        keyword = ""
    if keyword:
        attrs["keyword"] = keyword
    node = ET.SubElement(parent, "DicomAttribute", attrs)
    for number, value in enumerate(elem.get("Value", []), start=1):
        if vr == "SQ":
            item = ET.SubElement(node, "Item", {"number": str(number)})
            for sub_tag, sub in value.items():
                _xml_attribute(item, sub_tag, sub)
        elif vr == "PN":
            name = ET.SubElement(node, "PersonName", {"number": str(number)})
            for group in _PN_GROUPS:
                if group in value:
                    ET.SubElement(name, group).text = str(value[group])
        else:
            ET.SubElement(node, "Value", {"number": str(number)}).text = str(value)
    if "BulkDataURI" in elem:
        ET.SubElement(node, "BulkData", {"uri": str(elem["BulkDataURI"])})
    if "InlineBinary" in elem:
        ET.SubElement(node, "InlineBinary").text = str(elem["InlineBinary"])


def to_xml(dataset: dict[str, Any]) -> bytes:
    """A DICOM JSON data set as a PS3.19 NativeDicomModel document."""
    root = ET.Element(
        "NativeDicomModel", {"xmlns": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    )
    for tag in sorted(dataset):
        _xml_attribute(root, tag, dataset[tag])
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body
