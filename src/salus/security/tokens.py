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
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from salus.db.engine import Database
from salus.db.tables import clients, organizations, used_jtis, users
from salus.db.types import utcnow
from salus.errors import ConfigurationError, InvalidInput, NotAuthenticated, Unavailable
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.roles import ROLES, Scope, parse_scope, scopes_for_roles
from salus.security.signing import SigningKeys

if TYPE_CHECKING:
    from salus.config import Settings

__all__ = [
    "ASSERTION_ALGORITHMS",
    "ASSERTION_MAX_LIFETIME",
    "LEEWAY",
    "ClientIdentity",
    "IssuedToken",
    "OidcConfig",
    "TokenService",
    "hash_secret",
    "narrow_scopes",
    "new_client_secret",
]

#: Clock skew tolerated on exp, nbf and iat, in seconds.
LEEWAY = 30
#: Client assertions may expire at most this far ahead (SMART Backend Services).
ASSERTION_MAX_LIFETIME = 300
#: Algorithms accepted for client assertions (SMART Backend Services: RS384, ES384).
ASSERTION_ALGORITHMS = ("ES256", "ES384", "RS256", "RS384")
#: Longest token accepted (a cheap guard against oversized input).
MAX_TOKEN_LENGTH = 16_384
_CURVES = {"ES256": "P-256", "ES384": "P-384"}
_ACCESS, _ASSERTION = "access token", "client assertion"
_Json = dict[str, Any]

# Argon2id (RFC 9106) with OWASP's parameters, as for passwords; client secrets
# are random (256 bits), so the hash guards a leaked table, not a weak secret.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def hash_secret(secret: str) -> str:
    """An Argon2id hash of a client secret (PHC string format)."""
    return _HASHER.hash(secret)


def new_client_secret() -> str:
    """A new random client secret (256 bits, base64url)."""
    return secrets.token_urlsafe(32)


@functools.cache
def _dummy_hash() -> str:
    """Hashed against when the client is unknown, so that failure costs the same."""
    return _HASHER.hash(secrets.token_urlsafe(32))


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


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """An external OpenID Connect provider whose access tokens Salus accepts."""

    issuer: str
    jwks_url: str
    audience: str
    org_claim: str = "org"
    roles_claim: str = "roles"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    #: Seconds for one JWK Set fetch.
    timeout: float = 5.0
    #: An unknown kid refetches the JWK Set at most this often (seconds).
    refetch_interval: float = 60.0
    #: Cached keys are refetched after this many seconds.
    max_age: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        if not settings.auth_oidc_issuer or not settings.auth_oidc_jwks_url:
            return None
        return cls(
            issuer=settings.auth_oidc_issuer,
            jwks_url=settings.auth_oidc_jwks_url,
            audience=settings.auth_oidc_audience or settings.base_url(),
            org_claim=settings.auth_oidc_org_claim,
            roles_claim=settings.auth_oidc_roles_claim,
        )


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


# -- decoding helpers -------------------------------------------------------------------
def _json_segment(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _peek(token: str, allowed: Collection[str], noun: str) -> tuple[str, _Json, _Json]:
    """Alg (checked against ``allowed``), header and claims, before any verification.

    Only routes the token (which key, which issuer); PyJWT then parses and
    verifies the same bytes strictly (RFC 7515 §5.2).
    """
    header: Any = None
    claims: Any = None
    if isinstance(token, str) and len(token) <= MAX_TOKEN_LENGTH and token.count(".") == 2:
        head, body, _ = token.split(".")
        try:
            header, claims = _json_segment(head), _json_segment(body)
        except (ValueError, TypeError):
            pass
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise NotAuthenticated(f"The {noun} is malformed.")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise NotAuthenticated("Unsigned tokens are not accepted.")
    if alg.upper().startswith("HS"):
        raise NotAuthenticated("Tokens signed with a shared secret (HS*) are not accepted.")
    if alg not in allowed:
        raise NotAuthenticated(f"The {noun} algorithm is not accepted.")
    return alg, header, claims


def _kid(header: Mapping[str, Any], noun: str) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise NotAuthenticated(f"The {noun} names no signing key (kid).")
    return kid


def _pyjwk(jwk: Mapping[str, Any], alg: str, noun: str) -> jwt.PyJWK:
    """A JWK made usable for ``alg`` only (kty, crv and alg must fit, RFC 7518 §3)."""
    declared = jwk.get("alg")
    if declared is not None and declared != alg:
        raise NotAuthenticated(f"The {noun} algorithm does not match its key.")
    kty = "EC" if alg.startswith("ES") else "RSA"
    if jwk.get("kty") != kty or (kty == "EC" and jwk.get("crv") != _CURVES.get(alg)):
        raise NotAuthenticated(f"The {noun} algorithm does not match its key.")
    try:
        return jwt.PyJWK(dict(jwk), algorithm=alg)
    except jwt.PyJWKError:
        raise NotAuthenticated(f"The {noun} signing key is not usable.") from None


def _decode(
    token: str, key: Any, alg: str, *, audience: str, issuer: str, required: list[str], noun: str
) -> dict[str, Any]:
    """Verify signature, iss and aud (times are checked by :func:`_check_times`)."""
    options: jwt.types.Options = {
        "require": required,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "enforce_minimum_key_length": True,
    }
    try:
        claims = jwt.decode(
            token, key, algorithms=[alg], audience=audience, issuer=issuer, options=options
        )
    except jwt.InvalidSignatureError:
        what = "token" if noun == _ACCESS else noun
        raise NotAuthenticated(f"The {what} signature is not valid.") from None
    except jwt.MissingRequiredClaimError as exc:
        raise NotAuthenticated(f"The {noun} lacks the required '{exc.claim}' claim.") from None
    except jwt.InvalidAudienceError:
        where = "this token endpoint" if noun == _ASSERTION else "this server"
        raise NotAuthenticated(f"The {noun} audience is not {where}.") from None
    except jwt.InvalidIssuerError:
        raise NotAuthenticated(f"The {noun} issuer is not trusted.") from None
    except jwt.InvalidKeyError:
        raise NotAuthenticated(f"The {noun} signing key is not acceptable.") from None
    except jwt.InvalidTokenError:
        raise NotAuthenticated(f"The {noun} is not valid.") from None
    return dict(claims)


def _number(claims: Mapping[str, Any], name: str, noun: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NotAuthenticated(f"The {noun} '{name}' claim is not a number.")
    return float(value)


def _check_times(claims: Mapping[str, Any], now: float, noun: str) -> float:
    """Check exp, nbf and iat (RFC 7519 §4.1.4-6) with :data:`LEEWAY`; returns exp."""
    exp = _number(claims, "exp", noun)
    if exp is None:
        raise NotAuthenticated(f"The {noun} lacks the required 'exp' claim.")
    if exp <= now - LEEWAY:
        raise NotAuthenticated(f"The {noun} has expired.")
    nbf = _number(claims, "nbf", noun)
    if nbf is not None and nbf > now + LEEWAY:
        raise NotAuthenticated(f"The {noun} is not valid yet.")
    iat = _number(claims, "iat", noun)
    if iat is not None and iat > now + LEEWAY:
        raise NotAuthenticated(f"The {noun} was issued in the future.")
    return exp


def _claim_path(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by dotted path (``realm_access.roles``) when not top-level."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _known_roles(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        names: Iterable[Any] = value.split()
    elif isinstance(value, list):
        names = value
    else:
        return frozenset()
    return frozenset(n for n in names if isinstance(n, str) and n in ROLES)


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


class _RemoteJwks:
    """The external provider's JWK Set, fetched with httpx and cached."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, Any]] = {}
        self._parsed: dict[tuple[str, str], jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None

    def key(self, kid: str, alg: str) -> jwt.PyJWK | None:
        """The key for ``kid`` usable with ``alg``; None when the provider has none.

        Fetches when nothing is cached or the cache is older than ``max_age``,
        and for an unknown kid at most every ``refetch_interval`` seconds.
        """
        with self._lock:
            now, cfg = time.monotonic(), self.config
            fresh = self._fetched_at is not None and now - self._fetched_at < cfg.max_age
            last = self._attempted_at
            recent = last is not None and now - last < cfg.refetch_interval
            if not fresh or (kid not in self._keys and not recent):
                self._attempted_at = now
                self._keys = self._fetch()
                self._parsed.clear()
                self._fetched_at = now
            jwk = self._keys.get(kid)
            if jwk is None:
                return None
            if (kid, alg) not in self._parsed:
                self._parsed[(kid, alg)] = _pyjwk(jwk, alg, _ACCESS)
            return self._parsed[(kid, alg)]

    def _fetch(self) -> dict[str, dict[str, Any]]:
        import httpx  # only deployments with an external provider need it

        try:
            response = httpx.get(
                self.config.jwks_url,
                timeout=self.config.timeout,
                headers={"Accept": "application/json"},
            )
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError):
            raise Unavailable("The identity provider's keys could not be fetched.") from None
        found = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(found, list):
            raise Unavailable("The identity provider's JWK Set is not valid.")
        return {
            jwk["kid"]: jwk
            for jwk in found
            if isinstance(jwk, dict)
            and isinstance(jwk.get("kid"), str)
            and jwk.get("kty") in ("EC", "RSA")
            and jwk.get("use", "sig") == "sig"
        }


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
    ) -> None:
        if oidc is not None and oidc.issuer == issuer:
            raise ConfigurationError("The external OIDC issuer must differ from Salus's own.")
        self.db, self.keys, self.issuer, self.audience = db, keys, issuer, audience
        self.ttl, self.oidc, self.clock = ttl, oidc, clock
        self.algorithms = frozenset(algorithms)
        self._remote = _RemoteJwks(oidc) if oidc is not None else None
        self._purged_at: float | None = None

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
        alg, header, unverified = _peek(token, self.algorithms | set(oidc_algs), _ACCESS)
        if self.oidc is not None and unverified.get("iss") == self.oidc.issuer:
            return self._verify_oidc(token, alg, header, self.oidc)
        if alg not in self.algorithms:
            raise NotAuthenticated(f"The {_ACCESS} algorithm is not accepted.")
        if header.get("typ") != "at+jwt":
            raise NotAuthenticated("The token is not a Salus access token (typ).")
        record = self.keys.lookup(_kid(header, _ACCESS))
        if record is None:
            raise NotAuthenticated("The token signing key is not known.")
        if record.retired:
            raise NotAuthenticated("The token signing key has been retired.")
        if record.alg != alg:
            raise NotAuthenticated(f"The {_ACCESS} algorithm does not match its key.")
        claims = _decode(
            token,
            record.public_key,
            alg,
            audience=self.audience,
            issuer=self.issuer,
            noun=_ACCESS,
            required=["exp", "iat", "iss", "aud", "sub", "jti", "org", "kind"],
        )
        _check_times(claims, self.clock().timestamp(), _ACCESS)
        principal = _principal_from_claims(claims)
        self._check_still_active(principal)
        return principal

    def _check_still_active(self, principal: Principal) -> None:
        """A disabled account, client or organization loses its tokens at once."""
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

    def _verify_oidc(
        self, token: str, alg: str, header: Mapping[str, Any], oidc: OidcConfig
    ) -> Principal:
        """An external provider's token: OIDC Core §10.1.1 keys, RFC 9068 §4 validation."""
        if alg not in oidc.algorithms:
            raise NotAuthenticated(f"The {_ACCESS} algorithm is not accepted.")
        assert self._remote is not None  # noqa: S101 - set whenever oidc is
        key = self._remote.key(_kid(header, _ACCESS), alg)
        if key is None:
            raise NotAuthenticated("The token signing key is not known.")
        claims = _decode(
            token,
            key,
            alg,
            audience=oidc.audience,
            issuer=oidc.issuer,
            required=["exp", "iat", "iss", "aud", "sub"],
            noun=_ACCESS,
        )
        _check_times(claims, self.clock().timestamp(), _ACCESS)
        org_id = _claim_path(claims, oidc.org_claim)
        if not isinstance(org_id, str) or not org_id:
            raise NotAuthenticated("The identity provider's token names no organization.")
        with self.db.read() as conn:
            org_active = conn.execute(
                select(organizations.c.active).where(organizations.c.id == org_id)
            ).scalar_one_or_none()
        if org_active is None:
            raise NotAuthenticated("The organization named by the token is not known.")
        if not org_active:
            raise NotAuthenticated("The organization is disabled.")
        roles = _known_roles(_claim_path(claims, oidc.roles_claim))
        jti = claims.get("jti")
        return Principal(
            kind=PrincipalKind.USER,
            id=str(claims["sub"]),
            org_id=org_id,
            roles=roles,
            scopes=scopes_for_roles(roles),
            auth_method=AuthMethod.OIDC,
            token_id=jti if isinstance(jti, str) else None,
        )

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
        alg, header, unverified = _peek(assertion, ASSERTION_ALGORITHMS, _ASSERTION)
        kid = _kid(header, _ASSERTION)
        client_id = unverified.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise NotAuthenticated(f"The {_ASSERTION} lacks the required 'iss' claim.")
        if unverified.get("sub") != client_id:
            raise NotAuthenticated(f"The {_ASSERTION} 'sub' must equal its 'iss' (the client id).")
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
            raise NotAuthenticated(f"The {_ASSERTION} key (kid) is not registered for this client.")
        claims = _decode(
            assertion,
            _pyjwk(jwk, alg, _ASSERTION),
            alg,
            audience=token_endpoint_url,
            issuer=client_id,
            required=["iss", "sub", "aud", "exp", "jti"],
            noun=_ASSERTION,
        )
        now = self.clock()
        exp = _check_times(claims, now.timestamp(), _ASSERTION)
        if exp > now.timestamp() + ASSERTION_MAX_LIFETIME + LEEWAY:
            raise NotAuthenticated(f"The {_ASSERTION} expires too far ahead (at most 5 minutes).")
        jti = claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= 200:
            raise NotAuthenticated(f"The {_ASSERTION} 'jti' claim is not valid.")
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
        try:
            ok = _HASHER.verify(stored or _dummy_hash(), secret[:1024]) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None or stored is None:
            raise NotAuthenticated("The client credentials are not valid.")
        if not row.active or not row.org_active:
            raise NotAuthenticated("The client is disabled.")
        if _HASHER.check_needs_rehash(stored):
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
