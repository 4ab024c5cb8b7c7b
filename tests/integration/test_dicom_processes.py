"""The DIMSE listener in several server processes (``SALUS_DICOM_PROCESSES``).

* Two processes storing into one study at once keep its statistics right
  (number of series and instances, modalities in study), on SQLite and PostgreSQL.
* A piece of a group commit that loses a PostgreSQL deadlock runs again.
* ``salus serve`` with two workers accepts associations in both: with one
  association allowed per process, a second association is served while the
  first is held (and never with ``SALUS_DICOM_PROCESSES=1``).
"""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.engine import Connection

from salus.config import Settings
from salus.db import Database
from salus.db.tables_dicom import dicom_series, dicom_studies
from salus.dicom.groupcommit import GroupCommit
from salus.services import Services
from tests.conftest import BACKENDS, free_port
from tests.integration.dicom_world import dicom_world, web_sample

pytestmark = pytest.mark.timeout(120)

PER_PROCESS = 12


def _files(study: str, series: list[tuple[str, str]], count: int) -> list[bytes]:
    """``count`` CT instances of ``study``, alternating between ``series`` (uid, modality)."""
    base = dcmread(BytesIO(web_sample("CT_small.dcm")))
    base.StudyInstanceUID = study
    files = []
    for index in range(count):
        base.SeriesInstanceUID, base.Modality = series[index % len(series)]
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = BytesIO()
        base.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
    return files


def _store_all(settings: Settings, files: list[bytes], start: Any) -> None:
    """A second process's body: its own services on the same database and blobs."""
    services = Services.build(settings)
    try:
        assert services.dicom is not None
        principal = services.directory.client_principal("a-feed")
        start.wait(60)
        outcomes = {services.dicom.store(principal, data).outcome for data in files}
        if outcomes != {"stored"}:
            sys.exit(3)
    finally:
        services.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_storing_into_one_study(backend: str, tmp_path: Path) -> None:
    study = generate_uid()
    series = [(generate_uid(), "CT"), (generate_uid(), "PT")]
    mine, theirs = _files(study, series, PER_PROCESS), _files(study, series, PER_PROCESS)
    context = multiprocessing.get_context("spawn")
    with dicom_world(backend, tmp_path, dicom_fhir_sync=False) as dw:
        start = context.Event()
        other = context.Process(target=_store_all, args=(dw.services.settings, theirs, start))
        other.start()
        try:
            time.sleep(0.5)  # let the other process build its services (it waits)
            start.set()
            principal = dw.principal()
            outcomes = {dw.archive.store(principal, data).outcome for data in mine}
            other.join(90)
        finally:
            if other.is_alive():
                other.kill()
        assert other.exitcode == 0
        assert outcomes == {"stored"}
        with dw.services.db.read() as conn:
            row = (
                conn.execute(select(dicom_studies).where(dicom_studies.c.study_uid == study))
                .mappings()
                .one()
            )
            counts = dict(
                conn.execute(
                    select(dicom_series.c.series_uid, dicom_series.c.num_instances).where(
                        dicom_series.c.study_pk == row["pk"]
                    )
                ).all()
            )
        assert row["num_instances"] == 2 * PER_PROCESS
        assert row["num_series"] == 2
        assert sorted(str(row["modalities"]).split("\\")) == ["CT", "PT"]
        assert counts == {uid: PER_PROCESS for uid, _ in series}


class _Deadlock(Exception):
    """What SQLAlchemy raises for psycopg's DeadlockDetected: the DBAPI error in ``orig``."""

    def __init__(self) -> None:
        super().__init__("deadlock detected")
        self.orig = type("DeadlockDetected", (), {"sqlstate": "40P01"})()


def test_a_piece_that_lost_a_deadlock_runs_again(db: Database) -> None:
    group = GroupCommit(db)
    calls: list[int] = []

    def fn(conn: Connection) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise _Deadlock()
        return "ok"

    assert group.run(fn) == "ok"
    assert len(calls) == 2 and group.transactions == 1

    def always(conn: Connection) -> str:
        raise _Deadlock()

    with pytest.raises(_Deadlock):  # at most RETRIES runs again, then the error
        group.run(always)

    def refused(conn: Connection) -> str:
        calls.append(1)
        raise ValueError("refused")

    calls.clear()
    with pytest.raises(ValueError):  # other errors are not run again
        group.run(refused)
    assert len(calls) == 1


class _Server:
    """``salus serve`` with two workers and one association allowed per process;
    its log lines are collected (no patient data: checked at the end)."""

    def __init__(self, settings: Settings, dicom_port: int, **extra: str) -> None:
        from tests.integration.test_dicom_serve import _env

        http_port = free_port()
        env = _env(settings, http_port, dicom_port)
        env.update(SALUS_HTTP_WORKERS="2", SALUS_DICOM_MAX_ASSOCIATIONS="1", **extra)
        self.port = dicom_port
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "salus", "serve", "--port", str(http_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_listeners(self, count: int) -> None:
        """Until ``count`` processes log their DIMSE listener (a probing connection
        would hold one of the single association slots until its ACSE timeout)."""
        deadline = time.monotonic() + 60
        while sum("DIMSE listener on" in line for line in self.lines) < count:
            assert self.proc.poll() is None, "salus serve exited"
            assert time.monotonic() < deadline, "the DIMSE listeners did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _second_association(dicom_port: int, tries: int) -> bool:
    """Hold one association and try to open a second one ``tries`` times (a
    process with one association already rejects it: local limit exceeded)."""
    ae = AE(ae_title="MOD_A")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context("1.2.840.10008.1.1")
    first = ae.associate("127.0.0.1", dicom_port, ae_title="SALUS")
    assert first.is_established
    try:
        assert first.send_c_echo().Status == 0x0000
        for _ in range(tries):
            second = ae.associate("127.0.0.1", dicom_port, ae_title="SALUS")
            if second.is_established:
                status = second.send_c_echo().Status
                second.release()
                return bool(status == 0x0000)
        return False
    finally:
        first.release()


def test_serve_runs_the_dimse_listener_in_every_worker(settings_factory: Any) -> None:
    from tests.integration.test_dicom_serve import _setup

    settings: Settings = settings_factory()
    if settings.database_url is not None:
        pytest.skip("the process layout does not depend on the database: SQLite only")
    from tests.integration.test_dicom_serve import _env

    dicom_port = free_port()
    subprocess.run(
        [sys.executable, "-m", "salus", "init"],
        env=_env(settings, free_port(), dicom_port),
        check=True,
        capture_output=True,
        timeout=60,
    )
    _setup(settings)
    server = _Server(settings, dicom_port)
    try:
        server.wait_listeners(2)
        # The kernel gives each connection to whichever process accepts first:
        # with two listening processes a few tries reach the free one.
        assert _second_association(dicom_port, tries=40)
    finally:
        server.stop()
    server = _Server(settings, dicom_port, SALUS_DICOM_PROCESSES="1")
    try:
        server.wait_listeners(1)
        assert not _second_association(dicom_port, tries=5)
    finally:
        server.stop()
    assert sum("DIMSE listener on shared port" in line for line in server.lines) == 0


def test_a_busier_process_leaves_a_new_connection_to_a_less_loaded_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shared-socket server of one process (slot 0) against a second process
    simulated by a thread on the same listening socket (slot 1)."""
    from salus.dicom import dimse

    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    loads = [0, 0]
    monkeypatch.setattr(dimse, "_ADOPTED", listening)
    monkeypatch.setattr(dimse, "_LOADS", loads)
    monkeypatch.setattr(dimse, "_SLOT", 0)
    monkeypatch.setattr(dimse, "BUSY_ACCEPT_WAIT", 30.0)  # only the loads end the wait
    ae = AE()
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.make_server(("127.0.0.1", port), server_class=dimse._shared_server_class())
    clients: list[socket.socket] = []
    taken: list[socket.socket] = []
    try:
        clients.append(socket.create_connection(("127.0.0.1", port)))
        first, _ = server.get_request()  # equal loads: taken at once
        taken.append(first)
        assert loads == [1, 0]

        def other_process() -> None:  # the less loaded process takes the connection
            time.sleep(0.2)
            conn, _ = listening.accept()
            taken.append(conn)
            loads[1] = 2

        clients.append(socket.create_connection(("127.0.0.1", port)))
        thread = threading.Thread(target=other_process)
        thread.start()
        with pytest.raises(BlockingIOError):  # left to it: gone when this one looks
            server.get_request()
        thread.join(10)
        assert len(taken) == 2
        clients.append(socket.create_connection(("127.0.0.1", port)))
        third, _ = server.get_request()  # now the other one is busier: taken at once
        taken.append(third)
        assert loads[0] == 2
        third.close()
        first.close()
        server.service_actions()  # closed connections leave the load
        assert loads[0] == 0
    finally:
        for sock in clients + taken:
            sock.close()
        server.server_close()
        ae.shutdown()
