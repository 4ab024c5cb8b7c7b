"""JWT validation helpers shared by Salus's own tokens and the external provider's.

A JWT (RFC 7519) in compact serialization (RFC 7515 §7.1) is first peeked at,
to route it (which key, which issuer) and to refuse it early; PyJWT then
parses and verifies the same bytes strictly. The checks follow RFC 8725 (JWT
best current practice): the algorithm is taken from an allow-list and must
match the key (``none`` and HMAC are always refused, which defeats algorithm
confusion), the key is chosen by ``kid`` among keys the caller trusts, never
from the token itself, and ``exp``, ``nbf`` and ``iat`` (RFC 7519 §4.1.4-6)
are checked with a small :data:`LEEWAY` for clock skew.

Every failure is a :class:`~salus.errors.NotAuthenticated` whose message
names the token by its noun (:data:`ACCESS_TOKEN` or
:data:`CLIENT_ASSERTION`) and the problem, never a secret or patient data.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Mapping
from typing import Any

import jwt

from salus.errors import NotAuthenticated

__all__ = [
    "ACCESS_TOKEN",
    "CLIENT_ASSERTION",
    "LEEWAY",
    "MAX_TOKEN_LENGTH",
    "check_times",
    "decode",
    "json_segment",
    "kid",
    "number",
    "peek",
    "pyjwk",
]

#: Clock skew tolerated on exp, nbf and iat, in seconds.
LEEWAY = 30
#: Longest token accepted (a cheap guard against oversized input).
MAX_TOKEN_LENGTH = 16_384
_CURVES = {"ES256": "P-256", "ES384": "P-384"}
#: The nouns that name a token in error messages.
ACCESS_TOKEN, CLIENT_ASSERTION = "access token", "client assertion"
_Json = dict[str, Any]


def json_segment(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def peek(token: str, allowed: Collection[str], noun: str) -> tuple[str, _Json, _Json]:
    """Alg (checked against ``allowed``), header and claims, before any verification.

    Only routes the token (which key, which issuer); PyJWT then parses and
    verifies the same bytes strictly (RFC 7515 §5.2).
    """
    header: Any = None
    claims: Any = None
    if isinstance(token, str) and len(token) <= MAX_TOKEN_LENGTH and token.count(".") == 2:
        head, body, _ = token.split(".")
        try:
            header, claims = json_segment(head), json_segment(body)
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


def kid(header: Mapping[str, Any], noun: str) -> str:
    value = header.get("kid")
    if not isinstance(value, str) or not value:
        raise NotAuthenticated(f"The {noun} names no signing key (kid).")
    return value


def pyjwk(jwk: Mapping[str, Any], alg: str, noun: str) -> jwt.PyJWK:
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


def decode(
    token: str, key: Any, alg: str, *, audience: str, issuer: str, required: list[str], noun: str
) -> dict[str, Any]:
    """Verify signature, iss and aud (times are checked by :func:`check_times`)."""
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
        what = "token" if noun == ACCESS_TOKEN else noun
        raise NotAuthenticated(f"The {what} signature is not valid.") from None
    except jwt.MissingRequiredClaimError as exc:
        raise NotAuthenticated(f"The {noun} lacks the required '{exc.claim}' claim.") from None
    except jwt.InvalidAudienceError:
        where = "this token endpoint" if noun == CLIENT_ASSERTION else "this server"
        raise NotAuthenticated(f"The {noun} audience is not {where}.") from None
    except jwt.InvalidIssuerError:
        raise NotAuthenticated(f"The {noun} issuer is not trusted.") from None
    except jwt.InvalidKeyError:
        raise NotAuthenticated(f"The {noun} signing key is not acceptable.") from None
    except jwt.InvalidTokenError:
        raise NotAuthenticated(f"The {noun} is not valid.") from None
    return dict(claims)


def number(claims: Mapping[str, Any], name: str, noun: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NotAuthenticated(f"The {noun} '{name}' claim is not a number.")
    return float(value)


def check_times(claims: Mapping[str, Any], now: float, noun: str) -> float:
    """Check exp, nbf and iat (RFC 7519 §4.1.4-6) with :data:`LEEWAY`; returns exp."""
    exp = number(claims, "exp", noun)
    if exp is None:
        raise NotAuthenticated(f"The {noun} lacks the required 'exp' claim.")
    if exp <= now - LEEWAY:
        raise NotAuthenticated(f"The {noun} has expired.")
    nbf = number(claims, "nbf", noun)
    if nbf is not None and nbf > now + LEEWAY:
        raise NotAuthenticated(f"The {noun} is not valid yet.")
    iat = number(claims, "iat", noun)
    if iat is not None and iat > now + LEEWAY:
        raise NotAuthenticated(f"The {noun} was issued in the future.")
    return exp
