"""FHIR search (search.html) as SQL over the index tables.

Each parameter becomes an ``EXISTS`` sub-query on the index table of its
type, correlated to the resource row; OR values (``a,b``) join inside one
sub-query, repeated parameters (AND) add sub-queries. Chains
(``subject:Patient.name=x``) and reverse chains (``_has:Observation:subject:
code=x``) are sub-queries over resources that must themselves pass the
caller's policy filter: a chain never reveals a resource the caller could not
search for directly.

Supported (R4): every parameter type but composite; prefixes
``eq ne gt lt ge le sa eb ap`` for number, date and quantity with the
precision rules of search.html (the index holds each value as an interval);
modifiers ``:missing`` (all), ``:exact`` ``:contains`` (string), ``:not``
``:text`` (token), ``:[type]`` and ``:identifier``-free references, ``:below``
``:above`` (uri); ``_id``, ``_lastUpdated``; chaining and ``_has``, nested
up to :data:`MAX_CHAIN_DEPTH` levels; ``_sort`` on ``_id``, ``_lastUpdated``
and string/date/token/number parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Table,
    and_,
    exists,
    false,
    func,
    intersect,
    not_,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.sqltypes import NULLTYPE
from sqlalchemy.sql.visitors import InternalTraversal

from salus.db.tables import (
    fhir_idx_composite,
    fhir_idx_date,
    fhir_idx_number,
    fhir_idx_quantity,
    fhir_idx_reference,
    fhir_idx_string,
    fhir_idx_token,
    fhir_idx_uri,
    fhir_resources,
)
from salus.errors import InvalidInput
from salus.fhir.indexing import DATE_LONG, DATE_MULTI, DATE_SHORT_SPAN
from salus.fhir.search.values import date_interval, decimal_range, normalize_string

__all__ = ["CONTROL_PARAMS", "ParsedSearch", "SearchPlan", "build_search", "split_or"]

#: Result parameters (search.html#Summary): not filters.
CONTROL_PARAMS = frozenset(
    {
        "_count",
        "_offset",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_format",
        "_pretty",
        "_contained",
        "_containedType",
    }
)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_TABLES: dict[str, Table] = {
    "token": fhir_idx_token,
    "string": fhir_idx_string,
    "date": fhir_idx_date,
    "number": fhir_idx_number,
    "quantity": fhir_idx_quantity,
    "reference": fhir_idx_reference,
    "uri": fhir_idx_uri,
}
R = fhir_resources
#: Index tables whose value indexes end with the rid (migrations 0018, 0019).
_RID_LAST = frozenset({fhir_idx_token, fhir_idx_date, fhir_idx_string, fhir_idx_reference})
#: How deep chains and ``_has`` may nest (``subject:Patient.organization.name``
#: is two levels); each level has its own aliases.
MAX_CHAIN_DEPTH = 3
#: Aliases per level of chaining and of _has; made once, so that the policy
#: filter's cached SQL shapes stay few.
CHAIN_TARGET = [fhir_resources.alias(f"chained{n}") for n in range(1, MAX_CHAIN_DEPTH + 1)]
CHAIN_REF = [fhir_idx_reference.alias(f"chain_ref{n}") for n in range(1, MAX_CHAIN_DEPTH + 1)]
HAS_SOURCE = [fhir_resources.alias(f"has_source{n}") for n in range(1, MAX_CHAIN_DEPTH + 1)]
HAS_REF = [fhir_idx_reference.alias(f"has_ref{n}") for n in range(1, MAX_CHAIN_DEPTH + 1)]
#: The nesting level of each alias of fhir_resources (the searched table is 0).
_DEPTH: dict[Any, int] = {
    R: 0,
    **{alias: n for n, alias in enumerate(CHAIN_TARGET, 1)},
    **{alias: n for n, alias in enumerate(HAS_SOURCE, 1)},
}


def _next_level(resource: FromClause, what: str) -> int:
    """The index (0-based) of the aliases one level below ``resource``."""
    depth = _DEPTH.get(resource, MAX_CHAIN_DEPTH)
    if depth >= MAX_CHAIN_DEPTH:
        raise InvalidInput(f"{what} may nest at most {MAX_CHAIN_DEPTH} levels.")
    return depth


def split_or(value: str) -> list[str]:
    """Split on commas not escaped with a backslash (search.html#escaping)."""
    parts, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _split_pipe(value: str) -> tuple[str | None, str]:
    """``system|code`` (token, quantity) with ``\\|`` escapes."""
    match = re.match(r"^((?:[^|\\]|\\.)*)\|(.*)$", value)
    if match is None:
        return None, value.replace("\\|", "|")
    return match.group(1).replace("\\|", "|"), match.group(2).replace("\\|", "|")


class _CodePointOrder(ColumnElement[str]):
    """A text column compared in code-point order: ``COLLATE "C"`` on PostgreSQL,
    the column itself on SQLite (its binary collation of UTF-8 is that order)."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[str]) -> None:
        self.column = column
        self.type = column.type


@compiles(_CodePointOrder)
def _code_point_order(element: _CodePointOrder, compiler: Any, **kw: Any) -> str:
    return f'{compiler.process(element.column, **kw)} COLLATE "C"'


@compiles(_CodePointOrder, "sqlite")
def _code_point_order_sqlite(element: _CodePointOrder, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


class _NoIndexOnSQLite(ColumnElement[str]):
    """A column that SQLite may not look up by index (``+column``, SQLite's own
    idiom): the walk in rid order must scan the table in rowid order and stop at
    the page, not fetch every resource of the type by its type index and sort
    them. PostgreSQL: the column itself (it walks the primary key on its own)."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[str]) -> None:
        self.column = column
        self.type = column.type


@compiles(_NoIndexOnSQLite)
def _no_index(element: _NoIndexOnSQLite, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@compiles(_NoIndexOnSQLite, "sqlite")
def _no_index_sqlite(element: _NoIndexOnSQLite, compiler: Any, **kw: Any) -> str:
    return f"+{compiler.process(element.column, **kw)}"


class _OnSQLiteOnly(ColumnElement[bool]):
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


@compiles(_OnSQLiteOnly)
def _on_sqlite_only(element: _OnSQLiteOnly, compiler: Any, **kw: Any) -> str:
    return "true"


@compiles(_OnSQLiteOnly, "sqlite")
def _on_sqlite_only_sqlite(element: _OnSQLiteOnly, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.clause, **kw)})"


def _prefix_match(column: Any, prefix: str) -> ColumnElement[bool]:
    """Values that begin with ``prefix``: ``LIKE 'prefix%'`` and the range of code
    points it implies. SQLite's ``LIKE`` is case-insensitive, so it cannot use an
    index of binary collation, but the range can; PostgreSQL's ``LIKE`` uses the
    pattern-ops index (migration 0017) alone (see :class:`_OnSQLiteOnly`)."""
    like = column.startswith(prefix, autoescape=True)
    if not prefix:
        return and_(like)
    following = ord(prefix[-1]) + 1
    if following > 0x10FFFF:
        return and_(like)
    if 0xD800 <= following <= 0xDFFF:  # surrogates are not characters
        following = 0xE000
    upper = prefix[:-1] + chr(following)
    ordered = _CodePointOrder(column)
    return and_(_OnSQLiteOnly(and_(ordered >= prefix, ordered < upper)), like)


def _token_match(system_col: Any, code_col: Any, value: str) -> ColumnElement[bool]:
    """``[system]|[code]`` forms of a token (search.html#token)."""
    system, code = _split_pipe(value)
    if system is None:
        return and_(code_col == code)
    if system == "":
        return and_(system_col.is_(None), code_col == code)
    if code == "":
        return and_(system_col == system)
    return and_(system_col == system, code_col == code)


def _prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in _PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def date_range(text: str) -> tuple[datetime, datetime]:
    """The interval a search date stands for (search.html#date: implicit precision);
    the same rule the index uses for stored values."""
    interval = date_interval(text)
    if interval is None:
        raise InvalidInput(f"'{text}' is not a FHIR date or dateTime.")
    return interval


def _decimal_range(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """A search number and its implicit range (search.html#number)."""
    try:
        found = decimal_range(Decimal(text))
    except ArithmeticError:
        found = None
    if found is None:
        raise InvalidInput(f"'{text}' is not a number.")
    low, high, number = found
    return number, low, high


def _range_condition(
    prefix: str,
    low_col: ColumnElement[Any],
    high_col: ColumnElement[Any],
    low: Any,
    high: Any,
    value: Any = None,
) -> ColumnElement[bool]:
    """search.html#prefix on intervals: the target [low_col, high_col] against the
    search range [low, high]."""
    if prefix == "eq":
        return and_(low_col >= low, high_col <= high)
    if prefix == "ne":
        return or_(low_col < low, high_col > high)
    if prefix == "gt":
        return and_(high_col > high)
    if prefix == "lt":
        return and_(low_col < low)
    if prefix == "ge":
        return and_(high_col >= low)
    if prefix == "le":
        return and_(low_col <= high)
    if prefix == "sa":
        return and_(low_col > high)
    if prefix == "eb":
        return and_(high_col < low)
    # ap: approximately, within 10 % of the value's distance (dates: one day either side)
    if isinstance(low, datetime):
        return and_(high_col >= low - timedelta(days=1), low_col <= high + timedelta(days=1))
    spread = abs(value if value is not None else low) * Decimal("0.1")
    return and_(high_col >= low - spread, low_col <= high + spread)


@dataclass(frozen=True, slots=True)
class ParamDef:
    code: str
    type: str
    targets: tuple[str, ...] = ()
    #: Types of a composite parameter's components.
    components: tuple[str, ...] = ()


ParamLookup = Callable[[str, str], ParamDef | None]


@dataclass(slots=True)
class ParsedSearch:
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class SearchPlan:
    """Turns (name, value) pairs into SQL conditions on ``fhir_resources``."""

    def __init__(
        self, lookup: ParamLookup, visible: Callable[[FromClause], ColumnElement[bool]]
    ) -> None:
        self.lookup = lookup
        #: The caller's policy filter for another alias of fhir_resources (chains).
        self.visible = visible
        #: Each top-level ``rid IN (…)`` condition made, by the condition's id:
        #: its index table, its sub-query and its test on the index row without
        #: the type (see :meth:`probe_form`).
        self.subqueries: dict[int, tuple[Any, Select[Any], ColumnElement[bool]]] = {}
        #: The ids of those whose index rows come in rid order: a token ``system|code``
        #: (one value), equal on every column of the token index before ``rid``.
        self.ordered: set[int] = set()
        #: The ids of the top-level chains (``rid IN`` the references to the
        #: matching targets): see :meth:`chain_driven`.
        self.chains: set[int] = set()
        #: Each top-level chain's targets' index sub-query (when the chain's
        #: condition is one index condition; see :meth:`targets_at_least`) and its
        #: per-row probe, built when asked (see :meth:`_chain_probe`).
        self.chain_targets: dict[int, Select[Any]] = {}
        self.chain_probes: dict[int, Callable[[], ColumnElement[bool]]] = {}
        #: Index sub-queries of conditions below the top level, by the condition's id.
        self._nested: dict[int, Select[Any]] = {}
        #: Above 0 while a chain's probe is built: index conditions are then probes
        #: by rid of the resource they test, not ``rid IN (…)``.
        self._probing = 0

    def condition(
        self, res_type: str, name: str, value: str, resource: FromClause = R
    ) -> ColumnElement[bool]:
        if name.startswith("_has:"):
            return self._has(res_type, name, value, resource)
        base, _, modifier = name.partition(":")
        chain: str | None = None
        if "." in base:
            base, chain = base.split(".", 1)
        if "." in modifier:
            modifier, chain = modifier.split(".", 1)
        if base == "_id":
            return self._id(value, modifier, resource)
        if base == "_lastUpdated":
            return self._last_updated(value, resource)
        definition = self.lookup(res_type, base)
        if definition is None:
            raise InvalidInput(
                f"Unknown search parameter '{base}' for {res_type}.", expression=[base]
            )
        if chain is not None:
            return self._chain(res_type, definition, modifier, chain, value, resource)
        if modifier == "missing":
            return self._missing(definition, value, resource, res_type)
        if definition.type == "composite":
            return self._composite(definition, value, resource, res_type)
        if definition.type == "special":
            raise InvalidInput(
                f"Search parameter '{base}' ({definition.type}) is not supported.",
                expression=[base],
            )
        table = _TABLES[definition.type]
        values = split_or(value)
        if definition.type == "reference" and modifier == "identifier":
            ors = [self._token(fhir_idx_token, v, "") for v in values]
            return self._exists(
                fhir_idx_token, f"{definition.code}:identifier", or_(*ors), resource, res_type
            )
        if definition.type == "token" and modifier == "not":
            inner = or_(*(self._token(table, v, "") for v in values))
            return not_(self._exists(table, definition.code, inner, resource, res_type))
        if definition.type == "token" and not modifier and len(values) == 1:
            system, code = _split_pipe(values[0])
            if system and code:
                found = self._exists(
                    table, definition.code, self._token(table, values[0], ""), resource, res_type
                )
                if resource is R:
                    self.ordered.add(id(found))
                return found
        builder = getattr(self, f"_{definition.type}")
        ors = [
            builder(table, v, modifier)
            if definition.type != "reference"
            else self._reference(table, v, modifier, definition)
            for v in values
        ]
        return self._exists(table, definition.code, or_(*ors), resource, res_type)

    def _exists(
        self,
        table: Table,
        param: str,
        condition: ColumnElement[bool],
        resource: FromClause,
        res_type: str,
    ) -> ColumnElement[bool]:
        """Resources with an index row of ``param`` matching ``condition``.

        Written as ``rid IN (…)`` over the index table (not a correlated EXISTS)
        so that both planners start from the index (type, param, value) and
        probe resources by rid, instead of scanning every resource of the type.
        """
        return self._rids_in(table, res_type, and_(table.c.param == param, condition), resource)

    def _rids_in(
        self, table: Any, res_type: str, row_test: ColumnElement[bool], resource: FromClause
    ) -> ColumnElement[bool]:
        """``resource.rid IN (rids of index rows of res_type passing row_test)``;
        remembered at the top level for :meth:`matches_at_least` and :meth:`probe_form`."""
        if self._probing:
            return exists(select(table.c.rid).where(table.c.rid == resource.c.rid, row_test))
        rids = select(table.c.rid).where(table.c.res_type == res_type, row_test)
        found = resource.c.rid.in_(rids)
        if resource is R:
            self.subqueries[id(found)] = (table, rids, row_test)
        else:
            self._nested[id(found)] = rids
        return found

    def is_index_condition(self, condition: ColumnElement[bool]) -> bool:
        return id(condition) in self.subqueries

    def count_rank(self, condition: ColumnElement[bool]) -> int:
        """How likely an index condition is to be sparse, by its table (0: most)."""
        table = self.subqueries[id(condition)][0]
        base = getattr(table, "element", table)
        ranks = {fhir_idx_reference: 0, fhir_idx_string: 1, fhir_idx_token: 2, fhir_idx_date: 4}
        return ranks.get(base, 3)

    def in_rid_order(self, condition: ColumnElement[bool]) -> bool:
        return id(condition) in self.ordered

    def driven_by(
        self,
        res_type: str,
        driver: ColumnElement[bool],
        others: Sequence[ColumnElement[bool]],
        visible: ColumnElement[bool],
    ) -> Select[Any]:
        """The matches in rid order, read from the index of ``driver`` (one of
        :attr:`ordered`) in its order, each resource then checked: the first page
        costs a page of index entries, not every match (``DISTINCT``: a resource
        may have two index rows of one code, with different display texts)."""
        table, _, row_test = self.subqueries[id(driver)]
        return (
            select(table.c.rid)
            .distinct()
            .select_from(table.join(R, R.c.rid == table.c.rid))
            .where(
                table.c.res_type == res_type,
                row_test,
                R.c.res_type == res_type,
                R.c.deleted.is_(False),
                visible,
                *others,
            )
            .order_by(table.c.rid)
        )

    def is_chain(self, condition: ColumnElement[bool]) -> bool:
        return id(condition) in self.chains

    def chain_driven(
        self,
        res_type: str,
        chain: ColumnElement[bool],
        others: Sequence[ColumnElement[bool]],
        visible: ColumnElement[bool],
    ) -> Select[Any]:
        """The matches in rid order, from the rids of a chain's references
        (search.html#chaining), deduplicated and sorted before any resource row
        is read; the resources are then read in that order, each checked, until
        the page is full.

        The ``rid IN (…)`` form collected every match's resource row first (the
        policy filter), then sorted: ``Observation?subject:Patient.family=Ni``
        (2,504 Patients, 22,548 Observations at 1,000,000 resources) read 22,548
        Observations for a page of 50 (0.2-0.6 s on PostgreSQL). Here the
        references come from their index alone (``rid`` is its last column,
        migration 0019); a walk in rid order probing the chain per resource was
        tried and dropped: near the dense threshold it walks ~27,000
        Observations (ADR 22, amendment of stop 15)."""
        table, rids, _ = self.subqueries[id(chain)]
        candidates = rids.distinct().order_by(table.c.rid).subquery("chain_rids")
        return (
            select(R.c.rid)
            .select_from(candidates.join(R, R.c.rid == candidates.c.rid))
            .where(R.c.res_type == res_type, R.c.deleted.is_(False), visible, *others)
            .order_by(candidates.c.rid)
        )

    def targets_at_least(
        self,
        conn: Any,
        chain: ColumnElement[bool],
        enough: int,
        values: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether a top-level chain's condition on its targets has ``enough``
        index rows (counted from that index alone, up to that many; neither the
        targets' filter nor their references are read; ``values``: the policy
        filter's, which a nested chain needs). False when the chain's condition
        is not one index condition."""
        rids = self.chain_targets.get(id(chain))
        if rids is None:
            return False
        limited = rids.limit(enough).subquery()
        found = conn.execute(select(func.count(limited.c.rid)), dict(values or {})).scalar_one()
        return int(found) >= enough

    def chain_probe(self, chain: ColumnElement[bool]) -> ColumnElement[bool]:
        """A top-level chain as a probe of each resource walked (:meth:`_chain_probe`)."""
        return self.chain_probes[id(chain)]()

    def matches_at_least(
        self,
        conn: Any,
        condition: ColumnElement[bool],
        enough: int,
        values: Mapping[str, Any] | None = None,
    ) -> bool | None:
        """Whether a top-level index condition has ``enough`` index rows (counted
        up to that many, from its index alone; ``values``: the policy filter's, which
        a chain's condition needs); None if it is not one."""
        if id(condition) not in self.subqueries:
            return None
        found = conn.execute(self.count_query(condition, enough), dict(values or {})).scalar_one()
        return int(found) >= enough

    def count_query(self, condition: ColumnElement[bool], enough: int) -> Select[Any]:
        """How many index rows a top-level index condition has, up to ``enough``.

        ``count(rid)``, not ``count(*)``: the rid must come out of the index, so
        the planners take an index that ends with it (migrations 0018, 0019)
        and read ``enough`` entries of it. With ``count(*)`` PostgreSQL took
        ``ix_fhir_idx_date_shape`` (type, param, shape, high) for ``date=geX``,
        whose ``high`` bounds no range of the scan: 2,600 pages instead of 20.
        Tables whose indexes do not end with the rid keep ``count(*)``, which an
        index without the rid can answer alone."""
        table, rids, _ = self.subqueries[id(condition)]
        limited = rids.limit(enough).subquery()
        if getattr(table, "element", table) in _RID_LAST:
            return select(func.count(limited.c.rid))
        return select(func.count()).select_from(limited)

    def probe_form(self, condition: ColumnElement[bool]) -> ColumnElement[bool]:
        """The same condition as a correlated ``EXISTS`` probe of the index by
        ``rid``: for conditions that many resources meet, so that the first page
        in ``rid`` order is found by walking the resources in that order and
        stopping at the page, not by collecting and sorting every match."""
        table, rids, row_test = self.subqueries[id(condition)]
        if id(condition) in self.ordered:
            # Its index ends with rid: one lookup of every column, on both databases.
            return exists(rids.where(table.c.rid == R.c.rid))
        # No type test: the rid implies it, and leaving it out leaves the planners
        # (SQLite's above all) only the index on rid to probe with, not the index
        # on (type, param, value) that a dense value would make a long scan of.
        return exists(select(table.c.rid).where(table.c.rid == R.c.rid, row_test))

    # -- special parameters --------------------------------------------------------------
    def _id(self, value: str, modifier: str, resource: FromClause) -> ColumnElement[bool]:
        ids = [v for v in split_or(value) if v]
        if modifier == "not":
            return resource.c.res_id.not_in(ids)
        return resource.c.res_id.in_(ids) if ids else false()

    def _last_updated(self, value: str, resource: FromClause) -> ColumnElement[bool]:
        ors = []
        for item in split_or(value):
            prefix, text = _prefix(item)
            low, high = date_range(text)
            ors.append(
                _range_condition(
                    prefix, resource.c.last_updated, resource.c.last_updated, low, high
                )
            )
        return or_(*ors)

    def _missing(
        self, definition: ParamDef, value: str, resource: FromClause, res_type: str
    ) -> ColumnElement[bool]:
        if value not in ("true", "false"):
            raise InvalidInput(":missing takes true or false.", expression=[definition.code])
        table = _TABLES.get(definition.type)
        if table is None:
            raise InvalidInput(f"':missing' is not supported on '{definition.code}'.")
        present = self._exists(table, definition.code, true(), resource, res_type)
        return not_(present) if value == "true" else present

    # -- by type -----------------------------------------------------------------------
    def _string(self, table: Table, value: str, modifier: str) -> ColumnElement[bool]:
        if modifier == "exact":
            return table.c.exact == value
        norm = normalize_string(value)
        if modifier == "contains":
            return table.c.norm.contains(norm, autoescape=True)
        if modifier not in ("", "text"):
            raise InvalidInput(f"Modifier ':{modifier}' does not apply to strings.")
        return _prefix_match(table.c.norm, norm)

    def _token(self, table: Table, value: str, modifier: str) -> ColumnElement[bool]:
        if modifier == "text":
            return table.c.text.isnot(None) & func.lower(table.c.text).contains(
                value.lower(), autoescape=True
            )
        if modifier == "of-type":
            # identifier:of-type=type-system|type-code|value (search.html#token)
            parts = re.split(r"(?<!\\)\|", value)
            if len(parts) != 3 or not all(parts):
                raise InvalidInput(":of-type takes type-system|type-code|value.")
            return and_(
                table.c.type_system == parts[0],
                table.c.type_code == parts[1],
                table.c.code == parts[2],
            )
        if modifier not in ("", "not"):
            raise InvalidInput(f"Modifier ':{modifier}' is not supported on tokens.")
        return _token_match(table.c.system, table.c.code, value)

    def _composite(
        self, definition: ParamDef, value: str, resource: FromClause, res_type: str
    ) -> ColumnElement[bool]:
        """search.html#composite: ``a$b``, two components, the first a token."""
        table = fhir_idx_composite
        if len(definition.components) != 2:
            raise InvalidInput(
                f"Composite '{definition.code}' has more than two components; "
                "it is not searchable yet."
            )
        second_type = definition.components[1]
        ors = []
        for item in split_or(value):
            first, sep, second = item.partition("$")
            if not sep or not first or not second:
                raise InvalidInput(f"'{definition.code}' takes value1$value2.")
            key = _token_match(table.c.k_system, table.c.k_code, first)
            if second_type == "token":
                other = _token_match(table.c.v_system, table.c.v_code, second)
            elif second_type in ("quantity", "number"):
                prefix, rest = _prefix(second)
                number_text, _, unit = rest.partition("|")
                number, low, high = _decimal_range(number_text)
                if prefix in ("gt", "lt", "ge", "le", "sa", "eb"):
                    low = high = number
                other = _range_condition(prefix, table.c.v_low, table.c.v_high, low, high, number)
                if unit:
                    system, code = _split_pipe(unit)
                    if system:
                        other = and_(other, table.c.v_system == system)
                    if code:
                        other = and_(other, table.c.v_code == code)
            elif second_type == "date":
                prefix, text = _prefix(second)
                low_d, high_d = date_range(text)
                other = _range_condition(
                    prefix, table.c.v_date_low, table.c.v_date_high, low_d, high_d
                )
            elif second_type == "string":
                other = table.c.v_text.startswith(normalize_string(second), autoescape=True)
            else:
                raise InvalidInput(f"Composite '{definition.code}' is not searchable yet.")
            ors.append(and_(key, other))
        return self._exists(table, definition.code, or_(*ors), resource, res_type)

    def _date(self, table: Table, value: str, modifier: str) -> ColumnElement[bool]:
        prefix, text = _prefix(value)
        low, high = date_range(text)
        condition = _range_condition(prefix, table.c.low, table.c.high, low, high)
        if prefix == "eq":  # implied (low <= high <= end): bounds the scan of the low index
            condition = and_(condition, table.c.low <= high)
        return condition

    # -- date ranges: ANDed conditions on one parameter -----------------------------------
    def date_ranges(self, res_type: str, params: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
        """Date parameters repeated (ANDed) with single values and comparable
        prefixes (``date=geX&date=ltY``): answered by :meth:`date_and`."""
        found: dict[str, list[str]] = {}
        for name, value in params:
            if name in CONTROL_PARAMS or name.startswith("_") or ":" in name or "." in name:
                continue
            definition = self.lookup(res_type, name)
            if definition is None or definition.type != "date" or len(split_or(value)) != 1:
                continue
            if _prefix(value)[0] in ("ne", "ap"):
                continue
            found.setdefault(name, []).append(value)
        return {name: values for name, values in found.items() if len(values) > 1}

    def date_and(
        self, res_type: str, name: str, values: Sequence[str], resource: FromClause = R
    ) -> ColumnElement[bool]:
        """Several ANDed conditions on one date parameter (search.html#date).

        Each may be met by a different value of a multi-valued element, so a
        resource with several values (``shape`` bit :data:`DATE_MULTI`) is
        tested condition by condition; a resource with one value must have it
        meet them all, which is one range on one index row: those that begin
        inside the range (the ``low`` index), the short ones that begin less
        than :data:`DATE_SHORT_SPAN` before it and end inside it, and the long
        ones (bit :data:`DATE_LONG`, few) that begin before it (the ``shape``
        index). No scan of all the values above the start or below the end.
        """
        table = fhir_idx_date
        rows = [self._date(table, value, "") for value in values]
        every = and_(*rows)
        starts: list[datetime] = []  # every match ends (high) at or after these
        ends: list[datetime] = []  # every match begins (low) at or before these
        for value in values:
            prefix, text = _prefix(value)
            low, high = date_range(text)
            if prefix in ("eq", "ge"):
                starts.append(low)
            if prefix in ("gt", "sa"):
                starts.append(high)
            if prefix in ("eq", "le"):
                ends.append(high)
            if prefix in ("lt", "eb"):
                ends.append(low)

        def rids(*conditions: ColumnElement[bool]) -> Select[Any]:
            return select(table.c.rid).where(
                table.c.res_type == res_type, table.c.param == name, *conditions
            )

        parts: list[Select[Any]] = [rids(every)]
        if starts and ends:
            start, end = max(starts), min(ends)
            parts = [
                rids(every, table.c.low >= start, table.c.low <= end),
                rids(
                    every,
                    table.c.shape.in_([0, DATE_MULTI]),
                    table.c.high >= start,
                    table.c.high <= start + DATE_SHORT_SPAN,
                    table.c.low < start,
                ),
                rids(
                    every,
                    table.c.shape.in_([DATE_LONG, DATE_LONG | DATE_MULTI]),
                    table.c.high >= start,
                    table.c.low < start,
                ),
            ]
        multi = [DATE_MULTI, DATE_MULTI | DATE_LONG]
        several = intersect(*(rids(table.c.shape.in_(multi), row) for row in rows)).subquery()
        # One IN over one compound select: both planners start from the index scans.
        return resource.c.rid.in_(union_all(*parts, select(several.c.rid)))

    def _number(self, table: Table, value: str, modifier: str) -> ColumnElement[bool]:
        prefix, text = _prefix(value)
        number, low, high = _decimal_range(text)
        if prefix in ("gt", "lt", "ge", "le", "sa", "eb"):
            low = high = number  # comparisons use the value itself
        return _range_condition(prefix, table.c.low, table.c.high, low, high, number)

    def _quantity(self, table: Table, value: str, modifier: str) -> ColumnElement[bool]:
        prefix, rest = _prefix(value)
        number_text, _, unit = rest.partition("|")
        condition = self._number(table, f"{prefix}{number_text}", "")
        if unit:
            system, code = _split_pipe(unit)
            if system:
                condition = and_(condition, table.c.system == system)
            if code:
                condition = and_(condition, table.c.code == code)
        return condition

    def _uri(self, table: Table, value: str, modifier: str) -> ColumnElement[bool]:
        if modifier == "below":
            return table.c.value.startswith(value, autoescape=True)
        if modifier == "above":
            return func.substr(value, 1, func.length(table.c.value)) == table.c.value
        return table.c.value == value

    def _reference(
        self, table: Table, value: str, modifier: str, definition: ParamDef
    ) -> ColumnElement[bool]:
        target_type = modifier or None
        if "/" in value and not value.startswith(("http:", "https:", "urn:")):
            parts = value.split("/")
            if len(parts) >= 2:
                target_type, target_id = parts[-2], parts[-1]
                if "_history" in parts:
                    index = parts.index("_history")
                    target_type, target_id = parts[index - 2], parts[index - 1]
            else:
                target_id = value
        elif value.startswith(("http:", "https:", "urn:")):
            return table.c.url == value
        else:
            target_id = value
        condition = table.c.target_id == target_id
        if target_type:
            condition = and_(condition, table.c.target_type == target_type)
        return condition

    # -- chains --------------------------------------------------------------------------
    def _chain(
        self,
        res_type: str,
        definition: ParamDef,
        modifier: str,
        chain: str,
        value: str,
        resource: FromClause,
    ) -> ColumnElement[bool]:
        if definition.type != "reference":
            raise InvalidInput(f"'{definition.code}' is not a reference: it cannot be chained.")
        targets = [modifier] if modifier else list(definition.targets)
        if len(targets) != 1:
            raise InvalidInput(
                f"Chain through '{definition.code}' needs a type "
                f"('{definition.code}:Type.{chain}')."
            )
        level = _next_level(resource, "Chains")
        if self._probing:
            return self._chain_probe(definition.code, targets[0], chain, value, resource, level)
        target = CHAIN_TARGET[level]
        inner = self.condition(targets[0], chain, value, target)
        ref = CHAIN_REF[level]
        matching = select(target.c.res_id).where(
            target.c.res_type == targets[0],
            target.c.deleted.is_(False),
            inner,
            self.visible(target),
        )
        # rid IN (references to the matching targets): the planners start from the
        # chain's targets and the reference index, not from every resource of the type.
        found = self._rids_in(
            ref,
            res_type,
            and_(
                ref.c.param == definition.code,
                ref.c.target_type == targets[0],
                ref.c.target_id.in_(matching),
            ),
            resource,
        )
        if resource is R:
            self.chains.add(id(found))
            if id(inner) in self._nested:
                self.chain_targets[id(found)] = self._nested[id(inner)]
            code, target_type = definition.code, targets[0]
            self.chain_probes[id(found)] = lambda: self._chain_probe(
                code, target_type, chain, value, R, level
            )
        return found

    def _chain_probe(
        self,
        code: str,
        target_type: str,
        chain: str,
        value: str,
        resource: FromClause,
        level: int,
    ) -> ColumnElement[bool]:
        """A chain as a probe of one resource (search.html#chaining): its
        reference by rid, the target by type and id, the target's conditions
        each probed by the target's rid, under the caller's policy filter.

        For a walk in rid order through a chain that very many targets meet
        (see :meth:`chain_driven`). ``OFFSET 0`` keeps it a sub-plan run per
        resource walked: PostgreSQL does not pull up an ``EXISTS`` with an
        offset, and would otherwise collect every match in a semi-join."""
        target = CHAIN_TARGET[level]
        ref = CHAIN_REF[level]
        self._probing += 1
        try:
            inner = self.condition(target_type, chain, value, target)
        finally:
            self._probing -= 1
        return exists(
            select(ref.c.rid)
            .select_from(
                ref.join(
                    target,
                    and_(target.c.res_type == target_type, target.c.res_id == ref.c.target_id),
                )
            )
            .where(
                ref.c.rid == resource.c.rid,
                ref.c.param == code,
                ref.c.target_type == target_type,
                target.c.deleted.is_(False),
                inner,
                self.visible(target),
            )
            .offset(0)
        )

    def _has(
        self, res_type: str, name: str, value: str, resource: FromClause
    ) -> ColumnElement[bool]:
        parts = name.split(":", 3)  # the last part may be a _has or carry a modifier
        if len(parts) != 4:
            raise InvalidInput("_has is _has:Type:reference-param:search-param.")
        _, other_type, ref_param, search_param = parts
        definition = self.lookup(other_type, ref_param)
        if definition is None or definition.type != "reference":
            raise InvalidInput(f"'{ref_param}' is not a reference parameter of {other_type}.")
        level = _next_level(resource, "_has")
        other = HAS_SOURCE[level]
        ref = HAS_REF[level]
        inner = self.condition(other_type, search_param, value, other)
        return exists(
            select(other.c.rid).where(
                other.c.res_type == other_type,
                other.c.deleted.is_(False),
                ref.c.rid == other.c.rid,
                ref.c.param == ref_param,
                ref.c.target_type == resource.c.res_type,
                ref.c.target_id == resource.c.res_id,
                inner,
                self.visible(other),
            )
        )

    # -- sorting -------------------------------------------------------------------------
    def sort_keys(self, res_type: str, sort: str | None) -> list[Any]:
        keys: list[Any] = []
        for item in [s for s in (sort or "").split(",") if s]:
            descending = item.startswith("-")
            name = item.lstrip("-")
            if name == "_id":
                column: Any = R.c.res_id
            elif name == "_lastUpdated":
                column = R.c.last_updated
            else:
                definition = self.lookup(res_type, name)
                if definition is None or definition.type not in (
                    "string",
                    "date",
                    "token",
                    "number",
                    "quantity",
                    "uri",
                ):
                    raise InvalidInput(f"Cannot sort on '{name}'.", expression=["_sort"])
                table = _TABLES[definition.type].alias(f"sort_{len(keys)}")
                value_column = {
                    "string": "norm",
                    "date": "low",
                    "token": "code",
                    "number": "low",
                    "quantity": "low",
                    "uri": "value",
                }[definition.type]
                aggregate = func.max if descending else func.min
                column = (
                    select(aggregate(table.c[value_column]))
                    .where(table.c.rid == R.c.rid, table.c.param == name)
                    .scalar_subquery()
                )
            keys.append(column.desc() if descending else column.asc())
        keys.append(R.c.rid.asc())
        return keys


def build_search(
    plan: SearchPlan, res_type: str, params: Sequence[tuple[str, str]], *, lenient: bool
) -> ParsedSearch:
    parsed = ParsedSearch()
    ranges = plan.date_ranges(res_type, params)
    for name, value in params:
        if name in CONTROL_PARAMS:
            continue
        try:
            if name in ranges:
                values = ranges.pop(name)
                if values:
                    parsed.conditions.append(plan.date_and(res_type, name, values))
                continue
            parsed.conditions.append(plan.condition(res_type, name, value))
        except InvalidInput:
            if not lenient:
                raise
            parsed.ignored.append(name)
        if name in ranges:
            ranges[name] = []  # done (or ignored) at its first occurrence
    return parsed


def base_query(
    res_type: str, conditions: Sequence[ColumnElement[bool]], visible: ColumnElement[bool]
) -> Select[Any]:
    return select(R.c.rid).where(
        R.c.res_type == res_type, R.c.deleted.is_(False), visible, *conditions
    )


def walk_query(
    res_type: str, conditions: Sequence[ColumnElement[bool]], visible: ColumnElement[bool]
) -> Select[Any]:
    """:func:`base_query` for a walk of the resources in rid order (every index
    condition probed): the type is tested on the row, not looked up by index."""
    return select(R.c.rid).where(
        _NoIndexOnSQLite(R.c.res_type) == res_type, R.c.deleted.is_(False), visible, *conditions
    )


def type_lookup(params_for: Callable[[str], Mapping[str, Any]]) -> ParamLookup:
    """A :data:`ParamLookup` over the search parameter registry."""

    def lookup(res_type: str, code: str) -> ParamDef | None:
        found = params_for(res_type).get(code)
        if found is None:
            return None
        return ParamDef(
            found.code,
            found.type,
            tuple(found.targets or ()),
            tuple(c.type for c in (found.components or ())),
        )

    return lookup
