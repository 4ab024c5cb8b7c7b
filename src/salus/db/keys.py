"""Composite-key lookups that every backend answers from an index.

SQLite answers a row-value list, ``(a, b) IN (VALUES (…), (…))``, by scanning
the whole table (it does not use a multi-column index for it), which makes a
lookup of a few keys cost as much as the table is large. PostgreSQL plans
either form with its indexes. :func:`pairs_in` writes the same condition as
``a = x AND b IN (…)`` per distinct first value, ORed, which both use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, false, or_
from sqlalchemy.sql.elements import ColumnElement

__all__ = ["pairs_in"]


def pairs_in(
    first: ColumnElement[Any], second: ColumnElement[Any], pairs: Iterable[tuple[Any, Any]]
) -> ColumnElement[bool]:
    """``(first, second) IN pairs``, index-friendly on SQLite and PostgreSQL.

    Best when the first column has few distinct values among ``pairs`` (a
    resource type, an organization): the OR has one branch per value.
    """
    grouped: dict[Any, set[Any]] = {}
    for a, b in pairs:
        grouped.setdefault(a, set()).add(b)
    branches = [and_(first == a, second.in_(sorted(bs))) for a, bs in grouped.items()]
    if not branches:
        return false()
    return branches[0] if len(branches) == 1 else or_(*branches)
