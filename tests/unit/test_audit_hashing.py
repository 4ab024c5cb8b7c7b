"""The canonical form and hash of audit events, recomputed independently."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from salus.audit.events import (
    GENESIS_HASH,
    HASHED_FIELDS,
    AuditEvent,
    AuditFlag,
    AuditOutcome,
    canonical_json,
    canonical_record,
    event_hash,
    iso_utc,
)
from salus.audit.signing import Checkpoint, Ed25519Signer
from salus.errors import InvalidInput
from salus.security.principal import AuthMethod, Principal, PrincipalKind, Purpose

RECORDED = datetime(2026, 11, 23, 8, 0, 0, 1, tzinfo=UTC)
PREV = "ab" * 32

EVENT = AuditEvent(
    category="rest",
    action="R",
    outcome=0,
    principal_kind="user",
    principal_id="alice",
    org_id="hospital-a",
    client_id=None,
    address="10.0.0.7",
    purpose="ETREAT",
    patient_key="pk-123",
    entity="Observation/obs-1",
    description="read Observation",
    request_id="req-1",
    flags="break-glass",
    detail={"z": [1, "two", None, True], "a": "é\n\u0001"},
)

#: The canonical JSON of EVENT at seq 7, written out by hand.
CANONICAL = (
    '{"action":"R","address":"10.0.0.7","category":"rest","client_id":null,'
    '"description":"read Observation","detail":{"a":"é\\n\\u0001","z":[1,"two",null,true]},'
    '"entity":"Observation/obs-1","flags":"break-glass","org_id":"hospital-a","outcome":0,'
    '"patient_key":"pk-123","principal_id":"alice","principal_kind":"user","purpose":"ETREAT",'
    '"recorded_at":"2026-11-23T08:00:00.000001Z","request_id":"req-1","seq":7}'
)
#: Pinned: changing the hashed form breaks every stored chain.
PINNED_HASH = "ba5530026cc972d369bf2060f072b18949e669dc60545054cbc84d68f5c9169b"


def test_canonical_form_is_exact() -> None:
    row = EVENT.row(seq=7, recorded_at=RECORDED, prev_hash=PREV)
    assert canonical_json(canonical_record(row)) == CANONICAL.encode("utf-8")
    # The same bytes as a plain json.dumps with the documented options.
    independent = json.dumps(
        json.loads(CANONICAL), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert independent == CANONICAL.encode("utf-8")
    assert list(json.loads(CANONICAL)) == list(HASHED_FIELDS)


def test_hash_is_sha256_of_prev_hash_and_canonical_json() -> None:
    row = EVENT.row(seq=7, recorded_at=RECORDED, prev_hash=PREV)
    expected = hashlib.sha256(PREV.encode("ascii") + CANONICAL.encode("utf-8")).hexdigest()
    assert row["hash"] == expected == event_hash(PREV, row)
    assert row["hash"] == PINNED_HASH
    assert row["prev_hash"] == PREV and row["seq"] == 7 and row["recorded_at"] == RECORDED


def test_hash_depends_on_every_field_and_on_the_chain() -> None:
    row = EVENT.row(seq=7, recorded_at=RECORDED, prev_hash=PREV)
    base = row["hash"]
    changes = {
        "category": "auth",
        "action": "U",
        "outcome": 4,
        "principal_kind": "client",
        "principal_id": "bob",
        "org_id": "hospital-b",
        "client_id": "c1",
        "address": "10.0.0.8",
        "purpose": "TREAT",
        "patient_key": "pk-124",
        "entity": "Observation/obs-2",
        "description": "read Observation ",
        "request_id": "req-2",
        "flags": None,
        "detail": {"a": "é\n\u0001"},
        "seq": 8,
        "recorded_at": RECORDED + timedelta(microseconds=1),
    }
    assert set(changes) == set(HASHED_FIELDS)
    for name, value in changes.items():
        assert event_hash(PREV, {**row, name: value}) != base, name
    assert event_hash(GENESIS_HASH, row) != base


def test_genesis_and_timestamps() -> None:
    assert GENESIS_HASH == "0" * 64
    assert iso_utc(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    plus_two = timezone(timedelta(hours=2))
    assert iso_utc(datetime(2026, 1, 2, 5, 4, 5, 6, tzinfo=plus_two)) == (
        "2026-01-02T03:04:05.000006Z"
    )
    with pytest.raises(InvalidInput):
        iso_utc(datetime(2026, 1, 2))  # naive on purpose


def test_canonical_json_refuses_what_is_not_portable() -> None:
    for bad in (float("nan"), float("inf"), {1: "a", "b": 2}, object()):
        with pytest.raises(InvalidInput):
            canonical_json({"x": bad})


def test_event_validation() -> None:
    with pytest.raises(InvalidInput, match="category"):
        AuditEvent(category="nope", action="R")
    with pytest.raises(InvalidInput):
        AuditEvent(category="rest", action="X")
    with pytest.raises(InvalidInput):
        AuditEvent(category="rest", action="R", outcome=3)
    with pytest.raises(InvalidInput, match="description") as too_long:
        AuditEvent(category="rest", action="R", description="secret-value " * 30)
    assert "secret-value" not in too_long.value.message  # names the field, not the value
    with pytest.raises(InvalidInput, match="NUL"):
        AuditEvent(category="rest", action="R", entity="a\x00b")
    with pytest.raises(InvalidInput):
        AuditEvent(category="rest", action="R", detail={"x": {1, 2}})  # type: ignore[dict-item]
    event = AuditEvent(
        category="rest",
        action="R",
        outcome=AuditOutcome.MINOR,
        detail={"t": (1, 2), "n": {"k": 1.5}},
    )
    assert event.detail == {"t": [1, 2], "n": {"k": 1.5}}  # as JSON gives it back
    assert type(event.outcome) is int and event.outcome == 4
    for bad in ({"x": 1, "y": "\ud800"}, {"\ud800": 1}, {"x": float("nan")}, {1: 2}):
        with pytest.raises(InvalidInput):
            AuditEvent(category="rest", action="R", detail=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "detail",
    [
        {"version": 2},
        {"z": 1, "a": True, "m": None, "b": "text", "c": 10**30},
        {"z": "é", "a": 1},  # not ASCII
        {"x": [1], "a": 1},
        {"x": 1.0, "a": 1},
        {"x": AuditOutcome.MINOR},  # an int subclass: its value
        {"x": "a\nb\u0001", "": 0},
        {},
    ],
)
def test_detail_is_what_json_gives_back(detail: dict[str, object]) -> None:
    event = AuditEvent(category="rest", action="R", detail=detail)
    expected = json.loads(canonical_json(detail))
    assert event.detail == expected
    assert list(event.detail or {}) == list(expected)  # keys in the canonical order
    assert [type(v) for v in (event.detail or {}).values()] == [type(v) for v in expected.values()]


def test_for_principal_fills_the_principal_fields() -> None:
    principal = Principal(
        kind=PrincipalKind.USER,
        id="alice",
        org_id="hospital-a",
        roles=frozenset({"clinician"}),
        auth_method=AuthMethod.PASSWORD_TOTP,
        client_id="console",
        address="192.0.2.10",
    )
    event = AuditEvent.for_principal(
        principal,
        category="rest",
        action="R",
        patient_key="pk-1",
        purpose=Purpose.EMERGENCY,
        flags=[AuditFlag.BREAK_GLASS, "refused", AuditFlag.BREAK_GLASS],
    )
    assert (event.principal_kind, event.principal_id, event.org_id) == (
        "user",
        "alice",
        "hospital-a",
    )
    assert (event.client_id, event.address) == ("console", "192.0.2.10")
    assert event.purpose == "ETREAT" and type(event.purpose) is str
    assert event.flags == "break-glass,refused"
    assert event.flag_set() == {"break-glass", "refused"}
    anonymous = AuditEvent.for_principal(None, category="auth", action="E", outcome=4)
    assert anonymous.principal_id is None and anonymous.principal_kind is None


def test_checkpoint_payload_and_ed25519_signatures() -> None:
    created = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    payload = Checkpoint.payload_for(42, "cd" * 32, created)
    assert payload == (
        b'{"created_at":"2026-11-23T09:00:00.000000Z","hash":"'
        + b"cd" * 32
        + b'","seq":42,"typ":"salus.audit.checkpoint.v1"}'
    )
    signer = Ed25519Signer.generate()
    kid, signature = signer.sign(payload)
    assert kid == signer.kid and kid.startswith("ed25519-") and "=" not in signature
    checkpoint = Checkpoint(42, "cd" * 32, created, kid, signature)
    assert checkpoint.verify(signer)
    assert Checkpoint.from_dict(json.loads(checkpoint.to_line())) == checkpoint
    assert not Checkpoint(43, "cd" * 32, created, kid, signature).verify(signer)
    assert not Checkpoint(42, "cd" * 32, created, "other", signature).verify(signer)
    assert not Checkpoint(42, "cd" * 32, created, kid, "not base64!").verify(signer)
    other = Ed25519Signer.generate()
    assert not checkpoint.verify(other)
    rotated = Ed25519Signer.generate(kid="new")
    trusting = Ed25519Signer(Ed25519PrivateKey.generate(), trusted={kid: signer.public_key})
    assert checkpoint.verify(trusting) and not checkpoint.verify(rotated)
    with pytest.raises(InvalidInput):
        Checkpoint.from_dict({"seq": "1"})
