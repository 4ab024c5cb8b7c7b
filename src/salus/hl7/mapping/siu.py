"""SIU^S12-S15 → Appointment (HL7 v2.8 chapter 10, 10.3.1-10.3.4; v2-to-FHIR
IG map SCH[Appointment]).

S12 new booking → booked; S13 rescheduled → booked with new times; S14
modified → booked; S15 cancelled → cancelled. Found again by the filler
appointment id (SCH-2, else SCH-1). Times from SCH-11 (TQ start/end, up to
v2.6), else TQ1-7/TQ1-8, else AIS-4 with AIS-7 minutes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from salus.errors import InvalidInput
from salus.hl7.datatypes import codeable, dtm, prune, xcn_display
from salus.hl7.errors import REQUIRED_FIELD_MISSING, hl7_error
from salus.hl7.mapping.base import Context, Plan, Step, local
from salus.hl7.mapping.common import merge, patient_step

__all__ = ["map_siu"]

EVENT_STATUS = {"S12": "booked", "S13": "booked", "S14": "booked", "S15": "cancelled"}


def _plus_minutes(moment: str | None, minutes: str) -> str | None:
    if not moment or "T" not in moment or not minutes.strip().isdigit():
        return None
    start = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return (start + timedelta(minutes=int(minutes))).isoformat()


def map_siu(ctx: Context) -> Plan:
    event = ctx.message.header.trigger_event.upper()
    sch = ctx.seg("SCH")
    tz = ctx.profile.zone()
    appointment_id = sch.get(2) or sch.get(1)
    if not appointment_id:
        raise hl7_error(
            InvalidInput("SCH-1 or SCH-2 (appointment id) is required."),
            REQUIRED_FIELD_MISSING,
            sch.location(2),
        )
    plan = Plan()
    patient_step(ctx, plan, update=False)
    start = dtm(sch.rep(11).c(4), tz, sch.location(11, 4))
    end = dtm(sch.rep(11).c(5), tz, sch.location(11, 5))
    tq1 = ctx.message.first("TQ1")
    if start is None and tq1 is not None:
        start = dtm(tq1.get(7), tz, tq1.location(7))
        end = dtm(tq1.get(8), tz, tq1.location(8))
    ais = ctx.message.first("AIS")
    if start is None and ais is not None:
        start = dtm(ais.get(4), tz, ais.location(4))
        end = _plus_minutes(start, ais.get(7))
    if start and end is None and ais is not None:
        end = _plus_minutes(start, ais.get(7))
    participants: list[dict[str, Any]] = [{"actor": local("patient"), "status": "accepted"}]
    for seg in ctx.message.all("AIP"):
        name = xcn_display(seg.rep(3))
        if name:
            participants.append({"actor": {"display": name}, "status": "accepted"})
    for seg in ctx.message.all("AIL"):
        where = " ".join(p for p in (seg.rep(3).c(1), seg.rep(3).c(2), seg.rep(3).c(4)) if p)
        if where:
            participants.append({"actor": {"display": where}, "status": "accepted"})
    service = codeable(ais.rep(3)) if ais is not None else None
    fresh = prune(
        {
            "resourceType": "Appointment",
            "identifier": [{"system": ctx.profile.system("appointment"), "value": appointment_id}],
            "status": EVENT_STATUS.get(event, "booked"),
            "cancelationReason": codeable(sch.rep(6)) if event == "S15" else None,
            "serviceType": [service] if service else [],
            "appointmentType": codeable(sch.rep(8)),
            "reasonCode": [c for c in (codeable(sch.rep(7)),) if c],
            "start": start if start and "T" in start else None,
            "end": end if end and "T" in end and start and "T" in start else None,
            "minutesDuration": int(sch.get(9)) if sch.get(9).isdigit() else None,
            "participant": participants,
            "extension": ctx.z_extensions(),
        }
    )
    plan.add(
        Step(
            "appointment",
            "Appointment",
            [("identifier", f"{ctx.profile.system('appointment')}|{appointment_id}")],
            lambda existing: merge(existing, fresh),
        )
    )
    return plan
