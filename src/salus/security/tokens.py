"""Access tokens and client authentication.

* **Access tokens** are JWTs (RFC 7519) signed by Salus's own keys
  (:mod:`salus.security.signing`), typed ``at+jwt`` (RFC 9068 §2.1), carrying
  ``iss``, ``sub``, ``aud``, ``iat``, ``nbf``, ``exp``, ``jti``, ``scope``
  (SMART App Launch v2 scopes, space-separated as in RFC 6749 §3.3) and the
  Salus claims ``org``, ``kind``, ``roles``, ``amr`` (RFC 8176) and, for
  clients, ``client_id`` (RFC 9068 §2.2).
* **External tokens** from the configured OpenID Connect provider (its
  ``iss``) are verified against the provider's JWK Set (RFC 7517 §5), fetched
  over HTTPS and cached; organization and roles come from configured claims.
* **Client authentication** at the token endpoint (RFC 6749 §4.4, client
  credentials): ``private_key_jwt`` (RFC 7523 §2.2 and §3; SMART App Launch v2
  Backend Services: ``iss`` = ``sub`` = client id, ``aud`` = the token
  endpoint URL, ``exp`` at most five minutes ahead, ``jti`` used once), or a
  client secret (RFC 6749 §2.3.1) checked against an Argon2id hash (RFC 9106).

Verification follows RFC 8725 (JWT best current practice): the algorithm is
taken from an allow-list and must match the key (``none`` and HMAC are always
refused, which defeats algorithm confusion), the key is chosen by ``kid``
among keys Salus trusts, never from the token itself (``jwk``/``jku``
headers are ignored), and every failure is a :class:`NotAuthenticated` with a
short message that names the problem, never a secret or patient data.

The JWT checks live in :mod:`salus.security.jwtcheck`, the external provider
in :mod:`salus.security.oidc`; client secrets are hashed as passwords are
(:mod:`salus.security.passwords`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from salus.db.engine import Database
from salus.db.tables import clients, organizations, used_jtis, users
from salus.db.types import utcnow
from salus.errors import ConfigurationError, InvalidInput, NotAuthenticated
from salus.security import jwtcheck
from salus.security.jwtcheck import ACCESS_TOKEN, CLIENT_ASSERTION, LEEWAY
from salus.security.oidc import OidcConfig, OidcVerifier
from salus.security.passwords import hash_password, needs_rehash, verify_password
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.roles import Scope, parse_scope, scopes_for_roles
from salus.security.signing import SigningKeys

#: Most verified tokens remembered by one process (cleared when full).
VERIFIED_CACHE_SIZE = 50_000

__all__ = [
    "ASSERTION_ALGORITHMS",
    "ASSERTION_MAX_LIFETIME",
    "ClientIdentity",
    "IssuedToken",
    "OidcConfig",
    "TokenService",
    "hash_secret",
    "narrow_scopes",
    "new_client_secret",
]

#: Client assertions may expire at most this far ahead (SMART Backend Services).
ASSERTION_MAX_LIFETIME = 300
#: Algorithms accepted for client assertions (SMART Backend Services: RS384, ES384).
ASSERTION_ALGORITHMS = ("ES256", "ES384", "RS256", "RS384")


# Argon2id (RFC 9106) with OWASP's parameters, as for passwords; client secrets
# are random (256 bits), so the hash guards a leaked table, not a weak secret.
def hash_secret(secret: str) -> str:
    """An Argon2id hash of a client secret (PHC string format)."""
    return hash_password(secret)


def new_client_secret() -> str:
    """A new random client secret (256 bits, base64url)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token response body (RFC 6749 §5.1)."""

    access_token: str
    expires_in: int
    scope: str
    token_type: str = "Bearer"  # noqa: S105 - the RFC 6750 token type, not a secret

    def __repr__(self) -> str:  # never show the token
        return f"IssuedToken(expires_in={self.expires_in}, scope={self.scope!r})"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A client that proved who it is at the token endpoint."""

    client_id: str
    org_id: str
    auth_method: AuthMethod
    #: The assertion's jti (private_key_jwt only).
    jti: str | None = None


def narrow_scopes(requested: Iterable[str], allowed: Iterable[str]) -> frozenset[str]:
    """The part of ``requested`` that ``allowed`` covers (never more than allowed).

    Scopes are compared as SMART v2 scopes: ``user/Observation.rs`` is within
    ``user/*.cruds``; ``user/Observation.cruds`` against ``user/*.rs`` yields
    ``user/Observation.rs``. Scopes that are not SMART resource scopes are
    dropped (RFC 6749 §3.3 lets the server grant less than requested).
    """
    grants = [_parse(text) for text in allowed]
    granted: set[Scope] = set()
    for text in requested:
        want = _parse(text)
        if want is None:
            continue
        for have in grants:
            if have is None or have.context != want.context:
                continue
            if have.resource_type == "*":
                resource_type = want.resource_type
            elif want.resource_type in ("*", have.resource_type):
                resource_type = have.resource_type
            else:
                continue
            permissions = want.permissions & have.permissions
            if permissions:
                granted.add(Scope(want.context, resource_type, frozenset(permissions)))
    return frozenset(str(s) for s in granted if not any(o != s and _covers(o, s) for o in granted))


def _parse(text: str) -> Scope | None:
    try:
        return parse_scope(text)
    except InvalidInput:
        return None


def _covers(big: Scope, small: Scope) -> bool:
    return (
        big.context == small.context
        and big.resource_type in ("*", small.resource_type)
        and small.permissions <= big.permissions
    )


# Statements built once (hot paths): the account and its organization, by id.
_STILL_ACTIVE = {
    table.name: select(table.c.active, table.c.org_id, organizations.c.active.label("org_active"))
    .select_from(table.join(organizations, table.c.org_id == organizations.c.id))
    .where(table.c.id == bindparam("id"))
    for table in (users, clients)
}
_CLIENT_ROW = (
    select(
        clients.c.id,
        clients.c.org_id,
        clients.c.auth_method,
        clients.c.jwks,
        clients.c.secret_hash,
        clients.c.active,
        organizations.c.active.label("org_active"),
    )
    .select_from(clients.join(organizations, clients.c.org_id == organizations.c.id))
    .where(clients.c.id == bindparam("id"))
)


class TokenService:
    """Issues and verifies access tokens; authenticates clients at the token endpoint.

    ``issuer`` and ``audience`` are Salus's own (``Settings.base_url()``);
    ``algorithms`` are those accepted on Salus's own tokens.
    """

    def __init__(
        self,
        db: Database,
        keys: SigningKeys,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        oidc: OidcConfig | None = None,
        clock: Callable[[], datetime] = utcnow,
        algorithms: Collection[str] = ("ES256", "RS256"),
        active_cache_seconds: float = 0.0,
    ) -> None:
        if oidc is not None and oidc.issuer == issuer:
            raise ConfigurationError("The external OIDC issuer must differ from Salus's own.")
        self.db, self.keys, self.issuer, self.audience = db, keys, issuer, audience
        self.ttl, self.oidc, self.clock = ttl, oidc, clock
        self.algorithms = frozenset(algorithms)
        self._external = OidcVerifier(oidc, db, clock=clock) if oidc is not None else None
        self._purged_at: float | None = None
        #: How long an "account still active" check is reused (0: never). Changes
        #: made through the directory in this process clear it at once
        #: (:meth:`forget_accounts`); other processes see them within this time.
        self.active_cache_seconds = active_cache_seconds
        self._active: dict[tuple[str, str, str], float] = {}
        #: Salus's own tokens already verified in this process: token -> (principal,
        #: exp, kid). Checking a signature costs more than the rest of a read by
        #: id; a token seen before is only checked for expiry, for its key's
        #: retirement and (through the account cache) for its account.
        self._verified: dict[str, tuple[Principal, float, str]] = {}

    # -- issuing ---------------------------------------------------------------------
    def issue(self, principal: Principal, *, scopes: frozenset[str] | None = None) -> IssuedToken:
        """Sign an access token for a user or client (RFC 9068 claims, SMART scopes).

        The scopes granted are those the principal's roles grant (narrowed to
        ``principal.scopes`` when that is set), narrowed again to ``scopes``
        when given: never more than the roles allow. Raises ``InvalidInput``
        when none of the requested scopes can be granted (RFC 6749 §5.2
        ``invalid_scope``).
        """
        if principal.kind not in (PrincipalKind.USER, PrincipalKind.CLIENT):
            raise InvalidInput("Access tokens are issued to users and clients only.")
        allowed = scopes_for_roles(principal.roles)
        if principal.scopes:
            allowed = narrow_scopes(principal.scopes, allowed)
        granted = allowed if scopes is None else narrow_scopes(scopes, allowed)
        if scopes and not granted:
            raise InvalidInput("None of the requested scopes can be granted.")
        key = self.keys.active()
        if key.alg not in self.algorithms:
            raise ConfigurationError("The active signing key's algorithm is not accepted.")
        now = int(self.clock().timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": principal.id,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": secrets.token_urlsafe(16),
            "scope": " ".join(sorted(granted)),
            "org": principal.org_id,
            "kind": principal.kind.value,
            "roles": sorted(principal.roles),
            "amr": [principal.auth_method.value],
        }
        if principal.client_id is not None:
            claims["client_id"] = principal.client_id
        token = jwt.encode(
            claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"}
        )
        return IssuedToken(token, self.ttl, claims["scope"])

    # -- verifying -------------------------------------------------------------------
    def verify(self, token: str) -> Principal:
        """The principal an access token stands for (Salus's own, or the OIDC provider's).

        Raises ``NotAuthenticated`` for any invalid token, ``Unavailable`` when
        the provider's keys cannot be fetched.
        """
        oidc_algs = self.oidc.algorithms if self.oidc is not None else ()
        alg, header, unverified = jwtcheck.peek(
            token, self.algorithms | set(oidc_algs), ACCESS_TOKEN
        )
        if self.oidc is not None and unverified.get("iss") == self.oidc.issuer:
            assert self._external is not None  # noqa: S101 - set whenever oidc is
            return self._external.verify(token, alg, header)
        if alg not in self.algorithms:
            raise NotAuthenticated(f"The {ACCESS_TOKEN} algorithm is not accepted.")
        if header.get("typ") != "at+jwt":
            raise NotAuthenticated("The token is not a Salus access token (typ).")
        record = self.keys.lookup(jwtcheck.kid(header, ACCESS_TOKEN))
        if record is None:
            raise NotAuthenticated("The token signing key is not known.")
        if record.retired:
            raise NotAuthenticated("The token signing key has been retired.")
        if record.alg != alg:
            raise NotAuthenticated(f"The {ACCESS_TOKEN} algorithm does not match its key.")
        claims = jwtcheck.decode(
            token,
            record.public_key,
            alg,
            audience=self.audience,
            issuer=self.issuer,
            noun=ACCESS_TOKEN,
            required=["exp", "iat", "iss", "aud", "sub", "jti", "org", "kind"],
        )
        exp = jwtcheck.check_times(claims, self.clock().timestamp(), ACCESS_TOKEN)
        principal = _principal_from_claims(claims)
        self._check_still_active(principal)
        if self.active_cache_seconds > 0:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = (principal, exp, record.kid)
        return principal

    def verify_cached(self, token: str) -> Principal | None:
        """The principal of a token this process has verified before, when that
        needs neither the database nor a signature check; otherwise None (the
        caller then runs :meth:`verify`). Never raises: a token that has expired,
        whose key was retired or whose account check is stale takes the full path."""
        hit = self._verified.get(token)
        if hit is None:
            return None
        principal, exp, kid = hit
        if exp <= self.clock().timestamp() - jwtcheck.LEEWAY:
            self._verified.pop(token, None)
            return None
        record = self.keys.cached(kid)
        if record is None or record.retired:
            return None
        key = (principal.kind.value, principal.id, principal.org_id)
        if self._active.get(key, 0.0) <= time.monotonic():
            return None
        return principal

    def forget_accounts(self) -> None:
        """Drop cached account checks (called when the directory changes)."""
        self._active.clear()
        self._verified.clear()

    def _check_still_active(self, principal: Principal) -> None:
        """A disabled account, client or organization loses its tokens at once (or,
        in other processes, within ``active_cache_seconds``)."""
        key = (principal.kind.value, principal.id, principal.org_id)
        now = time.monotonic()
        if self.active_cache_seconds > 0 and self._active.get(key, 0.0) > now:
            return
        self._query_still_active(principal)
        if self.active_cache_seconds > 0:
            if len(self._active) > 100_000:
                self._active.clear()
            self._active[key] = now + self.active_cache_seconds

    def _query_still_active(self, principal: Principal) -> None:
        table = users if principal.kind is PrincipalKind.USER else clients
        who = "user account" if principal.kind is PrincipalKind.USER else "client"
        with self.db.read() as conn:
            row = conn.execute(_STILL_ACTIVE[table.name], {"id": principal.id}).first()
        if row is None:
            raise NotAuthenticated(f"The {who} of this token no longer exists.")
        if row.org_id != principal.org_id:
            raise NotAuthenticated(f"The {who} no longer belongs to the token's organization.")
        if not row.org_active:
            raise NotAuthenticated("The organization is disabled.")
        if not row.active:
            raise NotAuthenticated(f"The {who} is disabled.")

    # -- client authentication -------------------------------------------------------
    def authenticate_client_assertion(
        self, assertion: str, *, token_endpoint_url: str
    ) -> ClientIdentity:
        """Authenticate a client by a signed JWT (RFC 7523 §3, SMART Backend Services).

        The JWT must be signed by a key of the client's registered JWK Set
        (chosen by ``kid``), have ``iss`` = ``sub`` = the client id, ``aud`` =
        the token endpoint URL, an ``exp`` at most five minutes ahead and a
        ``jti`` never used before (kept in ``used_jtis`` until it expires).
        """
        alg, header, unverified = jwtcheck.peek(assertion, ASSERTION_ALGORITHMS, CLIENT_ASSERTION)
        kid = jwtcheck.kid(header, CLIENT_ASSERTION)
        client_id = unverified.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise NotAuthenticated(f"The {CLIENT_ASSERTION} lacks the required 'iss' claim.")
        if unverified.get("sub") != client_id:
            raise NotAuthenticated(
                f"The {CLIENT_ASSERTION} 'sub' must equal its 'iss' (the client id)."
            )
        row = self._client_row(client_id)
        if row is None or row.auth_method != AuthMethod.PRIVATE_KEY_JWT.value:
            raise NotAuthenticated("The client is not registered for private_key_jwt.")
        registered = row.jwks.get("keys", []) if isinstance(row.jwks, dict) else []
        jwk = next(
            (
                k
                for k in registered
                if isinstance(k, dict) and k.get("kid") == kid and k.get("use", "sig") == "sig"
            ),
            None,
        )
        if jwk is None:
            raise NotAuthenticated(
                f"The {CLIENT_ASSERTION} key (kid) is not registered for this client."
            )
        claims = jwtcheck.decode(
            assertion,
            jwtcheck.pyjwk(jwk, alg, CLIENT_ASSERTION),
            alg,
            audience=token_endpoint_url,
            issuer=client_id,
            required=["iss", "sub", "aud", "exp", "jti"],
            noun=CLIENT_ASSERTION,
        )
        now = self.clock()
        exp = jwtcheck.check_times(claims, now.timestamp(), CLIENT_ASSERTION)
        if exp > now.timestamp() + ASSERTION_MAX_LIFETIME + LEEWAY:
            raise NotAuthenticated(
                f"The {CLIENT_ASSERTION} expires too far ahead (at most 5 minutes)."
            )
        jti = claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= 200:
            raise NotAuthenticated(f"The {CLIENT_ASSERTION} 'jti' claim is not valid.")
        if not row.active or not row.org_active:
            raise NotAuthenticated("The client is disabled.")
        self._use_jti(client_id, jti, exp, now)
        return ClientIdentity(client_id, row.org_id, AuthMethod.PRIVATE_KEY_JWT, jti)

    def _use_jti(self, client_id: str, jti: str, exp: float, now: datetime) -> None:
        """Record a jti until its assertion expires (RFC 7523 §3 item 7): used once only."""
        with self.db.write() as conn:
            tick = time.monotonic()
            if self._purged_at is None or tick - self._purged_at >= 60:
                conn.execute(delete(used_jtis).where(used_jtis.c.expires_at < now))
                self._purged_at = tick
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            inserted = conn.execute(
                insert(used_jtis)
                .values(
                    client_id=client_id,
                    jti=jti,
                    expires_at=datetime.fromtimestamp(exp + LEEWAY, tz=UTC),
                )
                .on_conflict_do_nothing(index_elements=["client_id", "jti"])
                .returning(used_jtis.c.jti)
            ).scalar_one_or_none()
        if inserted is None:
            raise NotAuthenticated("The client assertion was already used.")

    def authenticate_client_secret(self, client_id: str, secret: str) -> ClientIdentity:
        """Authenticate a client by id and secret (RFC 6749 §2.3.1), Argon2id-verified.

        An unknown client costs the same hash as a known one, so response time
        does not tell which client ids exist.
        """
        row = self._client_row(client_id) if client_id else None
        stored: str | None = None
        if row is not None and row.auth_method == AuthMethod.CLIENT_SECRET.value:
            stored = row.secret_hash or None
        ok = verify_password(stored, secret[:1024])
        if not ok or row is None or stored is None:
            raise NotAuthenticated("The client credentials are not valid.")
        if not row.active or not row.org_active:
            raise NotAuthenticated("The client is disabled.")
        if needs_rehash(stored):
            with self.db.write() as conn:
                conn.execute(
                    clients.update()
                    .where(clients.c.id == client_id)
                    .values(secret_hash=hash_secret(secret))
                )
        return ClientIdentity(client_id, row.org_id, AuthMethod.CLIENT_SECRET)

    def _client_row(self, client_id: str) -> Any:
        with self.db.read() as conn:
            return conn.execute(_CLIENT_ROW, {"id": client_id}).first()


def _principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Rebuild the principal from a verified Salus access token."""
    try:
        kind = PrincipalKind(claims["kind"])
        auth_method = AuthMethod((claims.get("amr") or [AuthMethod.LOCAL.value])[0])
        scope, roles = claims.get("scope", ""), claims.get("roles", [])
        client_id, org_id = claims.get("client_id"), claims["org"]
        valid = (
            kind is not PrincipalKind.SYSTEM
            and isinstance(scope, str)
            and isinstance(org_id, str)
            and isinstance(roles, list)
            and all(isinstance(r, str) for r in roles)
            and (client_id is None or isinstance(client_id, str))
        )
    except (KeyError, IndexError, TypeError, ValueError):
        valid = False
    if not valid:
        raise NotAuthenticated("The access token claims are not valid.")
    return Principal(
        kind=kind,
        id=str(claims["sub"]),
        org_id=org_id,
        roles=frozenset(roles),
        scopes=frozenset(scope.split()),
        auth_method=auth_method,
        client_id=client_id,
        token_id=str(claims["jti"]),
    )
