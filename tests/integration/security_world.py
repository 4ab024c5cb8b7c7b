"""A small network for security tests: an operator, two hospitals, the health
authority and a university, with a principal for every role."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.server import create_app
from salus.services import Services
from salus.storage.keys import FileKeyProvider
from tests.conftest import backend_database, settings_for

PASSWORD = "correct horse battery staple"
SYSTEM = Principal(
    kind=PrincipalKind.SYSTEM, id="test-setup", org_id="ops", auth_method=AuthMethod.LOCAL
)

ORGS = [
    ("ops", "Network operator", "operator"),
    ("hosp-a", "Bệnh viện A", "hospital"),
    ("hosp-b", "병원 B", "hospital"),
    ("moh", "Health authority", "authority"),
    ("uni", "University", "research"),
]

# name -> (org, roles); users sign in, clients use client secrets.
USERS = {
    "ops-admin": ("ops", ["administrator"]),
    "ops-sec": ("ops", ["security_officer"]),
    "a-doc": ("hosp-a", ["clinician"]),
    "a-doc2": ("hosp-a", ["clinician"]),
    "a-steward": ("hosp-a", ["data_steward"]),
    "a-sec": ("hosp-a", ["security_officer"]),
    "a-admin": ("hosp-a", ["administrator"]),
    "b-doc": ("hosp-b", ["clinician"]),
    "b-sec": ("hosp-b", ["security_officer"]),
    "b-admin": ("hosp-b", ["administrator"]),
    "moh-analyst": ("moh", ["authority_analyst"]),
    "uni-res": ("uni", ["researcher"]),
}
CLIENTS = {
    "a-feed": ("hosp-a", ["hospital_integration"]),
    "b-feed": ("hosp-b", ["hospital_integration"]),
}


@dataclass
class World:
    client: TestClient
    services: Services
    tokens: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)

    def headers(self, who: str | None, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return headers

    def call(
        self,
        who: str | None,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        request_id: str | None = None,
    ) -> Any:
        headers = self.headers(who)
        if request_id:
            headers["X-Request-ID"] = request_id
        return self.client.request(method, path, json=json, params=params, headers=headers)


def create_accounts(directory: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The world's organizations, users and clients; returns (user ids, client secrets)."""
    user_ids: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for org_id, name, kind in ORGS:
        directory.create_organization(SYSTEM, org_id, name, kind)
    for username, (org_id, roles) in USERS.items():
        user_ids[username] = directory.create_user(
            SYSTEM,
            username=username,
            org_id=org_id,
            display_name=username,
            password=PASSWORD,
            roles=roles,
        )
    for client_id, (org_id, roles) in CLIENTS.items():
        created = directory.create_client(
            SYSTEM,
            client_id=client_id,
            org_id=org_id,
            name=client_id,
            auth_method="client_secret",
            roles=roles,
        )
        assert created.secret
        secrets[client_id] = created.secret
    return user_ids, secrets


@contextmanager
def make_world(backend: str, folder: Path, **setting_overrides: Any) -> Iterator[World]:
    with backend_database(backend, folder) as (url, schema):
        settings = settings_for(
            url,
            schema,
            folder / "data",
            jobs_enabled=False,
            audit_checkpoint_seconds=3600,
            **setting_overrides,
        )
        FileKeyProvider.create(settings.key_path())
        services = Services.build(settings)
        try:
            world = World(
                TestClient(create_app(settings, services), raise_server_exceptions=False), services
            )
            world.user_ids, world.secrets = create_accounts(services.directory)
            with world.client:
                for username in USERS:
                    response = world.client.post(
                        "/auth/login", json={"username": username, "password": PASSWORD}
                    )
                    assert response.status_code == 200, response.text
                    world.tokens[username] = response.json()["access_token"]
                    world.client.cookies.clear()  # tests send bearer tokens explicitly
                for client_id in CLIENTS:
                    response = world.client.post(
                        "/auth/token",
                        data={
                            "grant_type": "client_credentials",
                            "client_id": client_id,
                            "client_secret": world.secrets[client_id],
                        },
                    )
                    assert response.status_code == 200, response.text
                    world.tokens[client_id] = response.json()["access_token"]
                yield world
        finally:
            services.close()
