"""Rejections next to a hospital's data-quality score: how many of its HL7 v2
messages were rejected or failed and how many of its dataset submissions were
refused in the last 30 days.

They are counted with the integration inbox's own queries and access rule
(:mod:`salus.console.pages.inbox`: data stewards, integration and
administrators, one hospital's feeds), so the dashboard shows no more than
the inbox would; counts only, never a message or a reason. Shown beside the
score, not in it: a rejection is fixed by sending again, and the score
(completeness and timeliness of the monthly datasets) already counts what is
missing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from salus.db.types import utcnow
from salus.errors import Forbidden
from salus.security.principal import Principal
from salus.services import Services

__all__ = ["DAYS", "LIMIT", "rejections"]

#: The window, in days, and the most counted of each kind (more shows as "LIMIT+").
DAYS = 30
LIMIT = 1000


def rejections(services: Services, principal: Principal, org: str) -> dict[str, Any] | None:
    """``{"hl7": n, "datasets": n, "more": {...}, "days": DAYS}`` for ``org``, or None when
    the person may not use the inbox (blocking: run in a thread)."""
    try:
        from salus.console.pages import inbox
    except ImportError:  # pragma: no cover - the inbox ships with the console
        return None
    try:
        scope = inbox.scope_of(services, principal)
    except Forbidden:
        return None
    if scope.org not in (None, org):
        return None
    until = utcnow().date()
    counts: dict[str, int] = {}
    for kind, fetch in (("hl7", inbox._hl7_rows), ("datasets", inbox._refused_submissions)):
        window = inbox.Filters(kind, org, until - timedelta(days=DAYS), until)
        counts[kind] = len(fetch(services, window, LIMIT + 1, 0))
    return {
        "hl7": min(counts["hl7"], LIMIT),
        "datasets": min(counts["datasets"], LIMIT),
        "more": {kind: n > LIMIT for kind, n in counts.items()},
        "days": DAYS,
    }
