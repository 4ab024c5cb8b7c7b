"""Indicators computed on a schedule: snapshots and the periodic job.

The job ``warehouse.indicators`` (:data:`~salus.warehouse.indicators.INDICATORS_JOB`)
materializes the indicators' views and computes every indicator; each
indicator's cells (per hospital, month and every dimension, before
suppression: suppression depends on the reader and is applied per request)
are sealed in the blob store and recorded in ``indicator_snapshots`` with
the definition's version and the time. API reads (``GET
/api/v1/indicators/{id}``, ``$measure-report``, the open data) use the
snapshot of the current version when there is one, so a read costs a
filter and a sum instead of a DuckDB run over the views; ``refresh=true``
recomputes (and stores a new snapshot).

:class:`IndicatorSchedule` is a listener of the primary process
(``salus serve``): every ``SALUS_WAREHOUSE_INDICATOR_INTERVAL`` seconds, at
multiples of the interval since the epoch (86400: at 00:00 UTC), it
enqueues the job with the dedup key ``warehouse.indicators@{interval}:{slot}``,
so several servers on one database enqueue it once per slot and a restart
does not run it again within the slot. The primary's job workers run it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from salus.db.tables_opendata import indicator_snapshots
from salus.db.types import utcnow

if TYPE_CHECKING:
    from salus.services import Services
    from salus.warehouse.indicators.definitions_index import Indicator

__all__ = ["IndicatorSchedule", "Snapshot", "load_snapshot", "store_snapshot"]

log = logging.getLogger("salus.warehouse.indicators")


class Snapshot:
    __slots__ = ("cells", "computed_at")

    def __init__(self, cells: list[dict[str, Any]], computed_at: datetime) -> None:
        self.cells = cells
        self.computed_at = computed_at


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def store_snapshot(services: Services, ind: Indicator, cells: list[dict[str, Any]]) -> datetime:
    """Seal ``cells`` in the blob store and make them the indicator's snapshot."""
    data = json.dumps(cells, default=_plain, separators=(",", ":")).encode()
    ref = services.blobs.put(data)
    now = utcnow()
    with services.db.write() as conn:
        conn.execute(delete(indicator_snapshots).where(indicator_snapshots.c.indicator == ind.id))
        conn.execute(
            indicator_snapshots.insert().values(
                indicator=ind.id,
                version=ind.version,
                digest=ref.digest,
                cells=len(cells),
                computed_at=now,
            )
        )
    return now


def load_snapshot(services: Services, ind: Indicator) -> Snapshot | None:
    """The indicator's last snapshot for its current version, if any."""
    s = indicator_snapshots
    with services.db.read() as conn:
        row = conn.execute(select(s).where(s.c.indicator == ind.id)).first()
    if row is None or row.version != ind.version:
        return None
    cells = json.loads(bytes(services.blobs.get(row.digest)))
    return Snapshot(list(cells), row.computed_at)


class IndicatorSchedule:
    """Enqueues the indicators job once per interval (see the module doc)."""

    name = "indicator-schedule"

    def __init__(self, services: Services, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the interval must be positive")
        self.services = services
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def slot(self, now: datetime) -> int:
        return int(now.timestamp() // self.interval)

    def tick(self, now: datetime | None = None) -> int:
        """Enqueue the job of ``now``'s slot (once per slot); returns the job id."""
        from salus.warehouse.indicators import INDICATORS_JOB

        slot = self.slot(now or utcnow())
        return self.services.jobs.enqueue(
            INDICATORS_JOB,
            {"scheduled": True},
            dedup_key=f"{INDICATORS_JOB}@{self.interval:g}:{slot}",
            max_attempts=3,
        )

    async def _loop(self) -> None:
        current = self.slot(utcnow())
        while True:
            now = utcnow()
            boundary = datetime.fromtimestamp((current + 1) * self.interval, UTC)
            wait = max(0.0, (boundary - now) / timedelta(seconds=1))
            await asyncio.sleep(min(wait, 60.0) + 0.01)
            if self.slot(utcnow()) == current:
                continue
            current = self.slot(utcnow())
            try:
                await asyncio.to_thread(self.tick)
            except Exception:
                log.exception("could not enqueue the indicators job; next slot")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
