"""The directory: users (argon2id, TOTP, lock-out), clients, grants, authority
rules and the identities of DICOM and MLLP peers; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select

from salus.audit.chain import AuditLog
from salus.audit.verify import verify_chain
from salus.db import Database
from salus.db.tables import audit_events, users
from salus.errors import Conflict, Forbidden, InvalidInput, NotAuthenticated
from salus.security.directory import Directory
from salus.security.edges import EdgeAuthenticator
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.signin import LoginPolicy, SignIn
from salus.storage.envelope import ValueSealer
from salus.storage.keys import FileKeyProvider

SYSTEM = Principal(kind=PrincipalKind.SYSTEM, id="t", org_id="ops")
PASSWORD = "a long and fine password"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory(db: Database, tmp_path: Path, clock: Clock) -> Directory:
    sealer = ValueSealer(FileKeyProvider.create(tmp_path / "k.json"))
    d = Directory(db, AuditLog(db), sealer, clock=clock)
    for org, kind in [("ops", "operator"), ("hosp-a", "hospital"), ("hosp-b", "hospital")]:
        d.create_organization(SYSTEM, org, org.upper(), kind)
    return d


@pytest.fixture
def signin(directory: Directory, clock: Clock) -> SignIn:
    return SignIn(
        directory,
        login_policy=LoginPolicy(max_failures=3, lockout=timedelta(minutes=10)),
        clock=clock,
    )


def admin_of(directory: Directory, org: str) -> Principal:
    signin = SignIn(directory)
    uid = directory.create_user(
        SYSTEM,
        username=f"admin-{org}",
        org_id=org,
        display_name="Admin",
        password=PASSWORD,
        roles=["administrator"],
    )
    return signin.user_principal(uid)


def test_login_and_password_hash(directory: Directory, db: Database, signin: SignIn) -> None:
    uid = directory.create_user(
        SYSTEM,
        username="nguyen.an",
        org_id="hosp-a",
        display_name="Nguyễn An",
        password=PASSWORD,
        roles=["clinician"],
    )
    principal = signin.login("nguyen.an", PASSWORD, None, "10.0.0.7")
    assert principal.id == uid and principal.org_id == "hosp-a"
    assert principal.roles == {"clinician"} and "user/*.cruds" in principal.scopes
    assert principal.auth_method is AuthMethod.PASSWORD and principal.address == "10.0.0.7"
    with db.read() as conn:
        stored = conn.execute(select(users.c.password_hash).where(users.c.id == uid)).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_wrong_credentials_say_nothing_specific(directory: Directory, signin: SignIn) -> None:
    directory.create_user(
        SYSTEM, username="user1", org_id="hosp-a", display_name="", password=PASSWORD
    )
    messages = set()
    for username, password in [("user1", "wrong password!!"), ("nobody", PASSWORD)]:
        with pytest.raises(NotAuthenticated) as caught:
            signin.login(username, password, None)
        messages.add(caught.value.message)
    assert messages == {"Invalid username, password or one-time code."}


def test_lockout_after_repeated_failures(
    directory: Directory, clock: Clock, db: Database, signin: SignIn
) -> None:
    directory.create_user(
        SYSTEM, username="user2", org_id="hosp-a", display_name="", password=PASSWORD
    )
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            signin.login("user2", "not the password", None)
    with pytest.raises(NotAuthenticated, match="locked"):
        signin.login("user2", PASSWORD, None)  # even the right password
    clock.now += timedelta(minutes=11)
    assert signin.login("user2", PASSWORD, None).roles == frozenset()
    with db.read() as conn:
        refusals = (
            conn.execute(select(audit_events.c.description).where(audit_events.c.outcome == 4))
            .scalars()
            .all()
        )
    assert sum("wrong password" in r for r in refusals) == 3
    assert any("account locked" in r for r in refusals)
    assert all(PASSWORD not in r and "not the password" not in r for r in refusals)


def test_admin_unlocks(directory: Directory, signin: SignIn) -> None:
    uid = directory.create_user(
        SYSTEM, username="user3", org_id="hosp-a", display_name="", password=PASSWORD
    )
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            signin.login("user3", "not the password", None)
    directory.unlock_user(admin_of(directory, "hosp-a"), uid)
    assert signin.login("user3", PASSWORD, None).id == uid


def test_totp_second_factor(directory: Directory, db: Database, signin: SignIn) -> None:
    uid = directory.create_user(
        SYSTEM, username="user4", org_id="hosp-a", display_name="", password=PASSWORD
    )
    uri = signin.enroll_totp(SYSTEM, uid)
    secret = pyotp.parse_uri(uri).secret
    with db.read() as conn:
        sealed = conn.execute(select(users.c.totp_secret).where(users.c.id == uid)).scalar_one()
    assert secret.encode() not in bytes(sealed)  # sealed at rest
    with pytest.raises(NotAuthenticated, match="one-time code is required"):
        signin.login("user4", PASSWORD, None)
    with pytest.raises(NotAuthenticated):
        right = pyotp.TOTP(secret).at(directory.clock())
        signin.login("user4", PASSWORD, "000000" if right != "000000" else "111111")
    code = pyotp.TOTP(secret).at(directory.clock())
    principal = signin.login("user4", PASSWORD, code)
    assert principal.auth_method is AuthMethod.PASSWORD_TOTP


def test_disabled_user_and_organization(directory: Directory, signin: SignIn) -> None:
    uid = directory.create_user(
        SYSTEM, username="user5", org_id="hosp-b", display_name="", password=PASSWORD
    )
    directory.set_user_active(SYSTEM, uid, False)
    with pytest.raises(NotAuthenticated):
        signin.login("user5", PASSWORD, None)
    directory.set_user_active(SYSTEM, uid, True)
    directory.set_organization_active(SYSTEM, "hosp-b", False)
    with pytest.raises(NotAuthenticated, match="organization"):
        signin.login("user5", PASSWORD, None)


def test_password_rules_and_duplicates(directory: Directory) -> None:
    with pytest.raises(InvalidInput, match="at least"):
        directory.create_user(
            SYSTEM, username="user6", org_id="hosp-a", display_name="", password="short"
        )
    with pytest.raises(InvalidInput):
        directory.create_user(
            SYSTEM, username="user 6", org_id="hosp-a", display_name="", password=PASSWORD
        )
    directory.create_user(
        SYSTEM, username="user6", org_id="hosp-a", display_name="", password=PASSWORD
    )
    with pytest.raises(Conflict):
        directory.create_user(
            SYSTEM, username="user6", org_id="hosp-a", display_name="", password=PASSWORD
        )
    with pytest.raises(InvalidInput, match="Unknown role"):
        directory.create_user(
            SYSTEM,
            username="user7",
            org_id="hosp-a",
            display_name="",
            password=PASSWORD,
            roles=["superuser"],
        )


def test_authority_rules(directory: Directory, signin: SignIn) -> None:
    admin_a = admin_of(directory, "hosp-a")
    network = admin_of(directory, "ops")
    with pytest.raises(Forbidden):
        directory.create_organization(admin_a, "hosp-x", "X", "hospital")
    directory.create_organization(network, "hosp-x", "X", "hospital")
    with pytest.raises(Forbidden):
        directory.create_user(
            admin_a, username="b-nurse", org_id="hosp-b", display_name="", password=PASSWORD
        )
    b_user = directory.create_user(
        network, username="b-nurse", org_id="hosp-b", display_name="", password=PASSWORD
    )
    with pytest.raises(Forbidden):
        directory.grant_role(admin_a, PrincipalKind.USER, b_user, "clinician")
    with pytest.raises(Forbidden):
        directory.set_user_active(admin_a, b_user, False)
    clinician = signin.user_principal(
        directory.create_user(
            SYSTEM,
            username="a-doc",
            org_id="hosp-a",
            display_name="",
            password=PASSWORD,
            roles=["clinician"],
        )
    )
    with pytest.raises(Forbidden):
        directory.create_user(
            clinician, username="x-one", org_id="hosp-a", display_name="", password=PASSWORD
        )
    with pytest.raises(InvalidInput, match="only in hospitals"):
        directory.create_organization(network, "moh", "MoH", "authority")
        directory.create_user(
            network,
            username="moh-doc",
            org_id="moh",
            display_name="",
            password=PASSWORD,
            roles=["clinician"],
        )


def test_grants_and_revocation(directory: Directory, signin: SignIn) -> None:
    uid = directory.create_user(
        SYSTEM, username="user8", org_id="hosp-a", display_name="", password=PASSWORD
    )
    directory.grant_role(SYSTEM, PrincipalKind.USER, uid, "clinician")
    directory.grant_role(SYSTEM, PrincipalKind.USER, uid, "clinician")  # idempotent
    assert signin.user_principal(uid).roles == {"clinician"}
    directory.revoke_role(SYSTEM, PrincipalKind.USER, uid, "clinician")
    assert signin.user_principal(uid).roles == frozenset()


def test_clients(directory: Directory) -> None:
    created = directory.create_client(
        SYSTEM,
        client_id="his-a",
        org_id="hosp-a",
        name="HIS",
        auth_method="client_secret",
        roles=["hospital_integration"],
    )
    assert created.secret and len(created.secret) >= 32
    listed = directory.list_clients(SYSTEM)
    assert listed[0]["id"] == "his-a" and listed[0]["roles"] == ["hospital_integration"]
    assert "secret_hash" not in listed[0]
    with pytest.raises(InvalidInput, match="JWK Set"):
        directory.create_client(
            SYSTEM,
            client_id="bad",
            org_id="hosp-a",
            name="",
            auth_method="private_key_jwt",
            jwks={"keys": [{"kty": "EC", "d": "private!"}]},
        )
    principal = directory.client_principal("his-a", AuthMethod.CLIENT_SECRET)
    assert principal.kind is PrincipalKind.CLIENT and principal.org_id == "hosp-a"
    directory.set_client_active(SYSTEM, "his-a", False)
    with pytest.raises(NotAuthenticated):
        directory.client_principal("his-a", AuthMethod.CLIENT_SECRET)


def test_edge_identities(directory: Directory, db: Database) -> None:
    for client_id, org in [("pacs-a", "hosp-a"), ("his-b", "hosp-b")]:
        directory.create_client(
            SYSTEM,
            client_id=client_id,
            org_id=org,
            name="",
            auth_method="client_secret",
            roles=["hospital_integration"],
        )
    cert = b"-fake DER certificate of hospital A-"
    fingerprint = hashlib.sha256(cert).hexdigest()
    directory.add_edge_identity(SYSTEM, kind="dicom", client_id="pacs-a", ae_title="PACS_A")
    directory.add_edge_identity(
        SYSTEM, kind="dicom", client_id="pacs-a", ae_title="CT_A", cert_sha256=fingerprint
    )
    directory.add_edge_identity(SYSTEM, kind="mllp", client_id="his-b", address="10.20.0.0/16")
    directory.add_edge_identity(
        SYSTEM,
        kind="mllp",
        client_id="pacs-a",
        cert_sha256=":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)),
    )
    edges = EdgeAuthenticator(db, directory)
    assert edges.dicom("PACS_A", "10.1.1.1", None).org_id == "hosp-a"
    assert edges.dicom("CT_A", "10.1.1.1", cert).auth_method is AuthMethod.TLS_CERT
    with pytest.raises(NotAuthenticated):
        edges.dicom("CT_A", "10.1.1.1", None)  # certificate required for this AE
    with pytest.raises(NotAuthenticated):
        edges.dicom("UNKNOWN", "10.1.1.1", None)
    assert edges.mllp("10.20.3.4", None).id == "his-b"
    assert edges.mllp("10.99.0.1", cert).id == "pacs-a"
    with pytest.raises(NotAuthenticated):
        edges.mllp("192.0.2.1", None)
    with pytest.raises(InvalidInput):
        directory.add_edge_identity(SYSTEM, kind="mllp", client_id="his-b", address="nonsense")
    with pytest.raises(InvalidInput):
        directory.add_edge_identity(
            SYSTEM, kind="dicom", client_id="his-b", ae_title="WAY_TOO_LONG_AE_TITLE"
        )


def test_every_change_is_audited_and_chained(directory: Directory, db: Database) -> None:
    uid = directory.create_user(
        SYSTEM,
        username="user9",
        org_id="hosp-a",
        display_name="",
        password=PASSWORD,
        roles=["clinician"],
    )
    directory.set_user_active(SYSTEM, uid, False)
    with db.read() as conn:
        descriptions = (
            conn.execute(
                select(audit_events.c.description).where(audit_events.c.entity == f"User/{uid}")
            )
            .scalars()
            .all()
        )
    assert descriptions == ["user created", "user disabled"]
    assert verify_chain(db).ok


def test_totp_rewrap_after_rotation(directory: Directory, tmp_path: Path, signin: SignIn) -> None:
    uid = directory.create_user(
        SYSTEM, username="user10", org_id="hosp-a", display_name="", password=PASSWORD
    )
    secret = pyotp.parse_uri(signin.enroll_totp(SYSTEM, uid)).secret
    assert directory.sealer is not None
    provider = directory.sealer._provider  # noqa: SLF001 - the test's own key file
    assert isinstance(provider, FileKeyProvider)
    provider.rotate()
    assert signin.rewrap_totp() == 1
    assert signin.rewrap_totp() == 0
    assert signin.login("user10", PASSWORD, pyotp.TOTP(secret).at(directory.clock())).id == uid
