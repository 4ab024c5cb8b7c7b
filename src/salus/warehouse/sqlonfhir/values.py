"""FHIRPath values over plain JSON: navigation, types, equality, arithmetic.

Collections are Python lists of JSON values (dicts, strings, numbers,
booleans); FHIRPath decimals written in an expression are ``Decimal`` and
JSON decimals are floats, compared exactly through their shortest
representation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from salus.warehouse.sqlonfhir.errors import ViewRuntimeError

__all__ = [
    "Compiled",
    "Env",
    "Fn",
    "arith",
    "as_decimal",
    "compare",
    "distinct",
    "equal",
    "flat",
    "fold",
    "is_type",
    "number",
    "singleton",
    "truth",
]

Env = dict[str, Any]
Fn = Callable[[list[Any], Env], list[Any]]

#: Primitive type names and the Python values that can hold them (ofType, is).
_STRINGISH = frozenset(
    "string code id uri url canonical oid uuid markdown base64Binary date dateTime "
    "instant time xhtml".split()
)
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled expression and the FHIR type it is known to produce (if any)."""

    fn: Fn
    type: str | None = None

    def __call__(self, items: list[Any], env: Env) -> list[Any]:
        return self.fn(items, env)


# -- values -----------------------------------------------------------------------------
def flat(items: Iterable[Any], name: str) -> list[Any]:
    """Member access over a collection, choice types included (``value`` → ``valueX``)."""
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        value = item.get(name)
        if value is None:
            if item.get("resourceType") == name:
                out.append(item)  # Patient.name: the type names the root
                continue
            value = _choice(item, name)
            if value is None:
                continue
        if isinstance(value, list):
            out.extend(v for v in value if v is not None)
        else:
            out.append(value)
    return out


def _choice(item: Mapping[str, Any], name: str) -> Any:
    size = len(name)
    for key, value in item.items():
        if len(key) > size and key.startswith(name) and key[size].isupper():
            return value
    return None


def is_type(value: Any, type_name: str) -> bool:
    """Whether a JSON value can be of the FHIR/FHIRPath type ``type_name`` (no model)."""
    low = type_name[:1].lower() + type_name[1:]
    if low in ("boolean",):
        return isinstance(value, bool)
    if low in _INTEGERS:
        return isinstance(value, int) and not isinstance(value, bool)
    if low == "decimal":
        return isinstance(value, float | Decimal | int) and not isinstance(value, bool)
    if low in _STRINGISH:
        return isinstance(value, str)
    if isinstance(value, dict):
        res_type = value.get("resourceType")
        return res_type is None or res_type == type_name or type_name in ("Resource", "Element")
    return False


def singleton(items: list[Any], what: str) -> Any:
    if len(items) > 1:
        raise ViewRuntimeError(f"{what} expects a single value, got a collection.")
    return items[0] if items else None


def truth(items: list[Any]) -> bool | None:
    """FHIRPath §"Singleton evaluation of collections" for boolean operators."""
    if not items:
        return None
    if len(items) > 1:
        raise ViewRuntimeError("A boolean operator got a collection of several values.")
    value = items[0]
    return value if isinstance(value, bool) else True


def number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def as_decimal(value: Any) -> Any:
    return Decimal(repr(value)) if isinstance(value, float) else value


def equal(left: Any, right: Any) -> bool:
    if number(left) and number(right):
        return bool(as_decimal(left) == as_decimal(right))
    return bool(left == right)


def compare(op: str, left: Any, right: Any) -> bool:
    if number(left) and number(right):
        a, b = as_decimal(left), as_decimal(right)
    elif isinstance(left, str) and isinstance(right, str):
        a, b = left, right
    else:
        raise ViewRuntimeError(f"Cannot compare these types with '{op}'.")
    if op == "<":
        return bool(a < b)
    if op == ">":
        return bool(a > b)
    if op == "<=":
        return bool(a <= b)
    return bool(a >= b)


def arith(op: str, left: Any, right: Any) -> Any:
    if op == "&":
        return ("" if left is None else str(left)) + ("" if right is None else str(right))
    if left is None or right is None:
        return None
    if op == "+" and isinstance(left, str) and isinstance(right, str):
        return left + right
    if not (number(left) and number(right)):
        raise ViewRuntimeError(f"Arithmetic '{op}' needs numbers.")
    a, b = as_decimal(left), as_decimal(right)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None  # FHIRPath: division by zero is empty
    if op == "/":
        return Decimal(a) / Decimal(b)
    if op == "div":
        return int(Decimal(a) / Decimal(b))
    return a - b * int(Decimal(a) / Decimal(b))  # mod


def fold(value: Any) -> Any:
    return " ".join(value.lower().split()) if isinstance(value, str) else as_decimal(value)


def distinct(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if not any(equal(value, seen) for seen in out):
            out.append(value)
    return out
