"""SQL forms that differ between SQLite and PostgreSQL, for the search
conditions of :mod:`salus.fhir.query` (FHIR search.html; ADR 22): code-point
comparisons, a column SQLite must not look up by index, a condition only SQLite
sees, and the string prefix match (search.html#string) that both serve from an
index."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.sqltypes import NULLTYPE
from sqlalchemy.sql.visitors import InternalTraversal

__all__ = ["CodePointOrder", "NoIndexOnSQLite", "OnSQLiteOnly", "prefix_match"]


class CodePointOrder(ColumnElement[str]):
    """A text column compared in code-point order: ``COLLATE "C"`` on PostgreSQL,
    the column itself on SQLite (its binary collation of UTF-8 is that order)."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[str]) -> None:
        self.column = column
        self.type = column.type


@compiles(CodePointOrder)
def _code_point_order(element: CodePointOrder, compiler: Any, **kw: Any) -> str:
    return f'{compiler.process(element.column, **kw)} COLLATE "C"'


@compiles(CodePointOrder, "sqlite")
def _code_point_order_sqlite(element: CodePointOrder, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


class NoIndexOnSQLite(ColumnElement[str]):
    """A column that SQLite may not look up by index (``+column``, SQLite's own
    idiom): the walk in rid order must scan the table in rowid order and stop at
    the page, not fetch every resource of the type by its type index and sort
    them. PostgreSQL: the column itself (it walks the primary key on its own)."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[str]) -> None:
        self.column = column
        self.type = column.type


@compiles(NoIndexOnSQLite)
def _no_index(element: NoIndexOnSQLite, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@compiles(NoIndexOnSQLite, "sqlite")
def _no_index_sqlite(element: NoIndexOnSQLite, compiler: Any, **kw: Any) -> str:
    return f"+{compiler.process(element.column, **kw)}"


class OnSQLiteOnly(ColumnElement[bool]):
    """A condition SQLite needs and PostgreSQL must not see: ``true`` there.

    The code-point range of a string prefix: SQLite's index serves only it;
    PostgreSQL derives the same range from ``LIKE 'x%'`` for its pattern-ops
    index, and a second, explicit range made it multiply the two selectivities
    (3 Patients estimated for ``family=Ni`` instead of 551; 2,504 match), which
    sent chains through such prefixes into per-row plans (ADR 22)."""

    inherit_cache = True
    _traverse_internals = [("clause", InternalTraversal.dp_clauseelement)]

    def __init__(self, clause: ColumnElement[bool]) -> None:
        self.clause = clause
        # Not Boolean: SQLAlchemy would write "(…) = 1" on SQLite, which no index serves.
        self.type = NULLTYPE  # type: ignore[assignment]


@compiles(OnSQLiteOnly)
def _on_sqlite_only(element: OnSQLiteOnly, compiler: Any, **kw: Any) -> str:
    return "true"


@compiles(OnSQLiteOnly, "sqlite")
def _on_sqlite_only_sqlite(element: OnSQLiteOnly, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.clause, **kw)})"


def prefix_match(column: Any, prefix: str) -> ColumnElement[bool]:
    """Values that begin with ``prefix``: ``LIKE 'prefix%'`` and the range of code
    points it implies. SQLite's ``LIKE`` is case-insensitive, so it cannot use an
    index of binary collation, but the range can; PostgreSQL's ``LIKE`` uses the
    pattern-ops index (migration 0017) alone (see :class:`OnSQLiteOnly`)."""
    like = column.startswith(prefix, autoescape=True)
    if not prefix:
        return and_(like)
    following = ord(prefix[-1]) + 1
    if following > 0x10FFFF:
        return and_(like)
    if 0xD800 <= following <= 0xDFFF:  # surrogates are not characters
        following = 0xE000
    upper = prefix[:-1] + chr(following)
    ordered = CodePointOrder(column)
    return and_(OnSQLiteOnly(and_(ordered >= prefix, ordered < upper)), like)
