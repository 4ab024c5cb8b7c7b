"""Authentication over HTTP: the OAuth token endpoint (private_key_jwt and
client secrets), sign-in with TOTP and lock-out, bad tokens, rate limits,
JWKS and discovery. Every refusal is a clear 401 and an audit event.
Consent and break-the-glass scenarios end to end."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import select

from salus.db.tables import audit_events
from tests.conftest import BACKENDS
from tests.integration.security_world import PASSWORD, SYSTEM, World, make_world

CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(
        request.param, tmp_path_factory.mktemp("auth"), rate_limit_login_per_minute=1000
    ) as built:
        jwk = {
            **ECAlgorithm.to_jwk(CLIENT_KEY.public_key(), as_dict=True),
            "kid": "k1",
            "alg": "ES256",
            "use": "sig",
        }
        built.services.directory.create_client(
            SYSTEM,
            client_id="a-ehr",
            org_id="hosp-a",
            name="EHR",
            auth_method="private_key_jwt",
            jwks={"keys": [jwk]},
            roles=["hospital_integration"],
        )
        yield built


def _assertion(world: World, key: Any = CLIENT_KEY, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": "a-ehr",
        "sub": "a-ehr",
        "aud": f"{world.services.settings.base_url()}/auth/token",
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": "k1"})


def _token_request(world: World, assertion: str, request_id: str) -> Any:
    return world.client.post(
        "/auth/token",
        headers={"X-Request-ID": request_id},
        data={
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )


def _audited(world: World, request_id: str) -> list[Any]:
    with world.services.db.read() as conn:
        return list(
            conn.execute(
                select(audit_events).where(audit_events.c.request_id == request_id)
            ).mappings()
        )


def test_private_key_jwt_flow_and_replay(world: World) -> None:
    assertion = _assertion(world)
    first = _token_request(world, assertion, rid := uuid.uuid4().hex)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/Patient.rs"
    assert first.headers["cache-control"] == "no-store"
    assert [e["description"] for e in _audited(world, rid)] == ["access token issued"]
    # The token works, and carries only the narrowed scope.
    access = world.client.get(
        "/api/v1/patients/P-1/access", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert access.status_code == 200
    replay = _token_request(world, assertion, rid2 := uuid.uuid4().hex)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"
    assert "already used" in replay.json()["error_description"]
    assert replay.json()["resourceType"] == "OperationOutcome"
    [event] = _audited(world, rid2)
    assert event["outcome"] == 4 and "already used" in event["description"]


@pytest.mark.parametrize("case", ["wrong-aud", "expired", "unregistered-key", "unsigned"])
def test_bad_client_assertions(world: World, case: str) -> None:
    if case == "wrong-aud":
        assertion = _assertion(world, aud="https://elsewhere.example/token")
    elif case == "expired":
        assertion = _assertion(world, iat=int(time.time()) - 900, exp=int(time.time()) - 600)
    elif case == "unregistered-key":
        assertion = _assertion(world, key=OTHER_KEY)
    else:
        header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').rstrip(b"=").decode()
        claims = jwt.decode(_assertion(world), options={"verify_signature": False})
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        assertion = f"{header}.{payload}."
    response = _token_request(world, assertion, rid := uuid.uuid4().hex)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.json()["error_description"]
    assert _audited(world, rid)[0]["outcome"] == 4


def test_client_secret_basic_and_post(world: World) -> None:
    secret = world.secrets["a-feed"]
    basic = base64.b64encode(f"a-feed:{secret}".encode()).decode()
    ok = world.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert ok.status_code == 200
    bad = world.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": "a-feed", "client_secret": "nope"},
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    grant = world.client.post("/auth/token", data={"grant_type": "password"})
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    form = world.client.post("/auth/token", json={"grant_type": "client_credentials"})
    assert form.status_code == 415


@pytest.mark.parametrize("mutate", ["alg-none", "bad-signature", "expired", "wrong-audience"])
def test_bad_access_tokens_are_refused_and_audited(world: World, mutate: str) -> None:
    token = world.tokens["a-doc"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    if mutate == "alg-none":
        forged = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        token = f"{forged}.{payload}."
    elif mutate == "bad-signature":
        token = f"{header}.{payload}.{signature[:-4]}AAAA"
    else:
        claims.update(
            {"exp": int(time.time()) - 600}
            if mutate == "expired"
            else {"aud": "https://other.example"}
        )
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        token = f"{header}.{body}.{signature}"  # any change breaks the signature too
        if mutate == "expired":
            keys = world.services.signing_keys
            active = keys.active()
            original = jwt.get_unverified_header(world.tokens["a-doc"])
            token = jwt.encode(
                claims,
                active.private_key,
                algorithm=active.alg,
                headers={"kid": active.kid, "typ": original["typ"]},
            )
    rid = uuid.uuid4().hex
    response = world.client.get(
        "/api/v1/patients/P-1/access",
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": rid},
    )
    assert response.status_code == 401
    message = response.json()["issue"][0]["diagnostics"]
    assert message and message != "Authentication is required."
    if mutate == "expired":
        assert "expired" in message
    [event] = _audited(world, rid)
    assert event["outcome"] == 4 and event["category"] == "auth"


def test_login_with_totp_and_lockout(world: World) -> None:
    directory = world.services.directory
    uid = directory.create_user(
        SYSTEM,
        username="nurse.kim",
        org_id="hosp-b",
        display_name="김 간호사",
        password=PASSWORD,
        roles=["clinician"],
    )
    secret = pyotp.parse_uri(world.services.signin.enroll_totp(SYSTEM, uid)).secret
    missing = world.client.post("/auth/login", json={"username": "nurse.kim", "password": PASSWORD})
    assert (
        missing.status_code == 401 and "one-time code" in missing.json()["issue"][0]["diagnostics"]
    )
    ok = world.client.post(
        "/auth/login",
        json={"username": "nurse.kim", "password": PASSWORD, "code": pyotp.TOTP(secret).now()},
    )
    assert ok.status_code == 200
    cookie = ok.headers["set-cookie"]
    assert (
        "salus_session=" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    )
    world.client.cookies.clear()
    for _ in range(world.services.settings.login_max_failures):
        bad = world.client.post(
            "/auth/login", json={"username": "nurse.kim", "password": "wrong wrong wrong"}
        )
        assert bad.status_code == 401
    locked = world.client.post(
        "/auth/login",
        json={"username": "nurse.kim", "password": PASSWORD, "code": pyotp.TOTP(secret).now()},
    )
    assert locked.status_code == 401 and "locked" in locked.json()["issue"][0]["diagnostics"]


def test_session_cookie_authenticates(world: World) -> None:
    response = world.client.post("/auth/login", json={"username": "a-doc", "password": PASSWORD})
    assert response.status_code == 200
    assert world.client.get("/api/v1/patients/P-1/access").status_code == 200
    assert world.client.post("/auth/logout").status_code == 204
    world.client.cookies.clear()
    assert world.client.get("/api/v1/patients/P-1/access").status_code == 401


def test_disabled_account_token_stops_working(world: World) -> None:
    directory = world.services.directory
    uid = directory.create_user(
        SYSTEM,
        username="temp.doc",
        org_id="hosp-a",
        display_name="",
        password=PASSWORD,
        roles=["clinician"],
    )
    token = world.client.post(
        "/auth/login", json={"username": "temp.doc", "password": PASSWORD}
    ).json()["access_token"]
    world.client.cookies.clear()
    headers = {"Authorization": f"Bearer {token}"}
    assert world.client.get("/api/v1/patients/P-1/access", headers=headers).status_code == 200
    directory.set_user_active(SYSTEM, uid, False)
    assert world.client.get("/api/v1/patients/P-1/access", headers=headers).status_code == 401


def test_jwks_and_discovery(world: World) -> None:
    keys = world.client.get("/.well-known/jwks.json").json()["keys"]
    assert keys and all("d" not in k and k["use"] == "sig" for k in keys)
    header = jwt.get_unverified_header(world.tokens["a-doc"])
    assert header["kid"] in {k["kid"] for k in keys}
    smart = world.client.get("/.well-known/smart-configuration").json()
    assert smart["token_endpoint"].endswith("/auth/token")
    assert "private_key_jwt" in smart["token_endpoint_auth_methods_supported"]


def test_consent_and_break_the_glass_end_to_end(world: World) -> None:
    patient = f"P-{uuid.uuid4().hex[:6]}"
    # hosp-b's feed records a deny for every organization; hosp-a has no relationship.
    assert (
        world.call(
            "b-feed",
            "POST",
            "/api/v1/care/consents",
            json={"patient": patient, "decision": "deny", "source": "Consent/1"},
        ).status_code
        == 201
    )
    basis = world.call("a-doc", "GET", f"/api/v1/patients/{patient}/access").json()
    assert basis["treatment_relationship"] is False
    assert basis["consent_rules"] == [{"decision": "deny", "category": "*", "organization": None}]
    assert basis["break_glass_until"] is None and basis["break_glass_available"] is True
    # Break the glass: granted for a limited time, flagged, queued for review.
    short = world.call(
        "a-doc", "POST", "/api/v1/break-glass", json={"patient": patient, "reason": "x"}
    )
    assert short.status_code == 400
    granted = world.call(
        "a-doc",
        "POST",
        "/api/v1/break-glass",
        json={"patient": patient, "reason": "unresponsive patient, allergies unknown"},
    )
    assert granted.status_code == 201
    basis = world.call("a-doc", "GET", f"/api/v1/patients/{patient}/access").json()
    assert basis["break_glass_until"] == granted.json()["expires_at"]
    queue = world.call("a-sec", "GET", "/api/v1/break-glass/reviews").json()
    mine = [g for g in queue if g["patient_key"] == patient]
    assert mine and mine[0]["reason"] == "unresponsive patient, allergies unknown"
    assert (
        world.call(
            "b-sec",
            "POST",
            f"/api/v1/break-glass/reviews/{mine[0]['id']}",
            json={"outcome": "accepted"},
        ).status_code
        == 404
    )  # not b's to review
    assert (
        world.call(
            "a-sec",
            "POST",
            f"/api/v1/break-glass/reviews/{mine[0]['id']}",
            json={"outcome": "accepted", "note": "ER record confirms"},
        ).status_code
        == 200
    )
    assert (
        world.call(
            "a-sec",
            "POST",
            f"/api/v1/break-glass/reviews/{mine[0]['id']}",
            json={"outcome": "rejected"},
        ).status_code
        == 409
    )
    # The patient's access report shows who looked, when and why, flagged.
    report = world.call(
        "ops-sec", "GET", "/api/v1/audit/patient-access", params={"patient": patient}
    ).json()["accesses"]
    flagged = [a for a in report if a["break_glass"]]
    assert flagged and flagged[-1]["principal_id"] == world.user_ids["a-doc"]
    assert any(a["purpose"] == "ETREAT" for a in flagged)


def test_token_endpoint_rate_limit(tmp_path_factory: pytest.TempPathFactory) -> None:
    with make_world(
        "sqlite", tmp_path_factory.mktemp("rate"), rate_limit_token_per_minute=5
    ) as small:
        codes = [
            small.client.post(
                "/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "a-feed",
                    "client_secret": "wrong",
                },
            ).status_code
            for _ in range(4)
        ]
        # The world's own two token requests counted too.
        assert codes[:3] == [401, 401, 401] and codes[3] == 429
        limited = small.client.post("/auth/token", data={"grant_type": "client_credentials"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
