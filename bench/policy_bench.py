"""The policy engine's added latency per request.

What a request pays for access control, measured call by call on one thread:

* ``decide``: :meth:`PolicyEngine.decide` for a clinician, an integration
  client, a researcher and a security officer (scopes, purpose, tenancy; the
  organization kind comes from the in-memory cache);
* ``decide + filter SQL``: the above plus building the filter's SQL condition
  for a record table (what the storage layer adds to its query);
* ``query, own organization`` vs ``query, policy filter``: the same indexed
  lookup of one patient's records (SQLite, WAL, ``--records`` rows across
  three hospitals, with treatment relationships and consents), without and
  with the clinician's cross-organization filter: the filter's cost inside the
  database.

Target (issue: access control): under 1 ms added per request at the median.
Run from the repository root in the project's virtualenv::

    python bench/policy_bench.py [--iterations 5000] [--records 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, insert, select

from salus.db import create_database, migrate
from salus.db.tables import consents, organizations, treatment_relationships
from salus.db.types import utcnow
from salus.security.orgcache import OrgKinds
from salus.security.policy import AccessRequest, Interaction, PolicyEngine, RecordColumns
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.roles import scopes_for_roles

meta = MetaData()
records = Table(
    "bench_records",
    meta,
    Column("id", Integer, primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("patient_key", String(64)),
    Column("category", String(64), nullable=False),
)
Index("ix_bench_records_patient", records.c.patient_key)
COLS = RecordColumns(
    org=records.c.org_id, patient=records.c.patient_key, category=records.c.category
)
ORGS = ["hosp-a", "hosp-b", "hosp-c"]


def who(org: str, role: str, kind: PrincipalKind = PrincipalKind.USER) -> Principal:
    return Principal(
        kind=kind,
        id=f"{org}-{role}",
        org_id=org,
        roles=frozenset({role}),
        scopes=scopes_for_roles({role}),
        auth_method=AuthMethod.PASSWORD,
    )


def timed(fn: Callable[[], Any], iterations: int) -> list[float]:
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def summary(name: str, samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "name": name,
        "median_us": statistics.median(ordered),
        "p95_us": ordered[int(len(ordered) * 0.95) - 1],
        "n": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(7)

    folder = Path(tempfile.mkdtemp(prefix="salus-policy-bench-"))
    db = create_database(f"sqlite:///{folder / 'bench.db'}")
    migrate(db)
    meta.create_all(db.engine)
    now = utcnow()
    patients = [f"P{i}" for i in range(args.records // 10)]
    with db.write() as conn:
        for org in ORGS:
            conn.execute(
                insert(organizations).values(
                    id=org, name=org, kind="hospital", active=True, created_at=now
                )
            )
        conn.execute(
            insert(records),
            [
                {
                    "id": i,
                    "org_id": rng.choice(ORGS),
                    "patient_key": rng.choice(patients),
                    "category": rng.choice(["general", "general", "mental-health"]),
                }
                for i in range(args.records)
            ],
        )
        conn.execute(
            insert(treatment_relationships),
            [
                {
                    "patient_key": p,
                    "org_id": "hosp-a",
                    "source": "Encounter/x",
                    "valid_from": now - timedelta(days=1),
                    "valid_until": None,
                    "created_at": now,
                }
                for p in patients[::3]
            ],
        )
        conn.execute(
            insert(consents),
            [
                {
                    "patient_key": p,
                    "grantee_org_id": None,
                    "category": "mental-health",
                    "decision": "deny",
                    "valid_from": now - timedelta(days=1),
                    "valid_until": None,
                    "source": "Consent/x",
                    "created_at": now,
                }
                for p in patients[::7]
            ],
        )
    engine = PolicyEngine(OrgKinds(db).kind)
    principals = [
        who("hosp-a", "clinician"),
        who("hosp-a", "hospital_integration", PrincipalKind.CLIENT),
        who("hosp-a", "researcher"),
        who("hosp-a", "security_officer"),
    ]
    request = AccessRequest("Observation", Interaction.SEARCH)
    audit_request = AccessRequest("AuditEvent", Interaction.SEARCH)
    clinician = principals[0]

    def decide_all() -> None:
        for principal in principals:
            engine.decide(
                principal, audit_request if "security_officer" in principal.roles else request
            )

    def decide_and_filter() -> None:
        flt = engine.decide(clinician, request).require()
        flt.where(COLS)
        flt.params()

    def query(with_policy: bool) -> Callable[[], Any]:
        def run() -> None:
            patient = rng.choice(patients)
            if with_policy:
                flt = engine.decide(clinician, request).require()
                condition, params = flt.where(COLS), flt.params()
            else:
                condition, params = records.c.org_id == clinician.org_id, {}
            with db.read() as conn:
                conn.execute(
                    select(records.c.id).where(records.c.patient_key == patient, condition), params
                ).all()

        return run

    for fn in (decide_all, decide_and_filter, query(False), query(True)):
        timed(fn, 200)  # warm up (statement caches, page cache)
    results = [
        summary(
            "decide (per principal)",
            [s / len(principals) for s in timed(decide_all, args.iterations)],
        ),
        summary("decide + filter SQL", timed(decide_and_filter, args.iterations)),
    ]
    plain, filtered = [], []
    for _ in range(10):  # alternate in blocks
        plain += timed(query(False), args.iterations // 10)
        filtered += timed(query(True), args.iterations // 10)
    results.append(summary("query, own organization only", plain))
    results.append(summary("query, policy filter (clinician)", filtered))
    added = results[3]["median_us"] - results[2]["median_us"]

    print(
        f"Machine: {platform.processor() or platform.machine()}, Python "
        f"{sys.version.split()[0]}, SQLite {__import__('sqlite3').sqlite_version}; "
        f"{args.records} records, {len(patients)} patients, {args.iterations} iterations\n"
    )
    print("| measure | median µs | p95 µs |\n|---|---:|---:|")
    for row in results:
        print(f"| {row['name']} | {row['median_us']:.1f} | {row['p95_us']:.1f} |")
    print(
        f"\nAdded by the policy filter inside the query (median): {added:.1f} µs; "
        f"decision + filter construction: {results[1]['median_us']:.1f} µs. "
        f"Target: < 1000 µs."
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "added_us": added}, indent=2))
    db.dispose()


if __name__ == "__main__":
    main()
