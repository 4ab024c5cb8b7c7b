"""HL7 v2 → FHIR R4 mappings, one module per message family.

:func:`plan_for` picks the mapper for a message's type and trigger event and
returns its :class:`~salus.hl7.mapping.base.Plan`; unsupported types raise
:class:`~salus.errors.NotSupported` (AR, ERR 200/201).
"""

from __future__ import annotations

from collections.abc import Callable

from salus.errors import NotSupported
from salus.hl7.errors import UNSUPPORTED_EVENT, UNSUPPORTED_MESSAGE_TYPE, Location, hl7_error
from salus.hl7.mapping.adt import EVENTS as ADT_EVENTS
from salus.hl7.mapping.adt import map_adt
from salus.hl7.mapping.base import Context, Plan, Step, local
from salus.hl7.mapping.mdm import map_mdm
from salus.hl7.mapping.orders import map_order
from salus.hl7.mapping.oru import map_oru
from salus.hl7.mapping.siu import map_siu
from salus.hl7.mapping.vxu import map_vxu

__all__ = ["Context", "Plan", "Step", "SUPPORTED", "local", "plan_for", "supported"]

Mapper = Callable[[Context], Plan]

SUPPORTED: dict[str, dict[str, Mapper]] = {
    "ADT": {event: map_adt for event in ADT_EVENTS},
    "ORU": {"R01": map_oru},
    "ORM": {"O01": map_order},
    "OMG": {"O19": map_order},
    "OML": {"O21": map_order},
    "SIU": {"S12": map_siu, "S13": map_siu, "S14": map_siu, "S15": map_siu},
    "MDM": {"T02": map_mdm},
    "VXU": {"V04": map_vxu},
}
#: Message types that are stored and acknowledged but not mapped.
IGNORED = frozenset({"ACK"})


def supported(code: str, event: str) -> Mapper:
    events = SUPPORTED.get(code.upper())
    if events is None:
        raise hl7_error(
            NotSupported("Salus does not accept this message type."),
            UNSUPPORTED_MESSAGE_TYPE,
            Location("MSH", 1, 9, 1),
        )
    mapper = events.get(event.upper())
    if mapper is None:
        raise hl7_error(
            NotSupported("Salus does not accept this trigger event for the message type."),
            UNSUPPORTED_EVENT,
            Location("MSH", 1, 9, 2),
        )
    return mapper


def plan_for(context: Context) -> Plan:
    header = context.message.header
    return supported(header.message_code, header.trigger_event)(context)
