"""Search values to SQL conditions on one row of an index table (FHIR R4
search.html): OR lists and escapes, ``system|code`` tokens, prefixes
(``eq ne gt lt ge le sa eb ap``) on the intervals the index holds, the
implicit precision of dates and numbers, and one builder per parameter type.
:class:`salus.fhir.query.SearchPlan` wraps them in sub-queries of the index
tables."""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Table,
    and_,
    func,
    intersect,
    literal_column,
    or_,
    select,
    union_all,
)

from salus.db.tables import fhir_idx_composite, fhir_idx_date, fhir_resources
from salus.errors import InvalidInput
from salus.fhir.indexing import DATE_LONG, DATE_MULTI, DATE_SHORT_SPAN
from salus.fhir.search.sqlforms import NoIndexOnSQLite, prefix_match
from salus.fhir.search.values import date_interval, decimal_range, normalize_string

__all__ = [
    "ONE_SIDED",
    "composite_condition",
    "date_and_condition",
    "date_condition",
    "date_range",
    "number_condition",
    "quantity_condition",
    "range_condition",
    "reference_condition",
    "search_prefix",
    "split_or",
    "split_pipe",
    "string_condition",
    "token_condition",
    "token_match",
    "uri_condition",
]

R = fhir_resources
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


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


def split_pipe(value: str) -> tuple[str | None, str]:
    """``system|code`` (token, quantity) with ``\\|`` escapes."""
    match = re.match(r"^((?:[^|\\]|\\.)*)\|(.*)$", value)
    if match is None:
        return None, value.replace("\\|", "|")
    return match.group(1).replace("\\|", "|"), match.group(2).replace("\\|", "|")


def token_match(system_col: Any, code_col: Any, value: str) -> ColumnElement[bool]:
    """``[system]|[code]`` forms of a token (search.html#token)."""
    system, code = split_pipe(value)
    if system is None:
        return and_(code_col == code)
    if system == "":
        return and_(system_col.is_(None), code_col == code)
    if code == "":
        return and_(system_col == system)
    return and_(system_col == system, code_col == code)


def search_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def date_range(text: str) -> tuple[datetime, datetime]:
    """The interval a search date stands for (search.html#date: implicit precision);
    the same rule the index uses for stored values."""
    interval = date_interval(text)
    if interval is None:
        raise InvalidInput(f"'{text}' is not a FHIR date or dateTime.")
    return interval


def search_number(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """A search number and its implicit range (search.html#number)."""
    try:
        found = decimal_range(Decimal(text))
    except ArithmeticError:
        found = None
    if found is None:
        raise InvalidInput(f"'{text}' is not a number.")
    low, high, number = found
    return number, low, high


#: The one-sided prefixes (search.html#prefix), the one definition that
#: :func:`range_condition` and :func:`one_sided_date` both read: which end of
#: the target interval [low_col, high_col] is compared (0: low, 1: high), the
#: comparison, and which end of the search range [low, high] it is compared with.
ONE_SIDED: dict[str, tuple[int, Any, int]] = {
    "gt": (1, operator.gt, 1),
    "lt": (0, operator.lt, 0),
    "ge": (1, operator.ge, 0),
    "le": (0, operator.le, 1),
    "sa": (0, operator.gt, 1),
    "eb": (1, operator.lt, 0),
}


def range_condition(
    prefix: str,
    low_col: ColumnElement[Any],
    high_col: ColumnElement[Any],
    low: Any,
    high: Any,
    value: Any = None,
) -> ColumnElement[bool]:
    """search.html#prefix on intervals: the target [low_col, high_col] against the
    search range [low, high]; the one-sided prefixes as :data:`ONE_SIDED` says."""
    if prefix == "eq":
        return and_(low_col >= low, high_col <= high)
    if prefix == "ne":
        return or_(low_col < low, high_col > high)
    one_sided = ONE_SIDED.get(prefix)
    if one_sided is not None:
        end, compare, bound = one_sided
        return and_(compare((low_col, high_col)[end], (low, high)[bound]))
    # ap: approximately, within 10 % of the value's distance (dates: one day either side)
    if isinstance(low, datetime):
        return and_(high_col >= low - timedelta(days=1), low_col <= high + timedelta(days=1))
    spread = abs(value if value is not None else low) * Decimal("0.1")
    return and_(high_col >= low - spread, low_col <= high + spread)


def string_condition(table: Table, value: str, modifier: str) -> ColumnElement[bool]:
    if modifier == "exact":
        return table.c.exact == value
    norm = normalize_string(value)
    if modifier == "contains":
        return table.c.norm.contains(norm, autoescape=True)
    if modifier not in ("", "text"):
        raise InvalidInput(f"Modifier ':{modifier}' does not apply to strings.")
    return prefix_match(table.c.norm, norm)


def token_condition(table: Table, value: str, modifier: str) -> ColumnElement[bool]:
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
    return token_match(table.c.system, table.c.code, value)


def composite_condition(code: str, components: tuple[str, ...], value: str) -> ColumnElement[bool]:
    """search.html#composite: ``a$b``, two components, the first a token; the
    test on a row of ``fhir_idx_composite``."""
    table = fhir_idx_composite
    if len(components) != 2:
        raise InvalidInput(
            f"Composite '{code}' has more than two components; it is not searchable yet."
        )
    second_type = components[1]
    ors = []
    for item in split_or(value):
        first, sep, second = item.partition("$")
        if not sep or not first or not second:
            raise InvalidInput(f"'{code}' takes value1$value2.")
        key = token_match(table.c.k_system, table.c.k_code, first)
        if second_type == "token":
            other = token_match(table.c.v_system, table.c.v_code, second)
        elif second_type in ("quantity", "number"):
            columns = (table.c.v_low, table.c.v_high, table.c.v_system, table.c.v_code)
            other = _quantity_match(second, *columns)
        elif second_type == "date":
            prefix, text = search_prefix(second)
            low_d, high_d = date_range(text)
            other = range_condition(prefix, table.c.v_date_low, table.c.v_date_high, low_d, high_d)
        elif second_type == "string":
            other = table.c.v_text.startswith(normalize_string(second), autoescape=True)
        else:
            raise InvalidInput(f"Composite '{code}' is not searchable yet.")
        ors.append(and_(key, other))
    return or_(*ors)


def date_condition(table: Table, value: str, modifier: str) -> ColumnElement[bool]:
    prefix, text = search_prefix(value)
    low, high = date_range(text)
    condition = range_condition(prefix, table.c.low, table.c.high, low, high)
    if prefix == "eq":  # implied (low <= high <= end): bounds the scan of the low index
        condition = and_(condition, table.c.low <= high)
    return condition


def one_sided_date(table: Table, value: str, modifier: str) -> tuple[Any, Any, datetime] | None:
    """For a date value whose condition (:func:`date_condition`) compares one
    column of the index row with one bound (``ge``, ``gt``, ``le``, ``lt``,
    ``sa``, ``eb``): that column, the comparison and the bound; None otherwise.
    Such a condition has ``n`` index rows exactly when the ``n``-th value of the
    column from the end the comparison points to passes it (see
    :meth:`salus.fhir.search.pageplans.PagePlans.matches_at_least`)."""
    if modifier:
        return None
    prefix, text = search_prefix(value)
    one_sided = ONE_SIDED.get(prefix)
    if one_sided is None:
        return None
    end, compare, bound = one_sided
    return (table.c.low, table.c.high)[end], compare, date_range(text)[bound]


#: The condition of the partial index ``ix_fhir_idx_date_shape`` (migration 0020),
#: with its literal 0: SQLite uses a partial index for a query that contains the
#: index's condition (a bound parameter matches only while its value is the
#: same, and the statement is prepared again for each value). ``<>`` is no range
#: of the index: the seek stays ``shape IN (…)`` and ``high``.
SHAPED: ColumnElement[bool] = fhir_idx_date.c.shape != literal_column("0")


def date_and_condition(
    res_type: str, name: str, values: Sequence[str], resource: FromClause = R
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
    rows = [date_condition(table, value, "") for value in values]
    every = and_(*rows)
    # Each value's prefix and range, parsed once for the parts below.
    bounds = [(prefix, *date_range(text)) for prefix, text in map(search_prefix, values)]
    starts: list[datetime] = []  # every match ends (high) at or after these
    ends: list[datetime] = []  # every match begins (low) at or before these
    for prefix, low, high in bounds:
        if prefix == "eq":
            starts.append(low)
            ends.append(high)
        one_sided = ONE_SIDED.get(prefix)
        if one_sided is not None:
            # gt ge sa: every match ends after the bound; lt le eb: begins before it
            _, compare, bound = one_sided
            lower = compare in (operator.gt, operator.ge)
            (starts if lower else ends).append((low, high)[bound])

    def rids(*conditions: ColumnElement[bool]) -> Select[Any]:
        return select(table.c.rid).where(
            table.c.res_type == res_type, table.c.param == name, *conditions
        )

    def unindexed(prefix: str, low: datetime, high: datetime) -> ColumnElement[bool]:
        """A value's condition with ``low`` and ``high`` as filters, never an
        index on SQLite (``+column``), for the parts read from the partial shape
        index. With the statistics ANALYZE samples (``analysis_limit``) SQLite
        rated the low index's range (half the rows below a date) cheaper than
        the few rows of the shape index: 1.3 s for a week at 1,000,000."""
        low_col, high_col = NoIndexOnSQLite(table.c.low), NoIndexOnSQLite(table.c.high)
        return range_condition(prefix, low_col, high_col, low, high)

    parts: list[Select[Any]] = [rids(every)]
    if starts and ends:
        start, end = max(starts), min(ends)
        # A ``ge`` value's condition (high >= its start) holds for every row that
        # begins at or after ``start`` (high >= low >= start): left out of the
        # first part, which is then read from the low index alone (SQLite:
        # covering; PostgreSQL: index-only).
        inside = and_(*(row for row, b in zip(rows, bounds, strict=True) if b[0] != "ge"))
        parts = [
            rids(inside, table.c.low >= start, table.c.low <= end),
            rids(
                every,
                table.c.shape.in_([0, DATE_MULTI]),
                table.c.high >= start,
                table.c.high <= start + DATE_SHORT_SPAN,
                table.c.low < start,
            ),
            rids(
                SHAPED,
                table.c.shape.in_([DATE_LONG, DATE_LONG | DATE_MULTI]),
                table.c.high >= start,
                NoIndexOnSQLite(table.c.low) < start,
                *(unindexed(*b) for b in bounds),
            ),
        ]
    multi = [DATE_MULTI, DATE_MULTI | DATE_LONG]
    several = intersect(
        *(rids(SHAPED, table.c.shape.in_(multi), unindexed(*b)) for b in bounds)
    ).subquery()
    # One IN over one compound select: both planners start from the index scans.
    return resource.c.rid.in_(union_all(*parts, select(several.c.rid)))


def _number_match(
    prefix: str, text: str, low_col: ColumnElement[Any], high_col: ColumnElement[Any]
) -> ColumnElement[bool]:
    """search.html#number: ``text`` with ``prefix`` against the range [low_col, high_col]."""
    number, low, high = search_number(text)
    if prefix in ONE_SIDED:
        low = high = number  # comparisons use the value itself
    return range_condition(prefix, low_col, high_col, low, high, number)


def _quantity_match(
    value: str,
    low_col: ColumnElement[Any],
    high_col: ColumnElement[Any],
    system_col: ColumnElement[Any],
    code_col: ColumnElement[Any],
) -> ColumnElement[bool]:
    """search.html#quantity: ``[prefix]number|system|code`` (system and code optional)."""
    prefix, rest = search_prefix(value)
    number_text, _, unit = rest.partition("|")
    condition = _number_match(prefix, number_text, low_col, high_col)
    if unit:
        system, code = split_pipe(unit)
        if system:
            condition = and_(condition, system_col == system)
        if code:
            condition = and_(condition, code_col == code)
    return condition


def number_condition(table: Table, value: str, modifier: str) -> ColumnElement[bool]:
    return _number_match(*search_prefix(value), table.c.low, table.c.high)


def quantity_condition(table: Table, value: str, modifier: str) -> ColumnElement[bool]:
    c = table.c
    return _quantity_match(value, c.low, c.high, c.system, c.code)


def uri_condition(table: Table, value: str, modifier: str) -> ColumnElement[bool]:
    if modifier == "below":
        return table.c.value.startswith(value, autoescape=True)
    if modifier == "above":
        return func.substr(value, 1, func.length(table.c.value)) == table.c.value
    return table.c.value == value


def reference_condition(table: Table, value: str, modifier: str) -> ColumnElement[bool]:
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
