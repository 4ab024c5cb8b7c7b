"""Signing in: passwords (argon2id), TOTP second factors and lock-out.

Failures are audited with what went wrong (for the security officer) while
the caller only learns that the credentials were not accepted; an account
is locked after ``max_failures`` wrong passwords or codes in a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, RowMapping

from salus.audit.events import AuditEvent
from salus.db.tables import organizations, users
from salus.db.types import utcnow
from salus.errors import NotAuthenticated
from salus.security.directory import Directory, _row
from salus.security.passwords import new_totp_secret, totp_uri, verify_password, verify_totp
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.roles import scopes_for_roles
from salus.storage.envelope import ValueSealer

__all__ = ["LoginPolicy", "SignIn"]


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)


class SignIn:
    """Authenticates people and manages their second factor."""

    def __init__(
        self,
        directory: Directory,
        *,
        login_policy: LoginPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.directory = directory
        self.login_policy = login_policy or LoginPolicy()
        self.clock = clock

    def login(
        self, username: str, password: str, code: str | None, address: str | None = None
    ) -> Principal:
        """Check a password (and TOTP code); lock the account after repeated failures.

        Failures are audited; the message never says which part was wrong.
        """
        now = self.clock()
        with self.directory.db.write() as conn:
            user = _row(conn, select(users).where(users.c.username == username))
            password_ok = verify_password(user["password_hash"] if user else None, password)
            failure: str | None = None
            if user is None:
                failure = "unknown user"
            elif not user["active"]:
                failure = "account disabled"
            elif user["locked_until"] is not None and user["locked_until"] > now:
                failure = "account locked"
            elif not password_ok:
                failure = "wrong password"
            else:
                secret = self._totp_secret(user)
                if secret is not None and not code:
                    failure = "one-time code missing"
                elif secret is not None and not verify_totp(secret, code or "", now):
                    failure = "wrong one-time code"
            if failure is None:
                assert user is not None  # noqa: S101 - narrowed above
                conn.execute(
                    update(users)
                    .where(users.c.id == user["id"])
                    .values(failed_logins=0, locked_until=None, last_login_at=now)
                )
                principal = self._user_principal(
                    conn, user, address, with_totp=self._totp_secret(user) is not None
                )
                self.directory.audit.append(
                    conn,
                    [
                        AuditEvent.for_principal(
                            principal,
                            category="auth",
                            action="E",
                            outcome=0,
                            entity="login",
                            description="signed in",
                        )
                    ],
                )
                return principal
            if user is not None and failure in {"wrong password", "wrong one-time code"}:
                failures = int(user["failed_logins"]) + 1
                values: dict[str, Any] = {"failed_logins": failures}
                if failures >= self.login_policy.max_failures:
                    values["locked_until"] = now + self.login_policy.lockout
                    failure += "; account locked"
                conn.execute(update(users).where(users.c.id == user["id"]).values(**values))
            self.directory.audit.append(
                conn,
                [
                    AuditEvent(
                        category="auth",
                        action="E",
                        outcome=4,
                        principal_kind="user",
                        principal_id=str(user["id"]) if user else None,
                        org_id=str(user["org_id"]) if user else None,
                        address=address,
                        entity="login",
                        description=f"sign-in refused: {failure}",
                    )
                ],
            )
        if failure == "one-time code missing":
            raise NotAuthenticated("A one-time code is required.")
        if failure is not None and failure.startswith("account locked"):
            raise NotAuthenticated("The account is locked; try again later.")
        raise NotAuthenticated("Invalid username, password or one-time code.")

    def _user_principal(
        self, conn: Connection, user: RowMapping, address: str | None, *, with_totp: bool
    ) -> Principal:
        org = _row(conn, select(organizations.c.active).where(organizations.c.id == user["org_id"]))
        if org is None or not org["active"]:
            raise NotAuthenticated("The organization of this account is disabled.")
        roles = frozenset(
            self.directory._roles(conn, PrincipalKind.USER, str(user["id"]), str(user["org_id"]))
        )
        return Principal(
            kind=PrincipalKind.USER,
            id=str(user["id"]),
            org_id=str(user["org_id"]),
            roles=roles,
            scopes=scopes_for_roles(roles),
            auth_method=AuthMethod.PASSWORD_TOTP if with_totp else AuthMethod.PASSWORD,
            address=address,
        )

    def user_principal(self, user_id: str) -> Principal:
        with self.directory.db.read() as conn:
            user = self.directory._user(conn, user_id)
            if not user["active"]:
                raise NotAuthenticated("The account is disabled.")
            return self._user_principal(conn, user, None, with_totp=False)

    def enroll_totp(self, actor: Principal, user_id: str) -> str:
        """Turn on the second factor; returns the ``otpauth://`` URI (shown once)."""
        secret = new_totp_secret()
        with self.directory.db.write() as conn:
            user = self.directory._user(conn, user_id)
            if not (actor.kind is PrincipalKind.USER and actor.id == user_id):
                self.directory._require_admin(conn, actor, user["org_id"])
            sealed = (
                self.directory.sealer.seal(secret.encode(), f"totp:{user_id}".encode())
                if self.directory.sealer
                else secret.encode()
            )
            conn.execute(update(users).where(users.c.id == user_id).values(totp_secret=sealed))
            self.directory._audit(conn, actor, "U", f"User/{user_id}", "second factor enrolled")
        return totp_uri(secret, str(user["username"]))

    def _totp_secret(self, user: RowMapping) -> str | None:
        sealed = user["totp_secret"]
        if sealed is None:
            return None
        raw = bytes(sealed)
        if self.directory.sealer is not None and raw.startswith(ValueSealer.MAGIC):
            raw = self.directory.sealer.open(raw, f"totp:{user['id']}".encode())
        return raw.decode()

    def rewrap_totp(self) -> int:
        """Re-wrap sealed TOTP secrets under the active master key; returns how many."""
        if self.directory.sealer is None:
            return 0
        done = 0
        with self.directory.db.write() as conn:
            rows = conn.execute(
                select(users.c.id, users.c.totp_secret).where(users.c.totp_secret.is_not(None))
            ).all()
            for user_id, sealed in rows:
                raw = bytes(sealed)
                if not raw.startswith(ValueSealer.MAGIC):
                    continue
                new = self.directory.sealer.rewrap(raw, f"totp:{user_id}".encode())
                if new is not None:
                    conn.execute(update(users).where(users.c.id == user_id).values(totp_secret=new))
                    done += 1
        return done
