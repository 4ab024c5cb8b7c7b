"""Access tokens from an external OpenID Connect provider.

Tokens whose ``iss`` is the configured provider are verified against the
provider's JWK Set (RFC 7517 §5; OpenID Connect Core §10.1.1), fetched over
HTTPS and cached, and validated as RFC 9068 §4 asks, with the checks of
:mod:`salus.security.jwtcheck` (RFC 8725). The organization and roles come
from configured claims (a claim name, or a dotted path such as
``realm_access.roles``); roles Salus does not know are ignored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jwt
from sqlalchemy import select

from salus.db.engine import Database
from salus.db.tables import organizations
from salus.db.types import utcnow
from salus.errors import NotAuthenticated, Unavailable
from salus.security import jwtcheck
from salus.security.jwtcheck import ACCESS_TOKEN
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.roles import ROLES, scopes_for_roles

if TYPE_CHECKING:
    from salus.config import Settings

__all__ = ["OidcConfig", "OidcVerifier", "RemoteJwks"]


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


class RemoteJwks:
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
                self._parsed[(kid, alg)] = jwtcheck.pyjwk(jwk, alg, ACCESS_TOKEN)
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


class OidcVerifier:
    """Verifies the external provider's access tokens and maps them to principals.

    The caller routes a token here by its (unverified) ``iss``, after
    :func:`~salus.security.jwtcheck.peek` has checked its form and algorithm.
    """

    def __init__(
        self, config: OidcConfig, db: Database, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.config, self.db, self.clock = config, db, clock
        self.jwks = RemoteJwks(config)

    def verify(self, token: str, alg: str, header: Mapping[str, Any]) -> Principal:
        """An external provider's token: OIDC Core §10.1.1 keys, RFC 9068 §4 validation."""
        oidc = self.config
        if alg not in oidc.algorithms:
            raise NotAuthenticated(f"The {ACCESS_TOKEN} algorithm is not accepted.")
        key = self.jwks.key(jwtcheck.kid(header, ACCESS_TOKEN), alg)
        if key is None:
            raise NotAuthenticated("The token signing key is not known.")
        claims = jwtcheck.decode(
            token,
            key,
            alg,
            audience=oidc.audience,
            issuer=oidc.issuer,
            required=["exp", "iat", "iss", "aud", "sub"],
            noun=ACCESS_TOKEN,
        )
        jwtcheck.check_times(claims, self.clock().timestamp(), ACCESS_TOKEN)
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
