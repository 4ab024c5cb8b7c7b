"""Profiles: validation of a resource against a StructureDefinition (FHIR R4
``profiling.html``, ``elementdefinition.html``), free of the database.

:func:`compile_profile` turns a constraint StructureDefinition (a snapshot, or
only a differential, which then applies onto the R4 base model of
:mod:`salus.fhir.model`: what it does not restate, the base validator of
:mod:`salus.fhir.validate` already checks) into a tree of element rules keyed
by element id (``Patient.identifier:cccd.system``). :meth:`Profile.validate`
walks the resource along that tree and checks:

* cardinality (``min``/``max``, ``0..0`` forbids an element), per parent
  instance (``elementdefinition.html#min-max``);
* type restrictions: the allowed type codes of choice elements and the target
  types of References (``ElementDefinition.type``, ``targetProfile``);
* ``fixed[x]`` (exact) and ``pattern[x]`` (the value contains the pattern:
  ``elementdefinition-definitions.html#ElementDefinition.pattern_x_``);
* ``maxLength`` of string values;
* ``required`` bindings to value sets that can be enumerated (contained in the
  profile, known to the R4 model, or supplied by the caller, e.g. ValueSets
  stored on the server); an unknown value set gives an informational issue and
  is not checked (``terminologies.html#strength``);
* ``constraint`` invariants, evaluated with fhirpathpy on the element (the
  resource as ``%resource``): severity ``error`` gives an error issue naming
  the key and the human text (``conformance-rules.html#constraints``);
* slicing (``profiling.html#slicing``) by ``value`` and ``pattern``
  discriminators on simple paths (``system``, ``code``, ``$this``): each item
  goes to the first slice it matches; slice cardinality, the slice's own
  rules, and ``closed`` slicing (no item outside the slices).

Issues name the element with a FHIRPath expression as the base validator
does (``Patient.identifier[1].system``, ``Observation.value.ofType(Quantity)``)
and never quote the resource's values. Not supported: ``type``, ``profile``
and ``exists`` discriminators, ``ordered`` slicing, extension definitions
(``Extension`` profiles), ``minValue``/``maxValue``, ``mustSupport``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

from salus.errors import InvalidInput
from salus.fhir import model

__all__ = [
    "CORE_PREFIX",
    "Profile",
    "ProfileIssue",
    "ValueSetLookup",
    "compile_profile",
    "value_set_codes",
]

log = logging.getLogger("salus.fhir.profiles")

#: Canonical URLs of the R4 base definitions (``StructureDefinition/Patient``).
CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
#: Codes of a value set by code system (``None``: not known here).
ValueSetLookup = Callable[[str], Mapping[str, frozenset[str]] | None]

_UNSET: Any = object()
_STRINGS = frozenset({"string", "code", "id", "uri", "url", "canonical", "markdown", "oid"})


@dataclass(frozen=True, slots=True)
class ProfileIssue:
    """One finding, as for ``OperationOutcome.issue``."""

    severity: str  # error | warning | information
    code: str
    message: str
    expression: str


@dataclass(slots=True)
class _Constraint:
    key: str
    severity: str
    human: str
    run: Callable[..., list[Any]]


@dataclass(slots=True)
class _Rule:
    """What one ElementDefinition of the profile requires."""

    min: int | None = None
    max: int | None = None  # None: not stated, or "*"
    types: frozenset[str] | None = None
    targets: frozenset[str] | None = None
    fixed: Any = _UNSET
    pattern: Any = _UNSET
    max_length: int | None = None
    value_set: str | None = None
    constraints: list[_Constraint] = field(default_factory=list)
    discriminators: list[tuple[str, str]] | None = None
    closed: bool = False


@dataclass(slots=True)
class _Node:
    """An element of the profile tree; ``name`` is its JSON name (or ``x[x]``)."""

    name: str
    rule: _Rule | None = None
    children: dict[str, _Node] = field(default_factory=dict)
    slices: dict[str, _Node] = field(default_factory=dict)
    #: The FHIRPath step of a type slice (``value.ofType(Quantity)``); else the name.
    step: str | None = None


# An item found in the resource: (value, FHIRPath expression, type code or None).
_Item = tuple[Any, str, str | None]


def _type_code(suffix: str) -> str | None:
    """The type code a choice element's JSON suffix names (``Quantity``, ``dateTime``)."""
    if model.has_type(suffix) and not suffix[0].islower():
        return suffix
    lower = suffix[:1].lower() + suffix[1:]
    return lower if model.primitive(lower) is not None else None


def _prefixed(element: Mapping[str, Any], prefix: str) -> Any:
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper():
            return value
    return _UNSET


def _segments(element_id: str) -> list[tuple[str, str | None, str]]:
    """``Patient.identifier:cccd.system``: (Patient, None), (identifier, cccd), (system,
    None), each with the FHIRPath step that names it. A type slice
    (``value[x]:valueQuantity``) is the JSON name, step ``value.ofType(Quantity)``."""
    out: list[tuple[str, str | None, str]] = []
    for segment in element_id.split("."):
        name, _, slice_name = segment.partition(":")
        step = name.removesuffix("[x]")
        if name.endswith("[x]") and slice_name.startswith(step) and slice_name != step:
            code = _type_code(slice_name[len(step) :])
            if code is not None:
                name, slice_name, step = slice_name, "", f"{step}.ofType({code})"
        out.append((name, slice_name or None, step))
    return out


def _element_ids(elements: list[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Element ids; derived from path and sliceName where a differential omits them."""
    open_slices: dict[str, str] = {}  # path -> id of the slice last opened at it
    for element in elements:
        path = str(element.get("path") or "")
        element_id = element.get("id")
        if not isinstance(element_id, str) or not element_id:
            element_id = path
            for sliced, slice_id in sorted(open_slices.items(), key=lambda kv: -len(kv[0])):
                if path == sliced or path.startswith(sliced + "."):
                    element_id = slice_id + path[len(sliced) :]
                    break
            if element.get("sliceName"):
                element_id = f"{element_id}:{element['sliceName']}"
        if element.get("sliceName"):
            open_slices[path] = element_id
        yield element_id, element


def _is_base_source(source: Any) -> bool:
    """A constraint inherited from an R4 base definition (checked by the base, or not at all)."""
    if not isinstance(source, str) or not source.startswith(CORE_PREFIX):
        return False
    return model.has_type(source[len(CORE_PREFIX) :]) or source.endswith("/Element")


def _rule(element: Mapping[str, Any], fhir_model: Any) -> _Rule:
    rule = _Rule()
    if isinstance(element.get("min"), int):
        rule.min = element["min"]
    raw_max = element.get("max")
    if isinstance(raw_max, str) and raw_max.isdigit():
        rule.max = int(raw_max)
    types = [t for t in element.get("type") or [] if isinstance(t, Mapping) and t.get("code")]
    if types:
        rule.types = frozenset(str(t["code"]) for t in types)
        targets = {
            str(url).split("|")[0].rsplit("/", 1)[-1]
            for t in types
            for url in t.get("targetProfile") or []
            if isinstance(url, str) and url.startswith(CORE_PREFIX)
        }
        if targets and "Resource" not in targets:
            rule.targets = frozenset(targets)
    rule.fixed = _prefixed(element, "fixed")
    rule.pattern = _prefixed(element, "pattern")
    if isinstance(element.get("maxLength"), int):
        rule.max_length = element["maxLength"]
    binding = element.get("binding")
    if isinstance(binding, Mapping) and binding.get("strength") == "required":
        value_set = binding.get("valueSet")
        rule.value_set = value_set if isinstance(value_set, str) else None
    for item in element.get("constraint") or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("expression"), str):
            continue
        if item.get("key") == "ele-1" or _is_base_source(item.get("source")):
            continue
        try:
            run = fhirpathpy.compile(item["expression"], fhir_model)
        except Exception as exc:  # a profile author's syntax error, not the resource's
            log.warning("profile constraint does not compile", extra={"error": type(exc).__name__})
            continue
        rule.constraints.append(
            _Constraint(
                str(item.get("key") or "constraint"),
                "warning" if item.get("severity") == "warning" else "error",
                str(item.get("human") or "constraint failed")[:300],
                run,
            )
        )
    slicing = element.get("slicing")
    if isinstance(slicing, Mapping):
        rule.discriminators = [
            (str(d.get("type")), str(d.get("path")))
            for d in slicing.get("discriminator") or []
            if isinstance(d, Mapping)
        ]
        rule.closed = slicing.get("rules") == "closed"
    return rule


def _contains(value: Any, pattern: Any) -> bool:
    """``pattern[x]`` semantics: every element of the pattern is in the value."""
    if isinstance(pattern, Mapping):
        return isinstance(value, Mapping) and all(
            _contains(value.get(k, _UNSET), v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(x, p) for x in value) for p in pattern)
    if isinstance(pattern, bool) or isinstance(value, bool):
        return value is pattern
    return bool(value == pattern)


def _equal(value: Any, fixed: Any) -> bool:
    """``fixed[x]`` semantics: exactly the value, nothing more."""
    if isinstance(fixed, Mapping):
        return (
            isinstance(value, Mapping)
            and set(value) == set(fixed)
            and all(_equal(value[k], v) for k, v in fixed.items())
        )
    if isinstance(fixed, list):
        return (
            isinstance(value, list)
            and len(value) == len(fixed)
            and all(_equal(a, b) for a, b in zip(value, fixed, strict=True))
        )
    if isinstance(fixed, bool) or isinstance(value, bool):
        return value is fixed
    return bool(value == fixed)


def value_set_codes(resource: Mapping[str, Any]) -> Mapping[str, frozenset[str]] | None:
    """Codes by system of a ValueSet that lists them (``expansion.contains`` or
    ``compose.include.concept`` without filters); None when it cannot be enumerated."""
    found: dict[str, set[str]] = {}
    expansion = resource.get("expansion")
    if isinstance(expansion, Mapping) and expansion.get("contains"):
        stack = list(expansion.get("contains") or [])
        while stack:
            item = stack.pop()
            if isinstance(item, Mapping):
                if item.get("system") and item.get("code"):
                    found.setdefault(str(item["system"]), set()).add(str(item["code"]))
                stack.extend(item.get("contains") or [])
        return {system: frozenset(codes) for system, codes in found.items()}
    compose = resource.get("compose")
    if not isinstance(compose, Mapping) or compose.get("exclude"):
        return None
    for include in compose.get("include") or []:
        if not isinstance(include, Mapping):
            return None
        concepts = include.get("concept")
        if include.get("filter") or include.get("valueSet") or not concepts:
            return None
        system = str(include.get("system") or "")
        found.setdefault(system, set()).update(
            str(c["code"]) for c in concepts if isinstance(c, Mapping) and c.get("code")
        )
    return {system: frozenset(codes) for system, codes in found.items()} if found else None


class Profile:
    """A compiled constraint StructureDefinition (see the module docstring)."""

    def __init__(
        self,
        url: str,
        res_type: str,
        root: _Node,
        base: str | None,
        contained: Mapping[str, Mapping[str, frozenset[str]] | None],
        problems: list[str] | None = None,
    ) -> None:
        self.url = url
        self.type = res_type
        self.root = root
        #: ``baseDefinition`` when it is another profile (checked too, by the registry).
        self.base = base
        self._contained = contained
        #: What in the profile itself could not be used (elements unknown to R4).
        self.problems = list(problems or [])

    # -- entry point -------------------------------------------------------------------
    def validate(
        self, resource: Mapping[str, Any], value_sets: ValueSetLookup | None = None
    ) -> list[ProfileIssue]:
        """Every finding of the profile on ``resource``, errors first."""
        out: list[ProfileIssue] = []
        if resource.get("resourceType") != self.type:
            message = f"The profile constrains {self.type} resources"
            return [ProfileIssue("error", "invalid", message, "resourceType")]
        walk = _Walk(self._contained, value_sets, resource)
        walk.check(self.root, [(resource, self.type, None)], out)
        order = {"error": 0, "warning": 1, "information": 2}
        return sorted(out, key=lambda issue: order.get(issue.severity, 3))


class _Walk:
    """One validation: the resource, its value sets, what was reported once."""

    def __init__(
        self,
        contained: Mapping[str, Mapping[str, frozenset[str]] | None],
        lookup: ValueSetLookup | None,
        resource: Mapping[str, Any],
    ) -> None:
        self._contained = contained
        self._lookup = lookup
        self._resource = resource
        self._unknown: set[str] = set()

    def check(self, node: _Node, items: list[_Item], out: list[ProfileIssue]) -> None:
        for value, expr, code in items:
            if node.rule is not None:
                self._value(node.rule, value, expr, code, out)
            for child in node.children.values():
                found = list(self._collect(value, child, expr))
                where = f"{expr}.{child.step or child.name.removesuffix('[x]')}"
                self._cardinality(child.rule, found, where, f"'{child.name}'", out)
                if child.slices:
                    self._slices(child, found, where, out)
                self.check(child, found, out)

    @staticmethod
    def _collect(parent: Any, node: _Node, expr: str) -> Iterator[_Item]:
        if not isinstance(parent, Mapping):
            return
        name = node.name
        if name.endswith("[x]"):
            base = name[:-3]
            for key, value in parent.items():
                code = _type_code(key[len(base) :]) if key.startswith(base) else None
                if code is not None and key != base:
                    yield from _Walk._values(value, f"{expr}.{base}.ofType({code})", code)
            return
        value = parent.get(name, _UNSET)
        if value is _UNSET:
            return
        yield from _Walk._values(value, f"{expr}.{node.step or name}", None)

    @staticmethod
    def _values(value: Any, expr: str, code: str | None) -> Iterator[_Item]:
        if isinstance(value, list):
            for index, item in enumerate(value):
                if item is not None:
                    yield item, f"{expr}[{index}]", code
        elif value is not None:
            yield value, expr, code

    @staticmethod
    def _cardinality(
        rule: _Rule | None, found: list[_Item], where: str, what: str, out: list[ProfileIssue]
    ) -> None:
        if rule is None:
            return
        if rule.min is not None and len(found) < rule.min:
            message = f"The profile requires at least {rule.min} {what}"
            out.append(ProfileIssue("error", "required", message, where))
        if rule.max is not None and len(found) > rule.max:
            message = (
                f"The profile does not allow {what} here"
                if rule.max == 0
                else f"The profile allows at most {rule.max} {what}"
            )
            out.append(ProfileIssue("error", "structure", message, where))

    def _slices(self, node: _Node, found: list[_Item], where: str, out: list[ProfileIssue]) -> None:
        rule = node.rule or _Rule()
        discriminators = rule.discriminators or []
        members: dict[str, list[_Item]] = {name: [] for name in node.slices}
        for item in found:
            for name, slice_node in node.slices.items():
                if self._in_slice(item[0], slice_node, discriminators):
                    members[name].append(item)
                    break
            else:
                if rule.closed:
                    message = "The value matches no slice of the profile (closed slicing)"
                    out.append(ProfileIssue("error", "structure", message, item[1]))
        for name, slice_node in node.slices.items():
            self._cardinality(slice_node.rule, members[name], where, f"slice '{name}'", out)
            view = _Node(node.name, slice_node.rule, slice_node.children, step=node.step)
            self.check(view, members[name], out)

    def _in_slice(
        self, value: Any, slice_node: _Node, discriminators: list[tuple[str, str]]
    ) -> bool:
        for kind, path in discriminators:
            if kind not in ("value", "pattern"):
                continue  # not supported: does not restrict membership
            expected, exact = self._slice_value(slice_node, path)
            if expected is _UNSET:
                continue
            actual = [value] if path == "$this" else list(_walk(value, path.split(".")))
            test = _equal if exact and kind == "value" else _contains
            if not any(test(candidate, expected) for candidate in actual):
                return False
        return True

    @staticmethod
    def _slice_value(slice_node: _Node, path: str) -> tuple[Any, bool]:
        """The fixed (exact) or pattern value a slice sets at a discriminator path."""
        node: _Node | None = slice_node
        if path != "$this":
            for segment in path.split("."):
                node = node.children.get(segment) if node is not None else None
        if node is not None and node.rule is not None:
            if node.rule.fixed is not _UNSET:
                return node.rule.fixed, True
            if node.rule.pattern is not _UNSET:
                return node.rule.pattern, False
        own = slice_node.rule
        for source, exact in ((own.fixed, True), (own.pattern, False)) if own else ():
            if source is _UNSET:
                continue
            values = [source] if path == "$this" else list(_walk(source, path.split(".")))
            if values:
                return values[0], exact
        return _UNSET, False

    # -- checks of one value -----------------------------------------------------------
    def _value(
        self, rule: _Rule, value: Any, expr: str, code: str | None, out: list[ProfileIssue]
    ) -> None:
        if code is not None and rule.types is not None and code not in rule.types:
            message = f"The profile does not allow the type {code} here"
            out.append(ProfileIssue("error", "structure", message, expr))
            return
        if rule.targets is not None and isinstance(value, Mapping):
            reference = value.get("reference")
            if isinstance(reference, str) and "/" in reference and "://" not in reference:
                target = reference.split("/")[0]
                if target not in rule.targets:
                    allowed = ", ".join(sorted(rule.targets))
                    message = f"The profile allows references to {allowed} only"
                    out.append(ProfileIssue("error", "invalid", message, f"{expr}.reference"))
        if rule.fixed is not _UNSET and not _equal(value, rule.fixed):
            message = "The value is not the fixed value the profile requires"
            out.append(ProfileIssue("error", "value", message, expr))
        if rule.pattern is not _UNSET and not _contains(value, rule.pattern):
            message = "The value does not match the pattern the profile requires"
            out.append(ProfileIssue("error", "value", message, expr))
        if rule.max_length is not None and isinstance(value, str) and len(value) > rule.max_length:
            message = f"The value is longer than the profile allows ({rule.max_length})"
            out.append(ProfileIssue("error", "value", message, expr))
        if rule.value_set is not None:
            self._binding(rule.value_set, value, expr, out)
        for constraint in rule.constraints:
            self._invariant(constraint, value, expr, out)

    def _binding(self, url: str, value: Any, expr: str, out: list[ProfileIssue]) -> None:
        codes = self._codes(url)
        if codes is None:
            if url not in self._unknown:
                self._unknown.add(url)
                message = f"The value set {url[:200]} is not known here; the binding is not checked"
                out.append(ProfileIssue("information", "not-found", message, expr))
            return
        message = "The code is not in the value set the profile requires"
        if isinstance(value, str):
            if not any(value in c for c in codes.values()):
                out.append(ProfileIssue("error", "code-invalid", message, expr))
            return
        if not isinstance(value, Mapping):
            return
        codings = value.get("coding") if "coding" in value or "text" in value else [value]
        pairs = [
            (c.get("system"), c.get("code"))
            for c in codings or []
            if isinstance(c, Mapping) and c.get("code") is not None
        ]
        if not any(code in codes.get(str(system), frozenset()) for system, code in pairs):
            out.append(ProfileIssue("error", "code-invalid", message, expr))

    def _codes(self, url: str) -> Mapping[str, frozenset[str]] | None:
        if url.startswith("#"):
            return self._contained.get(url[1:])
        known = model.value_set(url)
        if known is not None:
            return known
        return self._lookup(url.split("|")[0]) if self._lookup is not None else None

    def _invariant(
        self, constraint: _Constraint, value: Any, expr: str, out: list[ProfileIssue]
    ) -> None:
        if not isinstance(value, Mapping):
            value = {"value": value}  # a primitive: FHIRPath sees the element
        try:
            result = constraint.run(value, {"resource": self._resource})
        except Exception as exc:
            log.debug("constraint evaluation failed", extra={"error": type(exc).__name__})
            message = f"{constraint.key}: the constraint could not be evaluated"
            out.append(ProfileIssue("warning", "invariant", message, expr))
            return
        if result != [True]:
            message = f"{constraint.key}: {constraint.human}"
            out.append(ProfileIssue(constraint.severity, "invariant", message, expr))


def _walk(value: Any, path: list[str]) -> Iterator[Any]:
    """The values at a dotted path inside JSON (arrays flattened)."""
    if not path:
        if isinstance(value, list):
            yield from value
        else:
            yield value
        return
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, path)
    elif isinstance(value, Mapping) and path[0] in value:
        yield from _walk(value[path[0]], path[1:])


def compile_profile(definition: Mapping[str, Any]) -> Profile:
    """A :class:`Profile` from a constraint StructureDefinition (snapshot or differential).

    Raises :class:`InvalidInput` for something that is not a usable profile.
    """
    url = definition.get("url")
    res_type = definition.get("type")
    if definition.get("resourceType") != "StructureDefinition" or not isinstance(url, str):
        raise InvalidInput("A profile is a StructureDefinition with a url.")
    if not isinstance(res_type, str) or not model.is_resource_type(res_type):
        raise InvalidInput("Only profiles of resource types are supported.")
    if definition.get("derivation") == "specialization":
        raise InvalidInput("A profile constrains a type; it does not specialize it.")
    part = definition.get("snapshot") or definition.get("differential")
    elements = part.get("element") if isinstance(part, Mapping) else None
    if not isinstance(elements, list):
        raise InvalidInput("The profile has neither a snapshot nor a differential.")
    fhir_model = models["r4"]
    root = _Node(res_type)
    problems: list[str] = []
    for element_id, element in _element_ids([e for e in elements if isinstance(e, Mapping)]):
        segments = _segments(element_id)
        if segments[0][0] != res_type:
            continue
        node = root
        for name, slice_name, step in segments[1:]:
            node = node.children.setdefault(name, _Node(name, step=step))
            if slice_name is not None:
                node = node.slices.setdefault(slice_name, _Node(name))
        path = str(element.get("path") or "")
        # The model path of the element: a type slice by its JSON name (valueQuantity).
        model_path = ".".join(name for name, _, _ in segments)
        if len(segments) > 1 and model.element(model_path) is None:
            problems.append(f"The profile names an element the R4 base does not have: {path}")
            continue
        node.rule = _rule(element, fhir_model)
    contained = {
        str(item.get("id")): value_set_codes(item)
        for item in definition.get("contained") or []
        if isinstance(item, Mapping) and item.get("resourceType") == "ValueSet"
    }
    base = definition.get("baseDefinition")
    parent = base if isinstance(base, str) and not base.startswith(CORE_PREFIX) else None
    return Profile(url, res_type, root, parent, contained, problems)
