"""Authentication endpoints.

* ``POST /auth/token``: OAuth 2.0 client credentials (RFC 6749 §4.4) with
  ``private_key_jwt`` client authentication (RFC 7523, SMART Backend
  Services) or a client secret (HTTP Basic or form). Errors carry the
  RFC 6749 §5.2 fields (``error``, ``error_description``) next to the usual
  OperationOutcome, so OAuth libraries and Salus clients both understand them.
* ``POST /auth/login``: a person signs in (password and, when enrolled, a TOTP
  code); the token is returned and set as an HttpOnly session cookie.
* ``GET /.well-known/jwks.json`` and ``/.well-known/smart-configuration``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any
from urllib.parse import parse_qs, unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from salus.errors import InvalidInput, NotAuthenticated, SalusError, UnsupportedMediaType
from salus.logging import request_id_var
from salus.security.principal import AuthMethod
from salus.server.security import SESSION_COOKIE, client_address, services_of

__all__ = ["install_auth_routes"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    scope: str


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)
    code: str | None = Field(default=None, max_length=12)


def _oauth_error(exc: SalusError, error: str) -> JSONResponse:
    body: dict[str, Any] = exc.to_operation_outcome(request_id_var.get())
    body.update(error=error, error_description=exc.message)
    headers = {**exc.headers, **_NO_STORE}
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


async def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("The token endpoint takes application/x-www-form-urlencoded.")
    raw = (await request.body()).decode("utf-8", errors="replace")
    parsed = parse_qs(raw, keep_blank_values=True, max_num_fields=20)
    for key, values in parsed.items():
        if len(values) > 1:
            raise InvalidInput(f"The parameter {key} is repeated.")
    return {key: values[0] for key, values in parsed.items()}


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise NotAuthenticated("The Basic credentials are malformed.") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise NotAuthenticated("The Basic credentials are malformed.")
    return unquote(client_id), unquote(secret)


def install_auth_routes(api: FastAPI) -> None:
    @api.post(
        "/auth/token",
        response_model=TokenResponse,
        tags=["auth"],
        responses={400: {"description": "invalid_request"}, 401: {"description": "invalid_client"}},
    )
    async def token(request: Request) -> Response:
        """OAuth 2.0 token endpoint (client credentials grant)."""
        services = services_of(request)
        address = client_address(request) or "unknown"
        try:
            services.token_rate.hit(address)
            form = await _form(request)
            if form.get("grant_type") != "client_credentials":
                return _oauth_error(
                    InvalidInput("Only grant_type=client_credentials is supported."),
                    "unsupported_grant_type",
                )
            token_url = f"{services.settings.base_url()}/auth/token"
            basic = _basic(request)
            if form.get("client_assertion_type") == ASSERTION_TYPE and form.get("client_assertion"):
                identity = await asyncio.to_thread(
                    services.tokens.authenticate_client_assertion,
                    form["client_assertion"],
                    token_endpoint_url=token_url,
                )
                method = AuthMethod.PRIVATE_KEY_JWT
            elif basic is not None or form.get("client_secret"):
                client_id, secret = basic or (
                    form.get("client_id", ""),
                    form.get("client_secret", ""),
                )
                identity = await asyncio.to_thread(
                    services.tokens.authenticate_client_secret, client_id, secret
                )
                method = AuthMethod.CLIENT_SECRET
            else:
                raise NotAuthenticated("Client authentication is required.")
            principal = await asyncio.to_thread(
                services.directory.client_principal, identity.client_id, method, address
            )
            requested = frozenset(form.get("scope", "").split()) or None
            issued = await asyncio.to_thread(services.tokens.issue, principal, scopes=requested)
            await services.audit.record_async(_token_event(principal, "access token issued"))
        except NotAuthenticated as exc:
            from salus.server.security import audit_refusal

            await audit_refusal(request, exc, "/auth/token")
            return _oauth_error(exc, "invalid_client")
        except InvalidInput as exc:
            scope_error = "scope" in exc.message.lower()
            return _oauth_error(exc, "invalid_scope" if scope_error else "invalid_request")
        except SalusError as exc:
            return _oauth_error(exc, "invalid_request" if exc.http_status < 500 else "server_error")
        body = TokenResponse(
            access_token=issued.access_token, expires_in=issued.expires_in, scope=issued.scope
        )
        return JSONResponse(body.model_dump(), headers=_NO_STORE)

    @api.post("/auth/login", response_model=TokenResponse, tags=["auth"])
    async def login(request: Request, body: LoginRequest) -> Response:
        """Sign in a person; sets the HttpOnly session cookie used by the console."""
        services = services_of(request)
        address = client_address(request) or "unknown"
        services.login_rate.hit(address)
        principal = await asyncio.to_thread(
            services.signin.login, body.username, body.password, body.code, address
        )
        issued = await asyncio.to_thread(services.tokens.issue, principal, scopes=None)
        response = JSONResponse(
            TokenResponse(
                access_token=issued.access_token, expires_in=issued.expires_in, scope=issued.scope
            ).model_dump(),
            headers=_NO_STORE,
        )
        response.set_cookie(
            SESSION_COOKIE,
            issued.access_token,
            max_age=issued.expires_in,
            httponly=True,
            secure=services.settings.base_url().startswith("https://"),
            samesite="strict",
            path="/",
        )
        return response

    @api.post("/auth/logout", status_code=204, tags=["auth"])
    async def logout() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @api.get("/.well-known/jwks.json", tags=["auth"])
    async def jwks(request: Request) -> Response:
        """Public keys that verify Salus's access tokens (RFC 7517)."""
        keys = await asyncio.to_thread(services_of(request).signing_keys.jwks)
        return JSONResponse(keys, headers={"Cache-Control": "public, max-age=300"})

    @api.get("/.well-known/smart-configuration", tags=["auth"])
    async def smart_configuration(request: Request) -> dict[str, Any]:
        """SMART App Launch v2 discovery document (Backend Services)."""
        base = services_of(request).settings.base_url()
        return {
            "issuer": base,
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "token_endpoint": f"{base}/auth/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "private_key_jwt",
                "client_secret_basic",
                "client_secret_post",
            ],
            "token_endpoint_auth_signing_alg_values_supported": [
                "ES256",
                "ES384",
                "RS256",
                "RS384",
            ],
            "scopes_supported": ["system/*.cruds", "user/*.cruds", "system/*.rs", "user/*.rs"],
            "capabilities": [
                "client-confidential-asymmetric",
                "client-confidential-symmetric",
                "permission-v2",
            ],
        }


def _token_event(principal: Any, description: str) -> Any:
    from salus.audit.events import AuditEvent

    return AuditEvent.for_principal(
        principal,
        category="auth",
        action="E",
        outcome=0,
        entity="POST /auth/token",
        description=description,
        request_id=request_id_var.get(),
    )
