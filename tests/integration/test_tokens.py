"""Access tokens, signing keys and client authentication, on SQLite and PostgreSQL.

Covers RFC 7519 (JWT) validation, RFC 8725 attacks (``alg: none``, HMAC
algorithm confusion, a forged signature under a known kid), key rotation and
retirement, RFC 7523 / SMART Backend Services client assertions (replay,
audience, lifetime, unknown and unregistered keys), client secrets, scope
narrowing and tokens from an external OpenID Connect provider whose JWK Set
is served over real HTTP on a loopback port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import select, update

from salus.audit.chain import AuditLog
from salus.db import Database
from salus.db.tables import clients, organizations, role_grants, signing_keys, used_jtis, users
from salus.db.types import utcnow
from salus.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NotAuthenticated,
    Unavailable,
)
from salus.security.directory import Directory
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.signing import SigningKeys
from salus.security.tokens import (
    OidcConfig,
    TokenService,
    hash_secret,
    narrow_scopes,
    new_client_secret,
)
from salus.storage.envelope import ValueSealer
from salus.storage.keys import FileKeyProvider
from tests.conftest import free_port

ISSUER = "https://salus.test"
TOKEN_URL = f"{ISSUER}/auth/token"
OIDC_ISSUER = "https://idp.test/realms/health"
SECRET = "s3cret-client-secret-for-tests-only"

# Client keys, made once (RSA generation is slow).
EC_CLIENT_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_CLIENT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
IDP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    jwk.pop("key_ops", None)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


# -- fixtures ------------------------------------------------------------------------------
def _directory(tokens: TokenService) -> Directory:
    return Directory(tokens.db, AuditLog(tokens.db), None)


def _seed(db: Database) -> None:
    now = utcnow()
    jwks = {
        "keys": [_jwk(EC_CLIENT_KEY, "ck-ec", "ES384"), _jwk(RSA_CLIENT_KEY, "ck-rsa", "RS384")]
    }
    with db.write() as conn:
        conn.execute(
            organizations.insert(),
            [
                {"id": org, "name": org, "kind": "hospital", "active": True, "created_at": now}
                for org in ("org-a", "org-b")
            ],
        )
        conn.execute(
            users.insert().values(
                id="u-1",
                username="alice",
                org_id="org-a",
                display_name="Alice",
                password_hash="unused",
                active=True,
                created_at=now,
            )
        )
        conn.execute(
            clients.insert(),
            [
                {
                    "id": "c-jwt",
                    "org_id": "org-a",
                    "name": "EHR",
                    "auth_method": "private_key_jwt",
                    "jwks": jwks,
                    "secret_hash": None,
                    "active": True,
                    "created_at": now,
                },
                {
                    "id": "c-sec",
                    "org_id": "org-a",
                    "name": "Lab",
                    "auth_method": "client_secret",
                    "jwks": None,
                    "secret_hash": hash_secret(SECRET),
                    "active": True,
                    "created_at": now,
                },
            ],
        )
        conn.execute(
            role_grants.insert(),
            [
                {
                    "principal_kind": "client",
                    "principal_id": "c-jwt",
                    "role": role,
                    "org_id": org,
                    "created_at": now,
                    "created_by": "test",
                }
                for role, org in (("hospital_integration", "org-a"), ("researcher", "org-b"))
            ],
        )


@pytest.fixture
def seeded(db: Database) -> Database:
    _seed(db)
    return db


@pytest.fixture
def sealer(key_provider: FileKeyProvider) -> ValueSealer:
    return ValueSealer(key_provider)


@pytest.fixture
def keys(seeded: Database, sealer: ValueSealer) -> SigningKeys:
    return SigningKeys(seeded, sealer, "ES256")


@pytest.fixture
def tokens(seeded: Database, keys: SigningKeys) -> TokenService:
    return TokenService(seeded, keys, issuer=ISSUER, audience=ISSUER, ttl=300)


def _user(**changes: Any) -> Principal:
    values: dict[str, Any] = {
        "kind": PrincipalKind.USER,
        "id": "u-1",
        "org_id": "org-a",
        "roles": frozenset({"clinician"}),
        "auth_method": AuthMethod.PASSWORD_TOTP,
    }
    values.update(changes)
    return Principal(**values)


def _refused(message: str) -> Any:
    return pytest.raises(NotAuthenticated, match=f"^{re.escape(message)}$")


# -- issue and verify -------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_issue_and_verify_round_trip(seeded: Database, sealer: ValueSealer, alg: str) -> None:
    service = TokenService(
        seeded, SigningKeys(seeded, sealer, alg), issuer=ISSUER, audience=ISSUER, ttl=120
    )
    issued = service.issue(_user())
    assert issued.token_type == "Bearer" and issued.expires_in == 120
    assert issued.scope == "user/*.cruds"
    assert issued.access_token not in repr(issued)
    header = jwt.get_unverified_header(issued.access_token)
    assert header["alg"] == alg and header["typ"] == "at+jwt" and header["kid"]
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert claims["iss"] == ISSUER and claims["aud"] == ISSUER and claims["sub"] == "u-1"
    assert claims["exp"] - claims["iat"] == 120 and claims["nbf"] == claims["iat"]
    assert claims["org"] == "org-a" and claims["kind"] == "user"
    assert claims["roles"] == ["clinician"] and claims["amr"] == ["password+totp"]
    assert "client_id" not in claims and len(claims["jti"]) >= 16

    principal = service.verify(issued.access_token)
    assert principal == Principal(
        kind=PrincipalKind.USER,
        id="u-1",
        org_id="org-a",
        roles=frozenset({"clinician"}),
        scopes=frozenset({"user/*.cruds"}),
        auth_method=AuthMethod.PASSWORD_TOTP,
        token_id=claims["jti"],
    )


def test_client_token_round_trip(tokens: TokenService) -> None:
    principal = _directory(tokens).client_principal("c-jwt")
    assert principal.roles == {"hospital_integration"}  # only the grants in its own org
    assert principal.scopes == {"system/*.cruds"}
    assert principal.auth_method is AuthMethod.PRIVATE_KEY_JWT
    issued = tokens.issue(principal)
    verified = tokens.verify(issued.access_token)
    assert verified.kind is PrincipalKind.CLIENT and verified.client_id == "c-jwt"
    assert verified.scopes == {"system/*.cruds"}
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert claims["client_id"] == "c-jwt"


def test_expired_token_refused(seeded: Database, keys: SigningKeys, tokens: TokenService) -> None:
    past = TokenService(
        seeded,
        keys,
        issuer=ISSUER,
        audience=ISSUER,
        ttl=60,
        clock=lambda: utcnow() - timedelta(minutes=5),
    )
    with _refused("The access token has expired."):
        tokens.verify(past.issue(_user()).access_token)
    # Within the 30 s leeway it still passes.
    recent = TokenService(
        seeded,
        keys,
        issuer=ISSUER,
        audience=ISSUER,
        ttl=60,
        clock=lambda: utcnow() - timedelta(seconds=75),
    )
    assert tokens.verify(recent.issue(_user()).access_token).id == "u-1"


def test_not_yet_valid_token_refused(
    seeded: Database, keys: SigningKeys, tokens: TokenService
) -> None:
    future = TokenService(
        seeded,
        keys,
        issuer=ISSUER,
        audience=ISSUER,
        ttl=600,
        clock=lambda: utcnow() + timedelta(minutes=5),
    )
    with _refused("The access token is not valid yet."):
        tokens.verify(future.issue(_user()).access_token)


def test_forged_signature_with_known_kid_refused(tokens: TokenService) -> None:
    genuine = tokens.issue(_user()).access_token
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    claims["roles"] = ["administrator"]
    forged = jwt.encode(
        claims,
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": header["kid"], "typ": "at+jwt"},
    )
    with _refused("The token signature is not valid."):
        tokens.verify(forged)
    # A genuine header and payload with the signature of another token: refused too.
    other = tokens.issue(_user(roles=frozenset({"researcher"}))).access_token
    spliced = genuine.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]
    with _refused("The token signature is not valid."):
        tokens.verify(spliced)


def test_wrong_audience_and_issuer_refused(
    seeded: Database, keys: SigningKeys, tokens: TokenService
) -> None:
    elsewhere = TokenService(seeded, keys, issuer=ISSUER, audience="https://other.test", ttl=60)
    with _refused("The access token audience is not this server."):
        tokens.verify(elsewhere.issue(_user()).access_token)
    foreign = TokenService(seeded, keys, issuer="https://rogue.test", audience=ISSUER, ttl=60)
    with _refused("The access token issuer is not trusted."):
        tokens.verify(foreign.issue(_user()).access_token)


def test_unsigned_token_refused(tokens: TokenService) -> None:
    claims = jwt.decode(tokens.issue(_user()).access_token, options={"verify_signature": False})
    for alg in ("none", "None", "NONE"):
        unsigned = f"{_segment({'alg': alg, 'typ': 'at+jwt'})}.{_segment(claims)}."
        with _refused("Unsigned tokens are not accepted."):
            tokens.verify(unsigned)


def test_hmac_with_public_key_refused(keys: SigningKeys, tokens: TokenService) -> None:
    """Algorithm confusion (RFC 8725 §2.1): HS256 keyed with the published public key."""
    genuine = tokens.issue(_user()).access_token
    kid = jwt.get_unverified_header(genuine)["kid"]
    claims = jwt.decode(genuine, options={"verify_signature": False})
    public = keys.public_key(kid)
    assert public is not None
    for secret in (
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(keys.jwks()["keys"][0]).encode(),
    ):
        header = {"alg": "HS256", "kid": kid, "typ": "at+jwt"}
        signing_input = f"{_segment(header)}.{_segment(claims)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        with _refused("Tokens signed with a shared secret (HS*) are not accepted."):
            tokens.verify(f"{signing_input}.{_b64(mac)}")


def test_malformed_and_incomplete_tokens_refused(keys: SigningKeys, tokens: TokenService) -> None:
    for junk in ("", "abc", "a.b.c", "x" * 20_000):
        with _refused("The access token is malformed."):
            tokens.verify(junk)
    active = keys.active()
    now = int(utcnow().timestamp())
    base = {
        "iss": ISSUER,
        "aud": ISSUER,
        "sub": "u-1",
        "iat": now,
        "exp": now + 60,
        "jti": "j",
        "org": "org-a",
        "kind": "user",
    }
    for missing in ("sub", "exp", "iat", "aud"):
        claims = {k: v for k, v in base.items() if k != missing}
        token = jwt.encode(
            claims,
            active.private_key,
            algorithm="ES256",
            headers={"kid": active.kid, "typ": "at+jwt"},
        )
        with _refused(f"The access token lacks the required '{missing}' claim."):
            tokens.verify(token)
    untyped = jwt.encode(base, active.private_key, algorithm="ES256", headers={"kid": active.kid})
    with _refused("The token is not a Salus access token (typ)."):
        tokens.verify(untyped)
    unknown = jwt.encode(
        base, active.private_key, algorithm="ES256", headers={"kid": "nope", "typ": "at+jwt"}
    )
    with _refused("The token signing key is not known."):
        tokens.verify(unknown)
    # RS256 under the kid of the ES256 key: the algorithm must be the key's.
    mismatched = jwt.encode(
        base, STRANGER_KEY, algorithm="RS256", headers={"kid": active.kid, "typ": "at+jwt"}
    )
    with _refused("The access token algorithm does not match its key."):
        tokens.verify(mismatched)
    with _refused("The access token algorithm is not accepted."):
        tokens.verify(
            jwt.encode(
                base, EC_CLIENT_KEY, algorithm="ES384", headers={"kid": active.kid, "typ": "at+jwt"}
            )
        )


def test_rotation_and_retirement(seeded: Database, keys: SigningKeys, tokens: TokenService) -> None:
    old_token = tokens.issue(_user()).access_token
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    new_kid = keys.rotate()
    assert new_kid != old_kid
    new_token = tokens.issue(_user()).access_token
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    published = keys.jwks()["keys"]
    assert [k["kid"] for k in published] == [new_kid, old_kid]  # active first
    assert all(k["use"] == "sig" and k["alg"] == "ES256" and "d" not in k for k in published)
    assert tokens.verify(old_token).id == tokens.verify(new_token).id == "u-1"

    with pytest.raises(Conflict):
        keys.retire(new_kid)
    keys.retire(old_kid)
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new_kid]
    with _refused("The token signing key has been retired."):
        tokens.verify(old_token)
    # Another process sees the retirement from the table.
    fresh = TokenService(seeded, SigningKeys(seeded, None), issuer=ISSUER, audience=ISSUER, ttl=60)
    with _refused("The token signing key has been retired."):
        fresh.verify(old_token)
    assert fresh.verify(new_token).id == "u-1"


@pytest.mark.parametrize(
    ("table", "row_id", "message"),
    [
        (users, "u-1", "The user account is disabled."),
        (clients, "c-jwt", "The client is disabled."),
        (organizations, "org-a", "The organization is disabled."),
    ],
    ids=["user", "client", "organization"],
)
def test_disabled_principal_refused_at_once(
    seeded: Database, tokens: TokenService, table: Any, row_id: str, message: str
) -> None:
    token = tokens.issue(_user()).access_token
    client_token = tokens.issue(_directory(tokens).client_principal("c-jwt")).access_token
    tokens.verify(token)
    tokens.verify(client_token)
    with seeded.write() as conn:
        conn.execute(update(table).where(table.c.id == row_id).values(active=False))
    with _refused(message):
        tokens.verify(client_token if table is clients else token)


def test_token_of_a_deleted_user_refused(seeded: Database, tokens: TokenService) -> None:
    token = tokens.issue(_user(id="u-ghost")).access_token
    with _refused("The user account of this token no longer exists."):
        tokens.verify(token)


# -- signing keys -------------------------------------------------------------------------
def test_private_keys_are_sealed_at_rest(seeded: Database, sealer: ValueSealer) -> None:
    sealed_keys = SigningKeys(seeded, sealer)
    kid = sealed_keys.ensure_active()
    assert sealed_keys.ensure_active() == kid  # idempotent
    with seeded.read() as conn:
        stored = conn.execute(select(signing_keys.c.private_key)).scalar_one()
    assert bytes(stored).startswith(ValueSealer.MAGIC) and b"PRIVATE KEY" not in bytes(stored)
    assert "PRIVATE" not in repr(sealed_keys.active()) and "private" not in repr(sealed_keys)
    # A new process opens it and signs with the same kid.
    other = SigningKeys(seeded, sealer)
    assert other.active().kid == kid
    # Without the master key it cannot be used.
    with pytest.raises(ConfigurationError, match="encryption at rest is disabled"):
        SigningKeys(seeded, None).active()


def test_plaintext_keys_without_encryption(seeded: Database) -> None:
    plain = SigningKeys(seeded, None, "RS256")
    kid = plain.ensure_active()
    with seeded.read() as conn:
        stored = conn.execute(select(signing_keys.c.private_key)).scalar_one()
    assert bytes(stored).startswith(b"-----BEGIN PRIVATE KEY-----")
    assert SigningKeys(seeded, None).active().kid == kid


def test_ensure_active_is_race_safe(seeded: Database, sealer: ValueSealer) -> None:
    barrier = threading.Barrier(4)
    kids: list[str] = []

    def start() -> None:
        barrier.wait()
        kids.append(SigningKeys(seeded, sealer).ensure_active())

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == 4 and len(set(kids)) == 1
    with seeded.read() as conn:
        assert conn.execute(select(signing_keys.c.kid)).scalars().all() == [kids[0]]


def test_checkpoint_signatures(keys: SigningKeys) -> None:
    data = b'{"seq":42,"hash":"ab"}'
    kid, signature = keys.sign(data)
    assert keys.verify(kid, data, signature)
    assert not keys.verify(kid, data + b" ", signature)
    assert not keys.verify("unknown", data, signature)
    assert not keys.verify(kid, data, "!!not base64!!")
    assert not keys.verify(kid, data, signature[:-4] + "AAAA")
    keys.rotate()
    keys.retire(kid)
    assert keys.verify(kid, data, signature)  # retired keys still verify old checkpoints
    new_kid, _ = keys.sign(data)
    assert new_kid != kid


def test_checkpoint_signature_is_not_a_token_signature(
    keys: SigningKeys, tokens: TokenService
) -> None:
    claims = jwt.decode(tokens.issue(_user()).access_token, options={"verify_signature": False})
    kid = keys.active().kid
    signing_input = f"{_segment({'alg': 'ES256', 'kid': kid, 'typ': 'at+jwt'})}.{_segment(claims)}"
    _, signature = keys.sign(signing_input.encode())
    with _refused("The token signature is not valid."):
        tokens.verify(f"{signing_input}.{signature}")


# -- scopes -------------------------------------------------------------------------------
def test_requested_scopes_are_narrowed_to_the_roles(tokens: TokenService) -> None:
    client = _directory(tokens).client_principal("c-jwt")  # hospital_integration: system/*.cruds
    issued = tokens.issue(
        client, scopes=frozenset({"system/Observation.rs", "user/Patient.rs", "launch"})
    )
    assert issued.scope == "system/Observation.rs"
    assert tokens.verify(issued.access_token).scopes == {"system/Observation.rs"}
    researcher = _user(roles=frozenset({"researcher"}))  # user/*.rs
    issued = tokens.issue(researcher, scopes=frozenset({"user/Observation.cruds", "user/*.c"}))
    assert issued.scope == "user/Observation.rs"
    with pytest.raises(InvalidInput, match="None of the requested scopes can be granted."):
        tokens.issue(researcher, scopes=frozenset({"system/*.cruds"}))
    with pytest.raises(InvalidInput):
        tokens.issue(Principal(kind=PrincipalKind.SYSTEM, id="salus", org_id="org-a"))


def test_narrow_scopes() -> None:
    assert narrow_scopes(["user/*.cruds"], ["user/Observation.rs", "user/Patient.r"]) == {
        "user/Observation.rs",
        "user/Patient.r",
    }
    assert narrow_scopes(["user/*.rs", "user/Observation.rs"], ["user/*.cruds"]) == {"user/*.rs"}
    assert narrow_scopes(["patient/*.read"], ["patient/*.cruds"]) == {"patient/*.rs"}
    assert narrow_scopes(["openid", "fhirUser", "user/*.rs"], []) == frozenset()


# -- private_key_jwt (RFC 7523, SMART Backend Services) ---------------------------------------
def _assertion(
    key: Any = EC_CLIENT_KEY,
    kid: str | None = "ck-ec",
    alg: str = "ES384",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(utcnow().timestamp())
    body = {
        "iss": "c-jwt",
        "sub": "c-jwt",
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    header = {"kid": kid} if kid is not None else {}
    return jwt.encode(body, key, algorithm=alg, headers={**header, **(headers or {})})


@pytest.mark.parametrize(
    ("key", "kid", "alg"),
    [(EC_CLIENT_KEY, "ck-ec", "ES384"), (RSA_CLIENT_KEY, "ck-rsa", "RS384")],
    ids=["ES384", "RS384"],
)
def test_client_assertion_accepted_once(tokens: TokenService, key: Any, kid: str, alg: str) -> None:
    assertion = _assertion(key, kid, alg)
    identity = tokens.authenticate_client_assertion(assertion, token_endpoint_url=TOKEN_URL)
    assert (identity.client_id, identity.org_id) == ("c-jwt", "org-a")
    assert identity.auth_method is AuthMethod.PRIVATE_KEY_JWT and identity.jti
    with _refused("The client assertion was already used."):
        tokens.authenticate_client_assertion(assertion, token_endpoint_url=TOKEN_URL)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: _assertion(aud="https://salus.test/other"),
            "The client assertion audience is not this token endpoint.",
        ),
        (
            lambda: _assertion(exp=int(utcnow().timestamp()) + 3600),
            "The client assertion expires too far ahead (at most 5 minutes).",
        ),
        (
            lambda: _assertion(exp=int(utcnow().timestamp()) - 120),
            "The client assertion has expired.",
        ),
        (lambda: _assertion(exp=None), "The client assertion lacks the required 'exp' claim."),
        (lambda: _assertion(jti=None), "The client assertion lacks the required 'jti' claim."),
        (
            lambda: _assertion(kid="ck-unknown"),
            "The client assertion key (kid) is not registered for this client.",
        ),
        (
            lambda: _assertion(key=STRANGER_KEY, kid="ck-rsa", alg="RS384"),
            "The client assertion signature is not valid.",
        ),
        (
            lambda: _assertion(key=RSA_CLIENT_KEY, kid="ck-rsa", alg="RS256"),
            "The client assertion algorithm does not match its key.",
        ),
        (
            lambda: _assertion(sub="someone-else"),
            "The client assertion 'sub' must equal its 'iss' (the client id).",
        ),
        (
            lambda: _assertion(iss="c-sec", sub="c-sec"),
            "The client is not registered for private_key_jwt.",
        ),
        (
            lambda: _assertion(iss="c-nobody", sub="c-nobody"),
            "The client is not registered for private_key_jwt.",
        ),
        (
            lambda: _assertion(key=RSA_CLIENT_KEY, kid="ck-rsa", alg="PS256"),
            "The client assertion algorithm is not accepted.",
        ),
        (lambda: _assertion(kid=None), "The client assertion names no signing key (kid)."),
        (
            lambda: jwt.encode(
                {"iss": "c-jwt", "sub": "c-jwt"},
                "k" * 32,
                algorithm="HS256",
                headers={"kid": "ck-ec"},
            ),
            "Tokens signed with a shared secret (HS*) are not accepted.",
        ),
        (
            lambda: f"{_segment({'alg': 'none', 'kid': 'ck-ec'})}.{_segment({'iss': 'c-jwt'})}.",
            "Unsigned tokens are not accepted.",
        ),
    ],
    ids=[
        "wrong-aud",
        "exp-too-far",
        "expired",
        "no-exp",
        "no-jti",
        "unknown-kid",
        "unregistered-key",
        "alg-not-of-key",
        "sub-not-iss",
        "secret-client",
        "unknown-client",
        "ps256",
        "no-kid",
        "hs256",
        "none",
    ],
)
def test_client_assertion_refused(tokens: TokenService, make: Any, message: str) -> None:
    assertion = make()
    with _refused(message):
        tokens.authenticate_client_assertion(assertion, token_endpoint_url=TOKEN_URL)


def test_client_assertion_of_disabled_client_refused(
    seeded: Database, tokens: TokenService
) -> None:
    with seeded.write() as conn:
        conn.execute(update(clients).where(clients.c.id == "c-jwt").values(active=False))
    with _refused("The client is disabled."):
        tokens.authenticate_client_assertion(_assertion(), token_endpoint_url=TOKEN_URL)
    with _refused("The client is disabled."):
        _directory(tokens).client_principal("c-jwt")


def test_expired_jtis_are_purged(seeded: Database, tokens: TokenService) -> None:
    with seeded.write() as conn:
        conn.execute(
            used_jtis.insert().values(
                client_id="c-jwt", jti="old", expires_at=utcnow() - timedelta(hours=1)
            )
        )
    tokens.authenticate_client_assertion(_assertion(), token_endpoint_url=TOKEN_URL)
    with seeded.read() as conn:
        left = conn.execute(select(used_jtis.c.jti)).scalars().all()
    assert "old" not in left and len(left) == 1


# -- client secrets -----------------------------------------------------------------------
def test_client_secret(seeded: Database, tokens: TokenService) -> None:
    identity = tokens.authenticate_client_secret("c-sec", SECRET)
    assert (identity.client_id, identity.auth_method) == ("c-sec", AuthMethod.CLIENT_SECRET)
    for client_id, secret in (
        ("c-sec", SECRET + "x"),
        ("c-sec", ""),
        ("c-nobody", SECRET),
        ("c-jwt", SECRET),
        ("", SECRET),
    ):
        with _refused("The client credentials are not valid."):
            tokens.authenticate_client_secret(client_id, secret)
    with seeded.write() as conn:
        conn.execute(update(clients).where(clients.c.id == "c-sec").values(active=False))
    with _refused("The client is disabled."):
        tokens.authenticate_client_secret("c-sec", SECRET)


def test_new_client_secrets_are_random_and_hashed() -> None:
    first, second = new_client_secret(), new_client_secret()
    assert first != second and len(first) >= 43
    hashed = hash_secret(first)
    assert hashed.startswith("$argon2id$") and first not in hashed


# -- external OpenID Connect provider ------------------------------------------------------
class _JwksServer:
    """A JWK Set served over HTTP on a loopback port (counts its requests)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks, self.requests = jwks, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def idp() -> Iterator[_JwksServer]:
    with _JwksServer(
        {"keys": [_jwk(IDP_KEY, "idp-1", "RS256"), {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}]}
    ) as server:
        yield server


def _oidc_service(db: Database, keys: SigningKeys, url: str) -> TokenService:
    oidc = OidcConfig(
        issuer=OIDC_ISSUER,
        jwks_url=url,
        audience="salus-api",
        org_claim="tenant",
        roles_claim="realm_access.roles",
        timeout=2.0,
    )
    return TokenService(db, keys, issuer=ISSUER, audience=ISSUER, ttl=300, oidc=oidc)


def _oidc_token(key: Any = IDP_KEY, kid: str = "idp-1", **claims: Any) -> str:
    now = int(utcnow().timestamp())
    body = {
        "iss": OIDC_ISSUER,
        "sub": "kc-7f3a",
        "aud": ["salus-api", "account"],
        "iat": now,
        "exp": now + 300,
        "jti": "oidc-1",
        "tenant": "org-b",
        "realm_access": {"roles": ["researcher", "offline_access", "superuser"]},
    }
    body.update(claims)
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def test_oidc_token_verified_with_provider_keys(
    seeded: Database, keys: SigningKeys, idp: _JwksServer
) -> None:
    service = _oidc_service(seeded, keys, idp.url)
    principal = service.verify(_oidc_token())
    assert principal == Principal(
        kind=PrincipalKind.USER,
        id="kc-7f3a",
        org_id="org-b",
        roles=frozenset({"researcher"}),
        scopes=frozenset({"user/*.rs"}),
        auth_method=AuthMethod.OIDC,
        token_id="oidc-1",
    )
    # Roles as a space-separated string; keys are cached (one fetch so far).
    spaced = _oidc_token(realm_access={"roles": "clinician nobody"})
    assert service.verify(spaced).roles == {"clinician"}
    assert idp.requests == 1
    # Salus's own tokens still verify beside the provider's.
    assert service.verify(service.issue(_user()).access_token).id == "u-1"


def test_oidc_token_refusals(seeded: Database, keys: SigningKeys, idp: _JwksServer) -> None:
    service = _oidc_service(seeded, keys, idp.url)
    with _refused("The token signing key is not known."):
        service.verify(_oidc_token(key=STRANGER_KEY, kid="idp-2"))
    # A known kid, signed by another key.
    with _refused("The token signature is not valid."):
        service.verify(_oidc_token(key=STRANGER_KEY))
    # An unknown kid refetches the set at most once a minute.
    with _refused("The token signing key is not known."):
        service.verify(_oidc_token(key=STRANGER_KEY, kid="idp-3"))
    assert idp.requests == 1
    with _refused("The access token audience is not this server."):
        service.verify(_oidc_token(aud="another-api"))
    with _refused("The access token has expired."):
        service.verify(_oidc_token(exp=int(utcnow().timestamp()) - 3600))
    with _refused("The identity provider's token names no organization."):
        service.verify(_oidc_token(tenant=None))
    with _refused("The organization named by the token is not known."):
        service.verify(_oidc_token(tenant="org-zzz"))
    # A symmetric key in the provider's set is never used.
    sym = jwt.encode({"iss": OIDC_ISSUER}, "s" * 32, algorithm="HS256", headers={"kid": "sym"})
    with _refused("Tokens signed with a shared secret (HS*) are not accepted."):
        service.verify(sym)


def test_oidc_provider_down_is_unavailable(seeded: Database, keys: SigningKeys) -> None:
    service = _oidc_service(seeded, keys, f"http://127.0.0.1:{free_port()}/jwks")
    with pytest.raises(Unavailable, match="^The identity provider's keys could not be fetched.$"):
        service.verify(_oidc_token())


def test_account_check_cache(seeded: Database, keys: SigningKeys) -> None:
    cached = TokenService(
        seeded, keys, issuer=ISSUER, audience=ISSUER, ttl=300, active_cache_seconds=60
    )
    token = cached.issue(_user()).access_token
    cached.verify(token)
    with seeded.write() as conn:
        conn.execute(update(users).where(users.c.id == "u-1").values(active=False))
    cached.verify(token)  # within the cache time, another process's change is not seen yet
    cached.forget_accounts()  # what a directory change in this process does
    with _refused("The user account is disabled."):
        cached.verify(token)


def test_verified_token_cache(seeded: Database, keys: SigningKeys) -> None:
    """A token verified once is recognised without a signature check, but never
    past its expiry, its key's retirement or its account's being disabled."""
    clock = [utcnow()]
    cached = TokenService(
        seeded,
        keys,
        issuer=ISSUER,
        audience=ISSUER,
        ttl=300,
        active_cache_seconds=60,
        clock=lambda: clock[0],
    )
    token = cached.issue(_user()).access_token
    assert cached.verify_cached(token) is None  # never seen: the full path
    principal = cached.verify(token)
    hit = cached.verify_cached(token)
    assert hit is not None and hit.id == principal.id == "u-1"
    assert cached.verify_cached(token + "x") is None  # another string, not a prefix match

    clock[0] = clock[0] + timedelta(seconds=400)  # past exp (and the leeway)
    assert cached.verify_cached(token) is None
    with _refused("The access token has expired."):
        cached.verify(token)

    clock[0] = utcnow()
    cached.verify(token)
    cached.forget_accounts()  # a directory change in this process
    assert cached.verify_cached(token) is None
    cached.verify(token)
    assert cached.verify_cached(token) is not None
    old_kid = jwt.get_unverified_header(token)["kid"]
    keys.rotate()
    keys.retire(old_kid)
    assert cached.verify_cached(token) is None
    with _refused("The token signing key has been retired."):
        cached.verify(token)


def test_verified_token_cache_is_off_without_account_cache(tokens: TokenService) -> None:
    token = tokens.issue(_user()).access_token
    tokens.verify(token)
    assert tokens.verify_cached(token) is None  # active_cache_seconds=0: always the full path
