"""In-process micro-benchmark of the SQLite write transaction of a transaction
Bundle: what is done under the writer lock, per resource.

The wrk benchmark (``fhir_load_bench.py``) measures throughput, which on this
noisy 2-core machine moves 20-30 % from round to round. This script times
only the part that SQLite Bundles are bounded by, the writer lock's hold:
Bundles of 100 generated Patients or Observations (``fhir_bench.Data``) are
prepared and encoded first (``FhirStore.prepare_creates`` and ``encode``,
outside any lock, as the server does), then each is written in its own
``Database.write()`` transaction by ``FhirStore.commit_creates``. Reported
per resource (median over the Bundles, the first fifth left out as warm-up):
``held`` (wall time of the transaction: lock, BEGIN, inserts, audit, COMMIT
with its fsync), and the CPU time of the calling thread (``time.thread_time``,
little disturbed by other processes) and wall time of ``insert_encoded`` and
``AuditLog.append``. Before each Bundle another connection commits a one-page
change (``--warm`` leaves that out), so the writer's page cache starts cold,
as in the server, where the other worker's commits reset it.

The database is a copy of a base database made once (``--base``, default
``salus_commit_micro/base.db`` in the temporary folder) with ``--prefill`` Patients and as many
Observations, so the index b-trees have some depth. The script uses only
APIs that older versions have too, so two checkouts can be compared by
running it with ``PYTHONPATH=<checkout>/src``, alternating, several pairs::

    python bench/fhir_commit_micro.py --kind patient --bundles 40
    PYTHONPATH=/tmp/old/src python bench/fhir_commit_micro.py --kind patient --bundles 40
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fhir_bench import Data  # noqa: E402
from salus.audit.chain import AuditLog  # noqa: E402
from salus.db.engine import Database, create_database  # noqa: E402
from salus.db.migrate import migrate  # noqa: E402
from salus.fhir import store as store_module  # noqa: E402
from salus.fhir.store import FhirStore  # noqa: E402
from salus.security.principal import Principal, PrincipalKind  # noqa: E402
from salus.services import build_fhir_store  # noqa: E402

PRINCIPAL = Principal(PrincipalKind.CLIENT, "bench", "hosp-a", client_id="bench")


def open_store(path: Path) -> tuple[Database, FhirStore]:
    db = create_database(f"sqlite:///{path}")
    return db, build_fhir_store(None, AuditLog(db))


def _commit(db: Database, store: FhirStore, items: list[tuple[dict[str, Any], str | None]]) -> Any:
    batch = store.prepare_creates(PRINCIPAL, items)
    store.encode(batch, db.engine.dialect)
    with db.write() as conn:
        return store.commit_creates(conn, batch)


def build_base(base: Path, prefill: int) -> None:
    """``prefill`` Patients and Observations in Bundles of 500 (ids kept beside)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    work = base.with_suffix(".tmp")
    for suffix in ("", "-wal", "-shm", ".writer-lock"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    db = create_database(f"sqlite:///{work}")
    migrate(db)
    db.dispose()
    db, store = open_store(work)
    data = Data(1)
    rng = random.Random(2)
    ids: list[str] = []
    for _ in range(max(1, prefill // 500)):
        stored = _commit(db, store, [(data.patient(), None) for _ in range(500)])
        ids += [s.res_id for s in stored]
        observations = [(data.observation(f"Patient/{rng.choice(ids)}"), None) for _ in range(500)]
        _commit(db, store, observations)
    db.dispose()
    plain = sqlite3.connect(str(work), isolation_level=None)
    try:
        plain.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        plain.close()
    base.with_suffix(".ids").write_text("\n".join(ids))
    work.rename(base)
    Path(f"{work}.writer-lock").unlink(missing_ok=True)


def working_copy(base: Path, prefill: int, name: str) -> tuple[Path, list[str]]:
    """A copy of the base database (made first if missing) beside it, named
    ``name`` and this process's id, and the ids of the base's Patients."""
    if not base.exists():
        build_base(base, prefill)
    work = base.parent / f"{name}_{os.getpid()}.db"
    shutil.copy(base, work)
    return work, base.with_suffix(".ids").read_text().split()


def prepared_bundles(
    db: Database, store: FhirStore, kind: str, count: int, ids: list[str], seed: int
) -> list[Any]:
    """``count`` Bundles of 100 generated Patients or Observations (of Patients in
    ``ids``), prepared and encoded outside any lock, as the server does."""
    data = Data(seed)
    rng = random.Random(3)
    batches = []
    for _ in range(count):
        items = [
            (
                data.patient()
                if kind == "patient"
                else data.observation(f"Patient/{rng.choice(ids)}"),
                None,
            )
            for _ in range(100)
        ]
        batch = store.prepare_creates(PRINCIPAL, items)
        store.encode(batch, db.engine.dialect)
        batches.append(batch)
    return batches


def _timed(function: Callable[..., Any], into: dict[str, float], key: str) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            into[key + "_cpu"] += time.thread_time() - cpu
            into[key + "_wall"] += time.perf_counter() - wall

    return timed


def run(args: argparse.Namespace) -> dict[str, float]:
    work, ids = working_copy(Path(args.base), args.prefill, "work")
    db, store = open_store(work)
    took = {"ins_cpu": 0.0, "ins_wall": 0.0, "aud_cpu": 0.0, "aud_wall": 0.0}
    # The module-level name commit_creates calls, and the audit append.
    store_module.insert_encoded = _timed(store_module.insert_encoded, took, "ins")  # type: ignore[attr-defined]
    AuditLog.append = _timed(AuditLog.append, took, "aud")  # type: ignore[method-assign]
    batches = prepared_bundles(db, store, args.kind, args.bundles, ids, args.seed)
    other = sqlite3.connect(str(work), isolation_level=None)
    samples: dict[str, list[float]] = {"held": [], **{key: [] for key in took}}
    try:
        for batch in batches:
            if not args.warm:  # another connection commits: this one's cache is reset
                other.execute("BEGIN IMMEDIATE")
                other.execute("UPDATE audit_head SET seq = seq WHERE id = 1")
                other.execute("COMMIT")
            for key in took:
                took[key] = 0.0
            start = time.perf_counter()
            with db.write() as conn:
                store.commit_creates(conn, batch)
            samples["held"].append(time.perf_counter() - start)
            for key, value in took.items():
                samples[key].append(value)
    finally:
        other.close()
        db.dispose()
        for suffix in ("", "-wal", "-shm", ".writer-lock"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
    skip = len(batches) // 5
    return {key: 1000 * statistics.median(v[skip:]) / 100 for key, v in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["patient", "observation"], default="patient")
    parser.add_argument("--bundles", type=int, default=40)
    parser.add_argument("--prefill", type=int, default=20_000)
    parser.add_argument(
        "--base", default=str(Path(tempfile.gettempdir()) / "salus_commit_micro" / "base.db")
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--warm", action="store_true", help="no commit by another connection")
    args = parser.parse_args(argv)
    if args.bundles < 5:
        parser.error("--bundles must be at least 5")
    result = run(args)
    print(
        f"{args.kind} ({'warm' if args.warm else 'cold'} cache) ms per resource, median: "
        + " ".join(f"{key} {value:.4f}" for key, value in result.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
