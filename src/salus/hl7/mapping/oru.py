"""ORU^R01 → DiagnosticReport and Observation (HL7 v2.8 chapter 7, 7.3.1;
v2-to-FHIR IG maps OBR[DiagnosticReport], OBX[Observation]).

Values by OBX-2: NM → valueQuantity, SN → valueQuantity with a comparator,
valueRange or valueRatio, CE/CWE/CNE → valueCodeableConcept, ST/TX/FT →
valueString (repetitions joined by line breaks), DT/TS/DTM → valueDateTime;
other types are kept as text. OBX-6 units become UCUM where they are UCUM
(coding system UCUM, or a unit in :data:`UCUM`). OBX-7 reference ranges
``low-high``, ``<x`` and ``>x``; OBX-8 abnormal flags as interpretation
(table 0078 = v3 ObservationInterpretation). Results are found again by
filler order number + OBX-3 + set id, so corrections (OBX-11 ``C``)
update the same Observation.
"""

from __future__ import annotations

import re
from typing import Any

from salus.hl7.datatypes import codeable, decimal, dtm, prune
from salus.hl7.errors import Location
from salus.hl7.mapping.base import Context, Plan, Resource, Step, local
from salus.hl7.mapping.base import merger as _merger
from salus.hl7.mapping.common import encounter_ref, encounter_step, patient_step
from salus.hl7.parse import Rep, Segment

__all__ = ["map_oru", "observation", "UCUM"]

UCUM_SYSTEM = "http://unitsofmeasure.org"
#: Common lab units as senders write them → UCUM codes.
UCUM = {
    "mg/dl": "mg/dL", "g/dl": "g/dL", "g/l": "g/L", "mg/l": "mg/L", "mmol/l": "mmol/L",
    "umol/l": "umol/L", "µmol/l": "umol/L", "nmol/l": "nmol/L", "pmol/l": "pmol/L",
    "meq/l": "meq/L", "iu/l": "[IU]/L", "u/l": "U/L", "miu/ml": "m[IU]/mL", "ng/ml": "ng/mL",
    "pg/ml": "pg/mL", "ug/ml": "ug/mL", "fl": "fL", "pg": "pg", "%": "%", "mm[hg]": "mm[Hg]",
    "mmhg": "mm[Hg]", "kg": "kg", "g": "g", "cm": "cm", "m": "m", "mm": "mm", "wk": "wk",
    "d": "d", "h": "h", "min": "min", "s": "s", "/min": "/min", "bpm": "/min",
    "10*3/ul": "10*3/uL", "10*6/ul": "10*6/uL", "10*9/l": "10*9/L", "10*12/l": "10*12/L",
    "k/ul": "10*3/uL", "m/ul": "10*6/uL", "cel": "Cel", "degc": "Cel", "ml": "mL", "l": "L",
    "ml/min": "mL/min", "ml/min/1.73m2": "mL/min/{1.73_m2}", "kg/m2": "kg/m2", "ratio": "{ratio}",
}  # fmt: skip
STATUS = {"F": "final", "P": "preliminary", "C": "corrected", "X": "cancelled",
          "R": "registered", "I": "registered", "D": "entered-in-error", "W": "entered-in-error",
          "S": "preliminary", "A": "amended", "U": "final", "O": "registered"}  # fmt: skip
REPORT_STATUS = {"F": "final", "P": "preliminary", "C": "corrected", "X": "cancelled",
                 "R": "partial", "I": "registered", "O": "registered", "S": "partial",
                 "A": "partial", "Y": "final", "Z": "final"}  # fmt: skip
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
FLAGS = {"L", "H", "LL", "HH", "N", "A", "AA", "<", ">", "U", "D", "B", "W", "S", "R", "I",
         "MS", "VS", "NEG", "POS", "IND", "DET", "ND", "HU", "LU", "EX", "RR", "NR"}  # fmt: skip
_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:-|_|–|to)\s*([+-]?\d+(?:\.\d+)?)\s*$")
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*([+-]?\d+(?:\.\d+)?)\s*$")


def unit(rep: Rep) -> dict[str, Any]:
    """OBX-6 → the unit part of a Quantity (UCUM code where known)."""
    code, text, system = rep.c(1), rep.c(2), rep.c(3).upper()
    if not code and not text:
        return {}
    if system == "UCUM" and code:
        return {"unit": text or code, "system": UCUM_SYSTEM, "code": code}
    known = UCUM.get((code or text).lower())
    if known:
        return {"unit": code or text, "system": UCUM_SYSTEM, "code": known}
    return {"unit": code or text}


def _quantity(value: float | int, units: dict[str, Any]) -> dict[str, Any]:
    return {"value": value, **units}


def _sn(rep: Rep, units: dict[str, Any], where: Location) -> dict[str, Any] | None:
    """SN: comparator^num1^separator^num2 (2A.3.73)."""
    comparator, first, separator, second = rep.c(1), rep.c(2), rep.c(3), rep.c(4)
    if not first:
        return None
    if separator in (":", "/") and second:
        return {
            "valueRatio": {
                "numerator": {"value": decimal(first, where)},
                "denominator": {"value": decimal(second, where)},
            }
        }
    if separator in ("-",) and second:
        return {
            "valueRange": {
                "low": _quantity(decimal(first, where), units),
                "high": _quantity(decimal(second, where), units),
            }
        }
    quantity = _quantity(decimal(first, where), units)
    if comparator in ("<", ">", "<=", ">="):
        quantity["comparator"] = comparator
    return {"valueQuantity": quantity}


def value_of(ctx: Context, obx: Segment) -> dict[str, Any]:
    kind = obx.get(2).upper()
    reps = obx.reps(5)
    if not reps:
        return {}
    where = obx.location(5)
    units = unit(obx.rep(6))
    if kind == "NM":
        return {"valueQuantity": _quantity(decimal(reps[0].c(1), where), units)}
    if kind == "SN":
        return _sn(reps[0], units, where) or {}
    if kind in ("CE", "CWE", "CNE", "CF"):
        concept = codeable(reps[0])
        return {"valueCodeableConcept": concept} if concept else {}
    if kind in ("DT", "TS", "DTM"):
        return {"valueDateTime": dtm(reps[0].c(1), ctx.profile.zone(), where)}
    if kind in ("ST", "TX", "FT", "ID", "IS", "TN"):
        return {"valueString": "\n".join(r.c(1) for r in reps)}
    text = "\n".join(" ".join(p for p in (r.c(i) for i in range(1, 10)) if p) for r in reps)
    return {"valueString": text} if text.strip() else {}


def reference_range(obx: Segment) -> list[dict[str, Any]]:
    text = obx.get(7)
    if not text:
        return []
    units = unit(obx.rep(6))
    found = _RANGE.match(text)
    if found:
        low, high = found.groups()
        return [
            {
                "low": _quantity(decimal(low, obx.location(7)), units),
                "high": _quantity(decimal(high, obx.location(7)), units),
                "text": text,
            }
        ]
    bound = _BOUND.match(text)
    if bound:
        side = "high" if bound.group(1).startswith("<") else "low"
        return [{side: _quantity(decimal(bound.group(2), obx.location(7)), units), "text": text}]
    return [{"text": text}]


def interpretation(obx: Segment) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rep in obx.reps(8):
        code = rep.c(1).upper()
        if code in FLAGS:
            out.append({"coding": [{"system": V3_INTERPRETATION, "code": code}]})
        elif code:
            out.append({"text": code})
    return out


def observation(
    ctx: Context, obx: Segment, *, order_key: str, effective: str | None, extra: Resource
) -> Resource:
    tz = ctx.profile.zone()
    code = codeable(obx.rep(3)) or {"text": f"OBX {obx.get(1) or obx.sequence}"}
    resource: Resource = {
        "resourceType": "Observation",
        "identifier": [
            {
                "system": ctx.profile.system("observation"),
                "value": f"{order_key}-{obx.get(1) or obx.sequence}-{obx.get(3)}-{obx.get(4)}",
            }
        ],
        "status": STATUS.get(obx.get(11).upper(), "final"),
        "code": code,
        "subject": local("patient"),
        "effectiveDateTime": dtm(obx.get(14), tz, obx.location(14)) or effective,
        **value_of(ctx, obx),
        "interpretation": interpretation(obx),
        "referenceRange": reference_range(obx),
        **extra,
    }
    return prune(resource)


def _notes_after(ctx: Context, seg: Segment) -> list[dict[str, str]]:
    notes = []
    for nxt in ctx.message.segments[seg.index + 1 :]:
        if nxt.name != "NTE":
            break
        text = "\n".join(r.c(1) for r in nxt.reps(3))
        if text.strip():
            notes.append({"text": text})
    return notes


#: HL7 table 0074 (diagnostic service sections): imaging sections; the
#: laboratory's are in :data:`_LAB_SECTIONS`. Results of other sections
#: (cardiology, nursing...) get no category.
_IMAGING_SECTIONS = frozenset({"RAD", "RX", "CT", "NMR", "NMS", "RC", "US", "VUS", "XRC", "CUS"})
_LAB_SECTIONS = frozenset(
    {"LAB", "AU", "BG", "BLB", "CG", "CH", "CP", "HLA", "HM", "ICU", "IMM", "MB", "MCB",
     "MYC", "OSL", "PAT", "SP", "SR", "TX", "URN", "VR"}
)  # fmt: skip
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _category(obr: Segment) -> list[Resource] | None:
    """Observation.category from OBR-24: laboratory or imaging. An ORU^R01
    without a section is a laboratory result (the usual case of the message)."""
    section = obr.get(24).upper()
    if section in _IMAGING_SECTIONS:
        code, display = "imaging", "Imaging"
    elif not section or section in _LAB_SECTIONS:
        code, display = "laboratory", "Laboratory"
    else:
        return None
    return [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": code, "display": display}]}]


def map_oru(ctx: Context) -> Plan:
    plan = Plan()
    patient_step(ctx, plan, update=False)
    encounter_step(ctx, plan, None)
    tz = ctx.profile.zone()
    for index, group in enumerate(ctx.message.groups("OBR")):
        obr = group[0]
        order_key = obr.get(3) or obr.get(2) or f"{ctx.message.header.control_id}-{index + 1}"
        effective = dtm(obr.get(7), tz, obr.location(7))
        obs_keys = []
        for obx in (seg for seg in group if seg.name == "OBX"):
            key = f"obs-{index}-{obx.sequence}"
            extra: Resource = {
                "category": _category(obr),
                "encounter": encounter_ref(plan),
                "note": _notes_after(ctx, obx),
            }
            fresh = observation(ctx, obx, order_key=order_key, effective=effective, extra=extra)
            ident = fresh["identifier"][0]
            plan.add(
                Step(
                    key,
                    "Observation",
                    [("identifier", f"{ident['system']}|{ident['value']}")],
                    _merger(fresh),
                )
            )
            obs_keys.append(key)
        identifiers = [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": code}]},
             "system": ctx.profile.system(kind), "value": value}
            for code, kind, value in (("FILL", "filler-order", obr.get(3)),
                                      ("PLAC", "placer-order", obr.get(2)))
            if value
        ]  # fmt: skip
        report = prune(
            {
                "resourceType": "DiagnosticReport",
                "identifier": identifiers
                or [{"system": ctx.profile.system("report"), "value": order_key}],
                "status": REPORT_STATUS.get(obr.get(25).upper(), "final"),
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                "code": obr.get(24).upper(),
                            }
                        ]
                    }
                ]
                if obr.get(24)
                else None,
                "code": codeable(obr.rep(4)) or {"text": "Report"},
                "subject": local("patient"),
                "encounter": encounter_ref(plan),
                "effectiveDateTime": effective,
                "issued": dtm(obr.get(22), tz, obr.location(22)) if len(obr.get(22)) > 8 else None,
                "result": [local(k) for k in obs_keys],
                "conclusion": "\n".join(n["text"] for n in _notes_after(ctx, obr)) or None,
                "extension": ctx.z_extensions(),
            }
        )
        if report.get("issued") and "T" not in report["issued"]:
            report.pop("issued")
        first = report["identifier"][0]
        plan.add(
            Step(
                f"report-{index}",
                "DiagnosticReport",
                [("identifier", f"{first['system']}|{first['value']}")],
                _merger(report),
            )
        )
    return plan
