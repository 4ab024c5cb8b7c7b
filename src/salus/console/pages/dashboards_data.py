"""The dashboards' results: computed with the signed-in person's principal
(:meth:`salus.warehouse.indicators.engine.Indicators.compute`, so policy,
suppression and audit are the indicators API's), several at a time, and kept
per application while the data behind them has not changed.

A result is kept per (indicator, disaggregation, reader's scope: ``"*"``, a
hospital id or None) with the *data stamp* it was computed at: the views'
materializations, the dataset submissions and the stored snapshots. A page
reads the stamp once (three small queries); a kept result whose stamp
differs, or older than five minutes, is computed again.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy import func, select

from salus.audit.events import AuditEvent
from salus.db.tables_opendata import indicator_snapshots
from salus.db.tables_warehouse import dataset_submissions
from salus.security.principal import Principal
from salus.services import Services
from salus.warehouse.indicators import INDICATORS_JOB
from salus.warehouse.indicators.engine import IndicatorResult, Indicators

__all__ = ["Kept", "Reader", "kept_state", "request_computation"]

_CACHE_TTL = 300.0
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboards")
_STATE_LOCK = threading.Lock()


@dataclass
class Kept:
    """The dashboards' state in one application (``app.state.dashboards``): results
    by (indicator, disaggregation, reader's scope) with the data stamp they were
    computed at, and whether the bundled views are known to be stored."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    results: dict[tuple[Any, ...], tuple[float, tuple[Any, ...], IndicatorResult]] = field(
        default_factory=dict
    )
    views_stored: bool = False


def kept_state(request: Request) -> Kept:
    with _STATE_LOCK:
        kept = getattr(request.app.state, "dashboards", None)
        if not isinstance(kept, Kept):
            kept = Kept()
            request.app.state.dashboards = kept
        return kept


def _data_stamp(services: Services) -> tuple[Any, ...]:
    """What the indicators read changed when this changes: the views' materializations
    the dataset submissions and the stored snapshots (their count and latest time)."""
    assert services.warehouse is not None  # noqa: S101 - Indicators() checked it
    views = tuple(
        (v.name, v.generation, v.row_count, v.materialized_at)
        for v in services.warehouse.catalog.list()
    )
    with services.db.read() as conn:
        submitted = conn.execute(
            select(func.count(), func.max(dataset_submissions.c.submitted_at))
        ).one()
        snapshots = conn.execute(
            select(func.count(), func.max(indicator_snapshots.c.computed_at))
        ).one()
    return (*views, tuple(submitted), tuple(snapshots))


@dataclass
class Reader:
    """The indicators one principal may see, for one page (blocking: run in a thread)."""

    services: Services
    principal: Principal
    engine: Indicators
    scope: str | None
    kept: Kept
    stamp: tuple[Any, ...] = ()
    read: list[str] = field(default_factory=list)
    computed: list[datetime] = field(default_factory=list)

    @classmethod
    def open(cls, services: Services, principal: Principal, kept: Kept) -> Reader:
        engine = Indicators(services)
        scope = engine.own_scope(principal)
        return cls(services, principal, engine, scope, kept, _data_stamp(services))

    def result(self, key: str, by: Sequence[str] = ()) -> IndicatorResult:
        cache_key = (key, tuple(by), self.scope)
        now = time.monotonic()
        with self.kept.lock:
            hit = self.kept.results.get(cache_key)
        if hit is not None and hit[1] == self.stamp and now - hit[0] < _CACHE_TTL:
            result = hit[2]
        else:
            result = self.engine.compute(self.principal, key, by=by)
            with self.kept.lock:
                if len(self.kept.results) > 2000:
                    self.kept.results.clear()
                self.kept.results[cache_key] = (now, self.stamp, result)
        self.read.append(key + (f"?by={','.join(by)}" if by else ""))
        at = getattr(result, "computed_at", None)
        if isinstance(at, datetime):
            self.computed.append(at)
        return result

    @property
    def computed_at(self) -> str | None:
        """When the oldest figure of the page was computed (UTC, to the minute)."""
        if not self.computed:
            return None
        return min(self.computed).strftime("%Y-%m-%d %H:%M")

    def many(
        self, keys: Sequence[str], also: Sequence[tuple[str, tuple[str, ...]]] = ()
    ) -> dict[str, IndicatorResult]:
        """Several indicators at once: computations (DuckDB, decryption, database
        reads) release the GIL, so a few threads shorten a cold page. The bundled
        views are stored first, by one thread: on a fresh install, computations
        side by side would each try to create them. ``also``: (indicator,
        disaggregation) results the page reads next, computed alongside."""
        with self.kept.lock:
            if not self.kept.views_stored:
                self.engine.ensure_views()
                self.kept.views_stored = True
        asked = [(k, ()) for k in keys] + list(also)
        contexts = [contextvars.copy_context() for _ in asked]  # the request id, for the audit
        futures = [
            _POOL.submit(c.run, self.result, k, by)
            for c, (k, by) in zip(contexts, asked, strict=True)
        ]
        done = [f.result() for f in futures]
        return dict(zip(keys, done, strict=False))

    def audit(self, page: str) -> None:
        self.services.audit.record(
            [
                AuditEvent.for_principal(
                    self.principal,
                    category="export",
                    action="R",
                    entity=f"dashboard/{page}",
                    description="dashboard viewed",
                    flags="deidentified",
                    detail={"indicators": sorted(set(self.read))[:50]},
                )
            ]
        )


def request_computation(services: Services, principal: Principal) -> int:
    """Enqueue the indicators job (views materialized, every indicator computed and
    its snapshot stored); several requests in one minute share one job. Audited."""
    minute = int(time.time() // 60)
    job_id = services.jobs.enqueue(
        INDICATORS_JOB,
        {"requested_by": principal.id},
        dedup_key=f"{INDICATORS_JOB}@console:{minute}",
    )
    services.audit.record(
        [
            AuditEvent.for_principal(
                principal,
                category="export",
                action="E",
                entity="indicator/*",
                description="indicators computation requested",
                detail={"job": job_id},
            )
        ]
    )
    return job_id
