"""How the first page of a search in the default order (``rid``) is read
(FHIR search.html#count; ADR 22): which index conditions are counted as dense,
their probes by rid, pages read in rid order from a token index or from a
chain's sorted references, walks of the resources in rid order, and the
counts that decide between them. :class:`salus.fhir.query.SearchPlan` records
the sub-queries these plans use while it builds a search's conditions."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, select

from salus.db.tables import (
    fhir_idx_date,
    fhir_idx_reference,
    fhir_idx_string,
    fhir_idx_token,
    fhir_resources,
)
from salus.fhir.search.sqlforms import NoIndexOnSQLite

__all__ = ["PagePlans", "base_query", "in_order_of", "walk_query"]

R = fhir_resources
#: Index tables whose value indexes end with the rid (migrations 0018, 0019).
RID_LAST = frozenset({fhir_idx_token, fhir_idx_date, fhir_idx_string, fhir_idx_reference})


class PagePlans:
    """The page plans over the sub-queries a :class:`~salus.fhir.query.SearchPlan`
    records for its top-level conditions (by the condition's id)."""

    #: Each top-level ``rid IN (…)`` condition: its index table, its sub-query and
    #: its test on the index row without the type (see :meth:`probe_form`).
    subqueries: dict[int, tuple[Any, Select[Any], ColumnElement[bool]]]
    #: Those whose index rows come in rid order: a token ``system|code`` (one
    #: value), equal on every column of the token index before ``rid``.
    ordered: set[int]
    #: The top-level chains (``rid IN`` the references to the matching targets).
    chains: set[int]
    #: Each top-level chain's targets' index sub-query (when the chain's condition
    #: is one index condition; see :meth:`targets_at_least`) and its per-row probe,
    #: built when asked.
    chain_targets: dict[int, Select[Any]]
    chain_probes: dict[int, Callable[[], ColumnElement[bool]]]
    #: The top-level date conditions that compare one column of the index row with
    #: one bound (``date=geX``): table, type, parameter, column, comparison, bound.
    edges: dict[int, tuple[Any, str, str, Any, Any, Any]]

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
        tests = [table.c.res_type == res_type, row_test]
        return in_order_of(table, table.c.rid, tests, res_type, others, visible).distinct()

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
        migration 0019). PostgreSQL only: SQLite does not carry the sub-query's
        order through the join and sorts again after reading every match. A walk
        in rid order probing the chain per resource (``family=Nil``, just above
        the dense threshold, walked ~27,000 Observations) is kept for chains
        that very many targets meet (ADR 22, amendment of stop 15)."""
        table, rids, _ = self.subqueries[id(chain)]
        candidates = rids.distinct().order_by(table.c.rid).subquery("chain_rids")
        return in_order_of(candidates, candidates.c.rid, [], res_type, others, visible, R.c.rid)

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
        if id(condition) in self.edges:
            passes = conn.execute(self.edge_query(condition, enough)).scalar_one()
            return bool(passes)
        found = conn.execute(self.count_query(condition, enough), dict(values or {})).scalar_one()
        return int(found) >= enough

    def edge_query(self, condition: ColumnElement[bool], enough: int) -> Select[Any]:
        """Whether a one-sided date condition (``date=geX``: ``high >= X``) has
        ``enough`` index rows: whether the ``enough``-th value of its column,
        counted from the end its comparison points to (the highest for ``ge``,
        ``gt``), passes the comparison (NULL, so false, when the column has fewer
        values). The same answer as :meth:`count_query`, read from the end of the
        index (``ix_fhir_idx_date_high``, ``…_low``), the same few pages for every
        value: the count read ``enough`` entries from the value's own place in the
        index, pages that a random date seldom finds cached (ADR 22, stop 16)."""
        table, res_type, param, column, compare, bound = self.edges[id(condition)]
        descending = compare in (operator.ge, operator.gt)
        nth = (
            select(column)
            .where(table.c.res_type == res_type, table.c.param == param, column.isnot(None))
            .order_by(column.desc() if descending else column.asc())
            .limit(1)
            .offset(enough - 1)
            .scalar_subquery()
        )
        return select(compare(nth, bound))

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
        if getattr(table, "element", table) in RID_LAST:
            return select(func.count(limited.c.rid))
        return select(func.count()).select_from(limited)

    def probe_form(self, condition: ColumnElement[bool]) -> ColumnElement[bool]:
        """The same condition as a correlated ``EXISTS`` probe of the index by
        ``rid``: for conditions that many resources meet, so that the first page
        in ``rid`` order is found by walking the resources in that order and
        stopping at the page, not by collecting and sorting every match."""
        table, rids, row_test = self.subqueries[id(condition)]
        # Correlated to the resource only: beside a page read from the same index
        # table (:meth:`driven_by`: ``code=X&status=final``, two tokens), the probe
        # reads its own rows of that table, not the driver's.
        if id(condition) in self.ordered:
            # Its index ends with rid: one lookup of every column, on both databases.
            return exists(rids.where(table.c.rid == R.c.rid).correlate(R))
        # No type test: the rid implies it, and leaving it out leaves the planners
        # (SQLite's above all) only the index on rid to probe with, not the index
        # on (type, param, value) that a dense value would make a long scan of.
        return exists(select(table.c.rid).where(table.c.rid == R.c.rid, row_test).correlate(R))


def in_order_of(
    source: Any,
    rid: Any,
    tests: Sequence[ColumnElement[bool]],
    res_type: str,
    others: Sequence[ColumnElement[bool]],
    visible: ColumnElement[bool],
    selected: Any = None,
) -> Select[Any]:
    """The skeleton of a page read in the order of a ``source`` of rids (an index
    read in rid order, a chain's sorted references): each rid joined to its
    resource, ``tests`` on the source's row, then the resource's checks (type,
    not deleted, the caller's filter, ``others`` probed), in ``rid`` order, so
    that the planners stop at the page. ``selected``: the column returned (the
    source's rid unless given). A walk of the resources themselves is
    :func:`walk_query`, whose source is the resource table."""
    return (
        select(rid if selected is None else selected)
        .select_from(source.join(R, R.c.rid == rid))
        .where(*tests, R.c.res_type == res_type, R.c.deleted.is_(False), visible, *others)
        .order_by(rid)
    )


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
        NoIndexOnSQLite(R.c.res_type) == res_type, R.c.deleted.is_(False), visible, *conditions
    )
