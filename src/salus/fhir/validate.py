"""Structural validation of FHIR R4 resources on write.

:func:`validate_resource` checks a resource (parsed JSON) against the R4
structure in :mod:`salus.fhir.model` and returns every problem as an
:class:`Issue` naming the element by a FHIRPath expression
(``Patient.name[0].given[1]``), ready for an ``OperationOutcome.issue``
(FHIR R4 ``operationoutcome.html``). It checks:

* a JSON object with a known ``resourceType`` (``resourcelist.html``);
* no unknown elements; ``extension``/``modifierExtension`` where the type
  defines them and ``_name`` siblings of primitives carrying ``id`` and
  ``extension`` (``json.html#primitive``);
* cardinality: ``min`` (required elements) and ``max``; arrays exactly where
  ``max`` is not 1 (``json.html#arrays``), no ``null`` except inside arrays
  aligned with their ``_name`` sibling;
* primitives: JSON type (``boolean`` a JSON boolean, ``integer``,
  ``positiveInt`` and ``unsignedInt`` JSON integers in 32-bit range,
  ``decimal`` a JSON number, the rest strings) and the regex of
  ``datatypes.html#primitive`` (whole-value match, ASCII ``\\s``);
  ``xhtml`` (``Narrative.div``) must be a string starting with ``<div``
  (``narrative.html#xhtml``; no deeper XHTML validation);
* choice elements ``value[x]``: one allowed variant only (``formats.html#choice``);
* contained resources, ``Bundle.entry.resource`` and other ``Resource``-typed
  elements recursively;
* ``Reference.reference`` (``references.html#literal``): relative
  ``Type/id[/_history/vid]`` with a known type and a valid id, whose type the
  element's ``targetProfile`` allows; a conditional ``Type?query`` (transactions,
  ``http.html#trules``) likewise; an absolute URL; ``urn:uuid:``/``urn:oid:``;
  ``#id`` of an existing contained resource (``#`` alone: the container);
* codes bound with strength ``required`` (``terminologies.html#required``) to a
  value set the model could enumerate: a ``code`` must be one of its codes; a
  Coding (alone or in a CodeableConcept) whose ``system`` is one of the value
  set's systems must use one of that system's codes;
* ``ele-1`` (``conformance-rules.html#ele-1``: every element has a value or
  children), structurally: no empty objects, arrays or strings.

Other invariants (FHIRPath constraints), profiles and terminology beyond the
enumerable required bindings are out of scope.

Issue codes (value set ``issue-type``): ``structure`` (not an object, unknown
resource type or element, array/single-value mismatch, ``null``, more values
than ``max``, two variants of a choice), ``required`` (a ``min`` > 0 element is
missing), ``value`` (a primitive of the wrong JSON type or format, a malformed
reference), ``invalid`` (``ele-1``, a reference to a type the element does not
allow, an unresolvable ``#id``), ``code-invalid`` (a required binding is
broken). Messages never repeat the offending value, which may be patient data.

Speed: per-type lookup tables (JSON name to slot) are built once per type on
first use; a typical Observation validates in a few tens of microseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeGuard

from salus.fhir import model

__all__ = ["Issue", "Mode", "validate_resource"]

Mode = Literal["create", "update", "any"]
Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found, as for ``OperationOutcome.issue``."""

    severity: Severity
    #: ``OperationOutcome.issue.code`` (``valueset-issue-type.html``).
    code: str
    #: Human-readable; never contains the offending value.
    message: str
    #: FHIRPath of the element, e.g. ``Observation.component[1].code``.
    expression: str


_PRIM, _COMPLEX, _RESOURCE = 0, 1, 2
_INT32 = (-(2**31), 2**31 - 1)
_INT_RANGES = {"integer": _INT32, "positiveInt": (1, _INT32[1]), "unsignedInt": (0, _INT32[1])}
_ID_RE = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE = re.compile(rf"([A-Za-z]+)/{_ID_RE}(?:/_history/{_ID_RE})?", re.ASCII).fullmatch
_CONDITIONAL = re.compile(r"([A-Za-z]+)\?\S+", re.ASCII).fullmatch
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+", re.ASCII).fullmatch
_UUID = re.compile(
    r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+").fullmatch
_BASE64 = re.compile(r"[0-9a-zA-Z+/=]*", re.ASCII).fullmatch
_HAS_SPACE = re.compile(r"\s", re.ASCII).search
_MISSING = object()

#: Checks one primitive value: ``None`` or (issue code, message).
_Checker = Callable[[Any], "tuple[str, str] | None"]
_EMPTY = ("invalid", "ele-1: empty string; an element must have a value or children")


def _checker(prim: model.PrimitiveDef) -> _Checker:
    """The value check of one primitive type (``datatypes.html#primitive``)."""
    name = prim.name
    if prim.json == "boolean":
        wrong = ("value", "Must be a JSON boolean (boolean)")
        return lambda v: None if v is True or v is False else wrong
    if prim.json == "integer":
        lo, hi = _INT_RANGES[name]
        wrong = ("value", f"Must be a JSON integer ({name})")
        out_of_range = ("value", f"Out of range for {name} ({lo}..{hi})")

        def check_int(v: Any) -> tuple[str, str] | None:
            if type(v) is not int:
                return wrong
            return None if lo <= v <= hi else out_of_range

        return check_int
    if prim.json == "decimal":
        wrong = ("value", "Must be a JSON number (decimal)")

        def check_decimal(v: Any) -> tuple[str, str] | None:
            if type(v) is int:
                return None
            if type(v) is float:
                return None if math.isfinite(v) else wrong
            if isinstance(v, Decimal):
                return None if v.is_finite() else wrong
            return wrong

        return check_decimal
    not_string = ("value", f"Must be a JSON string ({name})")
    if name == "xhtml":
        not_div = ("value", "Narrative xhtml must be a <div> element")

        def check_xhtml(v: Any) -> tuple[str, str] | None:
            if type(v) is not str:
                return not_string
            if not v:
                return _EMPTY
            return None if v.lstrip().startswith("<div") else not_div

        return check_xhtml
    bad = ("value", f"Not a valid {name}")
    if name == "base64Binary":
        slow = re.compile(prim.regex or ".*", re.ASCII).fullmatch

        def check_base64(v: Any) -> tuple[str, str] | None:
            if type(v) is not str:
                return not_string
            if not v:
                return _EMPTY
            if _HAS_SPACE(v) is None:  # fast path, same language as the regex
                ok = len(v) % 4 == 0 and _BASE64(v) is not None
            else:
                ok = slow(v) is not None
            return None if ok else bad

        return check_base64
    match = re.compile(prim.regex, re.ASCII).fullmatch if prim.regex else None

    def check_string(v: Any) -> tuple[str, str] | None:
        if type(v) is not str:
            return not_string
        if not v:
            return _EMPTY
        if match is not None and match(v) is None:
            return bad
        return None

    return check_string


_CHECKERS: dict[str, _Checker] = {}


def _not_primitive(value: Any) -> tuple[str, str] | None:
    raise TypeError("not a primitive slot")


def _check_for(name: str) -> _Checker:
    found = _CHECKERS.get(name)
    if found is None:
        prim = model.primitive(name)
        if prim is None:
            raise KeyError(name)
        found = _CHECKERS[name] = _checker(prim)
    return found


class _Slot:
    """What a JSON property of a type means: one element, one type."""

    __slots__ = (
        "choice",
        "codes",
        "contained",
        "array",
        "check",
        "fp",
        "kind",
        "max",
        "post",
        "systems",
        "targets",
        "type",
    )

    def __init__(self, el: model.ElementDef, code: str) -> None:
        self.type = code
        self.array = el.is_array
        self.max = el.max
        self.targets = el.targets
        self.contained = el.name == "contained"
        self.choice: str | None = el.name[:-3] if el.is_choice else None
        self.fp = f"{self.choice}.ofType({code})" if self.choice else el.name
        self.check: _Checker = _not_primitive
        self.codes: frozenset[str] | None = None
        self.systems: Mapping[str, frozenset[str]] | None = None
        self.post: _Post | None = None
        if model.primitive(code) is not None:
            self.kind = _PRIM
            self.check = _check_for(code)
        elif code == "Resource":
            self.kind = _RESOURCE
        else:
            self.kind = _COMPLEX
        vs = model.value_set(el.value_set) if el.value_set else None
        if vs:
            if code == "code":
                self.codes = frozenset().union(*vs.values())
            elif code in ("Coding", "CodeableConcept"):
                self.systems = vs
        if code == "Reference":
            self.post = _check_reference
        elif self.systems is not None:
            self.post = _check_coding if code == "Coding" else _check_codeable


class _Table:
    """A type's JSON properties and required elements."""

    __slots__ = ("is_resource", "required", "slots")

    def __init__(self, name: str) -> None:
        td = model.type_def(name)
        self.is_resource = td.kind == "resource"
        self.slots: dict[str, _Slot] = {}
        required: list[tuple[str, tuple[str, ...]]] = []
        for el in td.elements.values():
            keys: list[str] = []
            for key, code in el.json_names().items():
                slot = self.slots[key] = _Slot(el, code)
                keys.append(key)
                if slot.kind == _PRIM:
                    keys.append("_" + key)
            if el.min > 0:
                required.append((el.name[:-3] if el.is_choice else el.name, tuple(keys)))
        self.required = tuple(required)


_TABLES: dict[str, _Table] = {}


def _table(name: str) -> _Table:
    found = _TABLES.get(name)
    if found is None:
        found = _TABLES[name] = _Table(name)
    return found


def _error(code: str, message: str, expression: str) -> Issue:
    return Issue("error", code, message, expression)


def _is_object(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(value, dict) or isinstance(value, Mapping)


def _is_array(value: Any) -> TypeGuard[list[Any] | tuple[Any, ...]]:
    return isinstance(value, list | tuple)


# --- the walk ------------------------------------------------------------------
# ``ids`` is the set of contained-resource ids of the resource being walked
# (for ``#id`` references); contained resources share their container's.


def _walk_object(
    obj: Mapping[str, Any], table: _Table, path: str, out: list[Issue], ids: frozenset[str]
) -> None:
    if not obj:
        out.append(_error("invalid", "ele-1: empty object; an element must have children", path))
        return
    slots = table.slots
    seen_choice: set[str] | None = None
    for key, val in obj.items():
        slot = slots.get(key)
        if slot is None:
            if key[:1] == "_":
                base = slots.get(key[1:])
                if base is not None and base.kind == _PRIM:
                    _walk_primitive_extension(val, base, obj.get(key[1:], _MISSING), path, out, ids)
                    continue
            elif key == "resourceType" and table.is_resource:
                continue
            out.append(_error("structure", f"Unknown element '{key}'", f"{path}.{key}"))
            continue
        if slot.choice is not None:
            if seen_choice is None:
                seen_choice = {slot.choice}
            elif slot.choice in seen_choice:
                out.append(
                    _error(
                        "structure",
                        f"More than one type given for the choice element {slot.choice}[x]",
                        f"{path}.{slot.choice}",
                    )
                )
                continue
            else:
                seen_choice.add(slot.choice)
        child = f"{path}.{slot.fp}"
        if val is None:
            out.append(_error("structure", "null is not allowed here", child))
        elif slot.array:
            if not _is_array(val):
                out.append(_error("structure", "Must be an array (max cardinality > 1)", child))
                continue
            if not val:
                out.append(_error("invalid", "ele-1: empty array; omit the element", child))
                continue
            if slot.max is not None and len(val) > slot.max:
                out.append(_error("structure", f"At most {slot.max} values allowed", child))
            for i, item in enumerate(val):
                if item is None:
                    sibling = obj.get("_" + key)
                    if (
                        slot.kind == _PRIM
                        and _is_array(sibling)
                        and i < len(sibling)
                        and sibling[i] is not None
                    ):
                        continue
                    out.append(_error("structure", "null is not allowed here", f"{child}[{i}]"))
                    continue
                _walk_value(item, slot, f"{child}[{i}]", out, ids)
        elif _is_array(val):
            out.append(_error("structure", "Must be a single value, not an array (max 1)", child))
        else:
            _walk_value(val, slot, child, out, ids)
    for name, keys in table.required:
        for key in keys:
            if key in obj:
                break
        else:
            out.append(_error("required", f"Missing required element '{name}'", f"{path}.{name}"))


def _walk_value(val: Any, slot: _Slot, path: str, out: list[Issue], ids: frozenset[str]) -> None:
    if slot.kind == _PRIM:
        problem = slot.check(val)
        if problem is not None:
            out.append(_error(problem[0], problem[1], path))
        elif slot.codes is not None and val not in slot.codes:
            out.append(_binding_issue(slot, path))
        return
    if not _is_object(val):
        out.append(_error("structure", f"Must be a JSON object ({slot.type})", path))
        return
    if slot.kind == _RESOURCE:
        _walk_resource(val, path, out, ids if slot.contained else None)
        return
    _walk_object(val, _table(slot.type), path, out, ids)
    if slot.post is not None:
        slot.post(val, slot, path, out, ids)


def _walk_resource(
    obj: Mapping[str, Any], path: str, out: list[Issue], ids: frozenset[str] | None
) -> None:
    rtype = obj.get("resourceType")
    if type(rtype) is not str or not model.is_resource_type(rtype):
        what = "Missing resourceType" if rtype is None else "Unknown resource type"
        out.append(_error("structure", what, path))
        return
    if ids is None:
        contained = obj.get("contained")
        ids = frozenset(
            c["id"]
            for c in (contained if _is_array(contained) else ())
            if _is_object(c) and type(c.get("id")) is str
        )
    _walk_object(obj, _table(rtype), path, out, ids)


def _walk_primitive_extension(
    ext: Any, slot: _Slot, values: Any, path: str, out: list[Issue], ids: frozenset[str]
) -> None:
    """``_name``: a primitive's id and extensions (``json.html#primitive``)."""
    where = f"{path}.{slot.fp}"
    element = _table("Element")
    if not slot.array:
        if _is_object(ext):
            _walk_object(ext, element, where, out, ids)
        else:
            out.append(_error("structure", "Primitive extensions must be a JSON object", where))
        return
    if not _is_array(ext):
        out.append(_error("structure", "Primitive extensions must be an array here", where))
        return
    if values is not _MISSING and (not _is_array(values) or len(values) != len(ext)):
        out.append(_error("structure", "Value and extension arrays differ in length", where))
        return
    for i, item in enumerate(ext):
        if item is None:
            if values is _MISSING:
                out.append(_error("structure", "null is not allowed here", f"{where}[{i}]"))
        elif _is_object(item):
            _walk_object(item, element, f"{where}[{i}]", out, ids)
        else:
            out.append(_error("structure", "Must be a JSON object (Element)", f"{where}[{i}]"))


# --- post checks of complex values --------------------------------------------

_Post = Callable[[Mapping[str, Any], _Slot, str, list[Issue], frozenset[str]], None]


def _binding_issue(slot: _Slot, path: str) -> Issue:
    return _error("code-invalid", f"Code not in the required value set for {slot.type}", path)


def _check_coding(
    val: Mapping[str, Any], slot: _Slot, path: str, out: list[Issue], ids: frozenset[str]
) -> None:
    system, code = val.get("system"), val.get("code")
    if type(system) is str and type(code) is str and slot.systems is not None:
        allowed = slot.systems.get(system)
        if allowed is not None and code not in allowed:
            out.append(_binding_issue(slot, f"{path}.code"))


def _check_codeable(
    val: Mapping[str, Any], slot: _Slot, path: str, out: list[Issue], ids: frozenset[str]
) -> None:
    codings = val.get("coding")
    if _is_array(codings):
        for i, coding in enumerate(codings):
            if _is_object(coding):
                _check_coding(coding, slot, f"{path}.coding[{i}]", out, ids)


def _check_reference(
    val: Mapping[str, Any], slot: _Slot, path: str, out: list[Issue], ids: frozenset[str]
) -> None:
    """``Reference.reference`` (``references.html#literal``)."""
    ref = val.get("reference")
    if type(ref) is not str or not ref:
        return  # absent, or already reported as a bad string
    where = f"{path}.reference"
    if ref[0] == "#":
        if len(ref) > 1 and ref[1:] not in ids:
            out.append(_error("invalid", "No contained resource has this id", where))
        return
    match = _RELATIVE(ref) or _CONDITIONAL(ref)
    if match is not None:
        rtype = match.group(1)
        if not model.is_resource_type(rtype):
            out.append(_error("value", "Reference to an unknown resource type", where))
        elif slot.targets is not None and rtype not in slot.targets:
            allowed = ", ".join(sorted(slot.targets))
            out.append(
                _error("invalid", f"A reference to {rtype} is not allowed here ({allowed})", where)
            )
        return
    if ref.startswith("urn:"):
        if _UUID(ref) is None and _OID(ref) is None:
            out.append(_error("value", "Only urn:uuid: and urn:oid: URNs are references", where))
        return
    if _ABSOLUTE(ref) is None:
        out.append(_error("value", "Not a valid reference (Type/id, absolute URL, #id)", where))


# --- entry point ---------------------------------------------------------------


def validate_resource(resource: Mapping[str, Any], *, mode: Mode = "any") -> list[Issue]:
    """Every structural problem of ``resource`` against FHIR R4, in document order.

    ``mode``: ``"update"`` also requires ``id`` (FHIR ``http.html#update``: the
    body SHALL carry the id); ``"create"`` and ``"any"`` do not (on create the
    server assigns the id, ``http.html#create``). An empty list means valid.
    """
    out: list[Issue] = []
    if not _is_object(resource):
        return [_error("structure", "A resource must be a JSON object", "Resource")]
    rtype = resource.get("resourceType")
    path = rtype if type(rtype) is str and model.is_resource_type(rtype) else "Resource"
    try:
        _walk_resource(resource, path, out, None)
    except RecursionError:
        out.append(_error("structure", "The resource is nested too deeply", path))
    if mode == "update" and path != "Resource" and "id" not in resource:
        out.append(_error("required", "An update must carry the resource id", f"{path}.id"))
    return out
