"""The server: lifespan (workers, listeners), and a real `salus serve` process
over HTTP with graceful shutdown, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from salus.config import Settings
from salus.jobs import JobContext, JobStatus
from salus.server import create_app
from salus.services import Services
from salus.storage.keys import FileKeyProvider
from tests.conftest import free_port

NAME = "Nguyen Van Binh"


class RecordingListener:
    def __init__(self, events: list[str]) -> None:
        self.name = "recording"
        self.events = events

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _services(settings: Settings) -> Services:
    FileKeyProvider.create(settings.key_path())
    return Services.build(settings)


def test_lifespan_runs_workers_and_listeners(settings_factory: Any) -> None:
    settings: Settings = settings_factory()
    services = _services(settings)
    events: list[str] = []
    services.listeners.append(RecordingListener(events))
    ran: list[dict[str, Any]] = []
    services.job_handlers.register("test.echo", lambda ctx: ran.append(ctx.payload))
    job_id = services.jobs.enqueue("test.echo", {"n": 1})
    try:
        with TestClient(create_app(settings, services)) as client:
            assert events == ["start"]
            _wait_for(lambda: services.jobs.get(job_id).status is JobStatus.DONE)
            assert ran == [{"n": 1}]
            assert client.get("/ready").json()["status"] == "ready"
            metrics = client.get("/metrics").text
            assert 'salus_jobs{status="done"} 1.0' in metrics
        assert events == ["start", "stop"]
    finally:
        services.close()


def test_shutdown_lets_the_running_job_finish(settings_factory: Any) -> None:
    settings: Settings = settings_factory()
    services = _services(settings)
    started = threading.Event()

    def slow(ctx: JobContext) -> None:
        started.set()
        time.sleep(0.5)

    services.job_handlers.register("test.slow", slow)
    job_id = services.jobs.enqueue("test.slow")
    try:
        with TestClient(create_app(settings, services)):
            assert started.wait(10)
        assert services.jobs.get(job_id).status is JobStatus.DONE
    finally:
        services.close()


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env.update(
        SALUS_DATA_DIR=str(settings.data_dir),
        SALUS_LOG_FORMAT="json",
        SALUS_JOBS_POLL_INTERVAL="0.1",
    )
    if settings.database_url is not None:
        env["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    return env


def test_real_server_process(settings_factory: Any) -> None:
    settings: Settings = settings_factory()
    env = _env(settings)
    salus = [sys.executable, "-m", "salus"]
    subprocess.run([*salus, "init"], env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    proc = subprocess.Popen(
        [*salus, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(ready, timeout=30)
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        response = httpx.get(f"{base}/fhir/Patient", params={"name": NAME})
        assert response.status_code == 401  # no token: refused, audited, no name logged
        assert response.headers["content-type"].startswith("application/fhir+json")
        metrics = httpx.get(f"{base}/metrics").text
        assert "salus_http_requests_total" in metrics and "Nguyen" not in metrics
        assert httpx.get(f"{base}/api/openapi.json").json()["info"]["title"] == "Salus"
        docs = httpx.get(f"{base}/api/docs").text
        assert "/api/docs/static/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
        assert httpx.get(f"{base}/api/docs/static/swagger-ui-bundle.js").status_code == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, as a process
        # killed by SIGTERM would end; what matters is the clean lifespan exit below.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert lines, stderr[-2000:]
    assert NAME not in stderr and "Nguyen" not in stderr
    access = [entry for entry in lines if entry["logger"] == "salus.access"]
    assert access and all("request_id" in entry and "route" in entry for entry in access)
    assert any(entry["msg"] == "salus stopped" for entry in lines)


def test_serve_refuses_unsafe_production_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env.update(SALUS_MODE="production", SALUS_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "salus", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SALUS_SECRET_KEY" in result.stderr


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from datetime import UTC, datetime, timedelta
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_with_security_headers(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env.update(
        SALUS_DATA_DIR=str(tmp_path / "data"),
        SALUS_TLS_CERTFILE=str(cert),
        SALUS_TLS_KEYFILE=str(key),
        SALUS_JOBS_ENABLED="false",
    )
    salus = [sys.executable, "-m", "salus"]
    subprocess.run([*salus, "init"], env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    proc = subprocess.Popen(
        [*salus, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(cert))
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/health", verify=trust, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(ready, timeout=30)
        response = httpx.get(f"{base}/.well-known/smart-configuration", verify=trust)
        assert response.json()["token_endpoint"] == f"https://127.0.0.1:{port}/auth/token"
        assert response.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)  # no plain HTTP
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
