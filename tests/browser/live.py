"""A real Salus server for browser tests: ``salus serve`` in a subprocess on a
loopback port, over a fresh SQLite data folder with the security world's
organizations, people and applications (``tests/integration/security_world``).

Tests seed clinical data through the real interfaces (FHIR over HTTP with an
integration client's token, STOW-RS...) with :meth:`LiveServer.api`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from salus.config import Settings
from salus.services import Services
from tests.conftest import free_port
from tests.integration.security_world import PASSWORD, create_accounts

__all__ = ["PASSWORD", "LiveServer", "live_server"]


@dataclass
class LiveServer:
    base_url: str
    data_dir: Path
    secrets: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)

    def token(self, who: str) -> str:
        """An access token of a client (client credentials) or a user (password)."""
        if who not in self._tokens:
            if who in self.secrets:
                response = httpx.post(
                    f"{self.base_url}/auth/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": who,
                        "client_secret": self.secrets[who],
                    },
                    timeout=30,
                )
            else:
                response = httpx.post(
                    f"{self.base_url}/auth/login",
                    json={"username": who, "password": PASSWORD},
                    timeout=30,
                )
            response.raise_for_status()
            self._tokens[who] = response.json()["access_token"]
        return self._tokens[who]

    def api(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        headers["Authorization"] = f"Bearer {self.token(who)}"
        return httpx.request(
            method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs
        )


def _populate(settings: Settings, server: LiveServer) -> None:
    services = Services.build(settings)
    try:
        server.user_ids, server.secrets = create_accounts(services.directory)
    finally:
        services.close()


@contextmanager
def live_server(folder: Path, **env_overrides: str) -> Iterator[LiveServer]:
    """Initialise ``folder``, add the world's accounts, serve it until the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env.update(
        SALUS_DATA_DIR=str(folder),
        SALUS_HTTP_WORKERS="1",
        SALUS_DICOM_PORT=str(free_port()),
        SALUS_MLLP_PORT=str(free_port()),
        SALUS_SHUTDOWN_TIMEOUT="5",
        SALUS_LOG_LEVEL="WARNING",
        **env_overrides,
    )
    salus = [sys.executable, "-m", "salus"]
    subprocess.run([*salus, "init"], env=env, check=True, capture_output=True, timeout=120)
    server = LiveServer(base_url=f"http://127.0.0.1:{port}", data_dir=folder)
    _populate(Settings(data_dir=folder), server)
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [*salus, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    "salus serve exited: " + (folder / "server.log").read_text()[-2000:]
                )
            try:
                if httpx.get(f"{server.base_url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("salus serve did not become ready in 90 s")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
