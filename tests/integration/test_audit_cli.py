"""The ``audit`` CLI group (verify, report) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from salus.audit import AuditEvent, AuditLog, Ed25519Signer
from salus.audit.cli import audit
from salus.config import Settings
from salus.db import Database
from salus.db.tables import audit_checkpoints, audit_events, audit_head
from salus.security.principal import Principal, PrincipalKind, Purpose

ALICE = Principal(PrincipalKind.USER, "alice", "hospital-a", address="10.0.0.7")
BOB = Principal(PrincipalKind.CLIENT, "bob-ehr", "hospital-b", client_id="bob-ehr")
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def read_event(principal: Principal | None = ALICE, patient: str = "pk-1") -> AuditEvent:
    return AuditEvent.for_principal(
        principal,
        category="rest",
        action="R",
        patient_key=patient,
        entity="Observation/obs-1",
        purpose=Purpose.TREATMENT,
    )


def invoke(settings: Settings, *args: str) -> Any:
    overrides: dict[str, Any] = {"data_dir": settings.data_dir}
    if settings.database_url is not None:
        overrides["database_url"] = settings.database_url.get_secret_value()
    return CliRunner().invoke(
        audit,
        list(args),
        obj={"config": None, "overrides": overrides},
        env={"COLUMNS": "250"},
        catch_exceptions=False,
    )


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
def cli_settings(db: Database, settings_factory: Any) -> Settings:
    if db.is_sqlite:  # the fixture's database file, not one under the data folder
        settings: Settings = settings_factory(database_url=str(db.engine.url))
    else:
        settings = settings_factory()
    return settings


def test_cli_verify_and_report(db: Database, cli_settings: Settings) -> None:
    from salus.security.signing import SigningKeys

    keys = SigningKeys(db, None)  # Salus's signing keys (unsealed in development)
    keys.ensure_active()
    log = AuditLog(
        db, signer=keys, checkpoint_file=cli_settings.audit_checkpoint_path(), clock=lambda: NOW
    )
    log.record([read_event(ALICE, "pk-1"), read_event(BOB, "pk-2")])
    log.checkpoint()
    log.record(
        [
            AuditEvent.for_principal(
                BOB,
                category="security",
                action="E",
                patient_key="pk-1",
                purpose=Purpose.EMERGENCY,
                flags=["break-glass"],
            )
        ]
    )
    log.checkpoint()

    ok = invoke(cli_settings, "verify")
    assert ok.exit_code == 0, ok.output
    assert "Audit trail intact: 3 events checked" in ok.output
    assert "2 checkpoint(s) in the database, 2 in the checkpoint file" in ok.output
    assert "not checked" not in ok.output  # verified with the signing keys
    as_json = json.loads(invoke(cli_settings, "verify", "--json").output)
    assert as_json["ok"] and as_json["signatures_checked"] and as_json["events_checked"] == 3

    text = invoke(cli_settings, "report", "--patient", "pk-1")
    assert text.exit_code == 0, text.output
    assert "user/alice" in text.output and "break-glass" in text.output
    assert "2 event(s)" in text.output
    entries = json.loads(invoke(cli_settings, "report", "--patient", "pk-1", "--json").output)
    assert [e["seq"] for e in entries] == [3, 1] and entries[0]["break_glass"]
    later = invoke(
        cli_settings, "report", "--patient", "pk-1", "--since", "2026-11-23T08:00:01Z", "--json"
    )
    assert json.loads(later.output) == []
    bad = CliRunner().invoke(
        audit,
        ["report", "--patient", "x", "--since", "yesterday"],
        obj={"config": None, "overrides": {}},
    )
    assert bad.exit_code == 2

    with db.write() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == 2).values(entity="x"))
    broken = invoke(cli_settings, "verify")
    assert broken.exit_code == 1
    assert "AUDIT TRAIL BROKEN" in broken.output and "event 2 was modified" in broken.output
    assert "pk-" not in broken.output  # names seqs, never patient data


def test_cli_verify_without_a_signer(
    db: Database, cli_settings: Settings, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import salus.audit.cli as cli

    monkeypatch.setattr(cli, "checkpoint_signer", lambda settings, db: None)
    log = AuditLog(db, signer=signer, checkpoint_file=cli_settings.audit_checkpoint_path())
    log.record([read_event()])
    log.checkpoint()
    result = invoke(cli_settings, "verify")
    assert result.exit_code == 0, result.output
    assert "signatures: not checked (no signer configured)" in result.output
    with db.write() as conn:  # truncate the chain consistently
        conn.execute(audit_events.delete())
        conn.execute(audit_head.delete())
        conn.execute(audit_checkpoints.delete())
    truncated = invoke(cli_settings, "verify")
    assert truncated.exit_code == 1
    assert "chain truncated: checkpoint at 1 but chain ends at 0" in truncated.output


def test_cli_on_a_database_without_the_schema(settings_factory: Any) -> None:
    settings: Settings = settings_factory()  # an empty database: not migrated
    result = CliRunner().invoke(
        audit,
        ["verify"],
        obj={
            "config": None,
            "overrides": {
                "data_dir": settings.data_dir,
                **(
                    {"database_url": settings.database_url.get_secret_value()}
                    if settings.database_url
                    else {}
                ),
            },
        },
    )
    assert result.exit_code == 2
    assert "the database could not be used" in result.output
