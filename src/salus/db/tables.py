"""Table definitions (SQLAlchemy Core). Migrations create them; a test checks
that the migrated schema and these definitions agree on both backends."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from salus.db.types import BigIntPK, UTCDateTime

__all__ = [
    "bulk_exports",
    "bulk_imports",
    "fhir_history",
    "fhir_idx_composite",
    "fhir_idx_date",
    "fhir_idx_number",
    "fhir_idx_quantity",
    "fhir_idx_reference",
    "fhir_idx_string",
    "fhir_idx_token",
    "fhir_idx_uri",
    "fhir_resources",
    "audit_checkpoints",
    "audit_events",
    "audit_head",
    "btg_grants",
    "clients",
    "consents",
    "edge_identities",
    "jobs",
    "metadata",
    "organizations",
    "role_grants",
    "signing_keys",
    "treatment_relationships",
    "used_jtis",
    "users",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: The durable job queue (see :mod:`salus.jobs.queue`).
jobs = Table(
    "jobs",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("kind", String(100), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("run_at", UTCDateTime, nullable=False),
    Column("locked_by", String(100)),
    Column("locked_until", UTCDateTime),
    Column("last_error", Text),
    Column("dedup_key", String(200), unique=True),
    Column("tenant", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
)
Index("ix_jobs_due", jobs.c.status, jobs.c.run_at)


# -- identity and access (see salus.security) ------------------------------------------

#: Tenants: hospitals, the health authority, research bodies, the operator.
organizations = Table(
    "organizations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

#: People who sign in to the web console (and through it, the APIs).
users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("org_id", String(64), ForeignKey("organizations.id"), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("password_hash", String(200), nullable=False),
    #: TOTP shared secret, sealed (salus.storage.envelope.ValueSealer).
    Column("totp_secret", LargeBinary),
    Column("active", Boolean, nullable=False),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_login_at", UTCDateTime),
)

#: Systems (OAuth 2.0 clients): private_key_jwt with a JWK Set, or a client secret.
clients = Table(
    "clients",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("org_id", String(64), ForeignKey("organizations.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("auth_method", String(20), nullable=False),
    Column("jwks", JSON),
    Column("secret_hash", String(200)),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

#: Roles granted to a user or a client, within an organization.
role_grants = Table(
    "role_grants",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("principal_kind", String(10), nullable=False),
    Column("principal_id", String(100), nullable=False),
    Column("role", String(40), nullable=False),
    Column("org_id", String(64), ForeignKey("organizations.id"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(100), nullable=False),
    UniqueConstraint("principal_kind", "principal_id", "role", "org_id"),
)

#: Client-assertion ids already used (replay protection), kept until they expire.
used_jtis = Table(
    "used_jtis",
    metadata,
    Column("client_id", String(100), primary_key=True),
    Column("jti", String(200), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
)
Index("ix_used_jtis_expires_at", used_jtis.c.expires_at)

#: Keys that sign access tokens and audit checkpoints (private part sealed).
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(10), nullable=False),
    Column("private_key", LargeBinary, nullable=False),
    Column("public_jwk", JSON, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("retired_at", UTCDateTime),
)

#: How non-HTTP peers are recognised: DICOM calling AE titles, TLS client
#: certificates (SHA-256 fingerprint) and source addresses, each mapped to a client.
edge_identities = Table(
    "edge_identities",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("kind", String(10), nullable=False),
    Column("client_id", String(100), ForeignKey("clients.id"), nullable=False),
    Column("ae_title", String(16)),
    Column("cert_sha256", String(64)),
    Column("address", String(64)),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("ix_edge_identities_kind", edge_identities.c.kind, edge_identities.c.ae_title)

#: Treatment relationships (an encounter or referral at an organization).
treatment_relationships = Table(
    "treatment_relationships",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("patient_key", String(64), nullable=False),
    Column("org_id", String(64), ForeignKey("organizations.id"), nullable=False),
    Column("source", String(200), nullable=False),
    Column("valid_from", UTCDateTime, nullable=False),
    Column("valid_until", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
)
Index(
    "ix_treatment_patient_org",
    treatment_relationships.c.patient_key,
    treatment_relationships.c.org_id,
)

#: A patient's consent rules (from FHIR Consent): permit or deny, per
#: organization (NULL: every organization), per data category ("*": all).
consents = Table(
    "consents",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("patient_key", String(64), nullable=False),
    Column("grantee_org_id", String(64), ForeignKey("organizations.id")),
    Column("category", String(64), nullable=False),
    Column("decision", String(6), nullable=False),
    Column("valid_from", UTCDateTime, nullable=False),
    Column("valid_until", UTCDateTime),
    Column("source", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("ix_consents_patient", consents.c.patient_key)

#: Break-the-glass: time-limited emergency access, flagged for review.
btg_grants = Table(
    "btg_grants",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("principal_kind", String(10), nullable=False),
    Column("principal_id", String(100), nullable=False),
    Column("org_id", String(64), ForeignKey("organizations.id"), nullable=False),
    Column("patient_key", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("review_status", String(12), nullable=False),
    Column("reviewed_by", String(100)),
    Column("reviewed_at", UTCDateTime),
    Column("review_note", Text),
)
Index("ix_btg_patient_principal", btg_grants.c.patient_key, btg_grants.c.principal_id)
Index("ix_btg_review_status", btg_grants.c.review_status)

# -- audit trail (see salus.audit) -----------------------------------------------------

#: Append-only, hash-chained audit events. ``seq`` has no gaps: it is assigned
#: under the lock of ``audit_head``; ``hash`` = SHA-256(prev_hash ‖ canonical event).
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("category", String(20), nullable=False),
    Column("action", String(1), nullable=False),
    Column("outcome", SmallInteger, nullable=False),
    Column("principal_kind", String(10)),
    Column("principal_id", String(100)),
    Column("org_id", String(64)),
    Column("client_id", String(100)),
    Column("address", String(64)),
    Column("purpose", String(20)),
    Column("patient_key", String(64)),
    Column("entity", String(300)),
    Column("description", String(300)),
    Column("request_id", String(64)),
    Column("flags", String(100)),
    Column("detail", JSON),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_events_patient", audit_events.c.patient_key, audit_events.c.recorded_at)
Index("ix_audit_events_principal", audit_events.c.principal_id, audit_events.c.recorded_at)
Index("ix_audit_events_recorded_at", audit_events.c.recorded_at)

#: The chain head (one row, id = 1): the lock that serialises appends.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

#: Signed checkpoints of the chain (seq, hash), so that truncation is detected.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("kid", String(64), nullable=False),
    Column("signature", Text, nullable=False),
)

# -- FHIR resources (see salus.fhir) ----------------------------------------------------

#: The current version of every FHIR resource. ``body`` is the resource JSON,
#: sealed (salus.storage.envelope.ValueSealer) unless encryption is disabled.
#: ``org_id``, ``patient_key`` and ``category`` are what the policy filter uses.
fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("rid", BigIntPK, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("patient_key", String(64)),
    Column("category", String(64), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("last_updated", UTCDateTime, nullable=False),
    Column("body", LargeBinary, nullable=False),
    UniqueConstraint("res_type", "res_id"),
)
Index("ix_fhir_resources_type_updated", fhir_resources.c.res_type, fhir_resources.c.last_updated)
Index("ix_fhir_resources_patient", fhir_resources.c.patient_key)

#: Every version, including deletions (FHIR http.html#history).
fhir_history = Table(
    "fhir_history",
    metadata,
    Column("rid", BigInteger, primary_key=True, autoincrement=False),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("patient_key", String(64)),
    Column("category", String(64), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("method", String(6), nullable=False),
    Column("last_updated", UTCDateTime, nullable=False),
    Column("body", LargeBinary),
)
Index("ix_fhir_history_updated", fhir_history.c.last_updated)
Index("ix_fhir_history_type_updated", fhir_history.c.res_type, fhir_history.c.last_updated)


def _index_table(name: str, *columns: Column[Any]) -> Table:
    """One search index table per parameter type (FHIR search.html), current versions only."""
    table = Table(
        name,
        metadata,
        Column("rid", BigInteger, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
    )
    Index(f"ix_{name}_rid", table.c.rid)
    return table


fhir_idx_token = _index_table(
    "fhir_idx_token",
    Column("system", String(255)),
    Column("code", String(255)),
    Column("text", String(255)),
    #: Identifier.type (for :of-type).
    Column("type_system", String(255)),
    Column("type_code", String(255)),
)
Index(
    "ix_fhir_idx_token_code",
    fhir_idx_token.c.res_type,
    fhir_idx_token.c.param,
    fhir_idx_token.c.code,
    fhir_idx_token.c.system,
    # In rid order for one system|code: the first page of a search (migration 0018).
    fhir_idx_token.c.rid,
)

fhir_idx_string = _index_table(
    "fhir_idx_string",
    Column("norm", String(255), nullable=False),
    Column("exact", String(255), nullable=False),
)
Index(
    "ix_fhir_idx_string_norm",
    fhir_idx_string.c.res_type,
    fhir_idx_string.c.param,
    fhir_idx_string.c.norm,
    # The rid last: the index alone answers rid IN (…) (migration 0019).
    fhir_idx_string.c.rid,
    # PostgreSQL: LIKE 'prefix%' uses the index whatever the collation (migration 0017).
    postgresql_ops={"norm": "varchar_pattern_ops"},
)

fhir_idx_date = _index_table(
    "fhir_idx_date",
    Column("low", UTCDateTime, nullable=False),
    Column("high", UTCDateTime, nullable=False),
    #: Bit 1: the resource has several values of this parameter; bit 2: the value
    #: spans more than a day (salus.fhir.indexing.DATE_MULTI / DATE_LONG).
    Column("shape", SmallInteger, nullable=False, server_default=text("3")),
)
# The rid last: the index alone answers rid IN (…) (migration 0019).
Index(
    "ix_fhir_idx_date_low",
    fhir_idx_date.c.res_type,
    fhir_idx_date.c.param,
    fhir_idx_date.c.low,
    fhir_idx_date.c.rid,
)
Index(
    "ix_fhir_idx_date_high",
    fhir_idx_date.c.res_type,
    fhir_idx_date.c.param,
    fhir_idx_date.c.high,
    fhir_idx_date.c.rid,
)
# Partial: only the rows of several values or of more than a day (shape <> 0),
# which are those its queries look for. The rows of one value of at most a day,
# nearly all of them, stay out of it, and their writes touch one b-tree less
# (migration 0020).
Index(
    "ix_fhir_idx_date_shape",
    fhir_idx_date.c.res_type,
    fhir_idx_date.c.param,
    fhir_idx_date.c.shape,
    fhir_idx_date.c.high,
    sqlite_where=fhir_idx_date.c.shape != 0,
    postgresql_where=fhir_idx_date.c.shape != 0,
)

fhir_idx_number = _index_table(
    "fhir_idx_number",
    Column("low", Numeric(38, 12), nullable=False),
    Column("high", Numeric(38, 12), nullable=False),
)
Index(
    "ix_fhir_idx_number_low",
    fhir_idx_number.c.res_type,
    fhir_idx_number.c.param,
    fhir_idx_number.c.low,
)

fhir_idx_quantity = _index_table(
    "fhir_idx_quantity",
    Column("system", String(255)),
    Column("code", String(255)),
    Column("low", Numeric(38, 12), nullable=False),
    Column("high", Numeric(38, 12), nullable=False),
)
Index(
    "ix_fhir_idx_quantity_code",
    fhir_idx_quantity.c.res_type,
    fhir_idx_quantity.c.param,
    fhir_idx_quantity.c.code,
    fhir_idx_quantity.c.low,
)

fhir_idx_reference = _index_table(
    "fhir_idx_reference",
    Column("target_type", String(64)),
    Column("target_id", String(64)),
    Column("url", String(1024)),
)
Index(
    "ix_fhir_idx_reference_target",
    fhir_idx_reference.c.res_type,
    fhir_idx_reference.c.param,
    fhir_idx_reference.c.target_type,
    fhir_idx_reference.c.target_id,
    fhir_idx_reference.c.rid,  # the index alone answers rid IN (…) (migration 0019)
)
Index(
    "ix_fhir_idx_reference_reverse",
    fhir_idx_reference.c.target_type,
    fhir_idx_reference.c.target_id,
)

fhir_idx_uri = _index_table(
    "fhir_idx_uri",
    Column("value", String(1024), nullable=False),
)
Index("ix_fhir_idx_uri_value", fhir_idx_uri.c.res_type, fhir_idx_uri.c.param, fhir_idx_uri.c.value)


# -- FHIR Bulk Data export (see salus.fhir.bulk) ---------------------------------------

#: Bulk Data export requests (Bulk Data Access IG v2, export.html): who asked,
#: what for, the job doing it, its state and, once complete, the manifest
#: (output files as blob digests, sizes and counts; never resource content).
bulk_exports = Table(
    "bulk_exports",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner_kind", String(10), nullable=False),
    Column("owner_id", String(100), nullable=False),
    Column("owner_org", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("level", String(10), nullable=False),
    Column("request_url", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("job_id", BigInteger),
    Column("progress", String(200)),
    Column("transaction_time", UTCDateTime),
    Column("error", Text),
    Column("manifest", JSON),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index(
    "ix_bulk_exports_owner",
    bulk_exports.c.owner_kind,
    bulk_exports.c.owner_id,
    bulk_exports.c.status,
)

#: Composite parameters of two components (search.html#composite): the first a
#: token (or reference), the second any type; one row per combination found on
#: the same element (e.g. each Observation.component).
fhir_idx_composite = _index_table(
    "fhir_idx_composite",
    Column("k_system", String(255)),
    Column("k_code", String(255)),
    Column("v_system", String(255)),
    Column("v_code", String(255)),
    Column("v_low", Numeric(38, 12)),
    Column("v_high", Numeric(38, 12)),
    Column("v_date_low", UTCDateTime),
    Column("v_date_high", UTCDateTime),
    Column("v_text", String(255)),
)
Index(
    "ix_fhir_idx_composite_key",
    fhir_idx_composite.c.res_type,
    fhir_idx_composite.c.param,
    fhir_idx_composite.c.k_code,
)


# -- FHIR Bulk Data import (see salus.fhir.bulkimport) ---------------------------------

#: Bulk Data import: NDJSON files uploaded to ``$import-file`` (kind ``file``:
#: a blob digest and size in ``params``) and import requests (kind ``import``:
#: inputs, the job, its state, ``cursor`` = the last line whose outcome is
#: committed, and ``result``: counts and per-line errors by file and line,
#: never resource content).
bulk_imports = Table(
    "bulk_imports",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("owner_kind", String(10), nullable=False),
    Column("owner_id", String(100), nullable=False),
    Column("owner_org", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("request_url", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("job_id", BigInteger),
    Column("progress", String(200)),
    Column("cursor", JSON),
    Column("transaction_time", UTCDateTime),
    Column("error", Text),
    Column("result", JSON),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index(
    "ix_bulk_imports_owner",
    bulk_imports.c.owner_kind,
    bulk_imports.c.owner_id,
    bulk_imports.c.kind,
    bulk_imports.c.status,
)
