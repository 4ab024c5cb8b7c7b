"""The FHIR R4 (4.0.1) structure model: resource types, data types, elements.

Read lazily from the package data file ``definitions/r4-model.json.gz``, which
``scripts/gen_fhir_model.py`` derives from the official R4 StructureDefinitions
and ValueSets (see ``definitions/README.md``). Nothing is read at import time;
the first lookup loads and caches the model (a few tens of milliseconds).

Vocabulary (FHIR R4 ``elementdefinition.html``, ``datatypes.html``):

* a *type* is a resource type (``Observation``), a complex data type
  (``HumanName``) or a *backbone* type: the anonymous structure of a nested
  element, named by its path (``Observation.referenceRange``). Elements with a
  ``contentReference`` (``Observation.component.referenceRange``) use the type
  they refer to;
* an :class:`ElementDef` is one child element of a type, with its cardinality
  (``min``/``max``), its allowed type codes (several for a choice element
  ``value[x]``), the resource types a Reference may target and the canonical URL
  of a ``required`` value-set binding (``terminologies.html#strength``);
* a :class:`PrimitiveDef` is a primitive type with its JSON representation
  (``json.html#primitive``) and the regular expression of ``datatypes.html``.

``RESOURCE_TYPES`` (the concrete R4 resource types) is computed on first
access through the module ``__getattr__`` (PEP 562).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

__all__ = [
    "RESOURCE_TYPES",
    "ElementDef",
    "PrimitiveDef",
    "TypeDef",
    "element",
    "has_type",
    "is_resource_type",
    "primitive",
    "primitive_types",
    "resource_types",
    "type_def",
    "unexpanded_value_sets",
    "value_set",
]

MODEL_FILE = "r4-model.json.gz"
FHIR_VERSION = "4.0.1"

TypeKind = Literal["resource", "complex", "backbone"]
JsonKind = Literal["string", "boolean", "integer", "decimal"]

RESOURCE_TYPES: frozenset[str]  # provided lazily by __getattr__ below


@dataclass(frozen=True, slots=True)
class PrimitiveDef:
    """A primitive data type (``datatypes.html#primitive``)."""

    name: str
    #: JSON representation: booleans and numbers are JSON literals, the rest strings.
    json: JsonKind
    #: The specification's regex for the value (whole-value match), if any.
    regex: str | None


@dataclass(frozen=True, slots=True)
class ElementDef:
    """One element of a type (an ``ElementDefinition`` of the snapshot)."""

    #: Full path, e.g. ``Observation.value[x]``.
    path: str
    #: Last path segment, e.g. ``value[x]``.
    name: str
    min: int
    #: ``None`` for ``*``.
    max: int | None
    #: Type codes: primitive, complex, backbone type names, or ``Resource``.
    types: tuple[str, ...]
    #: Resource types a Reference may point to; ``None``: any (or not a Reference).
    targets: frozenset[str] | None
    #: Canonical URL of a ``required`` binding (code, Coding, CodeableConcept).
    value_set: str | None

    @property
    def is_choice(self) -> bool:
        """A choice element ``name[x]`` (``formats.html#choice``)."""
        return self.name.endswith("[x]")

    @property
    def is_array(self) -> bool:
        """Represented as a JSON array (max other than 1, ``json.html#arrays``)."""
        return self.max != 1

    def json_names(self) -> dict[str, str]:
        """JSON property name to type code: ``valueQuantity`` -> ``Quantity``."""
        if not self.is_choice:
            return {self.name: self.types[0]}
        base = self.name[:-3]
        return {base + code[0].upper() + code[1:]: code for code in self.types}


@dataclass(frozen=True, slots=True)
class TypeDef:
    """A resource, complex or backbone type and its elements, in spec order."""

    name: str
    kind: TypeKind
    abstract: bool
    elements: Mapping[str, ElementDef]


@cache
def _raw() -> dict[str, Any]:
    data = resources.files("salus.fhir").joinpath("definitions", MODEL_FILE).read_bytes()
    model: dict[str, Any] = json.loads(gzip.decompress(data))
    if model.get("format") != 1 or model.get("fhirVersion") != FHIR_VERSION:
        raise RuntimeError(f"unexpected FHIR model file {MODEL_FILE}")
    return model


@cache
def resource_types() -> frozenset[str]:
    """The concrete (non-abstract) R4 resource types (``resourcelist.html``)."""
    return frozenset(_raw()["resources"])


def is_resource_type(name: str) -> bool:
    """Whether ``name`` is a concrete R4 resource type."""
    return name in resource_types()


@cache
def primitive_types() -> Mapping[str, PrimitiveDef]:
    """All 20 R4 primitive types by name."""
    return {
        name: PrimitiveDef(name, info["json"], info["regex"])
        for name, info in _raw()["primitives"].items()
    }


def primitive(name: str) -> PrimitiveDef | None:
    """The primitive type ``name``, or ``None`` when it is not primitive."""
    return primitive_types().get(name)


@cache
def type_def(name: str) -> TypeDef:
    """The type ``name`` (``Observation``, ``HumanName``, ``Observation.component``).

    Raises ``KeyError`` for an unknown name (primitives are not types here).
    """
    raw = _raw()["types"][name]
    elements: dict[str, ElementDef] = {}
    for el_name, min_, max_, codes, targets, value_set in raw["elements"]:
        elements[el_name] = ElementDef(
            path=f"{name}.{el_name}",
            name=el_name,
            min=min_,
            max=None if max_ < 0 else max_,
            types=tuple(codes),
            targets=frozenset(targets) if targets is not None else None,
            value_set=value_set,
        )
    return TypeDef(name, raw["kind"], bool(raw.get("abstract")), elements)


def has_type(name: str) -> bool:
    """Whether ``name`` is a resource, complex or backbone type of the model."""
    return name in _raw()["types"]


def element(path: str) -> ElementDef | None:
    """The element at a dotted ``path``, following types through the tree.

    ``Observation.status``, ``Observation.referenceRange.low``,
    ``Observation.code.coding.system`` (through the CodeableConcept and Coding
    data types) and choice elements by their declared name
    (``Observation.value[x]``) or a JSON name (``Observation.valueQuantity``,
    which then continues into Quantity). ``None`` when there is no such element.
    """
    head, _, rest = path.partition(".")
    if not rest or not has_type(head):
        return None
    current: TypeDef | None = type_def(head)
    found: ElementDef | None = None
    for segment in rest.split("."):
        if current is None:
            return None
        found = current.elements.get(segment)
        next_type = found.types[0] if found is not None and len(found.types) == 1 else None
        if found is None:
            for candidate in current.elements.values():
                code = candidate.json_names().get(segment) if candidate.is_choice else None
                if code is not None:
                    found, next_type = candidate, code
                    break
            else:
                return None
        current = type_def(next_type) if next_type and has_type(next_type) else None
    return found


def value_set(url: str) -> Mapping[str, frozenset[str]] | None:
    """Codes of an enumerated ``required`` value set, by code system URL.

    ``None`` when the value set is not one the model could enumerate offline
    (see :func:`unexpanded_value_sets`).
    """
    return _value_sets().get(url.split("|", 1)[0])


@cache
def _value_sets() -> Mapping[str, Mapping[str, frozenset[str]]]:
    return {
        url: {system: frozenset(codes) for system, codes in systems.items()}
        for url, systems in _raw()["valueSets"].items()
    }


def unexpanded_value_sets() -> Mapping[str, str]:
    """Required-binding value sets that could not be enumerated, with the reason."""
    reasons: dict[str, str] = _raw()["unexpandedValueSets"]
    return reasons


def __getattr__(name: str) -> Any:
    if name == "RESOURCE_TYPES":
        return resource_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
