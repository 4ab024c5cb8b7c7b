"""Runtime operations of compiled search expressions (see :mod:`.fhirpath`).

The closures the compiler builds: member access over FHIR JSON (with choice
elements found under their typed keys, ``valueQuantity`` ...), casts by JSON
shape, ``where``/``exists``/``empty``/``not``/``first``/``last``,
``extension('url')``, FHIRPath three-valued ``and``/``or``/``xor`` and ``=``/
``!=`` (FHIRPath N1, http://hl7.org/fhirpath/N1/), and ``resolve() is Type``
answered from the reference itself (FHIR R4 ``search.html`` §3.1.1.7 and the
R4 SearchParameter expressions of ``searchparameter.html``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from salus.fhir.search.values import parse_reference

__all__ = [
    "CHOICE_SUFFIXES",
    "SIMPLE_FUNCTIONS",
    "Fn",
    "boolean",
    "children",
    "compare",
    "conforms",
    "const",
    "equal",
    "extension",
    "identity",
    "index",
    "is_type_of",
    "reference_type",
    "resolve_is",
    "resource_root",
    "truth",
    "type_keys",
    "typed_children",
    "unquote",
    "where",
]

Fn = Callable[[list[Any], Mapping[str, Any]], list[Any]]

#: The suffixes of choice elements in JSON (``valueQuantity``): FHIR R4 data types.
CHOICE_SUFFIXES: frozenset[str] = frozenset(
    (
        "Base64Binary Boolean Canonical Code Date DateTime Decimal Id Instant Integer Markdown "
        "Oid PositiveInt String Time UnsignedInt Uri Url Uuid Address Age Annotation Attachment "
        "CodeableConcept Coding ContactPoint Count Distance Duration HumanName Identifier Money "
        "Period Quantity Range Ratio Reference SampledData Signature Timing ContactDetail "
        "Contributor DataRequirement Expression ParameterDefinition RelatedArtifact "
        "TriggerDefinition UsageContext Dosage Meta"
    ).split()
)
_QUANTITY_KINDS = ("Quantity", "Age", "Count", "Distance", "Duration")

# -- reference types ---------------------------------------------------------------------


def reference_type(item: Any) -> str | None:
    """The target type of a Reference, canonical or uri, without resolving it."""
    if isinstance(item, str):
        return parse_reference(item)[0]
    if isinstance(item, Mapping):
        ref = item.get("reference")
        if isinstance(ref, str):
            rtype = parse_reference(ref)[0]
            if rtype:
                return rtype
        declared = item.get("type")
        return declared if isinstance(declared, str) else None
    return None


# -- shapes (for casts where the JSON key does not tell the type) ------------------------

_STRINGISH = {
    "string", "code", "id", "uri", "url", "canonical", "markdown", "oid", "uuid",
    "base64binary", "date", "datetime", "instant", "time",
}  # fmt: skip


def conforms(item: Any, type_name: str) -> bool:
    """Whether a JSON value plausibly is of FHIR type ``type_name`` (by its shape)."""
    t = type_name.rsplit(".", 1)[-1].lower()
    if t == "boolean":
        return isinstance(item, bool)
    if t in ("integer", "positiveint", "unsignedint"):
        return isinstance(item, int) and not isinstance(item, bool)
    if t == "decimal":
        return isinstance(item, int | float | Decimal) and not isinstance(item, bool)
    if t in _STRINGISH:
        return isinstance(item, str)
    if not isinstance(item, Mapping):
        return False
    if t in ("quantity", "age", "count", "distance", "duration", "simplequantity"):
        return "value" in item and "currency" not in item and "low" not in item
    if t == "money":
        return "currency" in item or ("value" in item and len(item) == 1)
    if t == "range":
        return "low" in item or "high" in item
    if t == "period":
        return "start" in item or "end" in item
    if t == "codeableconcept":
        return "coding" in item or ("text" in item and "value" not in item)
    if t == "coding":
        return "code" in item or "display" in item
    if t == "reference":
        return "reference" in item or ("identifier" in item and "value" not in item)
    if t == "identifier":
        return "value" in item or "system" in item
    return True


def type_keys(name: str, type_name: str) -> tuple[str, ...]:
    t = type_name.rsplit(".", 1)[-1]
    t = t[:1].upper() + t[1:]
    if t == "Quantity":
        return tuple(name + k for k in _QUANTITY_KINDS)
    return (name + t,)


# -- evaluation helpers ------------------------------------------------------------------


def children(items: list[Any], name: str, choice: bool) -> list[Any]:
    out: list[Any] = []
    size = len(name)
    for it in items:
        if type(it) is not dict and not isinstance(it, Mapping):
            continue
        value = it.get(name)
        if value is None:
            if choice:
                for key, found in it.items():
                    if key.startswith(name) and key[size:] in CHOICE_SUFFIXES:
                        if isinstance(found, list):
                            out.extend(found)
                        else:
                            out.append(found)
            continue
        if isinstance(value, list):
            out.extend(value)
        else:
            out.append(value)
    return out


def typed_children(items: list[Any], name: str, keys: tuple[str, ...], type_name: str) -> list[Any]:
    out: list[Any] = []
    for it in items:
        if type(it) is not dict and not isinstance(it, Mapping):
            continue
        hit = False
        for key in keys:
            value = it.get(key)
            if value is not None:
                hit = True
                if isinstance(value, list):
                    out.extend(value)
                else:
                    out.append(value)
        if not hit:
            value = it.get(name)
            if value is not None:
                values = value if isinstance(value, list) else [value]
                out.extend(v for v in values if conforms(v, type_name))
    return out


def truth(items: list[Any]) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a boolean."""
    if not items:
        return None
    if len(items) > 1:
        return None  # an error in FHIRPath; index nothing
    item = items[0]
    return item if isinstance(item, bool) else True


def equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float | Decimal) and isinstance(right, int | float | Decimal):
        return Decimal(str(left)) == Decimal(str(right))
    return bool(left == right)


def identity(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
    return focus


def unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1]), body)


def const(value: Any) -> Fn:
    result = [] if value is None else [value]

    def const(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
        return list(result)

    return const


def resource_root(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
    return [resource]


def index(source: Fn, n: int) -> Fn:
    def index(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
        items = source(focus, resource)
        return items[n : n + 1]

    return index


def where(source: Fn, criteria: Fn) -> Fn:
    def where(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
        return [it for it in source(focus, resource) if criteria([it], resource) == [True]]

    return where


def resolve_is(source: Fn, type_name: str) -> Fn:
    def resolve_is(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
        items = source(focus, resource)
        if len(items) != 1:
            return []
        return [reference_type(items[0]) == type_name]

    return resolve_is


def is_type_of(source: Fn, type_name: str) -> Fn:
    def is_type(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
        items = source(focus, resource)
        if len(items) != 1:
            return []
        return [conforms(items[0], type_name)]

    return is_type


def extension(source: Fn, url: str) -> Fn:
    def extension(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = []
        for ext in children(source(focus, resource), "extension", False):
            if isinstance(ext, Mapping) and ext.get("url") == url:
                out.append(ext)
        return out

    return extension


def boolean(op: str, left: Fn, right: Fn) -> Fn:
    def boolean(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
        a = truth(left(focus, resource))
        b = truth(right(focus, resource))
        if op == "and":
            if a is False or b is False:
                return [False]
            return [True] if a and b else []
        if op == "or":
            if a is True or b is True:
                return [True]
            return [False] if a is False and b is False else []
        return [] if a is None or b is None else [a != b]  # xor

    return boolean


def compare(negate: bool, left: Fn, right: Fn) -> Fn:
    def compare(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
        a = left(focus, resource)
        b = right(focus, resource)
        if not a or not b:
            return []
        same = len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
        return [same != negate]

    return compare


def _make(kind: str) -> Callable[[Fn], Fn]:
    def build(source: Fn) -> Fn:
        def function(focus: list[Any], resource: Mapping[str, Any]) -> list[Any]:
            items = source(focus, resource)
            if kind == "exists":
                return [bool(items)]
            if kind == "empty":
                return [not items]
            if kind == "first":
                return items[:1]
            if kind == "last":
                return items[-1:]
            value = truth(items)  # not()
            return [] if value is None else [not value]

        return function

    return build


SIMPLE_FUNCTIONS: dict[str, Callable[[Fn], Fn]] = {
    name: _make(name) for name in ("exists", "empty", "first", "last", "not")
}
