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

The parts: :mod:`salus.fhir.search.conditions` (values to conditions on an
index row, one builder per parameter type), :mod:`salus.fhir.search.sqlforms`
(SQL that differs between SQLite and PostgreSQL) and
:mod:`salus.fhir.search.pageplans` (how the first page in the default order is
read: ADR 22); here the parameters, chains, ``_has`` and ``_sort``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    not_,
    or_,
    select,
    true,
)

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
from salus.fhir.search.conditions import (
    composite_condition,
    date_and_condition,
    date_condition,
    date_range,
    number_condition,
    one_sided_date,
    quantity_condition,
    range_condition,
    reference_condition,
    search_prefix,
    split_or,
    split_pipe,
    string_condition,
    token_condition,
    uri_condition,
)
from salus.fhir.search.pageplans import PagePlans, base_query, walk_query

__all__ = [
    "CONTROL_PARAMS",
    "ParamDef",
    "ParamLookup",
    "ParsedSearch",
    "SearchPlan",
    "base_query",
    "build_search",
    "date_range",
    "split_or",
    "type_lookup",
    "walk_query",
]

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
#: The condition on an index row, by parameter type (composite and special apart).
_BUILDERS: dict[str, Callable[[Table, str, str], ColumnElement[bool]]] = {
    "token": token_condition,
    "string": string_condition,
    "date": date_condition,
    "number": number_condition,
    "quantity": quantity_condition,
    "reference": reference_condition,
    "uri": uri_condition,
}
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


class SearchPlan(PagePlans):
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
        #: The top-level one-sided date conditions (see :meth:`matches_at_least`).
        self.edges: dict[int, tuple[Any, str, str, Any, Any, Any]] = {}
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
            rows = composite_condition(definition.code, definition.components, value)
            return self._exists(fhir_idx_composite, definition.code, rows, resource, res_type)
        if definition.type == "special":
            raise InvalidInput(
                f"Search parameter '{base}' ({definition.type}) is not supported.",
                expression=[base],
            )
        table = _TABLES[definition.type]
        values = split_or(value)
        if definition.type == "reference" and modifier == "identifier":
            ors = [token_condition(fhir_idx_token, v, "") for v in values]
            return self._exists(
                fhir_idx_token, f"{definition.code}:identifier", or_(*ors), resource, res_type
            )
        if definition.type == "token" and modifier == "not":
            inner = or_(*(token_condition(table, v, "") for v in values))
            return not_(self._exists(table, definition.code, inner, resource, res_type))
        if definition.type == "token" and not modifier and len(values) == 1:
            system, code = split_pipe(values[0])
            if system and code:
                found = self._exists(
                    table,
                    definition.code,
                    token_condition(table, values[0], ""),
                    resource,
                    res_type,
                )
                if resource is R:
                    self.ordered.add(id(found))
                return found
        builder = _BUILDERS[definition.type]
        ors = [builder(table, v, modifier) for v in values]
        found = self._exists(table, definition.code, or_(*ors), resource, res_type)
        if definition.type == "date" and len(values) == 1 and id(found) in self.subqueries:
            edge = one_sided_date(table, values[0], modifier)
            if edge is not None:
                self.edges[id(found)] = (table, res_type, definition.code, *edge)
        return found

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

    # -- special parameters --------------------------------------------------------------
    def _id(self, value: str, modifier: str, resource: FromClause) -> ColumnElement[bool]:
        ids = [v for v in split_or(value) if v]
        if modifier == "not":
            return resource.c.res_id.not_in(ids)
        return resource.c.res_id.in_(ids) if ids else false()

    def _last_updated(self, value: str, resource: FromClause) -> ColumnElement[bool]:
        ors = []
        for item in split_or(value):
            prefix, text = search_prefix(item)
            low, high = date_range(text)
            ors.append(
                range_condition(prefix, resource.c.last_updated, resource.c.last_updated, low, high)
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

    # -- date ranges: ANDed conditions on one parameter -----------------------------------
    def date_ranges(self, res_type: str, params: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
        """Date parameters repeated (ANDed) with single values and comparable
        prefixes (``date=geX&date=ltY``): answered by
        :func:`~salus.fhir.search.conditions.date_and_condition`."""
        found: dict[str, list[str]] = {}
        for name, value in params:
            if name in CONTROL_PARAMS or name.startswith("_") or ":" in name or "." in name:
                continue
            definition = self.lookup(res_type, name)
            if definition is None or definition.type != "date" or len(split_or(value)) != 1:
                continue
            if search_prefix(value)[0] in ("ne", "ap"):
                continue
            found.setdefault(name, []).append(value)
        return {name: values for name, values in found.items() if len(values) > 1}

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
                    parsed.conditions.append(date_and_condition(res_type, name, values))
                continue
            parsed.conditions.append(plan.condition(res_type, name, value))
        except InvalidInput:
            if not lenient:
                raise
            parsed.ignored.append(name)
        if name in ranges:
            ranges[name] = []  # done (or ignored) at its first occurrence
    return parsed


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
