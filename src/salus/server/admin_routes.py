"""Administration API: organizations, users, clients, role grants, peer
identities and signing keys. Authority rules live in
:class:`salus.security.directory.Directory`; every change is audited there."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from salus.errors import Forbidden
from salus.security.principal import Principal, PrincipalKind
from salus.server.security import CurrentPrincipal, audit_access, services_of

__all__ = ["install_admin_routes"]


class OrganizationIn(BaseModel):
    id: str = Field(min_length=2, max_length=63)
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["hospital", "authority", "research", "operator"]


class ActiveIn(BaseModel):
    active: bool


class UserIn(BaseModel):
    username: str = Field(min_length=3, max_length=100)
    org_id: str
    display_name: str = Field(default="", max_length=200)
    password: str = Field(min_length=1, max_length=1000)
    roles: list[str] = Field(default_factory=list)


class PasswordIn(BaseModel):
    password: str = Field(min_length=1, max_length=1000)


class ClientIn(BaseModel):
    client_id: str = Field(min_length=3, max_length=100)
    org_id: str
    name: str = Field(default="", max_length=200)
    auth_method: Literal["private_key_jwt", "client_secret"]
    jwks: dict[str, Any] | None = None
    roles: list[str] = Field(default_factory=list)


class GrantIn(BaseModel):
    principal_kind: Literal["user", "client"]
    principal_id: str
    role: str


class EdgeIdentityIn(BaseModel):
    kind: Literal["dicom", "mllp"]
    client_id: str
    ae_title: str | None = Field(default=None, max_length=16)
    cert_sha256: str | None = None
    address: str | None = None


async def _audit_read(request: Request, who: Principal, entity: str) -> None:
    """Directory reads are accesses too: audited like every other."""

    await audit_access(
        request, who, category="admin", action="R", entity=entity, description="directory read"
    )


def _require_admin_role(principal: Principal) -> None:
    if "administrator" not in principal.roles:
        raise Forbidden("Only administrators may use the administration API.")


def install_admin_routes(api: FastAPI) -> None:
    prefix = "/api/v1/admin"

    @api.get(f"{prefix}/organizations", tags=["admin"])
    async def list_organizations(request: Request, who: CurrentPrincipal) -> list[dict[str, Any]]:
        _require_admin_role(who)
        orgs = await asyncio.to_thread(services_of(request).directory.list_organizations)
        await _audit_read(request, who, "Organization?list")
        return orgs

    @api.post(f"{prefix}/organizations", status_code=201, tags=["admin"])
    async def create_organization(
        request: Request, who: CurrentPrincipal, body: OrganizationIn
    ) -> dict[str, str]:
        _require_admin_role(who)
        await asyncio.to_thread(
            services_of(request).directory.create_organization, who, body.id, body.name, body.kind
        )
        return {"id": body.id}

    @api.put(f"{prefix}/organizations/{{org_id}}/active", tags=["admin"])
    async def set_organization_active(
        request: Request, who: CurrentPrincipal, org_id: str, body: ActiveIn
    ) -> dict[str, bool]:
        _require_admin_role(who)
        await asyncio.to_thread(
            services_of(request).directory.set_organization_active, who, org_id, body.active
        )
        return {"active": body.active}

    @api.get(f"{prefix}/users", tags=["admin"])
    async def list_users(request: Request, who: CurrentPrincipal) -> list[dict[str, Any]]:
        _require_admin_role(who)
        rows = await asyncio.to_thread(services_of(request).directory.list_users, who)
        await _audit_read(request, who, "User?list")
        return rows

    @api.post(f"{prefix}/users", status_code=201, tags=["admin"])
    async def create_user(request: Request, who: CurrentPrincipal, body: UserIn) -> dict[str, str]:
        _require_admin_role(who)
        user_id = await asyncio.to_thread(
            lambda: services_of(request).directory.create_user(
                who,
                username=body.username,
                org_id=body.org_id,
                display_name=body.display_name,
                password=body.password,
                roles=body.roles,
            )
        )
        return {"id": user_id}

    @api.put(f"{prefix}/users/{{user_id}}/active", tags=["admin"])
    async def set_user_active(
        request: Request, who: CurrentPrincipal, user_id: str, body: ActiveIn
    ) -> dict[str, bool]:
        _require_admin_role(who)
        await asyncio.to_thread(
            services_of(request).directory.set_user_active, who, user_id, body.active
        )
        return {"active": body.active}

    @api.post(f"{prefix}/users/{{user_id}}/unlock", tags=["admin"])
    async def unlock_user(request: Request, who: CurrentPrincipal, user_id: str) -> dict[str, str]:
        _require_admin_role(who)
        await asyncio.to_thread(services_of(request).directory.unlock_user, who, user_id)
        return {"id": user_id}

    @api.put(f"{prefix}/users/{{user_id}}/password", tags=["admin"])
    async def set_password(
        request: Request, who: CurrentPrincipal, user_id: str, body: PasswordIn
    ) -> dict[str, str]:
        await asyncio.to_thread(
            services_of(request).directory.set_password, who, user_id, body.password
        )
        return {"id": user_id}

    @api.post(f"{prefix}/users/{{user_id}}/totp", tags=["admin"])
    async def enroll_totp(request: Request, who: CurrentPrincipal, user_id: str) -> dict[str, str]:
        """Enrol a TOTP second factor; the ``otpauth://`` URI is shown only now."""
        uri = await asyncio.to_thread(services_of(request).signin.enroll_totp, who, user_id)
        return {"otpauth_uri": uri}

    @api.get(f"{prefix}/clients", tags=["admin"])
    async def list_clients(request: Request, who: CurrentPrincipal) -> list[dict[str, Any]]:
        _require_admin_role(who)
        rows = await asyncio.to_thread(services_of(request).directory.list_clients, who)
        await _audit_read(request, who, "Client?list")
        return rows

    @api.post(f"{prefix}/clients", status_code=201, tags=["admin"])
    async def create_client(
        request: Request, who: CurrentPrincipal, body: ClientIn
    ) -> dict[str, Any]:
        """Register a client; a client secret is returned once and never again."""
        _require_admin_role(who)
        created = await asyncio.to_thread(
            lambda: services_of(request).directory.create_client(
                who,
                client_id=body.client_id,
                org_id=body.org_id,
                name=body.name,
                auth_method=body.auth_method,
                jwks=body.jwks,
                roles=body.roles,
            )
        )
        return {"client_id": created.client_id, "client_secret": created.secret}

    @api.put(f"{prefix}/clients/{{client_id}}/active", tags=["admin"])
    async def set_client_active(
        request: Request, who: CurrentPrincipal, client_id: str, body: ActiveIn
    ) -> dict[str, bool]:
        _require_admin_role(who)
        await asyncio.to_thread(
            services_of(request).directory.set_client_active, who, client_id, body.active
        )
        return {"active": body.active}

    @api.post(f"{prefix}/grants", status_code=201, tags=["admin"])
    async def grant_role(request: Request, who: CurrentPrincipal, body: GrantIn) -> dict[str, str]:
        _require_admin_role(who)
        await asyncio.to_thread(
            services_of(request).directory.grant_role,
            who,
            PrincipalKind(body.principal_kind),
            body.principal_id,
            body.role,
        )
        return {"role": body.role}

    @api.delete(f"{prefix}/grants", status_code=200, tags=["admin"])
    async def revoke_role(request: Request, who: CurrentPrincipal, body: GrantIn) -> dict[str, str]:
        _require_admin_role(who)
        await asyncio.to_thread(
            services_of(request).directory.revoke_role,
            who,
            PrincipalKind(body.principal_kind),
            body.principal_id,
            body.role,
        )
        return {"role": body.role}

    @api.post(f"{prefix}/edge-identities", status_code=201, tags=["admin"])
    async def add_edge_identity(
        request: Request, who: CurrentPrincipal, body: EdgeIdentityIn
    ) -> dict[str, int]:
        _require_admin_role(who)
        new_id = await asyncio.to_thread(
            lambda: services_of(request).directory.add_edge_identity(
                who,
                kind=body.kind,
                client_id=body.client_id,
                ae_title=body.ae_title,
                cert_sha256=body.cert_sha256,
                address=body.address,
            )
        )
        return {"id": new_id}

    @api.post(f"{prefix}/signing-keys/rotate", tags=["admin"])
    async def rotate_signing_key(request: Request, who: CurrentPrincipal) -> dict[str, str]:
        """Start signing new tokens with a new key; the old one stays published."""
        services = services_of(request)
        _require_admin_role(who)
        if await asyncio.to_thread(services.directory.org_kind_of, who.org_id) != "operator":
            raise Forbidden("Only network administrators rotate signing keys.")
        kid = await asyncio.to_thread(services.signing_keys.rotate)

        await audit_access(
            request,
            who,
            category="admin",
            action="E",
            entity="SigningKey",
            description=f"token signing key rotated: {kid}",
        )
        return {"kid": kid}
