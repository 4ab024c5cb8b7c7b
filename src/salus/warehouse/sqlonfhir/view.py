"""ViewDefinition: validation, compilation and evaluation (SQL-on-FHIR v2).

A ViewDefinition (https://sql-on-fhir.org/ig/latest/StructureDefinition-ViewDefinition.html)
projects resources of one type into rows. :func:`compile_view` checks it
against the specification's constraints (a resource type, at least one
``select``, valid column names, one of ``forEach``/``forEachOrNull``/
``repeat`` per select, ``unionAll`` branches with the same columns in the
same order, constants with exactly one ``value[x]``, FHIRPath that parses
and names only known constants) and compiles every expression once. The
result, :class:`View`, turns a resource into row tuples following the
specification's functional model (§"Functional model"): a select's own
columns, cross-joined with the rows of its nested selects, cross-joined with
the concatenated rows of its ``unionAll``; ``forEach`` repeats that per
element (``%rowIndex`` its index), ``forEachOrNull`` gives one row of nulls
when there is none, ``repeat`` follows the paths recursively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from salus.warehouse.sqlonfhir.errors import ViewDefinitionError, ViewRuntimeError
from salus.warehouse.sqlonfhir.fhirpath import Compiled, Env, Scope, compile_path

__all__ = ["Column", "View", "compile_view"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_SELECT_KEYS = frozenset({"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll"})
_COLUMN_KEYS = frozenset({"name", "path", "type", "collection", "description", "tag"})
_RUNNER_VARIABLES = frozenset({"rowIndex", "resource", "rootResource", "context"})


@dataclass(frozen=True, slots=True)
class Column:
    """One output column: name, FHIR type (if declared), collection or not."""

    name: str
    path: str
    type: str | None
    collection: bool
    where: str
    fn: Compiled


@dataclass(slots=True)
class _Select:
    columns: list[Column]
    selects: list[_Select]
    union: list[_Select]
    for_each: Compiled | None = None
    or_null: bool = False
    repeat: list[Compiled] | None = None
    names: list[str] = field(default_factory=list)

    def rows(self, node: Any, env: Env) -> list[tuple[Any, ...]]:
        if self.for_each is not None:
            items = self.for_each([node], env)
        elif self.repeat is not None:
            items = _repeat(node, self.repeat, env)
        else:
            return self.body(node, env)
        if not items:
            return [self.null_row(env)] if self.or_null else []
        out: list[tuple[Any, ...]] = []
        for index, item in enumerate(items):
            inner = dict(env)
            inner["rowIndex"] = index
            out.extend(self.body(item, inner))
        return out

    def null_row(self, _env: Env) -> tuple[Any, ...]:
        """forEachOrNull over nothing: every column null, ``%rowIndex`` 0."""
        return tuple(0 if c.path.strip() == "%rowIndex" else None for c in self.all_columns())

    def all_columns(self) -> list[Column]:
        columns = list(self.columns)
        for select in self.selects:
            columns.extend(select.all_columns())
        if self.union:
            columns.extend(self.union[0].all_columns())
        return columns

    def body(self, node: Any, env: Env) -> list[tuple[Any, ...]]:
        result = [tuple(_value(column, node, env) for column in self.columns)]
        for select in self.selects:
            rows = select.rows(node, env)
            if not rows:
                return []
            result = [left + right for left in result for right in rows]
        if self.union:
            rows = [row for branch in self.union for row in branch.rows(node, env)]
            if not rows:
                return []
            result = [left + right for left in result for right in rows]
        return result


def _repeat(node: Any, paths: Sequence[Compiled], env: Env) -> list[Any]:
    """SQL-on-FHIR §"repeat": every node the paths reach, recursively, depth first."""
    out: list[Any] = []

    def visit(current: Any, depth: int) -> None:
        if depth > 64:
            raise ViewRuntimeError("repeat went deeper than 64 levels.")
        for path in paths:
            for child in path([current], env):
                out.append(child)
                visit(child, depth + 1)

    visit(node, 0)
    return out


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def _value(column: Column, node: Any, env: Env) -> Any:
    values = column.fn([node], env)
    if column.collection:
        return [_plain(v) for v in values]
    if not values:
        return None
    if len(values) > 1:
        raise ViewRuntimeError(
            f"Column '{column.name}' got several values; declare it with collection: true.",
            expression=[column.where],
        )
    return _plain(values[0])


@dataclass(slots=True)
class View:
    """A compiled ViewDefinition: apply it with :meth:`rows` or :meth:`evaluate`."""

    definition: dict[str, Any]
    resource: str
    name: str | None
    columns: list[Column]
    constants: dict[str, Any]
    where: list[tuple[str, Compiled]]
    selects: list[_Select]

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def env_for(self, resource: Mapping[str, Any]) -> Env:
        env: Env = dict(self.constants)
        env["rowIndex"] = 0
        env["resource"] = env["rootResource"] = env["context"] = resource
        return env

    def rows(self, resource: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of one resource (none if it is of another type or filtered out)."""
        if resource.get("resourceType") != self.resource:
            return []
        env = self.env_for(resource)
        for where, test in self.where:
            result = test([resource], env)
            if len(result) > 1 or (result and not isinstance(result[0], bool)):
                raise ViewRuntimeError(
                    "A where expression must give a boolean.", expression=[where]
                )
            if not result or result[0] is not True:
                return []
        rows: list[tuple[Any, ...]] = [()]
        for select in self.selects:
            found = select.rows(resource, env)
            if not found:
                return []
            rows = [left + right for left in rows for right in found]
        return rows

    def evaluate(self, resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Rows as dicts of column name to value, resource after resource."""
        names = self.column_names
        return [dict(zip(names, row, strict=True)) for r in resources for row in self.rows(r)]


# -- validation and compilation -----------------------------------------------------------
_CONSTANT_TYPES = frozenset(
    "Base64Binary Boolean Canonical Code Date DateTime Decimal Id Instant Integer Integer64 "
    "Oid String PositiveInt Time UnsignedInt Uri Url Uuid".split()
)


def _fail(message: str, where: str) -> ViewDefinitionError:
    return ViewDefinitionError(message, expression=[where])


def _constants(definition: Mapping[str, Any]) -> dict[str, Any]:
    constants: dict[str, Any] = {}
    raw = definition.get("constant", [])
    if not isinstance(raw, list):
        raise _fail("constant must be a list.", "ViewDefinition.constant")
    for i, item in enumerate(raw):
        where = f"ViewDefinition.constant[{i}]"
        if not isinstance(item, Mapping):
            raise _fail("A constant must be an object.", where)
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail("A constant needs a name of letters, digits and '_'.", f"{where}.name")
        if name in constants or name in _RUNNER_VARIABLES:
            raise _fail(f"Constant {name} is defined twice or shadows a variable.", where)
        values = [k for k in item if k.startswith("value") and k[5:] in _CONSTANT_TYPES]
        if len(values) != 1:
            raise _fail(f"Constant {name} needs exactly one value[x].", where)
        constants[name] = item[values[0]]
    return constants


class _Builder:
    def __init__(self, scope_vars: frozenset[str], extended: bool) -> None:
        self.variables = scope_vars
        self.extended = extended
        self.columns: list[Column] = []

    def path(self, text: Any, where: str) -> Compiled:
        if not isinstance(text, str):
            raise _fail("A FHIRPath expression must be a string.", where)
        return compile_path(text, Scope(self.variables, self.extended, where))

    def select(self, raw: Any, where: str, columns: list[Column]) -> _Select:
        if not isinstance(raw, Mapping):
            raise _fail("A select must be an object.", where)
        unknown = set(raw) - _SELECT_KEYS
        if unknown:
            raise _fail(f"Unknown element {sorted(unknown)[0]} in select.", where)
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in raw]
        if len(iterators) > 1:
            raise _fail("A select takes one of forEach, forEachOrNull and repeat.", where)
        node = _Select([], [], [])
        if "forEach" in raw or "forEachOrNull" in raw:
            key = iterators[0]
            node.for_each = self.path(raw[key], f"{where}.{key}")
            node.or_null = key == "forEachOrNull"
        elif "repeat" in raw:
            paths = raw["repeat"]
            if not isinstance(paths, list) or not paths:
                raise _fail("repeat must be a non-empty list of paths.", f"{where}.repeat")
            node.repeat = [self.path(p, f"{where}.repeat[{i}]") for i, p in enumerate(paths)]
        for i, col in enumerate(self._list(raw, "column", where)):
            node.columns.append(self.column(col, f"{where}.column[{i}]"))
        for i, sub in enumerate(self._list(raw, "select", where)):
            node.selects.append(self.select(sub, f"{where}.select[{i}]", columns))
        branches = self._list(raw, "unionAll", where)
        for i, sub in enumerate(branches):
            node.union.append(self.select(sub, f"{where}.unionAll[{i}]", []))
        if not (node.columns or node.selects or node.union):
            raise _fail("A select needs column, select or unionAll.", where)
        names = [c.name for c in node.columns]
        for sub in node.selects:
            names.extend(sub.names)
        if node.union:
            first = node.union[0].names
            for i, branch in enumerate(node.union[1:], start=1):
                if branch.names != first:
                    raise _fail(
                        "unionAll branches must have the same columns in the same order.",
                        f"{where}.unionAll[{i}]",
                    )
            names.extend(first)
        node.names = names
        return node

    @staticmethod
    def _list(raw: Mapping[str, Any], key: str, where: str) -> list[Any]:
        value = raw.get(key, [])
        if not isinstance(value, list):
            raise _fail(f"{key} must be a list.", f"{where}.{key}")
        return value

    def column(self, raw: Any, where: str) -> Column:
        if not isinstance(raw, Mapping):
            raise _fail("A column must be an object.", where)
        unknown = set(raw) - _COLUMN_KEYS
        if unknown:
            raise _fail(f"Unknown element {sorted(unknown)[0]} in column.", where)
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail("A column name is a letter then letters, digits or '_'.", f"{where}.name")
        type_name = raw.get("type")
        if type_name is not None and (not isinstance(type_name, str) or not _TYPE.match(type_name)):
            raise _fail("A column type is a FHIR type name.", f"{where}.type")
        collection = raw.get("collection", False)
        if not isinstance(collection, bool):
            raise _fail("collection must be true or false.", f"{where}.collection")
        fn = self.path(raw.get("path"), f"{where}.path")
        column = Column(name, str(raw["path"]), type_name, collection, f"{where}.path", fn)
        self.columns.append(column)
        return column


def compile_view(
    definition: Any, *, extended_fhirpath: bool = True, resource_types: Iterable[str] | None = None
) -> View:
    """Check and compile a ViewDefinition (raises :class:`ViewDefinitionError`).

    ``resource_types`` limits ``resource`` to known types (the R4 list in Salus).
    """
    if not isinstance(definition, Mapping):
        raise _fail("A ViewDefinition is a JSON object.", "ViewDefinition")
    resource = definition.get("resource")
    if not isinstance(resource, str) or not resource:
        raise _fail("A ViewDefinition names the resource type it reads.", "ViewDefinition.resource")
    if resource_types is not None and resource not in set(resource_types):
        raise _fail("Unknown resource type.", "ViewDefinition.resource")
    name = definition.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise _fail("A view name is a letter then letters, digits or '_'.", "ViewDefinition.name")
    constants = _constants(definition)
    builder = _Builder(_RUNNER_VARIABLES | frozenset(constants), extended_fhirpath)
    raw_selects = definition.get("select")
    if not isinstance(raw_selects, list) or not raw_selects:
        raise _fail("A ViewDefinition needs at least one select.", "ViewDefinition.select")
    selects = [
        builder.select(raw, f"ViewDefinition.select[{i}]", builder.columns)
        for i, raw in enumerate(raw_selects)
    ]
    raw_where = definition.get("where", [])
    if not isinstance(raw_where, list):
        raise _fail("where must be a list.", "ViewDefinition.where")
    where: list[tuple[str, Compiled]] = []
    for i, item in enumerate(raw_where):
        place = f"ViewDefinition.where[{i}].path"
        if not isinstance(item, Mapping):
            raise _fail("A where is an object with a path.", f"ViewDefinition.where[{i}]")
        where.append((place, builder.path(item.get("path"), place)))
    names = [n for s in selects for n in s.names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(f"Column name {duplicates[0]} is used twice.", "ViewDefinition.select")
    by_name: dict[str, Column] = {}
    for column in builder.columns:
        by_name.setdefault(column.name, column)
    return View(
        dict(definition),
        resource,
        name,
        [by_name[n] for n in names],
        constants,
        where,
        selects,
    )
