"""PID → Patient and PV1 → Encounter, shared by every message family (HL7 v2-to-FHIR
IG: segment maps PID[Patient], PV1[Encounter]; per-hospital identifier rules
from :class:`~salus.hl7.profiles.Profile`)."""

from __future__ import annotations

import re
from typing import Any

from salus.errors import InvalidInput
from salus.hl7.datatypes import (
    address,
    codeable,
    dtm,
    dtm_date,
    human_name,
    prune,
    telecom,
    xcn_display,
)
from salus.hl7.errors import REQUIRED_FIELD_MISSING, Location, hl7_error
from salus.hl7.mapping.base import Context, Plan, Resource, Step, local
from salus.hl7.parse import Rep, Segment

__all__ = ["encounter_step", "identifier", "merge", "patient_identifiers", "patient_step"]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
MARITAL = {"A": "A", "D": "D", "M": "M", "S": "S", "W": "W", "I": "I", "L": "L", "P": "P",
           "T": "T", "U": "UNK", "C": "M", "B": "U", "G": "T", "E": "L", "N": "A", "R": "T",
           "O": "UNK"}  # fmt: skip
ENCOUNTER_CLASS = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
    "B": ("AMB", "ambulatory"),
    "C": ("AMB", "ambulatory"),
    "N": ("AMB", "ambulatory"),
    "U": ("AMB", "ambulatory"),
}
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def identifier(ctx: Context, rep: Rep) -> dict[str, Any] | None:
    """CX → Identifier, its system chosen by the hospital's profile."""
    value = rep.c(1)
    if not value:
        return None
    authority = rep.c(4) or rep.c(4, 2)
    id_type = rep.c(5).upper()
    profile = ctx.profile
    if authority and authority in profile.mrn_authorities:
        kind, code = "mrn", "MR"
    elif authority and authority in profile.national_id_authorities:
        kind, code = "national", "NI"
    elif authority and authority in profile.insurance_authorities:
        kind, code = "insurance", "SN"
    elif not profile.mrn_authorities and id_type == "MR":
        kind, code = "mrn", "MR"
    else:
        kind = "id-" + (authority or id_type or "unknown")
        code = id_type
    if kind == "national":
        system = profile.national_id_system
    else:
        system = profile.system(kind)
    return prune(
        {
            "use": "official" if kind == "mrn" else None,
            "type": {"coding": [{"system": V2_0203, "code": code}]} if code else None,
            "system": system,
            "value": value,
        }
    )


def patient_identifiers(ctx: Context, pid: Segment) -> list[dict[str, Any]]:
    ids = [identifier(ctx, rep) for rep in pid.reps(3)]
    ids += [identifier(ctx, rep) for rep in pid.reps(2)]  # PID-2, v2.3 external id
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for ident in ids:
        if ident:
            unique.setdefault((ident["system"], ident["value"]), ident)
    return list(unique.values())


def patient_key(ctx: Context, pid: Segment) -> dict[str, Any]:
    """The identifier that finds this hospital's patient: the MRN, else the first PID-3."""
    ids = patient_identifiers(ctx, pid)
    if not ids:
        raise hl7_error(
            InvalidInput("PID-3 (patient identifier list) is required."),
            REQUIRED_FIELD_MISSING,
            pid.location(3),
        )
    for ident in ids:
        if ident["system"] == ctx.profile.system("mrn"):
            return ident
    return ids[0]


_CHOICE = re.compile(
    r"^(value|effective|deceased|multipleBirth|occurrence|onset|abatement|performed)[A-Z]"
)


def _choice_base(name: str) -> str | None:
    """``valueQuantity`` → ``value``: one variant of a choice element replaces another."""
    found = _CHOICE.match(name)
    return found.group(1) if found else None


def merge(existing: Resource | None, new: Resource, keep: tuple[str, ...] = ()) -> Resource:
    """An update from a snapshot message: new values win, identifiers accumulate,
    and ``keep`` elements (links set by merges…) survive."""
    if existing is None:
        return new
    replaced = {_choice_base(k) for k in new} - {None}
    merged = {
        k: v
        for k, v in existing.items()
        if k not in ("meta", "text") and _choice_base(k) not in replaced
    }
    merged.update(new)
    merged["id"] = existing["id"]
    if "identifier" in existing or "identifier" in new:
        seen = {(i.get("system"), i.get("value")) for i in new.get("identifier", [])}
        extra = [
            i
            for i in existing.get("identifier", [])
            if (i.get("system"), i.get("value")) not in seen
        ]
        merged["identifier"] = new.get("identifier", []) + extra
    for name in keep:
        if name in existing and name not in new:
            merged[name] = existing[name]
    return merged


def patient_resource(ctx: Context, pid: Segment) -> Resource:
    tz = ctx.profile.zone()
    deceased_time = dtm(pid.get(29), tz, pid.location(29))
    marital = pid.get(16).upper()
    resource: Resource = {
        "resourceType": "Patient",
        "identifier": patient_identifiers(ctx, pid),
        "active": True,
        "name": [n for n in (human_name(r) for r in pid.reps(5)) if n],
        "telecom": [t for t in (telecom(r, "home") for r in pid.reps(13)) if t]
        + [t for t in (telecom(r, "work") for r in pid.reps(14)) if t],
        "gender": GENDER.get(pid.get(8).upper()),
        "birthDate": dtm_date(pid.get(7), pid.location(7)),
        "address": [a for a in (address(r) for r in pid.reps(11)) if a],
        "maritalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                    "code": MARITAL[marital],
                }
            ]
        }
        if marital in MARITAL
        else None,
        "communication": [{"language": codeable(pid.rep(15))}] if pid.get(15) else [],
        "extension": ctx.z_extensions(),
    }
    if deceased_time:
        resource["deceasedDateTime"] = deceased_time
    elif pid.get(30).upper() in ("Y", "N"):
        resource["deceasedBoolean"] = pid.get(30).upper() == "Y"
    if pid.get(24).upper() in ("Y", "N"):
        order = pid.get(25)
        if order.isdigit() and pid.get(24).upper() == "Y":
            resource["multipleBirthInteger"] = int(order)
        else:
            resource["multipleBirthBoolean"] = pid.get(24).upper() == "Y"
    return prune(resource)


def patient_step(ctx: Context, plan: Plan, *, update: bool = True) -> None:
    """Find the patient by its key identifier; create it, or update it from PID."""
    pid = ctx.seg("PID")
    key = patient_key(ctx, pid)
    fresh = patient_resource(ctx, pid)

    def build(existing: Resource | None) -> Resource | None:
        if existing is not None and not update:
            return None
        return merge(existing, fresh, keep=("link", "extension"))

    plan.add(Step("patient", "Patient", [("identifier", f"{key['system']}|{key['value']}")], build))


def visit_identifier(ctx: Context, pv1: Segment) -> dict[str, Any] | None:
    """PV1-19 visit number (else PV1-50 alternate visit id) as the Encounter's identifier."""
    rep = pv1.rep(19) if pv1.get(19) else pv1.rep(50)
    value = rep.c(1)
    if not value:
        return None
    return {"use": "official", "system": ctx.profile.system("visit"), "value": value}


def encounter_resource(ctx: Context, pv1: Segment, status: str, *, end: bool = False) -> Resource:
    tz = ctx.profile.zone()
    code, display = ENCOUNTER_CLASS.get(pv1.get(2).upper(), ("AMB", "ambulatory"))
    evn = ctx.message.first("EVN")
    start = dtm(pv1.get(44), tz, pv1.location(44))
    if start is None and evn is not None and status in ("in-progress", "arrived"):
        start = dtm(evn.get(2), tz, evn.location(2)) or dtm(evn.get(6), tz, evn.location(6))
    finish = dtm(pv1.get(45), tz, pv1.location(45)) if end else None
    if end and finish is None and evn is not None:
        finish = dtm(evn.get(6), tz, evn.location(6)) or dtm(evn.get(2), tz, evn.location(2))
    location = _location(pv1.rep(3))
    participants = []
    for number, role in ((7, "ATND"), (8, "REF"), (9, "CON"), (17, "ADM")):
        for rep in pv1.reps(number):
            display_name = xcn_display(rep)
            if display_name:
                participants.append(
                    {
                        "type": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/"
                                        "v3-ParticipationType",
                                        "code": role,
                                    }
                                ]
                            }
                        ],
                        "individual": {"display": display_name},
                    }
                )
    period = {"start": start, "end": finish}
    if start and finish and finish < start:
        period["end"] = None
    encounter: Resource = prune(
        {
            "resourceType": "Encounter",
            "identifier": [visit_identifier(ctx, pv1)],
            "status": status,
            "class": {"system": V3_ACT, "code": code, "display": display},
            "subject": local("patient"),
            "period": period,
            "participant": participants,
            # The sending hospital provides the care: the indicators count
            # encounters per hospital by this reference (docs/warehouse.md).
            "serviceProvider": {
                "reference": f"Organization/{ctx.profile.org_id}",
                "identifier": {"system": "urn:salus:org", "value": ctx.profile.org_id},
            },
            "location": [{"location": {"display": location}, "status": "active"}]
            if location
            else [],
            "hospitalization": {"admitSource": codeable(pv1.rep(14))} if pv1.get(14) else None,
        }
    )
    return encounter


def _location(rep: Rep) -> str | None:
    """PL → a display text: point of care, room, bed, facility."""
    parts = [rep.c(1), rep.c(2), rep.c(3), rep.c(4)]
    text = " ".join(p for p in parts if p)
    return text or None


def encounter_step(
    ctx: Context,
    plan: Plan,
    status: str | None,
    *,
    end: bool = False,
    existing_only: bool = False,
    change: Any = None,
) -> None:
    """Find the visit's Encounter by PV1-19 and create or update it.

    ``status`` None keeps the existing status; ``change(existing, new)`` may
    adjust the result (transfers keep the location history, cancellations
    undo). Without a visit number there is no Encounter life cycle to follow,
    and no Encounter is written.
    """
    pv1 = ctx.message.first("PV1")
    if pv1 is None:
        return
    ident = visit_identifier(ctx, pv1)
    if ident is None:
        return

    def build(existing: Resource | None) -> Resource | None:
        current = status or (existing or {}).get("status") or "in-progress"
        fresh = encounter_resource(ctx, pv1, current, end=end)
        if existing is not None:
            period = dict(existing.get("period") or {})
            period.update(fresh.get("period") or {})
            fresh["period"] = period
        result = merge(existing, fresh)
        if change is not None:
            result = change(existing, result)
        return prune(result)

    plan.add(
        Step(
            "encounter",
            "Encounter",
            [("identifier", f"{ident['system']}|{ident['value']}")],
            build,
            existing_only=existing_only,
        )
    )


def encounter_ref(plan: Plan) -> dict[str, str] | None:
    return local("encounter") if plan.has("encounter") else None


def require_value(seg: Segment, number: int, what: str) -> str:
    value = seg.get(number)
    if not value:
        raise hl7_error(
            InvalidInput(f"{seg.name}-{number} ({what}) is required."),
            REQUIRED_FIELD_MISSING,
            Location(seg.name, seg.sequence, number),
        )
    return value
