"""VXU^V04 → Immunization (HL7 v2.8 chapter 4, 4A.3.7; v2-to-FHIR IG map
RXA[Immunization]; CDC IIS implementation guide 2.5.1 for the codes).

One Immunization per RXA: vaccine RXA-5 (CVX), date RXA-3, dose RXA-6/RXA-7
(999 means unknown and is left out), lot RXA-15, expiry RXA-16, route RXR-1
(table 0162) and site RXR-2 (table 0163); RXA-20 completion status RE/NA →
not-done, RXA-21 action D → entered-in-error; RXA-9 ``00`` (new record) →
primarySource. Found again by ORC-3 filler order number (else patient +
vaccine + date), so updates replace rather than duplicate.
"""

from __future__ import annotations

from typing import Any

from salus.errors import InvalidInput
from salus.hl7.datatypes import codeable, decimal, dtm, prune
from salus.hl7.errors import REQUIRED_FIELD_MISSING, hl7_error
from salus.hl7.mapping.base import Context, Plan, Step, local
from salus.hl7.mapping.base import merger as _merger
from salus.hl7.mapping.common import patient_step
from salus.hl7.mapping.oru import unit

__all__ = ["map_vxu"]


def map_vxu(ctx: Context) -> Plan:
    tz = ctx.profile.zone()
    plan = Plan()
    patient_step(ctx, plan)
    segments = ctx.message.segments
    rxas = ctx.message.all("RXA")
    if not rxas:
        raise hl7_error(
            InvalidInput("A VXU message needs an RXA segment."),
            REQUIRED_FIELD_MISSING,
            ctx.seg("PID").location(),
        )
    for index, rxa in enumerate(rxas):
        orc = next((s for s in reversed(segments[: rxa.index]) if s.name == "ORC"), None)
        rxr = next((s for s in segments[rxa.index + 1 :] if s.name in ("RXR", "RXA")), None)
        rxr = rxr if rxr is not None and rxr.name == "RXR" else None
        when = dtm(rxa.get(3), tz, rxa.location(3))
        vaccine = codeable(rxa.rep(5))
        if when is None or vaccine is None:
            raise hl7_error(
                InvalidInput("RXA-3 and RXA-5 (date and vaccine) are required."),
                REQUIRED_FIELD_MISSING,
                rxa.location(3 if when is None else 5),
            )
        status = "completed"
        if rxa.get(20).upper() in ("RE", "NA"):
            status = "not-done"
        if rxa.get(21).upper() == "D":
            status = "entered-in-error"
        dose: dict[str, Any] | None = None
        amount = rxa.get(6)
        if amount and amount != "999":
            dose = {"value": decimal(amount, rxa.location(6)), **unit(rxa.rep(7))}
        key = (orc.get(3) if orc is not None else "") or (f"{rxa.get(5)}-{rxa.get(3)}-{index + 1}")
        system = ctx.profile.system("immunization")
        fresh = prune(
            {
                "resourceType": "Immunization",
                "identifier": [{"system": system, "value": key}],
                "status": status,
                "vaccineCode": vaccine,
                "patient": local("patient"),
                "occurrenceDateTime": when,
                "primarySource": rxa.get(9) == "00" if rxa.get(9) else None,
                "lotNumber": rxa.get(15) or None,
                "expirationDate": dtm(rxa.get(16)[:8], tz, rxa.location(16)),
                "route": codeable(rxr.rep(1)) if rxr is not None else None,
                "site": codeable(rxr.rep(2)) if rxr is not None else None,
                "doseQuantity": dose,
                "statusReason": codeable(rxa.rep(18)) if status == "not-done" else None,
            }
        )
        if fresh.get("vaccineCode", {}).get("coding"):
            for coding in fresh["vaccineCode"]["coding"]:
                if coding.get("system") == "urn:salus:hl7:cs:CVX":
                    coding["system"] = "http://hl7.org/fhir/sid/cvx"
        plan.add(
            Step(
                f"immunization-{index}",
                "Immunization",
                [("identifier", f"{system}|{key}")],
                _merger(fresh),
            )
        )
    return plan
