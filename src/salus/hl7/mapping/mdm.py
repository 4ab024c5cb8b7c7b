"""MDM^T02 → DocumentReference (HL7 v2.8 chapter 9, 9.6.2; v2-to-FHIR IG map
TXA[DocumentReference]).

The document is TXA's unique document number (TXA-12), its type TXA-2, its
date TXA-4 (else TXA-6), its status TXA-17 (DO/AU/LA → final, IP/IN/PA →
preliminary, else final). The content is OBX-5: text types (TX, FT, ST) are
joined into one ``text/plain; charset=utf-8`` attachment; ED (2A.3.22:
source^type^subtype^encoding^data) becomes an attachment with its own media
type, Base64 data kept as is.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from salus.errors import InvalidInput
from salus.hl7.datatypes import codeable, dtm, prune, xcn_display
from salus.hl7.errors import DATA_TYPE_ERROR, hl7_error
from salus.hl7.mapping.base import Context, Plan, Step, local
from salus.hl7.mapping.common import encounter_ref, encounter_step, merge, patient_step

__all__ = ["map_mdm"]

DOC_STATUS = {"DO": "final", "AU": "final", "LA": "final", "IP": "preliminary",
              "IN": "preliminary", "PA": "preliminary", "DI": "preliminary",
              "CA": "entered-in-error"}  # fmt: skip
MEDIA = {("APPLICATION", "PDF"): "application/pdf", ("TEXT", "RTF"): "text/rtf",
         ("TEXT", "HTML"): "text/html", ("IMAGE", "JPEG"): "image/jpeg",
         ("IMAGE", "PNG"): "image/png", ("TEXT", "XML"): "text/xml"}  # fmt: skip


def map_mdm(ctx: Context) -> Plan:
    txa = ctx.seg("TXA")
    tz = ctx.profile.zone()
    plan = Plan()
    patient_step(ctx, plan, update=False)
    encounter_step(ctx, plan, None)
    content: list[dict[str, Any]] = []
    lines: list[str] = []
    for obx in ctx.message.all("OBX"):
        kind = obx.get(2).upper()
        if kind == "ED":
            for rep in obx.reps(5):
                data = rep.raw(5)
                encoding = rep.c(4).upper()
                try:
                    raw = (
                        base64.b64decode(data, validate=True)
                        if encoding == "BASE64"
                        else (rep.c(5).encode())
                    )
                except (binascii.Error, ValueError):
                    raise hl7_error(
                        InvalidInput("OBX-5 ED data is not valid Base64."),
                        DATA_TYPE_ERROR,
                        obx.location(5, 5),
                    ) from None
                media = MEDIA.get((rep.c(2).upper(), rep.c(3).upper()), "application/octet-stream")
                content.append(
                    {
                        "attachment": {
                            "contentType": media,
                            "data": base64.b64encode(raw).decode(),
                        }
                    }
                )
        else:
            lines.extend(rep.c(1) for rep in obx.reps(5))
    if lines:
        text = "\n".join(lines)
        content.insert(
            0,
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode()).decode(),
                }
            },
        )
    if not content:
        content = [{"attachment": {"contentType": "text/plain", "title": "(no content)"}}]
    number = txa.get(12) or txa.get(13) or ctx.message.header.control_id
    date = dtm(txa.get(4), tz, txa.location(4)) or dtm(txa.get(6), tz, txa.location(6))
    author = xcn_display(txa.rep(9)) if txa.get(9) else None
    fresh = prune(
        {
            "resourceType": "DocumentReference",
            "identifier": [{"system": ctx.profile.system("document"), "value": number}],
            "status": "entered-in-error" if txa.get(17).upper() == "CA" else "current",
            "docStatus": DOC_STATUS.get(txa.get(17).upper()),
            "type": codeable(txa.rep(2)),
            "subject": local("patient"),
            "date": date if date and "T" in date else None,
            "author": [{"display": author}] if author else [],
            "content": content,
            "context": {"encounter": [encounter_ref(plan)]} if plan.has("encounter") else None,
            "extension": ctx.z_extensions(),
        }
    )
    if fresh.get("docStatus") == "entered-in-error":
        fresh.pop("docStatus")
    plan.add(
        Step(
            "document",
            "DocumentReference",
            [("identifier", f"{ctx.profile.system('document')}|{number}")],
            lambda existing: merge(existing, fresh),
        )
    )
    return plan
