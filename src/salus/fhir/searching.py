"""The search interaction (FHIR search.html): parameters to SQL, the page of
matches, ``_include``/``_revinclude``, ``_summary``, ``_elements``, ``_total``
and the searchset Bundle with its paging links.

Included resources pass the same policy filter as the matches: an
``_include`` or ``_revinclude`` never brings in what the caller could not
read directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.engine import Connection

from salus.db.keys import pairs_in
from salus.db.tables import fhir_idx_reference, fhir_resources
from salus.errors import InvalidInput
from salus.fhir.query import (
    CONTROL_PARAMS,
    ParamLookup,
    SearchPlan,
    base_query,
    build_search,
    walk_query,
)
from salus.fhir.search.sqlforms import NoIndexOnSQLite
from salus.fhir.store import RESOURCE_COLUMNS, FhirStore, Stored
from salus.security.policy import RecordColumns, RecordFilter

__all__ = ["SearchResult", "Searcher"]

R = fhir_resources
MAX_COUNT = 1000
DEFAULT_COUNT = 50
#: Index rows from which a condition counts as met by many resources (counted
#: from its index, up to this many). In the default order (``rid``) such a
#: condition is tested by probing the index by rid (a correlated ``EXISTS``)
#: rather than by collecting its matches: with a sparse condition beside it the
#: planners start from the sparse one and probe; with none, the resources are
#: walked in rid order and the walk stops at the page (at most about resources
#: of the type ÷ this × page size probes). See ADR 8 (search at 1,000,000).
DENSE_MATCHES = 2000
#: Index rows of a lone chain's condition on its targets (``family=Ni``: counted
#: from the string index) from which the resources are walked in rid order, the
#: chain probed per resource (:func:`chain_walk`), before the page is looked for
#: from the chain's sorted references (PostgreSQL) or its list of targets
#: (SQLite). Those read every target's row, at a new value mostly from disk: at
#: 1,000,000 resources ``family=Ni`` (2,504 Patients) took 0.5-1.5 s on
#: PostgreSQL and 0.1-3.5 s on SQLite for its first query, 60-100 and 30-45 ms
#: warm; the walk reads the type's first resources and their targets, the same
#: pages for every query: 15-65 and 25-75 ms (ADR 22, amendments of stops 15
#: and 16). The threshold is :data:`DENSE_MATCHES`: below it the list of targets
#: is short.
CHAIN_WALK_TARGETS = DENSE_MATCHES
#: How many rids (from the type's first) such a walk reads at most before the
#: page is looked for as if few targets matched (sorted references or collected).
#: At 1,000,000 resources the 2-letter family prefixes found their page of 50
#: within 2,200-16,000 rids; a walk over the whole budget costs about 70 ms
#: (SQLite) and 200 ms (PostgreSQL) warm, which the fallback then adds.
CHAIN_WALK_BUDGET = 25_000
MAX_INCLUDES = 1000
_CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"
_MANDATORY = ("resourceType", "id", "meta")
_SUMMARY_DROP = ("text", "contained")


def _columns(table: Any) -> RecordColumns:
    return RecordColumns(org=table.c.org_id, patient=table.c.patient_key, category=table.c.category)


@dataclass(slots=True)
class SearchResult:
    bundle: dict[str, Any]
    matches: list[Stored]
    included: list[Stored]


def _int_param(
    params: Sequence[tuple[str, str]], name: str, default: int, maximum: int | None = None
) -> int:
    values = [v for k, v in params if k == name]
    if not values:
        return default
    if not values[-1].isdigit():
        raise InvalidInput(f"{name} must be a non-negative integer.", expression=[name])
    value = int(values[-1])
    return min(value, maximum) if maximum is not None else value


def _probing(
    conn: Connection, plan: SearchPlan, conditions: Sequence[Any], values: Mapping[str, Any]
) -> list[Any]:
    """The conditions for a page in the default order. The index conditions are
    counted (up to :data:`DENSE_MATCHES` index rows, likeliest sparse first: a
    reference, a string, a token, then the others): the first one found sparse
    stays as it is, the planners start from it, and every other index condition
    is probed by rid; if all are dense, all are probed. Other conditions stay."""
    if DENSE_MATCHES <= 0:
        return list(conditions)
    indexed = sorted((c for c in conditions if plan.is_index_condition(c)), key=plan.count_rank)
    start = next(
        (c for c in indexed if not plan.matches_at_least(conn, c, DENSE_MATCHES, values)), None
    )
    return [
        plan.probe_form(c) if plan.is_index_condition(c) and c is not start else c
        for c in conditions
    ]


def _default_order(
    conn: Connection,
    plan: SearchPlan,
    res_type: str,
    conditions: Sequence[Any],
    values: Mapping[str, Any],
    visible: Any,
    wanted: int = DEFAULT_COUNT,
) -> Any:
    """The matches in the default order (rid), planned so that the first page
    does not cost every match: dense conditions are probed by rid; with none
    sparse, the page is read in rid order from the index of a dense condition
    whose rows come in that order (a token ``system|code``), else found by walking
    the resources in rid order; either walk stops at the page. ``wanted``: the
    matches the page needs (offset + count)."""
    if len(conditions) == 1 and plan.in_rid_order(conditions[0]):
        # Alone, reading its index in order costs at most what collecting would:
        # no need to count its matches first.
        return plan.driven_by(res_type, conditions[0], [], visible)
    chains = conn.dialect.name == "postgresql" and DENSE_MATCHES > 0
    if DENSE_MATCHES > 0 and len(conditions) == 1 and plan.is_chain(conditions[0]):
        # Alone: so many targets may match that a walk in rid order, the chain
        # probed per resource, stops soonest; else, on PostgreSQL, the chain's
        # sorted references cost at most what collecting would (ADR 22).
        if plan.targets_at_least(conn, conditions[0], CHAIN_WALK_TARGETS, values):
            walk = chain_walk(plan, res_type, conditions[0], visible).limit(wanted)
            rids = [int(r) for r in conn.execute(walk, values).scalars()]
            if len(rids) >= wanted:
                # The first ``wanted`` matches, found within the budget.
                return select(R.c.rid).where(R.c.rid.in_(rids)).order_by(R.c.rid)
            # Fewer within the budget (the matches lie later, or the caller sees
            # few of the targets): as if few targets matched.
        if chains:
            return plan.chain_driven(res_type, conditions[0], [], visible)
    probing = _probing(conn, plan, conditions, values)
    dense = [c for c, p in zip(conditions, probing, strict=True) if p is not c]
    keys = plan.sort_keys(res_type, None)
    if dense and len(dense) == len(conditions):
        for n, condition in enumerate(conditions):
            if plan.in_rid_order(condition):
                return plan.driven_by(
                    res_type, condition, [*probing[:n], *probing[n + 1 :]], visible
                )
        for n, condition in enumerate(conditions):
            if chains and plan.is_chain(condition):
                return plan.chain_driven(
                    res_type, condition, [*probing[:n], *probing[n + 1 :]], visible
                )
        return walk_query(res_type, probing, visible).order_by(*keys)
    return base_query(res_type, probing, visible).order_by(*keys)


def chain_walk(plan: SearchPlan, res_type: str, chain: Any, visible: Any) -> Any:
    """A lone chain's matches among the :data:`CHAIN_WALK_BUDGET` rids from the
    type's first one, in rid order, the chain probed per resource (ADR 22,
    stops 15 and 16): for a chain whose targets' condition has
    :data:`CHAIN_WALK_TARGETS` index rows the page is usually found within a
    few thousand resources, whose pages every such query shares; the budget
    bounds the walk when it is not (matches late in rid order, or targets the
    caller may not see)."""
    walked = R.alias("walked")
    start = (
        select(walked.c.rid)
        .where(NoIndexOnSQLite(walked.c.res_type) == res_type)
        .order_by(walked.c.rid)
        .limit(1)
        .scalar_subquery()
    )
    within = R.c.rid < start + CHAIN_WALK_BUDGET
    return walk_query(res_type, [within, plan.chain_probe(chain)], visible).order_by(R.c.rid)


def _last(params: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    return values[-1] if values else None


def _elements(
    resource: dict[str, Any], elements: str | None, summary: str | None
) -> dict[str, Any]:
    if elements:
        keep = {e.strip() for e in elements.split(",") if e.strip()}
        trimmed = {k: v for k, v in resource.items() if k in keep or k in _MANDATORY}
    elif summary in ("text",):
        trimmed = {k: v for k, v in resource.items() if k in (*_MANDATORY, "text")}
    elif summary in ("data",):
        trimmed = {k: v for k, v in resource.items() if k != "text"}
    elif summary == "true":
        trimmed = {k: v for k, v in resource.items() if k not in _SUMMARY_DROP}
    else:
        return resource
    meta = dict(trimmed.get("meta") or {})
    tags = list(meta.get("tag") or [])
    tags.append(
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
    )
    meta["tag"] = tags
    trimmed["meta"] = meta
    return trimmed


class Searcher:
    def __init__(self, store: FhirStore, lookup: ParamLookup) -> None:
        self.store = store
        self.lookup = lookup

    def search(
        self,
        conn: Connection,
        flt: RecordFilter,
        res_type: str,
        params: Sequence[tuple[str, str]],
        *,
        base_url: str,
        lenient: bool = False,
        visible_for: Callable[[str], RecordFilter | None] | None = None,
    ) -> SearchResult:
        """Run a search; ``visible_for(type)`` gives the filter for included types."""
        if conn.dialect.name == "postgresql" and conn.in_transaction():
            # psycopg prepares a statement run five times on a connection, and
            # PostgreSQL may then keep one generic plan for it, blind to the values:
            # a search's plan depends on them (a code with 30,000 matches, a Patient
            # with 9), so each search is planned for its own values (ADR 8).
            conn.exec_driver_sql(_CUSTOM_PLANS)
        plan = SearchPlan(self.lookup, lambda table: flt.where(_columns(table)))
        parsed = build_search(plan, res_type, params, lenient=lenient)
        visible = flt.where(RESOURCE_COLUMNS)
        values = flt.params()
        count = _int_param(params, "_count", DEFAULT_COUNT, MAX_COUNT)
        offset = _int_param(params, "_offset", 0)
        summary = _last(params, "_summary")
        # Counting every match is the costly part of a large search: the total is
        # given when asked for (_total=accurate) or when the page shows it anyway.
        total_mode = _last(params, "_total") or "none"
        query = base_query(res_type, parsed.conditions, visible)
        total: int | None = None
        if total_mode != "none" or summary == "count":
            total = int(
                conn.execute(
                    select(func.count()).select_from(query.subquery()), values
                ).scalar_one()
            )
        matches: list[Stored] = []
        if summary != "count" and count > 0:
            sort = _last(params, "_sort")
            ordered = query.order_by(*plan.sort_keys(res_type, sort))
            if not sort:
                ordered = _default_order(
                    conn, plan, res_type, parsed.conditions, values, visible, offset + count
                )
            rids = [
                int(r) for r in conn.execute(ordered.limit(count).offset(offset), values).scalars()
            ]
            found = self.store.by_rids(conn, rids)
            matches = [found[rid] for rid in rids if rid in found]
            if total is None and len(rids) < count and (rids or offset == 0):
                total = offset + len(rids)  # the last page: the total is known for free
        included = self._includes(conn, res_type, matches, params, visible_for)
        bundle = self._bundle(
            res_type,
            params,
            base_url,
            matches,
            included,
            total,
            count,
            offset,
            summary,
            _last(params, "_elements"),
            parsed.ignored,
        )
        return SearchResult(bundle, matches, included)

    def _includes(
        self,
        conn: Connection,
        res_type: str,
        matches: list[Stored],
        params: Sequence[tuple[str, str]],
        visible_for: Callable[[str], RecordFilter | None] | None,
    ) -> list[Stored]:
        if not matches or visible_for is None:
            return []
        found: dict[tuple[str, str], Stored] = {}
        seen = {(m.res_type, m.res_id) for m in matches}
        frontier = matches
        for name, value in params:
            if name.split(":")[0] not in ("_include", "_revinclude"):
                continue
            iterate = name.endswith(":iterate")
            rounds = 3 if iterate else 1
            frontier = matches
            for _ in range(rounds):
                new = (
                    self._include(conn, frontier, value, visible_for)
                    if name.startswith("_include")
                    else self._revinclude(conn, frontier, value, visible_for)
                )
                fresh = [s for s in new if (s.res_type, s.res_id) not in seen]
                for stored in fresh:
                    seen.add((stored.res_type, stored.res_id))
                    found[(stored.res_type, stored.res_id)] = stored
                if not fresh or len(found) >= MAX_INCLUDES:
                    break
                frontier = fresh
        return list(found.values())[:MAX_INCLUDES]

    def _include(
        self,
        conn: Connection,
        sources: list[Stored],
        spec: str,
        visible_for: Callable[[str], RecordFilter | None],
    ) -> list[Stored]:
        parts = spec.split(":")
        if len(parts) < 2:
            raise InvalidInput("_include is Type:param[:target].", expression=["_include"])
        source_type, param = parts[0], parts[1]
        target_type = parts[2] if len(parts) > 2 else None
        ref = fhir_idx_reference
        rids = select(R.c.rid).where(
            R.c.res_type == source_type,
            R.c.res_id.in_([s.res_id for s in sources if s.res_type == source_type]),
        )
        pairs = conn.execute(
            select(ref.c.target_type, ref.c.target_id).where(
                ref.c.rid.in_(rids),
                ref.c.param == param if param != "*" else ref.c.param.isnot(None),
            )
        ).all()
        result: list[Stored] = []
        by_type: dict[str, set[str]] = {}
        for t, i in pairs:
            if t and i and (target_type is None or t == target_type):
                by_type.setdefault(str(t), set()).add(str(i))
        for t, ids in by_type.items():
            flt = visible_for(t)
            if flt is None:
                continue
            rows = (
                conn.execute(
                    select(R.c.rid).where(
                        R.c.res_type == t,
                        R.c.res_id.in_(sorted(ids)),
                        R.c.deleted.is_(False),
                        flt.where(RESOURCE_COLUMNS),
                    ),
                    flt.params(),
                )
                .scalars()
                .all()
            )
            result.extend(self.store.by_rids(conn, [int(r) for r in rows]).values())
        return result

    def _revinclude(
        self,
        conn: Connection,
        targets: list[Stored],
        spec: str,
        visible_for: Callable[[str], RecordFilter | None],
    ) -> list[Stored]:
        parts = spec.split(":")
        if len(parts) < 2:
            raise InvalidInput("_revinclude is Type:param.", expression=["_revinclude"])
        source_type, param = parts[0], parts[1]
        flt = visible_for(source_type)
        if flt is None:
            return []
        ref = fhir_idx_reference
        keys = sorted({(t.res_type, t.res_id) for t in targets})
        conditions: list[ColumnElement[bool]] = [pairs_in(ref.c.target_type, ref.c.target_id, keys)]
        if param != "*":
            conditions.append(ref.c.param == param)
        rows = (
            conn.execute(
                select(R.c.rid).where(
                    R.c.res_type == source_type,
                    R.c.deleted.is_(False),
                    flt.where(RESOURCE_COLUMNS),
                    R.c.rid.in_(select(ref.c.rid).where(*conditions)),
                ),
                flt.params(),
            )
            .scalars()
            .all()
        )
        return list(self.store.by_rids(conn, [int(r) for r in rows]).values())

    def _bundle(
        self,
        res_type: str,
        params: Sequence[tuple[str, str]],
        base_url: str,
        matches: list[Stored],
        included: list[Stored],
        total: int | None,
        count: int,
        offset: int,
        summary: str | None,
        elements: str | None,
        ignored: list[str],
    ) -> dict[str, Any]:
        kept = [(k, v) for k, v in params if k not in ("_offset", "_format")]

        def link(relation: str, at: int) -> dict[str, str]:
            query = urlencode([*kept, ("_offset", str(at))]) if kept or at else ""
            return {
                "relation": relation,
                "url": f"{base_url}/{res_type}" + (f"?{query}" if query else ""),
            }

        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if total is not None:
            bundle["total"] = total
        links = [link("self", offset)]
        if summary != "count" and count > 0:
            if total is None or offset + count < total:
                if len(matches) == count:
                    links.append(link("next", offset + count))
            if offset > 0:
                links.append(link("previous", max(0, offset - count)))
        bundle["link"] = links
        entries: list[dict[str, Any]] = []
        for stored, mode in [*((m, "match") for m in matches), *((i, "include") for i in included)]:
            if stored.resource is None:
                continue
            entries.append(
                {
                    "fullUrl": f"{base_url}/{stored.res_type}/{stored.res_id}",
                    "resource": _elements(stored.resource, elements, summary),
                    "search": {"mode": mode},
                }
            )
        if ignored:
            entries.append(
                {
                    "resource": {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {
                                "severity": "warning",
                                "code": "not-supported",
                                "diagnostics": f"Search parameter '{name}' was ignored.",
                                "expression": [name],
                            }
                            for name in ignored
                        ],
                    },
                    "search": {"mode": "outcome"},
                }
            )
        if entries:
            bundle["entry"] = entries
        return bundle


def search_params_of(query: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The filter parameters of a query string (result parameters removed)."""
    return [(k, v) for k, v in query if k not in CONTROL_PARAMS]


def merge_form(
    query: Sequence[tuple[str, str]], form: Mapping[str, list[str]]
) -> list[tuple[str, str]]:
    """``POST [type]/_search``: form parameters join the query's (search.html#search)."""
    merged = list(query)
    for key, values in form.items():
        merged.extend((key, v) for v in values)
    return merged
