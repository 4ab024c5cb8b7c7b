"""Several server processes on one port (``SALUS_HTTP_WORKERS``): a real
``salus serve`` supervisor with its workers, and the SQLite writer lock that
lets their writers queue across processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from salus.db import create_database
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="reads the process tree from /proc (Linux)"
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env.update(
        SALUS_DATA_DIR=str(tmp_path),
        SALUS_LOG_FORMAT="json",
        SALUS_JOBS_ENABLED="false",
        SALUS_HTTP_WORKERS="2",
        SALUS_SHUTDOWN_TIMEOUT="5",
        **extra,
    )
    return env


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _workers(pid: int) -> set[int]:
    """The worker processes (the spawn helpers, not multiprocessing's resource tracker)."""
    workers = set()
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            workers.add(child)
    return workers


def _wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _requests_counted(metrics: str, route: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("salus_http_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_workers_share_the_port_restart_and_stop(tmp_path: Path) -> None:
    env = _env(tmp_path)
    salus = [sys.executable, "-m", "salus"]
    subprocess.run([*salus, "init"], env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*salus, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, Any]] = []

    def collect() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("{"):
                lines.append(json.loads(line))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()

    def readied() -> int:
        return sum(1 for entry in list(lines) if entry["msg"] == "salus ready")

    try:
        _wait_for(lambda: readied() == 2 and len(_workers(proc.pid)) == 2, timeout=60)
        started = time.monotonic()
        first = _workers(proc.pid)

        for _ in range(20):  # a new connection each: the kernel hands them to either worker
            assert httpx.get(f"{base}/health").status_code == 200
        # Counters live in files shared by the workers: every scrape sees all 20.
        for _ in range(4):
            assert _requests_counted(httpx.get(f"{base}/metrics").text, "/health") >= 20

        # A worker that dies (after start-up) is replaced; the port keeps answering.
        time.sleep(max(0.0, 5.5 - (time.monotonic() - started)))
        victim = max(first)
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: len(_workers(proc.pid) - {victim}) == 2, timeout=30)
        _wait_for(lambda: readied() == 3, timeout=60)  # the new worker's lifespan is up
        assert _ready(base)
        assert victim not in _workers(proc.pid)

        workers = _workers(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    messages = [entry["msg"] for entry in lines]
    assert "workers started" in messages
    assert "worker exited; restarting" in messages
    assert messages.count("salus stopped") >= 2, "|".join(messages)  # each lifespan ended cleanly


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the supervisor no chance to stop its workers: they notice
    and stop by themselves (they would otherwise keep the port)."""
    env = _env(tmp_path)
    salus = [sys.executable, "-m", "salus"]
    subprocess.run([*salus, "init"], env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    proc = subprocess.Popen(
        [*salus, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _ready(f"http://127.0.0.1:{port}") and len(_workers(proc.pid)) == 2, 60)
        workers = _workers(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
        _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 40)
        with socket.socket() as probe:  # nobody listens on the port any more
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    env = _env(tmp_path)
    salus = [sys.executable, "-m", "salus"]
    subprocess.run([*salus, "init"], env=env, check=True, capture_output=True, timeout=60)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*salus, "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert f"Cannot listen on 127.0.0.1:{port}" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    env = _env(tmp_path)
    salus = [sys.executable, "-m", "salus"]
    # No 'salus init': the key file is missing, so every worker fails at start-up.
    done = subprocess.run(
        [*salus, "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "worker failed to start; stopping" in done.stderr


def test_a_slow_worker_that_cannot_start_still_stops_the_server(tmp_path: Path) -> None:
    """A start-up failure is a worker that dies before it serves, however long its
    start took (a loaded machine): not a worker to restart in a loop."""
    slow = tmp_path / "slow"
    slow.mkdir()
    # Each spawned worker sleeps 6 s before it starts (longer than the 5 s grace
    # the supervisor used to give), then fails: no 'salus init', no key file.
    (slow / "sitecustomize.py").write_text(
        "import sys, time\nif '--multiprocessing-fork' in sys.argv:\n    time.sleep(6)\n"
    )
    env = _env(tmp_path / "data")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(slow), env.get("PYTHONPATH")]))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "salus", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert time.monotonic() - started > 6  # the workers were slow
    assert done.returncode == 1
    assert "worker failed to start; stopping" in done.stderr
    assert "worker exited; restarting" not in done.stderr


def test_sqlite_writers_queue_on_a_lock_shared_by_processes(tmp_path: Path) -> None:
    db = create_database(f"sqlite:///{tmp_path / 'salus.db'}")
    lock_path = Path(f"{tmp_path / 'salus.db'}.writer-lock")
    probe = [
        sys.executable,
        "-c",
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n"
        "    print('held')\n"
        "else:\n"
        "    print('free')\n",
        str(lock_path),
    ]
    try:
        with db.write():
            assert lock_path.exists()
            inside = subprocess.run(probe, capture_output=True, text=True, check=True)
        after = subprocess.run(probe, capture_output=True, text=True, check=True)
        with db.read():  # readers never take it
            during_read = subprocess.run(probe, capture_output=True, text=True, check=True)
    finally:
        db.dispose()
    assert inside.stdout.strip() == "held"
    assert after.stdout.strip() == "free"
    assert during_read.stdout.strip() == "free"
