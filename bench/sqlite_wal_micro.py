"""SQLite WAL: a continuous writer beside the server's WAL checkpointer (ADR 23).

One thread commits, back to back, transactions like a Bundle's under the
writer lock: 100 rows of 1.5 KB plus 400 rows with random keys into a table
with two indexes (100,000 rows before the run), about 1,000 WAL frames each,
on a real database file in a temporary folder, with
:meth:`Database.start_checkpointer` running (1 s ticks, 0.1 s while the WAL is
large). Reports commits/s, the time per transaction and of the ``COMMIT``
alone (the WAL write and its ``fdatasync``), how many commits grew the WAL
file (appended instead of overwriting), the largest WAL file, and the
checkpoints run under the writer lock (count, total and longest).

Compare two trees in the same minutes (counts move less than times on a
busy machine)::

    PYTHONPATH=/tmp/old/src python bench/sqlite_wal_micro.py --seconds 12
    python bench/sqlite_wal_micro.py --seconds 12 [--restart-mb 0]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from salus.db import walcheckpoint
from salus.db.engine import create_database


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument(
        "--restart-mb",
        type=int,
        help="SALUS_DATABASE_SQLITE_WAL_RESTART_MB for this run (0: restart only at the bound)",
    )
    args = parser.parse_args(argv)

    folder = tempfile.mkdtemp(prefix="salus-wal-micro-")
    wal = os.path.join(folder, "salus.db-wal")
    rnd = random.Random(1)

    def index_rows() -> list[tuple[int, str, str]]:
        return [
            (rnd.getrandbits(60), f"c{rnd.randrange(50)}", f"{rnd.getrandbits(64):016x}")
            for _ in range(400)
        ]

    options: dict[str, Any] = {}
    if args.restart_mb is not None:  # a tree from before stop 17 has no such option
        options["sqlite_wal_restart_mb"] = args.restart_mb
    db = create_database(f"sqlite:///{folder}/salus.db", **options)
    under_lock: list[float] = []
    original = walcheckpoint.WalCheckpointer._checkpoint

    def timed(self: Any, mode: str, *rest: Any) -> Any:
        result = original(self, mode, *rest)
        if mode != "PASSIVE":  # the ones run with the writer lock held
            under_lock.append(result.seconds)
        return result

    walcheckpoint.WalCheckpointer._checkpoint = timed  # type: ignore[method-assign,assignment]
    try:
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE r (id INTEGER PRIMARY KEY, body BLOB)")
            conn.exec_driver_sql("CREATE TABLE ix (rid INTEGER, code TEXT, val TEXT)")
            conn.exec_driver_sql("CREATE INDEX ix_code ON ix (code, val)")
            conn.exec_driver_sql("CREATE INDEX ix_val ON ix (val, code)")
            for _ in range(250):
                conn.exec_driver_sql("INSERT INTO ix VALUES (?, ?, ?)", index_rows())
        checkpointer = db.start_checkpointer(1.0)
        body = os.urandom(1500)
        whole: list[float] = []
        commit: list[float] = []
        grew = 0
        size = largest = 0
        cpu = time.process_time()
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            rows = index_rows()
            started = time.perf_counter()
            with db.write() as conn:
                conn.exec_driver_sql("INSERT INTO r (body) VALUES (?)", [(body,)] * 100)
                conn.exec_driver_sql("INSERT INTO ix VALUES (?, ?, ?)", rows)
                committing = time.perf_counter()
            done = time.perf_counter()
            whole.append(done - started)
            commit.append(done - committing)
            now = os.stat(wal).st_size
            grew += now > size
            size, largest = now, max(largest, now)
        cpu = time.process_time() - cpu
        restarts = getattr(checkpointer, "restarts", "-")
    finally:
        walcheckpoint.WalCheckpointer._checkpoint = original  # type: ignore[method-assign]
        db.dispose()
        shutil.rmtree(folder, ignore_errors=True)

    n = len(whole)
    whole.sort()
    commit.sort()
    print(
        f"{n} commits ({n / args.seconds:.1f}/s); ms per transaction mean "
        f"{1000 * statistics.mean(whole):.1f} p99 {1000 * whole[int(n * 0.99)]:.1f}; "
        f"COMMIT alone mean {1000 * statistics.mean(commit):.1f} "
        f"p50 {1000 * commit[n // 2]:.1f} p99 {1000 * commit[int(n * 0.99)]:.1f}; "
        f"commits that grew the WAL file {grew} ({100 * grew / n:.0f} %); "
        f"largest WAL file {largest / 2**20:.0f} MiB; checkpoints under the writer lock "
        f"{len(under_lock)}, {1000 * sum(under_lock):.0f} ms in all, longest "
        f"{1000 * max(under_lock, default=0):.0f} ms; WAL restarts by the checkpointer "
        f"{restarts}; CPU per commit {1000 * cpu / n:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
