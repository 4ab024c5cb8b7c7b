"""One way to start and watch ``salus serve`` for every benchmark in ``bench/``.

The end-to-end benchmarks (``fhir_bench.py``, ``fhir_load_bench.py``,
``hl7_bench.py``, ``dicom_bench.py``) each measure a real server process on
loopback. :class:`SalusServer` owns everything about that process, so that the
scripts differ only in what they send and measure:

* **settings**: the environment is this process's without any ``SALUS_*``
  variable (a developer's shell must not change a figure), plus
  :data:`BASE_SETTINGS` (log level WARNING, jobs off, tokens valid for an
  hour, the token endpoint's rate limit raised, ``SALUS_PUBLIC_URL`` on the
  chosen port), ``SALUS_DATABASE_URL`` for PostgreSQL, and the script's own
  settings by name (``mllp_port`` is ``SALUS_MLLP_PORT``, as in
  ``salus.config``);
* **ports**: a free loopback port for HTTP (:func:`free_port`; a script takes
  more for MLLP or DIMSE and names them in ``listen``);
* **readiness**: ``GET /health`` answers 200 (with several worker processes
  this waits until a worker takes connections: the supervisor binds the socket
  before its workers serve), then every port in ``listen`` accepts a
  connection; a server that exits first raises with the tail of its log;
* **CPU**: :meth:`SalusServer.cpu` is the CPU time of the server's process tree
  (the supervisor, its workers and their reaped children) read from ``/proc``
  (:func:`processes`, :func:`tree_cpu`), and :meth:`SalusServer.settle` waits
  until that tree is idle; :func:`postgres_cpu` and :func:`machine` give
  PostgreSQL's and the whole machine's share;
* **stop** (SIGTERM to the server, which stops its workers gracefully; after
  ``timeout`` the whole process group is killed) and **restart** (the same
  data folder, the log appended to);
* the CLI on the same data folder and settings (:meth:`SalusServer.cli`,
  :meth:`SalusServer.provision` for an organization and a client), a bearer
  token for that client, and ``py-spy record`` of the server
  (:meth:`SalusServer.profile`).

Usable as a context manager (``with server:``), the one way the scripts end a
server: it is stopped on the way out, the tail of its log printed to stderr
first when the way out is an error, and its data folder removed afterwards
when :attr:`SalusServer.remove_data` is set (a script's ``--keep`` unset).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: What every benchmark server runs with, before the script's own settings.
BASE_SETTINGS = {
    "log_level": "WARNING",
    "jobs_enabled": "false",
    "auth_token_ttl": "3600",
    "rate_limit_token_per_minute": "100000",
}


def write_results(
    path: Path, environment: Mapping[str, str], args: object, results: list[Any]
) -> None:
    """A benchmark's ``--json`` file: the machine and versions, the command's
    arguments (as text) and its results, in one form for every script."""
    path.write_text(
        json.dumps(
            {
                "environment": dict(environment),
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
            },
            indent=2,
            ensure_ascii=False,
        )
    )


def env_name(setting: str) -> str:
    """``mllp_port`` -> ``SALUS_MLLP_PORT`` (a name already in that form is kept)."""
    name = setting.strip().upper()
    return name if name.startswith("SALUS_") else f"SALUS_{name}"


def free_port() -> int:
    """A TCP port free on loopback now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    port: int, process: subprocess.Popen[bytes], what: str, log: Path, deadline: float
) -> None:
    """Until ``port`` on loopback accepts a connection; raises if ``process`` exits
    first (with the tail of ``log``) or at ``deadline`` (``time.monotonic()``)."""
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {_tail(log, 2000)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not open port {port} in time") from None
            time.sleep(0.2)


# -- CPU accounting from /proc ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Proc:
    ppid: int
    name: str
    own: float  # utime + stime, seconds
    cpu: float  # own + cutime + cstime: with its reaped children


def processes() -> dict[int, Proc]:
    """Every process's parent, name and CPU seconds (``/proc/PID/stat``, proc(5))."""
    table: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])
        table[int(entry.name)] = Proc(
            int(fields[1]), name, own / CLK_TCK, (own + int(fields[13]) + int(fields[14])) / CLK_TCK
        )
    return table


def tree_cpu(table: Mapping[int, Proc], root: int) -> float:
    """CPU seconds of ``root`` and all its descendants, reaped children included.

    A process that exits and is reaped inside the tree moves its time into its parent's
    ``cutime``/``cstime``, so a difference of two samples counts it exactly once (the
    ``salus serve`` supervisor and its worker processes).
    """
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    total, stack, seen = 0.0, [root] if root in table else [], set()
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            total += table[pid].cpu
            stack.extend(children.get(pid, ()))
    return total


#: ``postgres: [cluster: ]user database host(port) activity``: a client backend.
_BACKEND = re.compile(r"postgres: (?:\S+: )?\S+ (\S+) (?:\S+\(\d+\)|\[local\]) ")


def postgres_cpu(table: Mapping[int, Proc], database: str | None = None) -> dict[int, float]:
    """Own CPU seconds of each PostgreSQL process, by pid; with ``database``, less the
    client backends of other databases (the PostgreSQL server is shared with other
    sessions' test suites).

    Per process, so a connection closed during a phase loses its time instead of
    making a difference of two samples negative: a floor (the server keeps its
    connections in a pool).
    """
    out: dict[int, float] = {}
    for pid, proc in table.items():
        if not proc.name.startswith("postgres"):
            continue
        if database is not None:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, UnicodeDecodeError):
                continue
            match = _BACKEND.match(cmdline)
            if match is not None and match.group(1) != database:
                continue
        out[pid] = proc.own
    return out


def settle_tree(
    pid: int, limit_s: float = 10.0, interval: float = 0.25, cores: float = 0.05
) -> None:
    """Wait (up to ``limit_s``) until the process tree of ``pid`` uses under ``cores``
    of CPU over ``interval`` (work left in flight finished; start-up done)."""
    deadline = time.monotonic() + limit_s
    before = tree_cpu(processes(), pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = tree_cpu(processes(), pid)
        if (now - before) / interval < cores:
            return
        before = now


def machine() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def _tail(path: Path, chars: int) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# -- the server -------------------------------------------------------------------------------
class SalusServer:
    """``python -m salus --data-dir DIR serve --port P`` in its own process group."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        *,
        label: str = "salus",
        settings: Mapping[str, str] | None = None,
        listen: Iterable[int] = (),
        log: Path | None = None,
    ) -> None:
        self.label = label.lower()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.listen = tuple(listen)
        self.log = log or data_dir / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
        self.configure({**BASE_SETTINGS, "public_url": self.base, **(settings or {})})
        if database_url:
            self.env["SALUS_DATABASE_URL"] = database_url
        self.process: subprocess.Popen[bytes] | None = None
        self.client_id = ""
        self.secret = ""
        #: Remove :attr:`data_dir` when the ``with`` block ends (after the stop).
        self.remove_data = False

    def configure(self, settings: Mapping[str, str]) -> None:
        """Set server settings by name (takes effect at the next :meth:`serve`)."""
        for name, value in settings.items():
            self.env[env_name(name)] = str(value).strip()

    # -- the CLI on the same data folder ----------------------------------------------------
    def command(self, *args: str) -> list[str]:
        """``python -m salus --data-dir DIR ARGS`` with this interpreter (run it with
        :attr:`env`, e.g. several ``salus fhir import`` at once)."""
        return [sys.executable, "-m", "salus", "--data-dir", str(self.data_dir), *args]

    def cli(self, *args: str) -> str:
        """Run ``salus ARGS`` on the server's data folder and settings; its stdout."""
        done = subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"salus {' '.join(args)} failed: {done.stderr or done.stdout}")
        return done.stdout

    def provision(
        self, org: str, org_name: str, client_id: str, role: str = "hospital_integration"
    ) -> str:
        """Create an organization (a hospital) and a client of it; the client's secret."""
        self.cli("org", "create", org, "--name", org_name, "--kind", "hospital")
        out = self.cli("client", "create", client_id, "--org", org, "--role", role)
        self.client_id, self.secret = client_id, out.strip().rsplit(None, 1)[-1]
        return self.secret

    def token(self) -> str:
        """A bearer token for the provisioned client (client credentials, HTTP Basic)."""
        basic = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
        response = httpx.post(
            f"{self.base}/auth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    # -- the process --------------------------------------------------------------------------
    def serve(self, *, append: bool = False, timeout: float = 120.0) -> None:
        """Start ``salus serve`` (its log truncated, or appended to) and wait until ready."""
        with self.log.open("ab" if append else "wb") as out:
            self.process = subprocess.Popen(
                self.command("serve", "--port", str(self.port)),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until ``/health`` answers 200 and every port in ``listen`` accepts."""
        process = self.process
        assert process is not None
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"salus serve exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"salus serve did not become healthy in {timeout:.0f} s")
            time.sleep(0.2)
        for port in self.listen:
            wait_listening(port, process, "salus serve", self.log, deadline)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to the server (it stops its workers gracefully); the process group
        killed if it has not exited after ``timeout`` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def restart(self, timeout: float = 120.0) -> None:
        """Stop and serve again on the same data folder and settings (no init)."""
        self.stop()
        self.serve(append=True, timeout=timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return _tail(self.log, chars)

    # -- watching -----------------------------------------------------------------------------
    def cpu(self) -> float:
        """CPU seconds of the server's process tree so far."""
        return tree_cpu(processes(), self.pid)

    def settle(self, limit_s: float = 10.0, interval: float = 0.25, cores: float = 0.05) -> None:
        """Wait until the server's process tree is idle (:func:`settle_tree`)."""
        settle_tree(self.pid, limit_s, interval, cores)

    def profile(self, output: Path, rate: int = 100) -> subprocess.Popen[bytes] | None:
        """``py-spy record --gil`` of the server into ``output`` (raw collapsed stacks),
        or None without py-spy on PATH; stop it with :func:`stop_profile`."""
        spy = shutil.which("py-spy")
        if spy is None:
            return None
        output.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--nonblocking",
                "--gil",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        return process

    def __enter__(self) -> SalusServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """Stop the server; on the way out of an error, print the tail of its log first;
        then remove its data folder if :attr:`remove_data`."""
        if error is not None:
            print(self.log_tail(), file=sys.stderr)
        self.stop()
        if self.remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    """Stop a :meth:`SalusServer.profile` recording (py-spy writes its file on SIGINT)."""
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
