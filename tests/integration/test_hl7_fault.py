"""Fault test (issue 6): a real ``salus serve`` process is SIGKILLed, its whole
process group, while senders stream ADT messages over MLLP. After a restart
every acknowledged message is in the store and applied once, and the
senders' resends (of the messages left unacknowledged, and of the last
acknowledged ones, as an unsure sender does) are applied once
(HL7 v2.8 2.10.1, ADR 10: commit, then apply, then acknowledge).

Each visit gets an A01 (admit) then an A03 (discharge) on the same
connection. Finding the Encounter by its visit number makes a re-applied A01
invisible on its own, but an A01 applied again after its A03 would put the
Encounter back in progress with a third version: so every Encounter must end
``finished`` at version 2, and every message row ``applied`` after exactly one
attempt. The first life runs ``SALUS_HL7_APPLY=async`` (the ACK follows the
commit; a kill leaves committed rows for the start-up recovery), the others
``sync`` (the ACK follows the mapping).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from salus.config import Settings
from salus.db import create_database
from salus.db.engine import Database
from salus.db.tables_hl7 import hl7_messages
from salus.services import Services
from salus.storage.keys import FileKeyProvider
from tests.conftest import BACKENDS, backend_database, free_port, settings_for
from tests.integration.hl7_world import PROFILES, MllpClient, ack_code, msg, msh, seg
from tests.integration.security_world import SYSTEM

SENDERS = 4
VISITS = 12  # per sender: 2 messages each
PATIENTS = 5  # per sender (MRNs repeat, so Patients are found and left unchanged)


def adt_message(sender: int, visit: int, event: str) -> bytes:
    control = f"F{sender}-{visit}-{event}"
    mrn = f"FMRN{sender}-{visit % PATIENTS}"
    pv1 = {1: "1", 2: "I", 3: "W1^R2^B3", 19: f"FV{sender}-{visit}", 44: "20240101110000"}
    if event == "A03":
        pv1[45] = "20240102110000"
    return msg(
        msh(control, f"ADT^{event}^ADT_A01"),
        f"EVN|{event}|20240101120000",
        f"PID|1||{mrn}^^^HOSPA^MR||Phạm^Thu^Hà||19900101|F",
        seg("PV1", pv1),
    )


@dataclass
class Sender:
    """One MLLP connection's stream; survives server restarts (it reconnects)."""

    index: int
    messages: list[bytes]
    acked: int = 0  # messages[:acked] were acknowledged AA
    resent: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self, port: int, resend: int) -> None:
        """Send from the first unacknowledged message (and ``resend`` before it) on.

        Returns when done or when the server goes away.
        """
        try:
            client = MllpClient(port, timeout=30.0)
        except OSError as exc:
            self.errors.append(f"connect: {exc}")
            return
        try:
            start = max(0, self.acked - resend)
            for i in range(start, len(self.messages)):
                try:
                    reply = client.send(self.messages[i])
                except (OSError, AssertionError):
                    return  # the server was killed: messages[i] stays unacknowledged
                code = ack_code(reply)
                if code != "AA":
                    self.errors.append(f"message {i}: {reply!r}")
                    return
                if i < self.acked:
                    self.resent += 1
                self.acked = max(self.acked, i + 1)
        finally:
            client.close()


class ServerProcess:
    """``salus serve`` in a process group of its own (all its workers die together)."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = settings.data_dir / "server.log"

    def start(self, apply: str) -> None:
        env = {**self.env, "SALUS_HL7_APPLY": apply}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "salus", "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.settings.mllp_port), 0.5):
                    pass
                with httpx.Client(timeout=1) as http:
                    if http.get(f"{self.base}/health").status_code == 200:
                        return
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.05)
        raise AssertionError("salus serve did not start: " + self.log.read_text()[-3000:])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        # Let the kernel close the group's sockets (workers may outlive the leader briefly).
        time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with _suppress_lookup():
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextmanager
def _suppress_lookup() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


def _env(settings: Settings, profiles: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env.update(
        SALUS_DATA_DIR=str(settings.data_dir),
        SALUS_HTTP_PORT=str(settings.http_port),
        SALUS_MLLP_ENABLED="true",
        SALUS_MLLP_PORT=str(settings.mllp_port),
        SALUS_HL7_PROFILES_FILE=str(profiles),
        SALUS_JOBS_ENABLED="false",
        SALUS_LOG_LEVEL="WARNING",
        SALUS_AUDIT_CHECKPOINT_SECONDS="3600",
    )
    if settings.database_url is not None:
        env["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    return env


def _prepare(settings: Settings) -> str:
    """Keys, schema, hosp-a and its feed client; returns the client's secret."""
    FileKeyProvider.create(settings.key_path())
    services = Services.build(settings)
    try:
        services.directory.create_organization(SYSTEM, "ops", "Operator", "operator")
        services.directory.create_organization(SYSTEM, "hosp-a", "Bệnh viện A", "hospital")
        created = services.directory.create_client(
            SYSTEM,
            client_id="a-feed",
            org_id="hosp-a",
            name="a-feed",
            auth_method="client_secret",
            roles=["hospital_integration"],
        )
        assert created.secret
        return created.secret
    finally:
        services.close()


def _stream_until_killed(
    server: ServerProcess, senders: list[Sender], acks_before_kill: int, rng: random.Random
) -> None:
    before = sum(s.acked for s in senders)
    threads = [
        threading.Thread(target=s.run, args=(server.settings.mllp_port, 2), daemon=True)
        for s in senders
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while sum(s.acked for s in senders) - before < acks_before_kill:
        assert time.monotonic() < deadline, "the senders stalled"
        assert not any(s.errors for s in senders), [s.errors for s in senders]
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.01))  # a random moment inside the stream
    server.kill()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


def _wait_applied(db: Database) -> dict[str, int]:
    deadline = time.monotonic() + 20
    while True:
        with db.read() as conn:
            states = dict(
                conn.execute(
                    select(hl7_messages.c.state, func.count()).group_by(hl7_messages.c.state)
                ).all()
            )
        if "received" not in states or time.monotonic() > deadline:
            return {str(k): int(v) for k, v in states.items()}
        time.sleep(0.05)


def _encounters(server: ServerProcess, secret: str) -> list[dict[str, object]]:
    with httpx.Client(base_url=server.base, timeout=30) as http:
        token = http.post(
            "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "a-feed",
                "client_secret": secret,
            },
        )
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        out: list[dict[str, object]] = []
        url: str | None = "/fhir/Encounter?_count=200"
        while url:
            response = http.get(url, headers=headers)
            assert response.status_code == 200, response.text
            bundle = response.json()
            out += [e["resource"] for e in bundle.get("entry", [])]
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_while_streaming_loses_nothing_acknowledged(backend: str, tmp_path: Path) -> None:
    rng = random.Random(20261124)  # noqa: S311 - test timing only
    with backend_database(backend, tmp_path) as (url, schema):
        settings = settings_for(
            url,
            schema,
            tmp_path / "data",
            http_port=free_port(),
            mllp_port=free_port(),
            jobs_enabled=False,
        )
        profiles = tmp_path / "hl7-profiles.toml"
        profiles.write_text(PROFILES.format(his_port=free_port()))
        secret = _prepare(settings)
        server = ServerProcess(settings, _env(settings, profiles))
        senders = [
            Sender(s, [adt_message(s, v, e) for v in range(VISITS) for e in ("A01", "A03")])
            for s in range(SENDERS)
        ]
        total = SENDERS * VISITS * 2
        db = create_database(settings.database_url_value(), pool_size=1)
        try:
            for apply, kill_after in (("async", 20), ("sync", 15)):
                server.start(apply)
                _stream_until_killed(server, senders, kill_after, rng)
                acked = sum(s.acked for s in senders)
                assert acked < total, "the kill came too late to test anything"
                # Every acknowledged message survived the kill.
                with db.read() as conn:
                    stored = set(conn.execute(select(hl7_messages.c.control_id)).scalars())
                for s in senders:
                    for raw in s.messages[: s.acked]:
                        control = raw.split(b"|")[9].decode()
                        assert control in stored, f"acknowledged message {control} was lost"
            # Restart; every sender resends from its first unacknowledged message
            # (and its last two acknowledged ones) and finishes its stream.
            server.start("sync")
            threads = [
                threading.Thread(target=s.run, args=(settings.mllp_port, 2)) for s in senders
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert [s.errors for s in senders] == [[]] * SENDERS
            assert all(s.acked == len(s.messages) for s in senders)
            assert sum(s.resent for s in senders) >= SENDERS  # duplicates were answered AA

            # One row per message, applied once.
            assert _wait_applied(db) == {"applied": total}
            with db.read() as conn:
                rows = conn.execute(
                    select(hl7_messages.c.control_id, hl7_messages.c.attempts)
                ).all()
            assert len({r.control_id for r in rows}) == total
            assert {r.attempts for r in rows} == {1}
            # One Encounter per visit, admitted then discharged: version 2, finished.
            encounters = _encounters(server, secret)
            visits = [e["identifier"][0]["value"] for e in encounters]  # type: ignore[index]
            assert sorted(visits) == sorted(
                f"FV{s}-{v}" for s in range(SENDERS) for v in range(VISITS)
            )
            assert {e["status"] for e in encounters} == {"finished"}
            assert {e["meta"]["versionId"] for e in encounters} == {"2"}  # type: ignore[index]
        finally:
            server.stop()
            db.dispose()
