"""SQLite WAL checkpoints outside the writer lock (ADR 23): the server's
connections do not checkpoint inside their commits, a background checkpointer
does it without the writer lock, the WAL stays bounded, and acknowledged
writes survive a kill before any checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import text

from salus.config import Settings
from salus.db.engine import Database, create_database
from salus.server import create_app
from salus.services import Services
from salus.storage.keys import FileKeyProvider

ROW = "x" * 900  # a synthetic payload: about a quarter of a page per row


def _pragma(db: Database, name: str) -> int:
    with db.read() as conn:
        return int(conn.execute(text(f"PRAGMA {name}")).scalar_one())


def _sqlite(tmp_path: Path, **kwargs: Any) -> Database:
    # The restart under load is off by default; these tests exercise it.
    kwargs.setdefault("sqlite_wal_restart_mb", 16)
    db = create_database(f"sqlite:///{tmp_path / 'salus.db'}", **kwargs)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    return db


def _insert(db: Database, rows: int) -> None:
    with db.write() as conn:
        conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", [(ROW,)] * rows)


def test_connections_checkpoint_automatically_unless_a_checkpointer_runs(tmp_path: Path) -> None:
    db = _sqlite(tmp_path, sqlite_wal_limit_mb=8)
    try:
        assert _pragma(db, "wal_autocheckpoint") == 1000  # the CLI, tests: SQLite's own
        assert _pragma(db, "journal_size_limit") == 8 * 1024 * 1024
        checkpointer = db.start_checkpointer(3600)
        assert checkpointer is not None and db.checkpointer is checkpointer
        assert _pragma(db, "wal_autocheckpoint") == 0
        assert checkpointer.limit_pages == 8 * 1024 * 1024 // _pragma(db, "page_size")
        db.stop_checkpointer()
        assert db.checkpointer is None
        assert _pragma(db, "wal_autocheckpoint") == 1000
    finally:
        db.dispose()


def test_commits_leave_the_wal_to_the_checkpointer(tmp_path: Path) -> None:
    db = _sqlite(tmp_path)
    try:
        checkpointer = db.start_checkpointer(3600)  # no tick during the test
        assert checkpointer is not None
        for _ in range(3):
            _insert(db, 2000)  # ~500 pages each: together past SQLite's 1,000
        result = checkpointer.run_once()
        assert result is not None and not result.busy
        # Nothing was copied by the commits: the WAL holds all three transactions
        # (with SQLite's automatic checkpoint, the third restarts it: ~500).
        assert result.frames > 1400
        assert result.checkpointed == result.frames
    finally:
        db.dispose()


def test_the_checkpoint_runs_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    db = _sqlite(tmp_path)
    try:
        checkpointer = db.start_checkpointer(3600)
        assert checkpointer is not None
        _insert(db, 500)
        finished = threading.Event()
        outcome: list[Any] = []

        def tick() -> None:
            outcome.append(checkpointer.run_once())
            finished.set()

        with db.write() as conn:  # the writer lock and SQLite's write lock
            conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", (ROW,))
            thread = threading.Thread(target=tick)
            thread.start()
            assert finished.wait(10), "the checkpoint waited for the writer"
        thread.join()
        assert outcome[0] is not None and outcome[0].checkpointed == outcome[0].frames > 0
        with db.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 501
    finally:
        db.dispose()


def _wal_frames(db: Database) -> int:
    """Frames in the WAL now (a passive checkpoint's second value)."""
    with db.engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def test_the_wal_stays_bounded_after_a_large_transaction(tmp_path: Path) -> None:
    db = _sqlite(tmp_path, sqlite_wal_limit_mb=1)
    wal = tmp_path / "salus.db-wal"
    try:
        checkpointer = db.start_checkpointer(3600)
        assert checkpointer is not None
        _insert(db, 5000)  # ~5 MiB of WAL in one transaction
        assert wal.stat().st_size > 4 * 1024 * 1024
        result = checkpointer.run_once()
        assert result is not None and result.mode == "RESTART" and not result.busy
        assert checkpointer.bounded == 1 and checkpointer.restarts == 1
        _insert(db, 10)
        # The next commit started the WAL again and cut its file to the limit.
        assert _wal_frames(db) < 20
        assert wal.stat().st_size <= 1024 * 1024
        with db.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 5010
    finally:
        db.dispose()


def test_a_caught_up_wal_restarts_over_its_allocated_file(tmp_path: Path) -> None:
    db = _sqlite(tmp_path, sqlite_wal_limit_mb=8)  # restarted from 512 frames
    wal = tmp_path / "salus.db-wal"
    try:
        checkpointer = db.start_checkpointer(3600)
        assert checkpointer is not None and checkpointer.restart_frames == 512
        _insert(db, 3000)  # ~800 pages: worth restarting, under the limit
        size = wal.stat().st_size
        result = checkpointer.run_once()
        assert result is not None and result.mode == "RESTART" and not result.busy
        assert result.checkpointed == result.frames >= 512
        assert checkpointer.restarts == 1 and checkpointer.bounded == 0
        assert 0 < checkpointer.max_locked_seconds <= checkpointer.locked_seconds
        _insert(db, 10)
        # The next writer started from the first frame, over the same file:
        # neither emptied (TRUNCATE) nor appended to.
        assert _wal_frames(db) < 20
        assert wal.stat().st_size == size
        again = checkpointer.run_once()  # nothing worth restarting now
        assert again is not None and again.mode == "PASSIVE" and checkpointer.restarts == 1
        with db.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 3010
    finally:
        db.dispose()


def test_the_restart_is_off_by_default(tmp_path: Path) -> None:
    # Measured in the server it gave no gain (ADR 23, stop 17): only the bound.
    db = create_database(f"sqlite:///{tmp_path / 'salus.db'}")
    try:
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        checkpointer = db.start_checkpointer(3600)
        assert checkpointer is not None and checkpointer.restart_frames == 0
        _insert(db, 3000)  # all copied by the passive checkpoint, not restarted
        result = checkpointer.run_once()
        assert result is not None and result.mode == "PASSIVE"
        assert result.checkpointed == result.frames and checkpointer.restarts == 0
    finally:
        db.dispose()


def test_the_wal_restarts_under_continuous_writes(tmp_path: Path) -> None:
    limit = 2 * 1024 * 1024
    db = _sqlite(tmp_path, sqlite_wal_limit_mb=2)
    wal = tmp_path / "salus.db-wal"
    try:
        checkpointer = db.start_checkpointer(0.02)
        assert checkpointer is not None
        sizes: list[int] = []
        commits = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline or commits < 200:
            _insert(db, 20)  # a writer that never stops: no idle moment to restart
            commits += 1
            sizes.append(wal.stat().st_size)
        db.stop_checkpointer()
        assert checkpointer.restarts >= 2
        grown = checkpointer.restart_frames * 4096  # the WAL restarts from there on
        first_full = next(i for i, size in enumerate(sizes) if size >= grown)
        # Once grown, the file is reused (frames overwritten), never emptied,
        # and stays within its bound.
        assert min(sizes[first_full:]) >= grown
        assert max(sizes) <= 4 * limit
        with db.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 20 * commits
    finally:
        db.dispose()


def test_a_reader_on_an_old_snapshot_does_not_stop_writers_at_every_tick(
    tmp_path: Path,
) -> None:
    db = _sqlite(tmp_path, sqlite_wal_limit_mb=1)
    try:
        checkpointer = db.start_checkpointer(3600)
        assert checkpointer is not None
        _insert(db, 10)
        with db.read() as reader:  # a long read keeps its snapshot
            assert reader.execute(text("SELECT count(*) FROM t")).scalar_one() == 10
            _insert(db, 5000)  # past the limit
            first = checkpointer.run_once()
            assert first is not None and first.mode == "RESTART" and first.busy
            again = checkpointer.run_once()  # the next tick: no second wait under the lock
            assert again is not None and again.mode == "PASSIVE"
            assert checkpointer.bounded == 1 and checkpointer.restarts == 0
        with db.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 5010
    finally:
        db.dispose()


def test_a_reader_keeps_the_restart_from_waiting_at_every_tick(tmp_path: Path) -> None:
    db = _sqlite(tmp_path, sqlite_wal_limit_mb=8)
    try:
        checkpointer = db.start_checkpointer(3600)
        assert checkpointer is not None
        with db.read() as reader:  # a snapshot from before the frames below
            assert reader.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
            _insert(db, 3000)
            first = checkpointer.run_once()
            assert first is not None and first.mode == "RESTART" and first.busy
            again = checkpointer.run_once()  # backing off: passive only
            assert again is not None and again.mode == "PASSIVE"
            assert checkpointer.restarts == 0
        later = checkpointer.run_once()  # the reader ended: it is all copied
        assert later is not None and later.checkpointed == later.frames
    finally:
        db.dispose()


def test_the_background_thread_checkpoints(tmp_path: Path) -> None:
    db = _sqlite(tmp_path)
    try:
        checkpointer = db.start_checkpointer(0.02)
        assert checkpointer is not None
        _insert(db, 200)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            last = checkpointer.last
            if last is not None and last.checkpointed > 0:
                break
            time.sleep(0.01)
        assert checkpointer.last is not None and checkpointer.last.checkpointed > 0
    finally:
        db.dispose()


def test_a_large_wal_is_checkpointed_sooner(tmp_path: Path) -> None:
    db = _sqlite(tmp_path, sqlite_wal_limit_mb=64)  # restarted from 4,096 frames
    try:
        checkpointer = db.start_checkpointer(30)
        assert checkpointer is not None
        _insert(db, 100)
        small = checkpointer.run_once()
        assert small is not None and checkpointer.next_wait(small) == 30
        _insert(db, 6000)  # ~1,500 pages: over 1,000, not yet worth a restart
        large = checkpointer.run_once()
        assert large is not None and large.mode == "PASSIVE"
        assert checkpointer.next_wait(large) == pytest.approx(0.1)
        assert checkpointer.next_wait(None) == 30
    finally:
        db.dispose()


_CHILD = """
import sys
from salus.db.engine import create_database
db = create_database(sys.argv[1])
with db.write() as conn:
    conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
db.start_checkpointer(3600)  # no checkpoint before the kill
for i in range(300):
    with db.write() as conn:
        conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", ("x" * 900,))
print("acknowledged 300", flush=True)
sys.stdin.read()
"""


def _killed_after(script: str, path: Path, acknowledged: str) -> None:
    """Run ``script`` on the database ``path`` in a child process and SIGKILL it
    once it has printed ``acknowledged`` (its writes committed, nothing closed)."""
    with subprocess.Popen(
        [sys.executable, "-c", script, f"sqlite:///{path}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == acknowledged
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)


def test_acknowledged_writes_survive_a_kill_before_any_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "salus.db"
    _killed_after(_CHILD, path, "acknowledged 300")
    # The rows are in the WAL only: the database file does not hold them yet.
    assert (tmp_path / "salus.db-wal").stat().st_size > path.stat().st_size
    db = create_database(f"sqlite:///{path}")
    try:
        with db.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 300
    finally:
        db.dispose()


_CHILD_AFTER_RESTART = """
import sys
from salus.db.engine import create_database
db = create_database(sys.argv[1], sqlite_wal_limit_mb=8, sqlite_wal_restart_mb=16)
with db.write() as conn:
    conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
checkpointer = db.start_checkpointer(3600)
with db.write() as conn:
    conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", [("x" * 900,)] * 3000)
result = checkpointer.run_once()
assert result is not None and result.mode == "RESTART" and not result.busy, result
for i in range(300):  # written over the start of the WAL file, after the restart
    with db.write() as conn:
        conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", ("y" * 900,))
print("acknowledged 3300", flush=True)
sys.stdin.read()
"""


def test_acknowledged_writes_over_a_restarted_wal_survive_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "salus.db"
    _killed_after(_CHILD_AFTER_RESTART, path, "acknowledged 3300")
    db = create_database(f"sqlite:///{path}")
    try:
        with db.read() as conn:
            counts = dict(
                conn.execute(text("SELECT substr(v, 1, 1), count(*) FROM t GROUP BY 1")).all()
            )
        assert counts == {"x": 3000, "y": 300}
        with db.read() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
    finally:
        db.dispose()


@pytest.mark.parametrize(
    "values",
    [
        {"database_sqlite_checkpoint_seconds": -1},
        {"database_sqlite_checkpoint_seconds": 7200},
        {"database_sqlite_wal_limit_mb": 0},
        {"database_sqlite_wal_restart_mb": -1},
    ],
)
def test_settings_are_validated(tmp_path: Path, values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, **values)


@pytest.mark.parametrize("seconds", [1.0, 0.0])
def test_the_server_runs_the_checkpointer(settings_factory: Any, seconds: float) -> None:
    settings: Settings = settings_factory(
        jobs_enabled=False, database_sqlite_checkpoint_seconds=seconds
    )
    FileKeyProvider.create(settings.key_path())
    services = Services.build(settings)
    try:
        with TestClient(create_app(settings, services)) as client:
            assert client.get("/ready").status_code == 200
            running = services.db.checkpointer is not None
            assert running == (services.db.is_sqlite and seconds > 0)
            if services.db.is_sqlite:
                expected = 0 if seconds > 0 else 1000
                assert _pragma(services.db, "wal_autocheckpoint") == expected
        assert services.db.checkpointer is None
    finally:
        services.close()
