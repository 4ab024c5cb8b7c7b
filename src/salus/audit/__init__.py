"""The tamper-evident audit trail: hash-chained events, signed checkpoints,
verification, FHIR R4 ``AuditEvent`` rendering and access reports."""

from salus.audit.batcher import RecordBatcher
from salus.audit.chain import AuditLog, ChainHead, append_checkpoint_line
from salus.audit.events import (
    GENESIS_HASH,
    AuditAction,
    AuditCategory,
    AuditEvent,
    AuditFlag,
    AuditOutcome,
    canonical_json,
    event_hash,
)
from salus.audit.fhir import patient_access_report, search_events, to_fhir
from salus.audit.signing import Checkpoint, CheckpointSigner, Ed25519Signer
from salus.audit.verify import BreakKind, Problem, VerifyReport, verify_chain

__all__ = [
    "GENESIS_HASH",
    "AuditAction",
    "AuditCategory",
    "AuditEvent",
    "AuditFlag",
    "AuditLog",
    "AuditOutcome",
    "BreakKind",
    "ChainHead",
    "Checkpoint",
    "CheckpointSigner",
    "Ed25519Signer",
    "Problem",
    "RecordBatcher",
    "VerifyReport",
    "append_checkpoint_line",
    "canonical_json",
    "event_hash",
    "patient_access_report",
    "search_events",
    "to_fhir",
    "verify_chain",
]
