"""A small compiler for the FHIRPath subset that search expressions use.

The R4 SearchParameter expressions (FHIR R4 ``searchparameter.html``,
``SearchParameter.expression``) are almost all simple paths. Evaluating them
with a general FHIRPath engine costs ~200 µs each; this module compiles each
expression once into nested Python closures that walk the resource JSON
directly (a few µs). Expressions outside the subset fall back to
``fhirpathpy`` (imported on first use); :attr:`CompiledExpression.fallback`
tells which.

Supported grammar (FHIRPath N1 precedence; everything else is "outside"):

.. code-block:: text

    expr      := or
    or        := and (("or" | "xor") and)*
    and       := equality ("and" equality)*
    equality  := union (("=" | "!=") union)?
    union     := typed ("|" typed)*
    typed     := term (("as" | "is") TYPE)?
    term      := primary postfix*
    primary   := ResourceType | "Resource" | "DomainResource"   -- the root
               | identifier                                      -- a child of the focus
               | "%resource" | "%rootResource" | "$this"
               | 'string' | number | "true" | "false" | "{}"
               | "(" expr ")"
               | function                                        -- applied to the focus
    postfix   := "." identifier | "." function | "[" integer "]"
    function  := where(expr) | as(TYPE) | ofType(TYPE) | is(TYPE) | extension('url')
               | exists() | empty() | not() | first() | last() | resolve()

``resolve() is Type`` (inside ``where``) is answered from the reference
itself (the type in ``Type/id``, in an absolute URL, or ``Reference.type``),
never by fetching. Choice elements (``Observation.value``) are found under
their JSON names (``valueQuantity`` ...); ``as``/``ofType`` pick the keys of
that type (``as Quantity`` also takes Age, Count, Distance and Duration).
Union keeps duplicates (the extractor removes duplicate index values).
The closures themselves are in :mod:`salus.fhir.search.fhirpath_ops`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from salus.fhir.search import fhirpath_ops as ops
from salus.fhir.search.fhirpath_ops import CHOICE_SUFFIXES, Fn, reference_type
from salus.fhir.search.resource_types import is_resource_type

__all__ = [
    "CHOICE_SUFFIXES",
    "CompiledExpression",
    "Unsupported",
    "branch_root",
    "compile_expression",
    "reference_type",
    "split_union",
]

log = logging.getLogger(__name__)


class Unsupported(ValueError):
    """The expression is outside the compiled subset."""


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """An expression compiled once; ``evaluate(focus, resource)`` gives the items."""

    expression: str
    evaluate: Callable[[Any, Mapping[str, Any]], list[Any]]
    fallback: bool


# -- union splitting (used by the registry to restrict expressions to one base) ----------


def split_union(expression: str) -> list[str]:
    """The top-level ``|`` branches of an expression, stripped."""
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(expression):
        if ch == "'" and (i == 0 or expression[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            out.append(expression[start:i].strip())
            start = i + 1
    out.append(expression[start:].strip())
    return [b for b in out if b]


_ROOT = re.compile(r"[\s(]*([A-Za-z]+)")


def branch_root(branch: str) -> str | None:
    """The type a branch starts from (``(Observation.value as X)`` → ``Observation``)."""
    match = _ROOT.match(branch)
    return match.group(1) if match else None


# -- tokens ------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*')
    | (?P<num>\d+(?:\.\d+)?)
    | (?P<ext>%[A-Za-z_][A-Za-z0-9_]*)
    | (?P<var>\$[A-Za-z]+)
    | (?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]*`)
    | (?P<op>!=|!~|<=|>=|\{\}|[|.()\[\],=~<>+\-*/&])
    )""",
    re.X,
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise Unsupported(f"cannot read {text[pos : pos + 20]!r}")
        kind = match.lastgroup
        assert kind is not None  # noqa: S101 - one group always matches
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


# -- parser / compiler -------------------------------------------------------------------


class _Compiler:
    """Recursive descent over the tokens, producing closures directly."""

    def __init__(self, text: str, choice_elements: frozenset[str]) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.choice = choice_elements

    # token helpers
    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise Unsupported(f"expected {value!r}, found {tok!r}")
        self.pos += 1
        return tok

    def at(self, value: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[1] == value and tok[0] in ("op", "id")

    def compile(self) -> Fn:
        fn = self.or_expr()
        if self.pos != len(self.tokens):
            raise Unsupported(f"unexpected {self.tokens[self.pos][1]!r}")
        return fn

    # grammar
    def or_expr(self) -> Fn:
        left = self.and_expr()
        while self.at("or") or self.at("xor"):
            op = self.take()[1]
            left = ops.boolean(op, left, self.and_expr())
        return left

    def and_expr(self) -> Fn:
        left = self.equality()
        while self.at("and"):
            self.take()
            left = ops.boolean("and", left, self.equality())
        return left

    def equality(self) -> Fn:
        left = self.union()
        if self.at("=") or self.at("!="):
            op = self.take()[1]
            right = self.union()
            left = ops.compare(op == "!=", left, right)
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in ("~", "!~", "<", ">", "<=", ">="):
            raise Unsupported(f"operator {tok[1]}")
        return left

    def union(self) -> Fn:
        parts = [self.typed()]
        while self.at("|"):
            self.take()
            parts.append(self.typed())
        if len(parts) == 1:
            return parts[0]
        branches = tuple(parts)

        def union(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
            out: list[Any] = []
            for branch in branches:
                out.extend(branch(focus, resource))
            return out

        return union

    def typed(self) -> Fn:
        fn, last = self.term()
        while self.at("as") or self.at("is"):
            op = self.take()[1]
            type_name = self.type_name()
            if last is not None and last[0] == "resolve" and op != "is":
                raise Unsupported("resolve() other than 'resolve() is Type'")
            if op == "as":
                fn = self.cast(fn, last, type_name)
            elif last is not None and last[0] == "resolve":
                fn = ops.resolve_is(last[1], type_name)
            else:
                fn = ops.is_type_of(fn, type_name)
            last = None
        if last is not None and last[0] == "resolve":
            raise Unsupported("resolve() other than 'resolve() is Type'")
        return fn

    def type_name(self) -> str:
        kind, text = self.take()
        if kind != "id":
            raise Unsupported(f"type name expected, found {text!r}")
        name = text.strip("`")
        while self.at("."):
            self.take()
            name = self.take()[1].strip("`")  # FHIR.Quantity, System.String
        return name

    def cast(self, fn: Fn, last: tuple[str, Any] | None, type_name: str) -> Fn:
        """``as T``: on a member step, look up the JSON keys of that type."""
        if last is not None and last[0] == "member":
            source, name = last[1]
            keys = ops.type_keys(name, type_name)

            def typed_member(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
                return ops.typed_children(source(focus, resource), name, keys, type_name)

            return typed_member

        def cast(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
            return [v for v in fn(focus, resource) if ops.conforms(v, type_name)]

        return cast

    def term(self) -> tuple[Fn, tuple[str, Any] | None]:
        """A primary and its postfixes; also the last step (for ``as`` and ``is``)."""
        fn, last = self.primary()
        while True:
            if last is not None and last[0] == "resolve" and (self.at(".") or self.at("[")):
                raise Unsupported("navigation after resolve()")
            if self.at("."):
                self.take()
                kind, text = self.take()
                if kind != "id":
                    raise Unsupported(f"member name expected, found {text!r}")
                name = text.strip("`")
                if self.at("("):
                    fn, last = self.function(fn, name, last)
                else:
                    last = ("member", (fn, name))
                    fn = self.member(fn, name)
            elif self.at("["):
                self.take()
                kind, text = self.take()
                if kind != "num" or not text.isdigit():
                    raise Unsupported("only integer indexers")
                self.take("]")
                fn = ops.index(fn, int(text))
                last = None
            else:
                return fn, last

    def member(self, source: Fn, name: str) -> Fn:
        choice = name in self.choice
        if source is ops.identity:

            def first_member(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
                return ops.children(focus, name, choice)

            return first_member

        def member(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
            items = source(focus, resource)
            return ops.children(items, name, choice) if items else items

        return member

    def primary(self) -> tuple[Fn, tuple[str, Any] | None]:
        tok = self.peek()
        if tok is None:
            raise Unsupported("unexpected end")
        kind, text = tok
        if kind == "op" and text == "(":
            self.take()
            fn = self.or_expr()
            self.take(")")
            return fn, None
        if kind == "str":
            self.take()
            return ops.const(ops.unquote(text)), None
        if kind == "num":
            self.take()
            return ops.const(Decimal(text)), None
        if kind == "op" and text == "{}":
            self.take()
            return ops.const(None), None
        if kind == "ext":
            self.take()
            if text in ("%resource", "%rootResource"):
                return ops.resource_root, None
            raise Unsupported(f"variable {text}")
        if kind == "var":
            self.take()
            if text == "$this":
                return ops.identity, None
            raise Unsupported(f"variable {text}")
        if kind == "id":
            if text in ("true", "false"):
                self.take()
                return ops.const(text == "true"), None
            name = text.strip("`")
            next_tok = self.peek(1)
            if next_tok is not None and next_tok[1] == "(":
                self.take()
                return self.function(ops.identity, name, None)
            self.take()
            if name in ("Resource", "DomainResource") or is_resource_type(name):
                return ops.identity, None  # the root: the focus is the resource
            return self.member(ops.identity, name), ("member", (ops.identity, name))
        raise Unsupported(f"unexpected {text!r}")

    def function(
        self, source: Fn, name: str, last: tuple[str, Any] | None
    ) -> tuple[Fn, tuple[str, Any] | None]:
        self.take("(")
        if name in ("as", "ofType", "is"):
            type_name = self.type_name()
            self.take(")")
            if name == "is":
                return ops.is_type_of(source, type_name), None
            return self.cast(source, last, type_name), None
        if name == "where":
            criteria = self.or_expr()
            self.take(")")
            return ops.where(source, criteria), None
        if name == "extension":
            kind, text = self.take()
            if kind != "str":
                raise Unsupported("extension() needs a url literal")
            self.take(")")
            return ops.extension(source, ops.unquote(text)), None
        self.take(")")
        if name == "resolve":
            return source, ("resolve", source)
        simple = ops.SIMPLE_FUNCTIONS.get(name)
        if simple is None:
            raise Unsupported(f"function {name}()")
        return simple(source), None


# -- entry point -------------------------------------------------------------------------


def _fallback(expression: str) -> Callable[[Any, Mapping[str, Any]], list[Any]]:
    """Evaluate with fhirpathpy (R4 model); errors give no values (logged)."""
    import fhirpathpy
    from fhirpathpy.models import models

    model = models["r4"]
    try:
        compiled = fhirpathpy.compile(expression, model)
    except Exception as exc:  # the engine raises assorted exceptions on bad syntax
        raise ValueError(f"not a valid FHIRPath expression: {expression!r}") from exc

    def evaluate(focus: Any, resource: Mapping[str, Any]) -> list[Any]:
        try:
            result = compiled(focus, {"resource": resource, "rootResource": resource})
        except Exception as exc:  # noqa: BLE001 - a third-party engine; index nothing
            log.debug("fhirpathpy failed on %r: %s", expression, exc)
            return []
        return [_plain(v) for v in result]

    return evaluate


def _plain(value: Any) -> Any:
    if isinstance(value, dict | list | str | bool | int | float | Decimal):
        return value
    return str(value)  # fhirpathpy date/time/quantity objects


def compile_expression(
    expression: str, *, choice_elements: frozenset[str] = frozenset({"value"})
) -> CompiledExpression:
    """Compile a FHIRPath search expression (the subset above, else fhirpathpy).

    ``choice_elements`` names the elements that are choice types (``value``,
    ``effective``, ...): a missing ``name`` key is then looked up as
    ``name<Type>``. The registry passes the names derived from the R4
    definitions.
    """
    try:
        fn = _Compiler(expression, choice_elements).compile()
    except Unsupported as exc:
        log.debug("FHIRPath %r outside the compiled subset (%s): fhirpathpy", expression, exc)
        return CompiledExpression(expression, _fallback(expression), True)

    def evaluate(focus: Any, resource: Mapping[str, Any]) -> list[Any]:
        return fn([focus], resource)

    return CompiledExpression(expression, evaluate, False)
