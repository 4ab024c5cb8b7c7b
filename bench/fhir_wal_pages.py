"""Which b-trees a SQLite transaction Bundle writes: WAL frames per resource, by index.

A SQLite commit writes every page the transaction dirtied to the WAL and syncs
it; for Bundles that is most of the time the writer lock is held (ADR 21). This
script writes transaction Bundles of 100 generated Patients or Observations
(``fhir_bench.Data``, prepared and encoded outside the lock as the server does,
through ``fhir_commit_micro``'s base database of ``--prefill`` Patients and as
many Observations) in transactions of ``--per-txn`` Bundles each, reads the
frames each commit appended to the WAL, and names each frame's page by the
b-tree that owns it (SQLite's ``dbstat``). It prints the frames and KiB per
resource in all and per b-tree, and the median time the write transaction
took per resource (no other connection commits in between: warm cache).

Two checkouts are compared by running it with ``PYTHONPATH=<checkout>/src``
and a base database of each (``--base``: their schemas may differ)::

    python bench/fhir_wal_pages.py --kind patient --base /tmp/new/base.db
    PYTHONPATH=/tmp/old/src python bench/fhir_wal_pages.py --base /tmp/old/base.db
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fhir_commit_micro import open_store, prepared_bundles, working_copy  # noqa: E402

WAL_HEADER = 32  # bytes before the first frame (sqlite.org/fileformat.html#walformat)
FRAME_HEADER = 24  # each frame: page number (4 bytes, big-endian), then 20 more


def appended_pages(wal: Path, start: int, end: int, page_size: int) -> list[int]:
    """Page numbers of the frames between byte offsets ``start`` and ``end`` of ``wal``."""
    frame = FRAME_HEADER + page_size
    with wal.open("rb") as handle:
        handle.seek(start)
        raw = handle.read(end - start)
    return [
        struct.unpack(">I", raw[at : at + 4])[0] for at in range(0, len(raw) - frame + 1, frame)
    ]


def run(args: argparse.Namespace) -> None:
    work, ids = working_copy(Path(args.base), args.prefill, "pages")
    wal = Path(f"{work}-wal")
    db, store = open_store(work)
    try:
        batches = prepared_bundles(db, store, args.kind, args.bundles, ids, args.seed)
        with db.engine.connect() as conn:
            page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
        per_txn = args.per_txn
        pages: list[int] = []
        held: list[float] = []
        for first in range(0, len(batches) - per_txn + 1, per_txn):
            before = wal.stat().st_size if wal.exists() else 0
            start = time.perf_counter()
            with db.write() as conn:
                conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")  # the WAL only grows
                for batch in batches[first : first + per_txn]:
                    store.commit_creates(conn, batch)
            held.append(time.perf_counter() - start)
            pages += appended_pages(wal, max(before, WAL_HEADER), wal.stat().st_size, page_size)
    finally:
        db.dispose()
    try:
        plain = sqlite3.connect(str(work))
        try:
            owner = dict(
                (page, name) for name, page in plain.execute("SELECT name, pageno FROM dbstat")
            )
        finally:
            plain.close()
    finally:
        for suffix in ("", "-wal", "-shm", ".writer-lock"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
    resources = len(held) * per_txn * 100
    by_tree = Counter(owner.get(page, "(freed)") for page in pages)
    print(
        f"{args.kind}, {per_txn} Bundle(s) of 100 per transaction, page {page_size} B, "
        f"{len(held)} transactions: {len(pages) / resources:.2f} WAL frames "
        f"({len(pages) * page_size / 1024 / resources:.1f} KiB) per resource; "
        f"transaction {1000 * statistics.median(held) / (100 * per_txn):.3f} ms per resource"
    )
    for name, count in by_tree.most_common(args.top):
        print(f"  {name:40s} {count / resources:6.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["patient", "observation"], default="patient")
    parser.add_argument("--bundles", type=int, default=24)
    parser.add_argument("--per-txn", type=int, default=1, help="Bundles per transaction")
    parser.add_argument("--prefill", type=int, default=20_000)
    parser.add_argument(
        "--base", default=str(Path(tempfile.gettempdir()) / "salus_commit_micro" / "base.db")
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--top", type=int, default=12, help="b-trees listed")
    args = parser.parse_args(argv)
    if args.bundles < args.per_txn:
        parser.error("--bundles must be at least --per-txn")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
