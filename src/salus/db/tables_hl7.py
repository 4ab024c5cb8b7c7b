"""Table definitions of the HL7 part (SQLAlchemy Core), on the shared MetaData.

``hl7_messages`` is the durable message store (HL7 v2.8 chapter 2, 2.9.2 and
2.10: the receiver keeps what it acknowledged): each received message, sealed
like a FHIR body, with its header fields, its state and its outcome. MSH-10
is unique per sending organization and facility, which is how a resent
message is recognised (duplicate detection, v2.8 2.10.1).
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Index, Integer, LargeBinary, String, Table, UniqueConstraint

from salus.db.tables import metadata
from salus.db.types import BigIntPK, UTCDateTime

__all__ = ["hl7_messages", "metadata"]

#: States of a stored message.
#: ``received``: committed, not applied yet; ``applied``: mapped to FHIR;
#: ``failed``: mapping or validation failed (kept for replay); ``rejected``: not
#: accepted (unknown sender, unsupported type, malformed); ``ignored``: a type
#: that is stored but deliberately not mapped (acknowledgments).
HL7_STATES = ("received", "applied", "failed", "rejected", "ignored")

hl7_messages = Table(
    "hl7_messages",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("uid", String(36), nullable=False, unique=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("source", String(10), nullable=False),  # mllp | file | api
    Column("peer", String(64)),  # network address of the connection
    Column("org_id", String(64)),  # sending organization (None: unknown sender)
    Column("client_id", String(100)),  # the directory client the feed acts as
    Column("sending_application", String(227)),
    Column("sending_facility", String(227), nullable=False),
    Column("control_id", String(199)),  # MSH-10
    Column("message_type", String(20)),  # MSH-9.1^MSH-9.2, e.g. ADT^A01
    Column("version", String(10)),  # MSH-12
    Column("processing_id", String(3)),  # MSH-11
    Column("charset", String(40)),  # MSH-18 as received
    Column("ack_mode", String(10), nullable=False),  # original | enhanced
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("body", LargeBinary, nullable=False),  # sealed raw bytes
    Column("state", String(10), nullable=False),
    Column("ack_code", String(2)),  # the outcome acknowledged: AA/AE/AR
    Column("error_code", String(10)),  # HL7 table 0357
    Column("error_location", String(40)),  # ERR-2, e.g. PID^1^7
    Column("error", String(500)),  # a safe text, never patient data
    Column("resources", JSON),  # ["Patient/…", "Encounter/…"]
    Column("attempts", Integer, nullable=False),
    UniqueConstraint("org_id", "sending_facility", "control_id"),
)
Index("ix_hl7_messages_state", hl7_messages.c.state, hl7_messages.c.id)
Index("ix_hl7_messages_received_at", hl7_messages.c.received_at)
