"""Organization kinds, cached: the policy engine asks on every request and must
not touch the database for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import select

from salus.db.engine import Database
from salus.db.tables import organizations

__all__ = ["OrgKinds"]


class OrgKinds:
    """``kind(org_id)`` from a snapshot refreshed every ``ttl`` seconds (and on a miss)."""

    def __init__(
        self, db: Database, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.clock = clock
        self._kinds: dict[str, str] = {}
        self._loaded = float("-inf")
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        with self.db.read() as conn:
            rows = conn.execute(select(organizations.c.id, organizations.c.kind))
            self._kinds = {str(i): str(k) for i, k in rows}
        self._loaded = self.clock()

    def kind(self, org_id: str) -> str | None:
        stale = self.clock() - self._loaded > self.ttl
        if stale or org_id not in self._kinds:
            with self._lock:
                if stale or org_id not in self._kinds:
                    self._refresh()
        return self._kinds.get(org_id)

    def invalidate(self) -> None:
        self._loaded = float("-inf")
