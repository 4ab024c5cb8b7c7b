"""Small-cell suppression of open data on hand-built tables.

Every case is checked by an attacker written independently of the module
(numpy ranks): a suppressed cell can be recomputed from the published cells
exactly when its unit vector lies in the row space of the table's additive
relations restricted to the suppressed cells. Naive (primary only)
suppression leaks on these tables; the module's result does not.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from salus.warehouse.opendata.suppression import (
    SuppressionRule,
    Table,
    build_table,
    determined,
    groups,
    suppress,
)

COUNT = SuppressionRule(5, ("numerator",))
RATE = SuppressionRule(5, ("numerator", "denominator"))
TOTALS = {"hospital": "network", "sex": "total", "age": "total"}


def attack(table: Table) -> set[tuple[Any, ...]]:
    """The suppressed cells an attacker recomputes (independent of the module)."""
    cells = table.cells
    hidden = sorted((k for k, c in cells.items() if c.suppressed), key=str)
    if not hidden:
        return set()
    col = {k: i for i, k in enumerate(hidden)}
    rows: list[list[float]] = []
    for i, dim in enumerate(table.dims):
        if dim not in table.totals:
            continue
        label = table.totals[dim]
        for total in [k for k in cells if k[i] == label]:
            parts = [
                k
                for k in cells
                if k[i] != label and all(k[j] == total[j] for j in range(len(k)) if j != i)
            ]
            row = [0.0] * len(hidden)
            if total in col:
                row[col[total]] = -1.0
            for p in parts:
                if p in col:
                    row[col[p]] = 1.0
            if any(row):
                rows.append(row)
    if not rows:
        return set()
    a = np.array(rows)
    rank = np.linalg.matrix_rank(a)
    found = set()
    for k, i in col.items():
        unit = np.zeros((1, len(hidden)))
        unit[0, i] = 1.0
        if np.linalg.matrix_rank(np.vstack([a, unit])) == rank:
            found.add(k)
    return found


def primaries(table: Table) -> set[tuple[Any, ...]]:
    return {k for k, c in table.cells.items() if c.reason == "primary"}


def naive(table: Table, rule: SuppressionRule) -> Table:
    for cell in table.cells.values():
        if rule.primary(cell):
            cell.suppressed, cell.reason = True, "primary"
    return table


def base(rows: dict[tuple[str, ...], int], dims: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {**dict(zip(dims, key, strict=True)), "numerator": n, "denominator": None}
        for key, n in rows.items()
    ]


def test_network_total_gives_back_the_small_hospital() -> None:
    dims = ("hospital", "period")
    rows = base({("a", "2026-10"): 7, ("b", "2026-10"): 3}, dims)
    leaky = naive(build_table(dims, TOTALS, rows), COUNT)
    assert attack(leaky) == {("b", "2026-10")}  # 10 - 7
    done = suppress(build_table(dims, TOTALS, rows), COUNT)
    assert {k for k, c in done.cells.items() if c.suppressed} == {
        ("a", "2026-10"),
        ("b", "2026-10"),
    }
    assert done.cells[("network", "2026-10")].suppressed is False
    assert attack(done) == set() and determined(done) == []


def test_two_way_table_with_margins() -> None:
    dims = ("hospital", "sex")
    rows = base({("a", "F"): 12, ("a", "M"): 3, ("b", "F"): 8, ("b", "M"): 9}, dims)
    leaky = naive(build_table(dims, TOTALS, rows), COUNT)
    assert attack(leaky) == {("a", "M")}
    done = suppress(build_table(dims, TOTALS, rows), COUNT)
    hidden = {k for k, c in done.cells.items() if c.suppressed}
    # the four inner cells: every row and column holds two of them, the margins stay
    assert hidden == {("a", "F"), ("a", "M"), ("b", "F"), ("b", "M")}
    assert attack(done) == set()
    assert done.cells[("network", "total")].numerator == 32


def test_margin_suppressed_alone_is_recomputed_from_its_parts() -> None:
    # the total over sex of hospital a is small although no part is: 2 + 2
    dims = ("hospital", "sex")
    rows = base({("a", "F"): 0, ("a", "M"): 4, ("b", "F"): 30, ("b", "M"): 40}, dims)
    leaky = naive(build_table(dims, TOTALS, rows), COUNT)
    assert ("a", "total") in attack(leaky)
    done = suppress(build_table(dims, TOTALS, rows), COUNT)
    assert attack(done) & primaries(done) == set()
    assert done.cells[("a", "F")].suppressed is False  # zero is published...
    assert done.cells[("a", "F")].numerator == 0


def test_hierarchy_hospitals_network_sex_and_age() -> None:
    dims = ("hospital", "period", "sex", "age")
    rows = base(
        {
            ("a", "2026-10", "F", "0-14"): 2,
            ("a", "2026-10", "F", "65+"): 11,
            ("a", "2026-10", "M", "0-14"): 6,
            ("a", "2026-10", "M", "65+"): 9,
            ("b", "2026-10", "F", "0-14"): 7,
            ("b", "2026-10", "F", "65+"): 8,
            ("b", "2026-10", "M", "0-14"): 1,
            ("b", "2026-10", "M", "65+"): 20,
            ("c", "2026-10", "F", "0-14"): 15,
            ("c", "2026-10", "F", "65+"): 5,
            ("c", "2026-10", "M", "0-14"): 10,
            ("c", "2026-10", "M", "65+"): 12,
        },
        dims,
    )
    leaky = naive(build_table(dims, TOTALS, rows), COUNT)
    assert attack(leaky) == primaries(leaky)  # both small cells come back
    done = suppress(build_table(dims, TOTALS, rows), COUNT)
    assert primaries(done) == {("a", "2026-10", "F", "0-14"), ("b", "2026-10", "M", "0-14")}
    assert not (attack(done) & primaries(done))
    # no relation has exactly one suppressed cell
    for g in groups(done):
        assert sum(done.cells[k].suppressed for k in g.members) != 1
    # network and totals are published
    assert done.cells[("network", "2026-10", "total", "total")].numerator == 106


def test_rate_small_numerator_or_denominator() -> None:
    dims = ("hospital", "period")
    rows = [
        {"hospital": "a", "period": "2026-10", "numerator": 2, "denominator": 40},
        {"hospital": "b", "period": "2026-10", "numerator": 0, "denominator": 3},
        {"hospital": "c", "period": "2026-10", "numerator": 9, "denominator": 50},
    ]
    done = suppress(build_table(dims, TOTALS, rows), RATE)
    assert primaries(done) == {("a", "2026-10"), ("b", "2026-10")}
    assert done.cells[("c", "2026-10")].suppressed is False  # a and b protect each other
    facility = suppress(build_table(dims, TOTALS, rows), SuppressionRule(5, ()))
    assert facility.suppressed() == []


def test_bridge_between_protected_blocks_is_found_by_the_audit() -> None:
    """A pattern where every relation has two or more suppressed cells and yet one
    cell is fixed: two 2x2 blocks joined by one cell (a bridge)."""
    dims = ("hospital", "sex")
    hospitals, sexes = ["h1", "h2", "h3", "h4"], ["s1", "s2", "s3", "s4"]
    rows = base(
        {(h, s): 10 + 3 * i + j for i, h in enumerate(hospitals) for j, s in enumerate(sexes)},
        dims,
    )
    table = build_table(dims, TOTALS, rows)
    pattern = [("h1", "s1"), ("h1", "s2"), ("h2", "s1"), ("h2", "s2")]
    pattern += [("h3", "s3"), ("h3", "s4"), ("h4", "s3"), ("h4", "s4"), ("h2", "s3")]
    for k in pattern:
        table.cells[k].suppressed, table.cells[k].reason = True, "primary"
    for g in groups(table):
        assert sum(table.cells[k].suppressed for k in g.members) != 1
    assert attack(table) == {("h2", "s3")}
    assert determined(table) == [("h2", "s3")]
    # the full rule protects it: the same cells small, the others large
    small = base(
        {
            (h, s): 1 if (h, s) in pattern else 1000 + 3 * i + j
            for i, h in enumerate(hospitals)
            for j, s in enumerate(sexes)
        },
        dims,
    )
    done = suppress(build_table(dims, TOTALS, small), COUNT)
    assert primaries(done) == set(pattern)
    assert attack(done) & primaries(done) == set()
    for g in groups(done):
        assert sum(done.cells[k].suppressed for k in g.members) != 1


def random_table(seed: int) -> Table:
    rng = random.Random(seed)
    dims = ("hospital", "period", "sex", "age")
    hospitals = [f"h{i}" for i in range(rng.randint(2, 5))]
    ages = ["0-14", "15-44", "45-64", "65+"][: rng.randint(2, 4)]
    rows = base(
        {
            (h, "2026-10", s, a): rng.choice([0, 1, 2, 3, 4, 6, 8, 12, 20, 35])
            for h in hospitals
            for s in ("F", "M")
            for a in ages
        },
        dims,
    )
    return build_table(dims, TOTALS, rows)


#: seeds where "no relation with exactly one suppressed cell" is not enough
CHAINED = [93, 98, 151, 173, 295]


@pytest.mark.parametrize("seed", [*range(40), *CHAINED])
def test_random_tables_are_protected(seed: int) -> None:
    done = suppress(random_table(seed), COUNT)
    small = {k for k, c in done.cells.items() if c.numerator is not None and 0 < c.numerator < 5}
    assert small == primaries(done)
    assert not (attack(done) & primaries(done))
    for g in groups(done):
        assert sum(done.cells[k].suppressed for k in g.members) != 1


@pytest.mark.parametrize("seed", CHAINED)
def test_the_audit_closes_leaks_of_the_greedy_rule(seed: int) -> None:
    greedy = suppress(random_table(seed), COUNT, audit=False)
    for g in groups(greedy):
        assert sum(greedy.cells[k].suppressed for k in g.members) != 1
    assert attack(greedy) & primaries(greedy)  # a primary cell comes back
    done = suppress(random_table(seed), COUNT)
    assert not (attack(done) & primaries(done))


@pytest.mark.parametrize("seed", range(30))
def test_determined_agrees_with_an_independent_attacker(seed: int) -> None:
    """Any pattern of empty cells, protected or not: the module's exact
    elimination and the attacker's ranks find the same recomputable cells."""
    table = random_table(seed)
    rng = random.Random(1000 + seed)
    share = rng.choice([0.1, 0.3, 0.5, 0.8])
    for cell in table.cells.values():
        cell.suppressed = rng.random() < share
    assert set(determined(table)) == attack(table)


def test_a_total_label_in_the_data_is_refused() -> None:
    with pytest.raises(ValueError, match="total label"):
        build_table(("hospital",), TOTALS, [{"hospital": "network", "numerator": 1}])
