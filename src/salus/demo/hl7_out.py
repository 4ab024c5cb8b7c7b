"""HL7 v2.5.1 messages of the generated records, as a hospital's ADT and
laboratory systems send them.

Per encounter: an ADT^A01 (admission; A04 for an outpatient visit, HL7 v2.5.1
ch. 3.3.1 and 3.3.4) with PID (MRN of the hospital's assigning authority,
national id) and PV1 (visit number in PV1-19, admission and discharge times in
PV1-44/45), then an ORU^R01 (ch. 7.3.1) with one OBR and an OBX per result
(LOINC, UCUM units, reference range, abnormal flag), then the discharge,
ADT^A03 (ch. 3.3.3). Original acknowledgement
mode (MSH-15/16 empty), UTF-8 (MSH-18 ``UNICODE UTF-8``), times with the
hospital's UTC offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from salus.demo.catalog import HospitalSpec
from salus.demo.model import Encounter, Network, Registration

__all__ = ["Hl7Message", "messages_for"]

NATIONAL_ID_AUTHORITY = "NID"
_SEX = {"female": "F", "male": "M", "unknown": "U", "other": "O"}
_CLASS = {"AMB": "O", "IMP": "I", "EMER": "E"}
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


@dataclass(frozen=True, slots=True)
class Hl7Message:
    control_id: str  # MSH-10
    message_type: str  # "ADT^A01"
    visit: str
    text: str  # segments joined by CR


def _esc(value: str) -> str:
    """HL7 v2.5.1 2.7.4: escape the delimiters inside a value."""
    for raw, escaped in _ESCAPES:
        value = value.replace(raw, escaped)
    return value


def _ts(when: datetime, spec: HospitalSpec) -> str:
    return when.strftime("%Y%m%d%H%M%S") + spec.utc_offset.replace(":", "")


def _segment(*fields: str) -> str:
    return "|".join(fields)


def _msh(spec: HospitalSpec, when: datetime, kind: str, control: str) -> str:
    # MSH-3..18; MSH-15/16 empty: original acknowledgement mode.
    return (
        f"MSH|^~\\&|HIS|{spec.facility}|SALUS|NETWORK|{_ts(when, spec)}||{kind}|{control}|P|2.5.1"
        + "|" * 6
        + "UNICODE UTF-8"
    )


def _pid(reg: Registration, facility: str) -> str:
    ids = [f"{_esc(reg.mrn)}^^^{facility}^MR"]
    if reg.national_id:
        ids.append(f"{reg.national_id}^^^{NATIONAL_ID_AUTHORITY}^NI")
    address = ""
    if reg.address:
        street, _, city = reg.address.rpartition(", ")
        address = f"{_esc(street)}^^{_esc(city)}"
    return _segment(
        "PID",
        "1",
        "",
        "~".join(ids),
        "",
        f"{_esc(reg.family)}^{_esc(reg.given)}",
        "",
        reg.birth_date.strftime("%Y%m%d") if reg.birth_date else "",
        _SEX.get(reg.gender, "U"),
        "",
        "",
        address,
        "",
        reg.phone or "",
    )


def _pv1(enc: Encounter, spec: HospitalSpec, *, full: bool) -> str:
    fields = ["PV1", "1", _CLASS[enc.cls], f"{enc.ward}^^^{spec.facility}"]
    fields += [""] * 15  # PV1-4 .. PV1-18
    fields.append(enc.visit)  # PV1-19
    if full:
        fields += [""] * 24  # PV1-20 .. PV1-43
        fields += [_ts(enc.start, spec), _ts(enc.end, spec)]  # PV1-44, PV1-45
    return _segment(*fields)


def _adt(
    reg: Registration, enc: Encounter, spec: HospitalSpec, control: str, event: str
) -> Hl7Message:
    when = enc.end if event == "A03" else enc.start
    structure = "ADT_A03" if event == "A03" else "ADT_A01"
    segments = [
        _msh(spec, when, f"ADT^{event}^{structure}", control),
        _segment("EVN", event, _ts(when, spec)),
        _pid(reg, spec.facility),
        _pv1(enc, spec, full=True),
    ]
    return Hl7Message(control, f"ADT^{event}", enc.visit, "\r".join(segments) + "\r")


def _oru(reg: Registration, enc: Encounter, spec: HospitalSpec, control: str) -> Hl7Message:
    taken = _ts(enc.start, spec)
    order = f"ORD{enc.visit}"
    segments = [
        _msh(spec, enc.start, "ORU^R01^ORU_R01", control),
        _pid(reg, spec.facility),
        _pv1(enc, spec, full=False),
        _segment("ORC", "RE", order, f"LAB{enc.visit}"),
        _segment(
            "OBR",
            "1",
            order,
            f"LAB{enc.visit}",
            "GEN^General laboratory panel^L",
            "",
            "",
            taken,
            *([""] * 14),
            taken,
            "",
            "",
            "F",
        ),  # fmt: skip
    ]
    for n, result in enumerate(enc.labs, start=1):
        lab = result.lab
        low, high = (f"{v:.{lab.decimals}f}" for v in (lab.low, lab.high))
        segments.append(
            _segment(
                "OBX",
                str(n),
                "NM",
                f"{lab.loinc}^{_esc(lab.display)}^LN",
                "",
                f"{result.value:.{lab.decimals}f}",
                f"{_esc(lab.unit)}^^UCUM",
                f"{low}-{high}",
                result.flag,
                "",
                "",
                "F",
                "",
                "",
                taken,
            )  # fmt: skip
        )
    return Hl7Message(control, "ORU^R01", enc.visit, "\r".join(segments) + "\r")


def messages_for(network: Network, reg: Registration) -> list[Hl7Message]:
    """The ADT and ORU messages of one patient at an HL7-speaking hospital, in order."""
    spec = network.hospital(reg.org_id)
    out: list[Hl7Message] = []
    for enc in reg.encounters:
        admit = "A04" if enc.cls == "AMB" else "A01"
        out.append(_adt(reg, enc, spec, f"{enc.visit}-{admit}", admit))
        if enc.labs:
            out.append(_oru(reg, enc, spec, f"{enc.visit}-ORU"))
        out.append(_adt(reg, enc, spec, f"{enc.visit}-A03", "A03"))
    return out
