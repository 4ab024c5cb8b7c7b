"""Small-cell suppression of a published table, with complementary suppression.

A published indicator table has *additive* dimensions, each with a total
label: ``hospital`` (``network`` = the sum of the hospitals) and every
disaggregation (``total`` = the sum over its categories), and *stratifying*
ones (``period``: months are never summed). :func:`build_table` adds every
margin (each combination of totals) to the finest cells, so the network's
sex totals, a hospital's all-ages figure and the network total all appear,
and :func:`groups` lists the additive relations between them: for one
additive dimension and one position of the others, the total cell and its
parts (``total = sum of parts``, for the numerator and for the denominator).

:func:`suppress` then applies the rule (Statistics Netherlands / Eurostat
practice, "Handbook on Statistical Disclosure Control", ch. 4):

1. **Primary suppression**: a cell whose counted numerator or denominator
   (which ones is the indicator's definition: counts of people, not bed-days
   or hours) is between 1 and ``k - 1`` is suppressed. Zero is published.
   A rate whose numerator or denominator is small is suppressed as a whole
   (numerator, denominator and value).
2. **Complementary suppression**: any relation with exactly one suppressed
   cell would give it back (``total - published parts``), so the smallest
   unsuppressed cell of that relation is suppressed too (preferring inner
   cells over totals and non-zero cells over zeros); repeat until stable.
3. **Audit**: "no relation with exactly one suppressed cell" is necessary
   but not sufficient once relations chain (hierarchies, two or more
   disaggregations: a suppressed cell can be a "bridge" between two
   otherwise protected blocks). :func:`determined` solves the published
   relations exactly (Gaussian elimination in exact integer arithmetic, per
   connected block of suppressed cells) and lists the suppressed cells whose value is
   fixed by them; while a primary cell is among them, one more complementary
   cell is suppressed next to it and the loop goes on.

The result: no primary cell can be recomputed by any linear combination of
published figures. What the rule does not give is a minimum *width* of the
interval an attacker can infer (two suppressed cells whose sum is published
are each known to lie between 0 and that sum); published flags do not say
which suppressed cells are primary.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Cell",
    "Group",
    "SuppressionRule",
    "Table",
    "build_table",
    "determined",
    "groups",
    "suppress",
]

Key = tuple[Any, ...]
MEASURES = ("numerator", "denominator")


@dataclass(frozen=True, slots=True)
class SuppressionRule:
    """Counts (``numerator``/``denominator``) between 1 and ``min_cell - 1`` are suppressed."""

    min_cell: int
    counts: tuple[str, ...]

    def primary(self, cell: Cell) -> bool:
        return any(
            (v := cell.measure(name)) is not None and 0 < v < self.min_cell for name in self.counts
        )

    def describe(self) -> str:
        counted = " and ".join(self.counts) or "no count (facility data)"
        return (
            f"Primary suppression: a cell whose {counted} is between 1 and {self.min_cell - 1} "
            "is not published (numerator, denominator and value left empty). Complementary "
            "suppression: further cells are left empty so that no suppressed cell can be "
            "recomputed from published cells and totals (network = sum of hospitals; "
            "'total' = sum over a disaggregation), checked by solving those relations exactly. "
            "Zero counts are published."
        )


@dataclass(slots=True)
class Cell:
    key: Key
    numerator: float | int | None
    denominator: float | int | None
    margin: bool = False  # a total over at least one additive dimension
    suppressed: bool = False
    reason: str | None = None  # "primary" or "complementary" (kept internal)

    def measure(self, name: str) -> float | int | None:
        value: float | int | None = getattr(self, name)
        return value


@dataclass(frozen=True, slots=True)
class Group:
    """``total = sum(parts)`` for the numerator and the denominator."""

    total: Key
    parts: tuple[Key, ...]

    @property
    def members(self) -> tuple[Key, ...]:
        return (self.total, *self.parts)


@dataclass(slots=True)
class Table:
    dims: tuple[str, ...]
    totals: Mapping[str, str]  # additive dimension -> its total label
    cells: dict[Key, Cell] = field(default_factory=dict)

    def suppressed(self) -> list[Cell]:
        return [c for c in self.cells.values() if c.suppressed]


def _add(a: float | int | None, b: float | int | None) -> float | int | None:
    if b is None:
        return a
    return b if a is None else a + b


def build_table(
    dims: Sequence[str], totals: Mapping[str, str], base: Iterable[Mapping[str, Any]]
) -> Table:
    """The finest cells (``base``: dicts with the dims, ``numerator``,
    ``denominator``) and every margin over the additive dimensions."""
    dims = tuple(dims)
    additive = [i for i, d in enumerate(dims) if d in totals]
    table = Table(dims, dict(totals))
    for row in base:
        key = tuple(row[d] for d in dims)
        if any(key[i] == totals[dims[i]] for i in additive):
            raise ValueError("a base cell carries a total label")
        for mask in itertools.product((False, True), repeat=len(additive)):
            k = list(key)
            for on, i in zip(mask, additive, strict=True):
                if on:
                    k[i] = totals[dims[i]]
            cell = table.cells.get(tuple(k))
            if cell is None:
                cell = table.cells[tuple(k)] = Cell(tuple(k), None, None, margin=any(mask))
            cell.numerator = _add(cell.numerator, row.get("numerator"))
            cell.denominator = _add(cell.denominator, row.get("denominator"))
    return table


def groups(table: Table) -> list[Group]:
    """Every additive relation of the table (see the module doc)."""
    found: list[Group] = []
    for i, dim in enumerate(table.dims):
        if dim not in table.totals:
            continue
        label = table.totals[dim]
        parts: dict[Key, list[Key]] = {}
        for key in table.cells:
            if key[i] != label:
                parts.setdefault((*key[:i], label, *key[i + 1 :]), []).append(key)
        found.extend(Group(total, tuple(sorted(p, key=str))) for total, p in parts.items())
    return found


def _weight(cell: Cell, rule: SuppressionRule) -> tuple[Any, ...]:
    counted = [cell.measure(n) for n in rule.counts] or [cell.numerator]
    size = sum(abs(v) for v in counted if v is not None)
    return (cell.margin, size == 0, size, str(cell.key))


def _hide(cell: Cell, reason: str) -> None:
    cell.suppressed = True
    cell.reason = reason


def suppress(table: Table, rule: SuppressionRule, *, audit: bool = True) -> Table:
    """Primary, then complementary suppression until stable and audited (module doc).

    ``audit=False`` stops after step 2 (only to show what the audit adds)."""
    relations = groups(table)
    for cell in table.cells.values():
        if rule.primary(cell):
            _hide(cell, "primary")
    while True:
        changed = True
        while changed:
            changed = False
            for group in relations:
                members = [table.cells[k] for k in group.members]
                if sum(c.suppressed for c in members) == 1:
                    open_ = [c for c in members if not c.suppressed]
                    if open_:
                        _hide(min(open_, key=lambda c: _weight(c, rule)), "complementary")
                        changed = True
        fixed = determined(table, relations) if audit else []
        leaked = [k for k in fixed if table.cells[k].reason == "primary"]
        if not leaked:
            return table
        _widen(table, relations, leaked[0], rule)


def _widen(table: Table, relations: list[Group], key: Key, rule: SuppressionRule) -> None:
    """Suppress one more cell next to a primary cell that the relations still fix."""
    around = [g for g in relations if key in g.members]
    candidates = [
        table.cells[k] for g in around for k in g.members if not table.cells[k].suppressed
    ]
    if not candidates:  # every neighbour is hidden: open up from the hidden block
        block = {k for g in relations for k in g.members if table.cells[k].suppressed}
        candidates = [
            table.cells[k]
            for g in relations
            if block & set(g.members)
            for k in g.members
            if not table.cells[k].suppressed
        ]
    if not candidates:
        candidates = [c for c in table.cells.values() if not c.suppressed]
    if not candidates:  # pragma: no cover - every cell hidden: nothing can be fixed
        raise RuntimeError("suppression did not converge")
    _hide(min(candidates, key=lambda c: _weight(c, rule)), "complementary")


def determined(table: Table, relations: Sequence[Group] | None = None) -> list[Key]:
    """The suppressed cells whose value the published cells and relations fix.

    Unknowns are the suppressed cells; each relation with an unknown gives one
    linear equation (published cells are constants). A cell is fixed exactly
    when its unit vector lies in the row space of the equations, that is when
    the reduced row echelon form has a row with that cell alone."""
    relations = groups(table) if relations is None else relations
    hidden = {k for k, c in table.cells.items() if c.suppressed}
    equations: list[dict[Key, int]] = []
    for g in relations:
        eq: dict[Key, int] = {}
        if g.total in hidden:
            eq[g.total] = -1
        for part in g.parts:
            if part in hidden:
                eq[part] = 1
        if eq:
            equations.append(eq)
    # connected blocks of unknowns (union-find), solved one by one
    parent = {k: k for k in hidden}

    def find(k: Key) -> Key:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for eq in equations:
        keys = list(eq)
        for other in keys[1:]:
            parent[find(other)] = find(keys[0])
    blocks: dict[Key, list[dict[Key, int]]] = {}
    for eq in equations:
        blocks.setdefault(find(next(iter(eq))), []).append(eq)
    fixed: list[Key] = []
    for block in blocks.values():
        fixed.extend(_fixed(block))
    return sorted(fixed, key=str)


#: A Mersenne prime: elimination runs in GF(P), exact integers instead of fractions.
#: Ranks over GF(P) and over the rationals agree unless P divides a minor of the
#: 0/±1 relation matrix, which these tables cannot reach (minors of two-way tables
#: are 0 or ±1; the tests compare with an independent rational-rank attacker).
P = (1 << 61) - 1


def _fixed(equations: list[dict[Key, int]]) -> list[Key]:
    """Sparse reduced row echelon form over GF(P), built row by row; a pivot row
    left with one entry fixes its variable."""
    variables = sorted({k for eq in equations for k in eq}, key=str)
    index = {k: i for i, k in enumerate(variables)}
    pivots: dict[int, dict[int, int]] = {}  # pivot column -> row, pivot entry 1
    for eq in equations:
        row = {index[k]: c % P for k, c in eq.items()}
        for col in [c for c in row if c in pivots]:  # pivot rows hold no other pivot
            factor = row.pop(col)
            for c, v in pivots[col].items():
                if c != col:
                    value = (row.get(c, 0) - factor * v) % P
                    if value:
                        row[c] = value
                    else:
                        row.pop(c, None)
        if not row:
            continue
        lead = min(row)
        inverse = pow(row[lead], P - 2, P)
        row = {c: v * inverse % P for c, v in row.items()}
        for other in pivots.values():  # keep the form reduced
            if lead in other:
                factor = other.pop(lead)
                for c, v in row.items():
                    if c != lead:
                        value = (other.get(c, 0) - factor * v) % P
                        if value:
                            other[c] = value
                        else:
                            other.pop(c, None)
        pivots[lead] = row
    return [variables[col] for col, row in pivots.items() if len(row) == 1]
