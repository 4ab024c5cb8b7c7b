"""Several server processes on one port: a small supervisor.

One Python process runs Python code on one core at a time, so ``salus serve``
starts ``SALUS_HTTP_WORKERS`` processes (one per core by default) that share
one listening socket; the kernel hands each new connection to one of them.

* The supervisor brings the schema up to date once, binds the socket, and
  starts the workers with the ``spawn`` method (no fork of a process that
  holds database connections or threads).
* Worker 0 is the *primary*: only it runs the MLLP listener, the job
  workers and the audit checkpoints. The DIMSE listener runs in the first
  ``SALUS_DICOM_PROCESSES`` workers (0: all of them): the supervisor binds
  the DICOM port once too and hands the socket to them
  (:func:`salus.dicom.dimse.adopt_listening_socket`), so that C-STOREs of
  concurrent associations run on every core.
* A worker that dies is started again (a primary again in slot 0); one that
  dies before it said it serves (its lifespan started and its sockets
  listen: a ``ready`` event it sets) is a start-up failure (bad settings, a
  port in use, a missing key file) and stops the whole server with exit
  status 1 instead of restarting in a loop, however slow the start was (a
  grace period in seconds restarted a slow machine's failing workers
  forever).
* SIGTERM or SIGINT stops the workers gracefully (in-flight requests get
  ``SALUS_SHUTDOWN_TIMEOUT``); a worker still running after that is killed.
* Prometheus metrics are aggregated over the workers (``prometheus_client``
  multiprocess mode, in a folder the supervisor makes and removes).
* Per-minute rate limits are divided between the workers, so that the whole
  server keeps to the configured figure.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from salus.config import Settings

__all__ = ["Supervisor", "dicom_processes", "worker_settings"]

log = logging.getLogger("salus.server")

#: How often a worker checks that its supervisor is still there.
PARENT_POLL_SECONDS = 1.0
#: Set in every worker's environment: its slot (0 is the primary).
WORKER_ENV = "SALUS_WORKER_INDEX"


def worker_settings(settings: Settings, workers: int) -> Settings:
    """The settings one of ``workers`` processes runs with (rate limits shared out)."""
    if workers <= 1:
        return settings
    token_rate = math.ceil(settings.rate_limit_token_per_minute / workers)
    login_rate = math.ceil(settings.rate_limit_login_per_minute / workers)
    return settings.model_copy(
        update={
            "rate_limit_token_per_minute": token_rate,
            "rate_limit_login_per_minute": login_rate,
            "migrate_on_start": False,  # the supervisor did it once
        }
    )


def dicom_processes(settings: Settings, workers: int) -> int:
    """How many of ``workers`` processes run the DIMSE listener (``SALUS_DICOM_PROCESSES``)."""
    if not settings.dicom_enabled:
        return 0
    return min(workers, settings.dicom_processes or workers)


def _serve_worker(
    settings: Settings,
    sock: socket.socket,
    index: int,
    supervisor: int,
    dicom_sock: socket.socket | None = None,
    dicom_loads: Any = None,
    ready: Any = None,
) -> None:
    """The body of one worker process (spawned); sets ``ready`` once it serves."""
    from salus.logging import configure_logging
    from salus.server.run import serve_app

    os.environ[WORKER_ENV] = str(index)
    configure_logging(settings.log_level, settings.log_format)
    if dicom_sock is not None:
        from salus.dicom.dimse import adopt_listening_socket

        adopt_listening_socket(dicom_sock, dicom_loads, index)
    _stop_with(supervisor)
    serve_app(
        settings,
        primary=index == 0,
        sockets=[sock],
        on_started=ready.set if ready is not None else None,
    )


def _stop_with(supervisor: int) -> None:
    """Stop this worker (gracefully, SIGTERM) when the supervisor is gone, even if
    it was killed without a chance to stop its workers (SIGKILL, OOM killer):
    otherwise orphaned workers would keep the port and serve on."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != supervisor:
                log.error("supervisor gone; stopping worker")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="salus-supervisor-watch", daemon=True).start()


class Supervisor:
    """Start, watch and stop ``count`` worker processes on one socket."""

    def __init__(self, settings: Settings, count: int) -> None:
        if count < 2:
            raise ValueError("a supervisor runs two workers or more")
        self.settings = settings
        self.count = count
        self._context = multiprocessing.get_context("spawn")
        #: Each worker's process and its readiness event (set once it serves).
        self._workers: dict[int, tuple[BaseProcess, Any]] = {}
        self._stopping = threading.Event()
        self._dicom_sock: socket.socket | None = None
        #: Open associations per DIMSE process (shared memory; see dimse.py).
        self._dicom_loads: Any = None
        self._dicom_count = 0
        self.exit_code = 0

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or a start-up failure); returns the exit status."""
        self._prepare_database()
        metrics_dir = tempfile.mkdtemp(prefix="salus-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        sock = _bind(self.settings.http_host, self.settings.http_port)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._bind_dicom()
            settings = worker_settings(self.settings, self.count)
            for index in range(self.count):
                self._start(index, settings, sock)
            log.info("workers started", extra={"workers": self.count})
            while not self._stopping.wait(0.5):
                self._watch(settings, sock)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sock.close()
            if self._dicom_sock is not None:
                self._dicom_sock.close()
                self._dicom_sock = None
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return self.exit_code

    def _bind_dicom(self) -> None:
        """Bind the DICOM port once for the workers that run the DIMSE listener
        (with one, the primary binds it itself, as without a supervisor)."""
        self._dicom_count = dicom_processes(self.settings, self.count)
        if self._dicom_count < 2:
            self._dicom_count = 0
            return
        host, port = self.settings.dicom_host, self.settings.dicom_port
        try:
            self._dicom_sock = _bind(host, port)
            self._dicom_loads = self._context.Array("i", self._dicom_count, lock=False)
        except OSError as exc:
            from salus.errors import ConfigurationError

            raise ConfigurationError(f"Cannot listen on {host}:{port} ({exc.strerror}).") from None

    def _prepare_database(self) -> None:
        if not self.settings.migrate_on_start:
            return
        from salus.db import create_database, migrate

        db = create_database(self.settings.database_url_value(), pool_size=1)
        try:
            migrate(db)
        finally:
            db.dispose()

    def _start(self, index: int, settings: Settings, sock: socket.socket) -> None:
        if self._dicom_loads is not None and index < self._dicom_count:
            self._dicom_loads[index] = 0  # a restarted worker serves nothing yet
        ready = self._context.Event()
        process = self._context.Process(
            target=_serve_worker,
            args=(
                settings,
                sock,
                index,
                os.getpid(),
                self._dicom_sock if index < self._dicom_count else None,
                self._dicom_loads if index < self._dicom_count else None,
                ready,
            ),
            name=f"salus-worker-{index}",
            daemon=False,
        )
        process.start()
        self._workers[index] = (process, ready)

    def _watch(self, settings: Settings, sock: socket.socket) -> None:
        for index, (process, ready) in list(self._workers.items()):
            if process.is_alive() or self._stopping.is_set():
                continue
            code = process.exitcode
            if not ready.is_set():  # it never served: a start-up failure
                log.error(
                    "worker failed to start; stopping", extra={"worker": index, "exit_code": code}
                )
                self.exit_code = 1
                self._stopping.set()
                return
            log.error("worker exited; restarting", extra={"worker": index, "exit_code": code})
            self._start(index, settings, sock)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping.set()

    def _stop_all(self) -> None:
        processes = [process for process, _ in self._workers.values()]
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.join()
        self._workers.clear()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
