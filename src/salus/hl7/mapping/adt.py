"""ADT → Patient and Encounter (HL7 v2.8 chapter 3; v2-to-FHIR IG message maps
ADT_A01, ADT_A02, ADT_A03, ADT_A05, ADT_A09, ADT_A39).

=========  =========================================================
A01        admit: Encounter in-progress (class from PV1-2), start PV1-44
A04        register an outpatient: Encounter in-progress
A05        pre-admit: Encounter planned
A02        transfer: the location changes, the old one is kept as completed
A03        discharge: Encounter finished, end PV1-45 (else EVN-6/EVN-2)
A06/A07    outpatient→inpatient / inpatient→outpatient: class changes
A08        update patient information (Patient and visit)
A11        cancel admit / visit: Encounter cancelled
A12        cancel transfer: the location returns to PV1-6 (prior location)
A13        cancel discharge: Encounter in-progress again, no end
A28/A31    add / update person: Patient only
A40        merge patient (MRG-1 into PID-3): Patient.link both ways, the
           merged record made inactive
=========  =========================================================
"""

from __future__ import annotations

from typing import Any

from salus.errors import InvalidInput
from salus.hl7.errors import REQUIRED_FIELD_MISSING, hl7_error
from salus.hl7.mapping.base import Context, Plan, Resource, Step
from salus.hl7.mapping.common import (
    ENCOUNTER_CLASS,
    V3_ACT,
    _location,
    encounter_step,
    identifier,
    merge,
    patient_step,
)

__all__ = ["EVENTS", "map_adt"]

EVENTS = ("A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13",
          "A28", "A31", "A40")  # fmt: skip


def _class_of(ctx: Context, code: str) -> Any:
    cls, display = ENCOUNTER_CLASS.get(code, ("AMB", "ambulatory"))
    return {"system": V3_ACT, "code": cls, "display": display}


def _transfer(ctx: Context) -> Any:
    def change(existing: Resource | None, result: Resource) -> Resource:
        if existing is None:
            return result
        old = [
            {**loc, "status": "completed"}
            for loc in existing.get("location", [])
            if loc.get("status") == "active"
        ]
        kept = [loc for loc in existing.get("location", []) if loc.get("status") != "active"]
        result["location"] = kept + old + list(result.get("location", []))
        return result

    return change


def _cancel_transfer(ctx: Context) -> Any:
    pv1 = ctx.seg("PV1")
    prior = _location(pv1.rep(6))

    def change(existing: Resource | None, result: Resource) -> Resource:
        locations = [loc for loc in (existing or {}).get("location", [])]
        locations = [loc for loc in locations if loc.get("status") != "active"]
        target = prior or (locations[-1]["location"].get("display") if locations else None)
        if target:
            locations = [loc for loc in locations if loc["location"].get("display") != target] + [
                {"location": {"display": target}, "status": "active"}
            ]
        result["location"] = locations
        return result

    return change


def _cancel_discharge(existing: Resource | None, result: Resource) -> Resource:
    period = dict(result.get("period") or {})
    period.pop("end", None)
    result["period"] = period
    return result


def _class_change(code: str) -> Any:
    def change(existing: Resource | None, result: Resource) -> Resource:
        cls, display = ENCOUNTER_CLASS[code]
        result["class"] = {"system": V3_ACT, "code": cls, "display": display}
        return result

    return change


def _merge(ctx: Context, plan: Plan) -> None:
    """A40 (3.3.40): MRG-1 (prior patient identifier) is merged into PID-3."""
    mrg = ctx.seg("MRG")
    prior_ids = [i for i in (identifier(ctx, rep) for rep in mrg.reps(1)) if i]
    if not prior_ids:
        raise hl7_error(
            InvalidInput("MRG-1 (prior patient identifier list) is required."),
            REQUIRED_FIELD_MISSING,
            mrg.location(1),
        )
    patient_step(ctx, plan)
    prior = prior_ids[0]

    def retire(existing: Resource | None) -> Resource | None:
        if existing is None:
            return None
        result = merge(existing, {"active": False})
        links = [link for link in existing.get("link", []) if link.get("type") != "replaced-by"]
        result["link"] = links + [{"other": {"reference": "local:patient"}, "type": "replaced-by"}]
        return result

    plan.add(
        Step(
            "prior",
            "Patient",
            [("identifier", f"{prior['system']}|{prior['value']}")],
            retire,
            existing_only=True,
        )
    )

    def link(existing: Resource | None) -> Resource | None:
        if existing is None:
            return None
        links = [
            link
            for link in existing.get("link", [])
            if link.get("other", {}).get("reference") != "local:prior"
        ]
        return {**existing, "link": links + [{"other": {"reference": "local:prior"},
                                              "type": "replaces"}]}  # fmt: skip

    plan.add(Step("patient-link", "Patient", None, link, target="patient", requires=("prior",)))


def map_adt(ctx: Context) -> Plan:
    event = ctx.message.header.trigger_event.upper()
    plan = Plan()
    if event == "A40":
        _merge(ctx, plan)
        return plan
    patient_step(ctx, plan)
    if event in ("A28", "A31"):
        return plan
    if event == "A01":
        encounter_step(ctx, plan, "in-progress")
    elif event == "A04":
        encounter_step(ctx, plan, "in-progress")
    elif event == "A05":
        encounter_step(ctx, plan, "planned")
    elif event == "A02":
        encounter_step(ctx, plan, "in-progress", change=_transfer(ctx))
    elif event == "A03":
        encounter_step(ctx, plan, "finished", end=True)
    elif event == "A06":
        encounter_step(ctx, plan, None, change=_class_change("I"))
    elif event == "A07":
        encounter_step(ctx, plan, None, change=_class_change("O"))
    elif event == "A08":
        encounter_step(ctx, plan, None)
    elif event == "A11":
        encounter_step(ctx, plan, "cancelled", existing_only=True)
    elif event == "A12":
        encounter_step(ctx, plan, None, existing_only=True, change=_cancel_transfer(ctx))
    elif event == "A13":
        encounter_step(ctx, plan, "in-progress", existing_only=True, change=_cancel_discharge)
    return plan
