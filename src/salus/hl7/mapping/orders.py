"""ORM^O01, OMG^O19 and OML^O21 → ServiceRequest (HL7 v2.8 chapter 4, 4.4.1
and 4.4.6; v2-to-FHIR IG maps ORC[ServiceRequest], OBR[ServiceRequest]).

One ServiceRequest per ORC (with its OBR), found again by placer order number
(ORC-2, else OBR-2) so that status changes and cancellations update it.
ORC-1 order control and ORC-5 order status set the status: NW/new →
active, CA/DC/OC/OD → revoked, HD → on-hold, CM/ORC-5 CM → completed.
"""

from __future__ import annotations

from typing import Any

from salus.errors import InvalidInput
from salus.hl7.datatypes import codeable, dtm, prune, xcn_display
from salus.hl7.errors import REQUIRED_FIELD_MISSING, hl7_error
from salus.hl7.mapping.base import Context, Plan, Step, local
from salus.hl7.mapping.common import encounter_ref, encounter_step, merge, patient_step
from salus.hl7.parse import Segment

__all__ = ["map_order"]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONTROL = {"NW": "active", "OK": "active", "SC": None, "XO": "active", "XX": "active",
           "CA": "revoked", "CR": "revoked", "DC": "revoked", "DR": "revoked", "OC": "revoked",
           "OD": "revoked", "OR": "revoked", "HD": "on-hold", "OH": "on-hold", "RL": "active",
           "RP": "active", "RO": "active", "SN": "active", "NA": "active",
           "PA": "active"}  # fmt: skip
ORDER_STATUS = {"A": "active", "IP": "active", "SC": "active", "CM": "completed",
                "CA": "revoked", "DC": "revoked", "HD": "on-hold", "ER": "entered-in-error",
                "RP": "active"}  # fmt: skip
PRIORITY = {"S": "stat", "A": "asap", "R": "routine", "P": "urgent", "T": "urgent"}


def _groups(ctx: Context) -> list[tuple[Segment, Segment | None]]:
    """(ORC, its OBR or None) pairs; an OBR without ORC stands alone."""
    pairs: list[tuple[Segment, Segment | None]] = []
    current: Segment | None = None
    for seg in ctx.message.segments:
        if seg.name == "ORC":
            if current is not None:
                pairs.append((current, None))
            current = seg
        elif seg.name in ("OBR", "RXO") and current is not None:
            pairs.append((current, seg))
            current = None
        elif seg.name == "OBR":
            pairs.append((seg, seg))
    if current is not None:
        pairs.append((current, None))
    return pairs


def map_order(ctx: Context) -> Plan:
    plan = Plan()
    patient_step(ctx, plan, update=False)
    encounter_step(ctx, plan, None)
    tz = ctx.profile.zone()
    pairs = _groups(ctx)
    if not pairs:
        raise hl7_error(
            InvalidInput("An order message needs an ORC or OBR segment."),
            REQUIRED_FIELD_MISSING,
            ctx.seg("PID").location(),
        )
    for index, (orc, obr) in enumerate(pairs):
        is_orc = orc.name == "ORC"
        placer = (orc.get(2) if is_orc else "") or (obr.get(2) if obr else "")
        filler = (orc.get(3) if is_orc else "") or (obr.get(3) if obr else "")
        group = orc.get(4) if is_orc else ""
        if not placer and not filler and group:
            placer = f"{group}-{index + 1}"  # ORC-4 placer group number
        if not placer and not filler:
            raise hl7_error(
                InvalidInput("ORC-2 or OBR-2 (placer order number) is required."),
                REQUIRED_FIELD_MISSING,
                orc.location(2),
            )
        status = ORDER_STATUS.get(orc.get(5).upper()) if is_orc else None
        status = status or (CONTROL.get(orc.get(1).upper()) if is_orc else None)
        identifiers = [
            {"type": {"coding": [{"system": V2_0203, "code": code}]},
             "system": ctx.profile.system(kind), "value": value}
            for code, kind, value in (("PLAC", "placer-order", placer),
                                      ("FILL", "filler-order", filler))
            if value
        ]  # fmt: skip
        code = (codeable(obr.rep(4)) if obr is not None and obr.name == "OBR" else None) or (
            codeable(obr.rep(1)) if obr is not None and obr.name == "RXO" else None
        )
        requester = xcn_display(orc.rep(12)) if is_orc and orc.get(12) else None
        if requester is None and obr is not None and obr.name == "OBR":
            requester = xcn_display(obr.rep(16)) if obr.get(16) else None
        authored = dtm(orc.get(9), tz, orc.location(9)) if is_orc else None
        fresh: dict[str, Any] = prune(
            {
                "resourceType": "ServiceRequest",
                "identifier": identifiers,
                "status": status or "active",
                "intent": "order",
                "code": code or {"text": "Order"},
                "subject": local("patient"),
                "encounter": encounter_ref(plan),
                "authoredOn": authored,
                "requester": {"display": requester} if requester else None,
                "priority": PRIORITY.get(obr.get(5).upper()) if obr and obr.name == "OBR" else None,
                "extension": ctx.z_extensions() if index == 0 else [],
            }
        )
        first = identifiers[0]

        def build(existing: Any, fresh: dict[str, Any] = fresh) -> Any:
            result = merge(existing, fresh)
            if existing is not None and fresh.get("code") == {"text": "Order"}:
                result["code"] = existing.get("code", fresh["code"])
            return result

        plan.add(
            Step(
                f"order-{index}",
                "ServiceRequest",
                [("identifier", f"{first['system']}|{first['value']}")],
                build,
            )
        )
    return plan
