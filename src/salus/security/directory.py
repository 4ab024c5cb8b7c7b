"""The directory: organizations (tenants), users, clients, role grants and the
identities of non-HTTP peers. Every change is audited in its own transaction.

Who may change what is decided here, not by the caller:

* an administrator of an ``operator`` organization administers the network;
* an administrator of any other organization administers only that one;
* nobody grants a role they could not hold themselves in that organization,
  and administrators are not given clinical scopes by their role.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from salus.audit.chain import AuditLog
from salus.audit.events import AuditEvent
from salus.db.engine import Database
from salus.db.tables import clients, edge_identities, organizations, role_grants, users
from salus.db.types import utcnow
from salus.errors import Conflict, Forbidden, InvalidInput, NotAuthenticated, NotFound
from salus.security.passwords import (
    check_password_strength,
    hash_password,
)
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.roles import ROLES, scopes_for_roles
from salus.storage.envelope import ValueSealer

__all__ = ["ORG_KINDS", "Directory", "NewClient"]

ORG_KINDS = ("hospital", "authority", "research", "operator")
_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{3,100}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{3,100}$")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash


@dataclass(frozen=True, slots=True)
class NewClient:
    client_id: str
    secret: str | None  # shown once, for client_secret clients


_M = TypeVar("_M", bound=Callable[..., None])


def _changes_principals(method: _M) -> _M:
    """After the change commits, tell token caches (``Directory.on_change``)."""

    @functools.wraps(method)
    def wrapper(self: Directory, *args: Any, **kwargs: Any) -> None:
        method(self, *args, **kwargs)
        self.on_change()

    return wrapper  # type: ignore[return-value]


def _row(conn: Connection, query: Any) -> RowMapping | None:
    return conn.execute(query).mappings().first()


class Directory:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        sealer: ValueSealer | None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.audit = audit
        self.sealer = sealer
        #: Called after a change that can disable principals (token caches).
        self.on_change: Callable[[], None] = lambda: None
        self.clock = clock

    # -- authority checks --------------------------------------------------------------
    def org_kind(self, conn: Connection, org_id: str) -> str | None:
        row = _row(conn, select(organizations.c.kind).where(organizations.c.id == org_id))
        return None if row is None else str(row["kind"])

    def _require_admin(self, conn: Connection, actor: Principal, org_id: str | None) -> None:
        if actor.kind is PrincipalKind.SYSTEM:
            return
        if "administrator" not in actor.roles:
            raise Forbidden("Only administrators may change the directory.")
        if self.org_kind(conn, actor.org_id) == "operator":
            return
        if org_id is None or org_id != actor.org_id:
            raise Forbidden("Administrators may only manage their own organization.")

    def org_kind_of(self, org_id: str) -> str | None:
        with self.db.read() as conn:
            return self.org_kind(conn, org_id)

    def _network_wide(self, conn: Connection, actor: Principal) -> bool:
        return actor.kind is PrincipalKind.SYSTEM or self.org_kind(conn, actor.org_id) == "operator"

    def _require_network_admin(self, conn: Connection, actor: Principal) -> None:
        if actor.kind is PrincipalKind.SYSTEM:
            return
        if "administrator" not in actor.roles or self.org_kind(conn, actor.org_id) != "operator":
            raise Forbidden("Only network administrators may manage organizations.")

    def _audit(
        self,
        conn: Connection,
        actor: Principal,
        action: str,
        entity: str,
        description: str,
        outcome: int = 0,
    ) -> None:
        self.audit.append(
            conn,
            [
                AuditEvent.for_principal(
                    actor,
                    category="admin",
                    action=action,
                    outcome=outcome,
                    entity=entity,
                    description=description,
                )
            ],
        )

    # -- organizations -----------------------------------------------------------------
    def create_organization(self, actor: Principal, org_id: str, name: str, kind: str) -> None:
        if not _ORG_ID.match(org_id):
            raise InvalidInput(
                "An organization id is 2-63 lower-case letters, digits or '-'.", expression=["id"]
            )
        if kind not in ORG_KINDS:
            raise InvalidInput(
                f"Organization kind must be one of {', '.join(ORG_KINDS)}.", expression=["kind"]
            )
        if not name.strip():
            raise InvalidInput("An organization needs a name.", expression=["name"])
        with self.db.write() as conn:
            self._require_network_admin(conn, actor)
            if _row(conn, select(organizations.c.id).where(organizations.c.id == org_id)):
                raise Conflict("An organization with this id already exists.")
            conn.execute(
                insert(organizations).values(
                    id=org_id, name=name.strip(), kind=kind, active=True, created_at=self.clock()
                )
            )
            self._audit(conn, actor, "C", f"Organization/{org_id}", "organization created")

    @_changes_principals
    def set_organization_active(self, actor: Principal, org_id: str, active: bool) -> None:
        with self.db.write() as conn:
            self._require_network_admin(conn, actor)
            result = conn.execute(
                update(organizations).where(organizations.c.id == org_id).values(active=active)
            )
            if result.rowcount != 1:
                raise NotFound("No such organization.")
            self._audit(
                conn,
                actor,
                "U",
                f"Organization/{org_id}",
                "organization enabled" if active else "organization disabled",
            )

    def list_organizations(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(select(organizations).order_by(organizations.c.id)).mappings()
            return [dict(r) for r in rows]

    def _require_org(self, conn: Connection, org_id: str) -> None:
        row = _row(conn, select(organizations.c.active).where(organizations.c.id == org_id))
        if row is None:
            raise NotFound("No such organization.")
        if not row["active"]:
            raise Conflict("The organization is disabled.")

    # -- users -------------------------------------------------------------------------
    def create_user(
        self,
        actor: Principal,
        *,
        username: str,
        org_id: str,
        display_name: str,
        password: str,
        roles: Sequence[str] = (),
    ) -> str:
        if not _USERNAME.match(username):
            raise InvalidInput(
                "A username is 3-100 letters, digits or . _ @ -.", expression=["username"]
            )
        check_password_strength(password)
        user_id = str(uuid.uuid4())
        with self.db.write() as conn:
            self._require_admin(conn, actor, org_id)
            self._require_org(conn, org_id)
            try:
                conn.execute(
                    insert(users).values(
                        id=user_id,
                        username=username,
                        org_id=org_id,
                        display_name=display_name.strip() or username,
                        password_hash=hash_password(password),
                        active=True,
                        failed_logins=0,
                        created_at=self.clock(),
                    )
                )
            except DBIntegrityError:
                raise Conflict("A user with this username already exists.") from None
            self._audit(conn, actor, "C", f"User/{user_id}", "user created")
            for role in roles:
                self._grant(conn, actor, PrincipalKind.USER, user_id, role, org_id)
        return user_id

    def _user(self, conn: Connection, user_id: str) -> RowMapping:
        row = _row(conn, select(users).where(users.c.id == user_id))
        if row is None:
            raise NotFound("No such user.")
        return row

    @_changes_principals
    def set_user_active(self, actor: Principal, user_id: str, active: bool) -> None:
        with self.db.write() as conn:
            user = self._user(conn, user_id)
            self._require_admin(conn, actor, user["org_id"])
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(active=active, failed_logins=0, locked_until=None)
            )
            self._audit(
                conn, actor, "U", f"User/{user_id}", "user enabled" if active else "user disabled"
            )

    def unlock_user(self, actor: Principal, user_id: str) -> None:
        with self.db.write() as conn:
            user = self._user(conn, user_id)
            self._require_admin(conn, actor, user["org_id"])
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(failed_logins=0, locked_until=None)
            )
            self._audit(conn, actor, "U", f"User/{user_id}", "user unlocked")

    def set_password(self, actor: Principal, user_id: str, password: str) -> None:
        check_password_strength(password)
        with self.db.write() as conn:
            user = self._user(conn, user_id)
            if not (actor.kind is PrincipalKind.USER and actor.id == user_id):
                self._require_admin(conn, actor, user["org_id"])
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(password_hash=hash_password(password))
            )
            self._audit(conn, actor, "U", f"User/{user_id}", "password changed")

    def list_users(self, actor: Principal) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            query = select(
                users.c.id,
                users.c.username,
                users.c.org_id,
                users.c.display_name,
                users.c.active,
                users.c.locked_until,
                users.c.created_at,
                users.c.last_login_at,
                users.c.totp_secret.is_not(None).label("totp"),
            )
            if not self._network_wide(conn, actor):
                query = query.where(users.c.org_id == actor.org_id)
            rows = [dict(r) for r in conn.execute(query.order_by(users.c.username)).mappings()]
            grants = self._grants_by_principal(conn, PrincipalKind.USER)
        for row in rows:
            row["roles"] = sorted(grants.get(row["id"], []))
        return rows

    # -- clients -----------------------------------------------------------------------
    def create_client(
        self,
        actor: Principal,
        *,
        client_id: str,
        org_id: str,
        name: str,
        auth_method: str,
        jwks: dict[str, Any] | None = None,
        roles: Sequence[str] = (),
    ) -> NewClient:
        if not _CLIENT_ID.match(client_id):
            raise InvalidInput(
                "A client id is 3-100 letters, digits or . _ -.", expression=["client_id"]
            )
        if auth_method not in ("private_key_jwt", "client_secret"):
            raise InvalidInput(
                "auth_method is private_key_jwt or client_secret.", expression=["auth_method"]
            )
        secret: str | None = None
        if auth_method == "private_key_jwt":
            keys = (jwks or {}).get("keys")
            if (
                not isinstance(keys, list)
                or not keys
                or any(not isinstance(k, dict) or "d" in k or "kty" not in k for k in keys)
            ):
                raise InvalidInput(
                    "private_key_jwt clients need a JWK Set of public keys.", expression=["jwks"]
                )
        else:
            secret = secrets.token_urlsafe(32)
        with self.db.write() as conn:
            self._require_admin(conn, actor, org_id)
            self._require_org(conn, org_id)
            try:
                conn.execute(
                    insert(clients).values(
                        id=client_id,
                        org_id=org_id,
                        name=name.strip() or client_id,
                        auth_method=auth_method,
                        jwks=jwks if auth_method == "private_key_jwt" else None,
                        secret_hash=hash_password(secret) if secret else None,
                        active=True,
                        created_at=self.clock(),
                    )
                )
            except DBIntegrityError:
                raise Conflict("A client with this id already exists.") from None
            self._audit(conn, actor, "C", f"Client/{client_id}", "client created")
            for role in roles:
                self._grant(conn, actor, PrincipalKind.CLIENT, client_id, role, org_id)
        return NewClient(client_id, secret)

    @_changes_principals
    def set_client_active(self, actor: Principal, client_id: str, active: bool) -> None:
        with self.db.write() as conn:
            row = _row(conn, select(clients.c.org_id).where(clients.c.id == client_id))
            if row is None:
                raise NotFound("No such client.")
            self._require_admin(conn, actor, row["org_id"])
            conn.execute(update(clients).where(clients.c.id == client_id).values(active=active))
            self._audit(
                conn,
                actor,
                "U",
                f"Client/{client_id}",
                "client enabled" if active else "client disabled",
            )

    def list_clients(self, actor: Principal) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            query = select(
                clients.c.id,
                clients.c.org_id,
                clients.c.name,
                clients.c.auth_method,
                clients.c.active,
                clients.c.created_at,
            )
            if not self._network_wide(conn, actor):
                query = query.where(clients.c.org_id == actor.org_id)
            rows = [dict(r) for r in conn.execute(query.order_by(clients.c.id)).mappings()]
            grants = self._grants_by_principal(conn, PrincipalKind.CLIENT)
        for row in rows:
            row["roles"] = sorted(grants.get(row["id"], []))
        return rows

    def client_principal(
        self, client_id: str, auth_method: AuthMethod | None = None, address: str | None = None
    ) -> Principal:
        """An active client as a principal: its roles in its organization and their scopes.

        ``auth_method`` defaults to the client's registered method.
        """
        with self.db.read() as conn:
            row = _row(
                conn,
                select(clients, organizations.c.active.label("org_active"))
                .join(organizations, organizations.c.id == clients.c.org_id)
                .where(clients.c.id == client_id),
            )
            if row is None:
                raise NotAuthenticated("The client is not known.")
            if not row["active"] or not row["org_active"]:
                raise NotAuthenticated("The client is disabled.")
            roles = frozenset(
                self._roles(conn, PrincipalKind.CLIENT, client_id, str(row["org_id"]))
            )
        return Principal(
            kind=PrincipalKind.CLIENT,
            id=client_id,
            org_id=str(row["org_id"]),
            roles=roles,
            scopes=scopes_for_roles(roles),
            auth_method=auth_method or AuthMethod(row["auth_method"]),
            client_id=client_id,
            address=address,
        )

    # -- role grants -------------------------------------------------------------------
    def _roles(
        self, conn: Connection, kind: PrincipalKind, principal_id: str, org_id: str
    ) -> list[str]:
        rows = conn.execute(
            select(role_grants.c.role).where(
                role_grants.c.principal_kind == kind.value,
                role_grants.c.principal_id == principal_id,
                role_grants.c.org_id == org_id,
            )
        )
        return [str(r) for r in rows.scalars()]

    def _grants_by_principal(self, conn: Connection, kind: PrincipalKind) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for pid, role in conn.execute(
            select(role_grants.c.principal_id, role_grants.c.role).where(
                role_grants.c.principal_kind == kind.value
            )
        ):
            result.setdefault(str(pid), []).append(str(role))
        return result

    def _principal_org(self, conn: Connection, kind: PrincipalKind, principal_id: str) -> str:
        table = users if kind is PrincipalKind.USER else clients
        row = _row(conn, select(table.c.org_id).where(table.c.id == principal_id))
        if row is None:
            raise NotFound("No such user." if kind is PrincipalKind.USER else "No such client.")
        return str(row["org_id"])

    def _grant(
        self,
        conn: Connection,
        actor: Principal,
        kind: PrincipalKind,
        principal_id: str,
        role: str,
        org_id: str,
    ) -> None:
        if role not in ROLES:
            raise InvalidInput(f"Unknown role; roles are: {', '.join(ROLES)}.", expression=["role"])
        if (
            role == "administrator"
            and self.org_kind(conn, org_id) == "operator"
            and (
                actor.kind is not PrincipalKind.SYSTEM
                and self.org_kind(conn, actor.org_id) != "operator"
            )
        ):
            raise Forbidden("Only network administrators may appoint network administrators.")
        if role in {"clinician", "data_steward"} and self.org_kind(conn, org_id) not in {
            "hospital",
            "operator",
        }:
            raise InvalidInput("This role exists only in hospitals.", expression=["role"])
        exists = _row(
            conn,
            select(role_grants.c.id).where(
                role_grants.c.principal_kind == kind.value,
                role_grants.c.principal_id == principal_id,
                role_grants.c.role == role,
                role_grants.c.org_id == org_id,
            ),
        )
        if exists is None:
            conn.execute(
                insert(role_grants).values(
                    principal_kind=kind.value,
                    principal_id=principal_id,
                    role=role,
                    org_id=org_id,
                    created_at=self.clock(),
                    created_by=actor.label,
                )
            )
            self._audit(conn, actor, "C", f"{kind.value}/{principal_id}", f"role granted: {role}")
        else:
            self._audit(
                conn, actor, "U", f"{kind.value}/{principal_id}", f"role already held: {role}"
            )

    def grant_role(
        self, actor: Principal, kind: PrincipalKind, principal_id: str, role: str
    ) -> None:
        with self.db.write() as conn:
            org_id = self._principal_org(conn, kind, principal_id)
            self._require_admin(conn, actor, org_id)
            self._grant(conn, actor, kind, principal_id, role, org_id)

    @_changes_principals
    def revoke_role(
        self, actor: Principal, kind: PrincipalKind, principal_id: str, role: str
    ) -> None:
        with self.db.write() as conn:
            org_id = self._principal_org(conn, kind, principal_id)
            self._require_admin(conn, actor, org_id)
            result = conn.execute(
                delete(role_grants).where(
                    and_(
                        role_grants.c.principal_kind == kind.value,
                        role_grants.c.principal_id == principal_id,
                        role_grants.c.role == role,
                    )
                )
            )
            if result.rowcount == 0:
                raise NotFound("No such role grant.")
            self._audit(conn, actor, "D", f"{kind.value}/{principal_id}", f"role revoked: {role}")

    # -- identities of DICOM and MLLP peers --------------------------------------------
    def add_edge_identity(
        self,
        actor: Principal,
        *,
        kind: str,
        client_id: str,
        ae_title: str | None = None,
        cert_sha256: str | None = None,
        address: str | None = None,
    ) -> int:
        if kind not in ("dicom", "mllp"):
            raise InvalidInput("kind is dicom or mllp.", expression=["kind"])
        if kind == "dicom" and (not ae_title or not _AE_TITLE.match(ae_title)):
            raise InvalidInput(
                "A DICOM peer needs a calling AE title (1-16 characters).", expression=["ae_title"]
            )
        if kind == "mllp" and not (cert_sha256 or address):
            raise InvalidInput(
                "An MLLP peer needs a certificate fingerprint or an address.",
                expression=["address"],
            )
        if cert_sha256 is not None:
            cert_sha256 = cert_sha256.replace(":", "").lower()
            if not re.fullmatch(r"[0-9a-f]{64}", cert_sha256):
                raise InvalidInput(
                    "cert_sha256 is a SHA-256 fingerprint in hexadecimal.",
                    expression=["cert_sha256"],
                )
        if address is not None:
            try:
                address = str(ipaddress.ip_network(address, strict=False))
            except ValueError:
                raise InvalidInput(
                    "address is an IP address or network (CIDR).", expression=["address"]
                ) from None
        with self.db.write() as conn:
            org_id = self._principal_org(conn, PrincipalKind.CLIENT, client_id)
            self._require_admin(conn, actor, org_id)
            new_id = conn.execute(
                insert(edge_identities)
                .values(
                    kind=kind,
                    client_id=client_id,
                    ae_title=ae_title.strip() if ae_title else None,
                    cert_sha256=cert_sha256,
                    address=address,
                    active=True,
                    created_at=self.clock(),
                )
                .returning(edge_identities.c.id)
            ).scalar_one()
            self._audit(conn, actor, "C", f"Client/{client_id}", f"{kind} peer identity added")
        return int(new_id)
