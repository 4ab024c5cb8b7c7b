"""The FHIRPath functions of the view runner (FHIRPath N1 §"Functions", SQL-on-FHIR v2
§"Required FHIRPath expressions/functions").

Each entry of :data:`FUNCTIONS` is (fewest arguments, most arguments,
builder); a builder gets the compiler (to compile its arguments) and the
compiled focus, and returns the compiled call. ``getResourceKey`` and
``getReferenceKey`` are SQL-on-FHIR's own (§"getResourceKey",
§"getReferenceKey"); ``lowBoundary``/``highBoundary`` are in
:mod:`.boundary`. Anything not listed runs through ``fhirpathpy``
(:func:`fhirpathpy_fallback`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from salus.warehouse.sqlonfhir.boundary import high_boundary, low_boundary
from salus.warehouse.sqlonfhir.errors import ViewDefinitionError, ViewRuntimeError
from salus.warehouse.sqlonfhir.parser import Node, type_arg
from salus.warehouse.sqlonfhir.values import (
    Compiled,
    Env,
    Fn,
    distinct,
    flat,
    singleton,
    truth,
)

__all__ = ["FUNCTIONS", "KNOWN_TYPES", "ArgumentCompiler", "fhirpathpy_fallback", "reference_key"]


class ArgumentCompiler(Protocol):
    def argument(self, node: Node) -> Fn: ...


#: Element names whose FHIR type matters to lowBoundary/highBoundary (no model).
KNOWN_TYPES = {"birthDate": "date", "issued": "instant", "lastUpdated": "instant"}
Build = Callable[[ArgumentCompiler, Compiled, list[Node]], Compiled]


def _where(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
    inner, cond = focus.fn, c.argument(args[0])

    def fn(items: list[Any], env: Env) -> list[Any]:
        return [v for v in inner(items, env) if truth(cond([v], env)) is True]

    return Compiled(fn, focus.type)


def _select(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
    inner, proj = focus.fn, c.argument(args[0])
    return Compiled(lambda i, e: [x for v in inner(i, e) for x in proj([v], e)])


def _exists(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
    inner = focus.fn
    if args:
        cond = c.argument(args[0])
        return Compiled(
            lambda i, e: [any(truth(cond([v], e)) is True for v in inner(i, e))], "boolean"
        )
    return Compiled(lambda i, e: [bool(inner(i, e))], "boolean")


def _all(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
    inner, cond = focus.fn, c.argument(args[0])
    return Compiled(lambda i, e: [all(truth(cond([v], e)) is True for v in inner(i, e))], "boolean")


def _simple(op: Callable[[list[Any]], list[Any]], type_: str | None = None) -> Build:
    def build(_c: ArgumentCompiler, focus: Compiled, _args: list[Node]) -> Compiled:
        inner = focus.fn
        return Compiled(lambda i, e: op(inner(i, e)), type_ or focus.type)

    return build


def _not(values: list[Any]) -> list[Any]:
    value = truth(values)
    return [] if value is None else [not value]


def _join(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
    inner = focus.fn
    sep = c.argument(args[0]) if args else None

    def fn(items: list[Any], env: Env) -> list[Any]:
        separator = singleton(sep(items, env), "join()") if sep else ""
        return [str(separator or "").join(str(v) for v in inner(items, env))]

    return Compiled(fn, "string")


def _extension(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
    inner, url = focus.fn, c.argument(args[0])

    def fn(items: list[Any], env: Env) -> list[Any]:
        wanted = singleton(url(items, env), "extension()")
        return [x for x in flat(inner(items, env), "extension") if x.get("url") == wanted]

    return Compiled(fn)


def _resource_key(_c: ArgumentCompiler, focus: Compiled, _args: list[Node]) -> Compiled:
    """SQL-on-FHIR §"getResourceKey": ``Type/id`` of a resource."""
    inner = focus.fn

    def fn(items: list[Any], env: Env) -> list[Any]:
        return [
            f"{v['resourceType']}/{v['id']}"
            for v in inner(items, env)
            if isinstance(v, dict) and "resourceType" in v and "id" in v
        ]

    return Compiled(fn, "string")


def reference_key(reference: Any, type_name: str | None) -> str | None:
    """SQL-on-FHIR §"getReferenceKey": the key of a relative reference, if any."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    text: str = reference["reference"]
    if text.startswith("#") or ":" in text:
        return None  # contained, absolute or urn references do not join
    parts = text.split("/_history/")[0].split("/")
    if len(parts) != 2 or not parts[0][:1].isupper() or not parts[1]:
        return None
    if type_name is not None and parts[0] != type_name:
        return None
    return f"{parts[0]}/{parts[1]}"


def _reference_key(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
    inner = focus.fn
    type_name = type_arg(args[0]) if args else None

    def fn(items: list[Any], env: Env) -> list[Any]:
        keys = (reference_key(v, type_name) for v in inner(items, env))
        return [k for k in keys if k is not None]

    return Compiled(fn, "string")


def _boundary(high: bool) -> Build:
    def build(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
        inner, type_name = focus.fn, focus.type
        precision = c.argument(args[0]) if args else None

        def fn(items: list[Any], env: Env) -> list[Any]:
            digits = singleton(precision(items, env), "boundary precision") if precision else None
            out: list[Any] = []
            for value in inner(items, env):
                found = (high_boundary if high else low_boundary)(value, type_name, digits)
                if found is not None:
                    out.append(found)
            return out

        return Compiled(fn, type_name)

    return build


def _iif(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
    if len(args) < 2:
        raise ViewDefinitionError("iif() takes two or three arguments.")
    inner = focus.fn
    cond, then = c.argument(args[0]), c.argument(args[1])
    other = c.argument(args[2]) if len(args) > 2 else None

    def fn(items: list[Any], env: Env) -> list[Any]:
        base = inner(items, env)
        if truth(cond(base, env)) is True:
            return then(base, env)
        return other(base, env) if other else []

    return Compiled(fn)


def _take_skip(take: bool) -> Build:
    def build(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
        inner, count = focus.fn, c.argument(args[0])

        def fn(items: list[Any], env: Env) -> list[Any]:
            n = singleton(count(items, env), "take()/skip()") or 0
            values = inner(items, env)
            return values[: max(n, 0)] if take else values[max(n, 0) :]

        return Compiled(fn, focus.type)

    return build


def _string_fn(op: Callable[[str, Any], Any]) -> Build:
    def build(c: ArgumentCompiler, focus: Compiled, args: list[Node]) -> Compiled:
        inner, arg = focus.fn, c.argument(args[0])

        def fn(items: list[Any], env: Env) -> list[Any]:
            value = singleton(inner(items, env), "A string function")
            other = singleton(arg(items, env), "A string function")
            if value is None or other is None:
                return []
            return [op(str(value), other)]

        return Compiled(fn)

    return build


def _to_string(values: list[Any]) -> list[Any]:
    value = singleton(values, "toString()")
    if value is None or isinstance(value, dict):
        return []
    return ["true" if value is True else "false" if value is False else str(value)]


FUNCTIONS: dict[str, tuple[int, int, Build]] = {
    "where": (1, 1, _where),
    "select": (1, 1, _select),
    "exists": (0, 1, _exists),
    "all": (1, 1, _all),
    "empty": (0, 0, _simple(lambda v: [not v], "boolean")),
    "hasValue": (0, 0, _simple(lambda v: [len(v) == 1 and not isinstance(v[0], dict)])),
    "first": (0, 0, _simple(lambda v: v[:1])),
    "last": (0, 0, _simple(lambda v: v[-1:])),
    "tail": (0, 0, _simple(lambda v: v[1:])),
    "single": (0, 0, _simple(lambda v: [singleton(v, "single()")] if v else [])),
    "count": (0, 0, _simple(lambda v: [len(v)], "integer")),
    "distinct": (0, 0, _simple(distinct)),
    "not": (0, 0, _simple(_not, "boolean")),
    "join": (0, 1, _join),
    "extension": (1, 1, _extension),
    "getResourceKey": (0, 0, _resource_key),
    "getReferenceKey": (0, 1, _reference_key),
    "lowBoundary": (0, 1, _boundary(False)),
    "highBoundary": (0, 1, _boundary(True)),
    "iif": (2, 3, _iif),
    "take": (1, 1, _take_skip(True)),
    "skip": (1, 1, _take_skip(False)),
    "startsWith": (1, 1, _string_fn(lambda s, o: s.startswith(str(o)))),
    "endsWith": (1, 1, _string_fn(lambda s, o: s.endswith(str(o)))),
    "contains": (1, 1, _string_fn(lambda s, o: str(o) in s)),
    "toString": (0, 0, _simple(_to_string, "string")),
}


def fhirpathpy_fallback(text: str) -> Compiled:
    """Anything beyond the subset: fhirpathpy with the R4 model, one call per input item."""
    from fhirpathpy import compile as fp_compile
    from fhirpathpy.models import models

    try:
        compiled = fp_compile(text, models["r4"])
    except Exception as exc:
        raise ViewDefinitionError("FHIRPath expression not understood.") from exc

    def fn(items: list[Any], env: Env) -> list[Any]:
        context = {k: v for k, v in env.items() if v is not None}
        out: list[Any] = []
        for item in items:
            try:
                out.extend(compiled(item, context))
            except Exception as exc:
                raise ViewRuntimeError("A FHIRPath function failed on a resource.") from exc
        return out

    return Compiled(fn)
