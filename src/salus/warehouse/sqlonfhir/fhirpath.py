"""The FHIRPath subset of SQL-on-FHIR v2, compiled to Python closures.

SQL-on-FHIR v2 (ViewDefinition, §"Required FHIRPath expressions/functions")
asks a view runner for a small, fixed part of FHIRPath (N1, http://hl7.org/fhirpath/):
path navigation with choice types, the indexer, literals, ``%`` constants,
``$this``, the boolean, comparison, equality, arithmetic and union
operators, and the functions ``where``, ``exists``, ``empty``, ``first``,
``not``, ``extension``, ``join``, ``ofType``, ``getResourceKey``,
``getReferenceKey``, ``lowBoundary`` and ``highBoundary``.

A view evaluates the same few expressions over millions of resources, so
each expression is parsed once (:func:`parse`, a Pratt parser) and compiled
(:func:`compile_path`) into a tree of closures ``fn(items, env) -> items``
over plain JSON values: no per-resource parsing, no model objects. A handful
of further common functions (``count``, ``last``, ``select``, ``distinct``,
``iif``...) come for free; an expression calling any other function runs
through ``fhirpathpy`` with the R4 model (:func:`_fhirpathpy_fallback`).

Choice types (FHIR ``formats.html#choice``) need no model: ``value`` finds
``valueQuantity``, and ``value.ofType(Quantity)`` compiles to a lookup of
``valueQuantity``. Dates and times stay the strings FHIR JSON carries;
comparing two of the same precision is comparing the strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from salus.warehouse.sqlonfhir.errors import ViewDefinitionError, ViewRuntimeError
from salus.warehouse.sqlonfhir.functions import FUNCTIONS, KNOWN_TYPES, fhirpathpy_fallback
from salus.warehouse.sqlonfhir.parser import Node, parse, type_arg
from salus.warehouse.sqlonfhir.values import (
    Compiled,
    Env,
    Fn,
    arith,
    compare,
    distinct,
    equal,
    flat,
    fold,
    is_type,
    number,
    singleton,
    truth,
)

__all__ = ["Compiled", "Env", "Scope", "compile_path", "parse"]


@dataclass(slots=True)
class Scope:
    """What an expression may refer to: the view's constants and the runner's variables."""

    variables: frozenset[str] = frozenset({"rowIndex", "resource", "rootResource", "context"})
    extended: bool = True
    #: Where in the ViewDefinition the expression sits (for error messages).
    where: str = ""
    used: set[str] = field(default_factory=set)


def compile_path(text: str, scope: Scope) -> Compiled:
    """Parse and compile ``text``; errors name ``scope.where``."""
    try:
        return _Compiler(scope, text).compile(parse(text))
    except ViewDefinitionError as exc:
        where = [scope.where] if scope.where else None
        raise ViewDefinitionError(exc.message, expression=where) from None


class _Compiler:
    def __init__(self, scope: Scope, text: str) -> None:
        self.scope = scope
        self.text = text

    def compile(self, node: Node) -> Compiled:
        kind = node[0]
        if kind == "lit":
            value = [node[1]]
            return Compiled(lambda _i, _e: value, _literal_type(node[1]))
        if kind == "empty":
            return Compiled(lambda _i, _e: [])
        if kind == "this":
            return Compiled(lambda items, _e: items)
        if kind == "var":
            return self.variable(node[1])
        if kind == "member":
            return self.member(node[1], node[2])
        if kind == "index":
            return self.index(node[1], node[2])
        if kind == "unary":
            return self.unary(node[1], self.compile(node[2]))
        if kind == "binop":
            return self.binop(node[1], node[2], node[3])
        if kind == "typeop":
            return self.typeop(node[1], self.compile(node[2]), node[3])
        return self.call(node[1], node[2], node[3])

    def variable(self, name: str) -> Compiled:
        if name not in self.scope.variables:
            raise ViewDefinitionError(f"Undefined constant or variable %{name}.")
        self.scope.used.add(name)

        def fn(_items: list[Any], env: Env) -> list[Any]:
            value = env.get(name)
            if value is None:
                return []
            return value if isinstance(value, list) else [value]

        return Compiled(fn)

    def member(self, base: Node | None, name: str) -> Compiled:
        if base is None:
            return Compiled(lambda items, _e: flat(items, name), KNOWN_TYPES.get(name))
        inner = self.compile(base).fn
        return Compiled(lambda items, env: flat(inner(items, env), name), KNOWN_TYPES.get(name))

    def index(self, base: Node, index: Node) -> Compiled:
        inner, at = self.compile(base).fn, self.compile(index).fn

        def fn(items: list[Any], env: Env) -> list[Any]:
            values = inner(items, env)
            position = singleton(at(items, env), "The indexer")
            if not isinstance(position, int) or isinstance(position, bool):
                raise ViewRuntimeError("The indexer expects an integer.")
            return [values[position]] if 0 <= position < len(values) else []

        return Compiled(fn)

    def unary(self, op: str, operand: Compiled) -> Compiled:
        inner = operand.fn
        if op == "+":
            return operand

        def fn(items: list[Any], env: Env) -> list[Any]:
            value = singleton(inner(items, env), "Unary minus")
            if value is None:
                return []
            if not number(value):
                raise ViewRuntimeError("Unary minus needs a number.")
            return [-value]

        return Compiled(fn, operand.type)

    def binop(self, op: str, left_node: Node, right_node: Node) -> Compiled:
        left, right = self.compile(left_node).fn, self.compile(right_node).fn
        if op in ("and", "or", "xor", "implies"):
            return Compiled(_logic(op, left, right), "boolean")
        if op == "|":
            return Compiled(lambda i, e: distinct(left(i, e) + right(i, e)))
        if op in ("=", "!=", "~", "!~"):
            negate = op.startswith("!")
            fuzzy = "~" in op

            def equality(items: list[Any], env: Env) -> list[Any]:
                a, b = left(items, env), right(items, env)
                if not a or not b:
                    return [negate] if fuzzy and (a or b) else ([] if not fuzzy else [not negate])
                if len(a) != len(b):
                    return [negate]
                if fuzzy:
                    same = all(fold(x) == fold(y) for x, y in zip(a, b, strict=True))
                else:
                    same = all(equal(x, y) for x, y in zip(a, b, strict=True))
                return [same != negate]

            return Compiled(equality, "boolean")
        if op in ("<", ">", "<=", ">="):

            def ordering(items: list[Any], env: Env) -> list[Any]:
                a = singleton(left(items, env), f"'{op}'")
                b = singleton(right(items, env), f"'{op}'")
                return [] if a is None or b is None else [compare(op, a, b)]

            return Compiled(ordering, "boolean")
        if op in ("in", "contains"):
            element, collection = (left, right) if op == "in" else (right, left)

            def membership(items: list[Any], env: Env) -> list[Any]:
                value = singleton(element(items, env), f"'{op}'")
                if value is None:
                    return []
                return [any(equal(value, other) for other in collection(items, env))]

            return Compiled(membership, "boolean")

        def arithmetic(items: list[Any], env: Env) -> list[Any]:
            a = singleton(left(items, env), f"'{op}'")
            b = singleton(right(items, env), f"'{op}'")
            result = arith(op, a, b)
            return [] if result is None else [result]

        return Compiled(arithmetic)

    def typeop(self, op: str, operand: Compiled, type_name: str) -> Compiled:
        inner = operand.fn
        if op == "is":
            return Compiled(
                lambda i, e: [is_type(v, type_name) for v in inner(i, e)][:1], "boolean"
            )
        return Compiled(lambda i, e: [v for v in inner(i, e) if is_type(v, type_name)], type_name)

    # -- functions ------------------------------------------------------------------
    def call(self, base: Node | None, name: str, args: list[Node]) -> Compiled:
        if name == "ofType" and len(args) == 1:
            return self.of_type(base, type_arg(args[0]))
        handler = FUNCTIONS.get(name)
        if handler is None:
            return self.fallback()
        arity_min, arity_max, build = handler
        if not arity_min <= len(args) <= arity_max:
            raise ViewDefinitionError(f"Wrong number of arguments to {name}().")
        focus = self.compile(base) if base is not None else Compiled(lambda items, _e: items)
        return build(self, focus, args)

    def of_type(self, base: Node | None, type_name: str) -> Compiled:
        if base is not None and base[0] == "member":
            # value.ofType(Quantity): the choice element valueQuantity, or a
            # plain element of that type.
            parent = self.compile(base[1]).fn if base[1] is not None else None
            name = base[2]
            key = name + type_name[:1].upper() + type_name[1:]

            def choice(items: list[Any], env: Env) -> list[Any]:
                owners = parent(items, env) if parent is not None else items
                out: list[Any] = []
                for owner in owners:
                    if not isinstance(owner, dict):
                        continue
                    value = owner.get(key)
                    if value is None:
                        value = owner.get(name)
                        if value is None:
                            continue
                        values = value if isinstance(value, list) else [value]
                        out.extend(v for v in values if is_type(v, type_name))
                    elif isinstance(value, list):
                        out.extend(value)
                    else:
                        out.append(value)
                return out

            return Compiled(choice, type_name)
        focus = self.compile(base).fn if base is not None else None
        return Compiled(
            lambda i, e: [v for v in (focus(i, e) if focus else i) if is_type(v, type_name)],
            type_name,
        )

    def argument(self, node: Node) -> Fn:
        return self.compile(node).fn

    def fallback(self) -> Compiled:
        if not self.scope.extended:
            raise ViewDefinitionError("This FHIRPath function is outside the supported subset.")
        return fhirpathpy_fallback(self.text)


def _literal_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, Decimal):
        return "decimal"
    return "string"


def _logic(op: str, left: Fn, right: Fn) -> Fn:
    """FHIRPath §"Boolean logic": three-valued, empty is unknown."""

    def fn(items: list[Any], env: Env) -> list[Any]:
        a = truth(left(items, env))
        if op == "and" and a is False:
            return [False]
        if op == "or" and a is True:
            return [True]
        if op == "implies" and a is False:
            return [True]
        b = truth(right(items, env))
        if op == "and":
            result = False if b is False else (True if a and b else None)
        elif op == "or":
            result = True if b is True else (False if a is False and b is False else None)
        elif op == "xor":
            result = None if a is None or b is None else a != b
        else:  # implies
            result = True if b is True else (None if a is None or b is None else b)
        return [] if result is None else [result]

    return fn
