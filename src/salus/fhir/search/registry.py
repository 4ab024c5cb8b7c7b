"""The search parameter registry, from the official R4 SearchParameter definitions.

The data (``salus/fhir/definitions/search-parameters.json.gz``) is generated
by ``scripts/gen_search_params.py`` from the FHIR R4 (4.0.1)
``Bundle-searchParams.json`` (CC0): 1,375 SearchParameter resources (FHIR R4
``searchparameter.html``), not a hand-written list.

Each definition may apply to several resource types (``base``) and its
``expression`` is then a union over them (``AllergyIntolerance.code |
Condition.code | ...``). :meth:`SearchRegistry.params_for` gives, per type,
a :class:`SearchParam` whose expression keeps only that type's branches.
Parameters based on ``Resource`` (``_id``, ``_lastUpdated``, ``_tag``,
``_profile``, ``_security``, ``_source``, ``_query``, ``_content``) apply to
every type, and ``_text`` (base ``DomainResource``) to all but Binary, Bundle
and Parameters (FHIR R4 ``search.html`` §3.1.1.0 "Parameters for all
resources"). ``_text``, ``_content`` and ``_query`` have no expression: they
are declared but not indexed (:attr:`SearchParam.indexed` is False), as is the
``special`` parameter ``Location.near``.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from salus.fhir.search.fhirpath import branch_root, split_union
from salus.fhir.search.resource_types import NON_DOMAIN_RESOURCES, RESOURCE_TYPES

__all__ = [
    "ParamType",
    "SearchParam",
    "SearchParamComponent",
    "SearchRegistry",
    "get_registry",
]

ParamType = Literal[
    "number", "date", "string", "token", "reference", "quantity", "uri", "composite", "special"
]
_PARAM_TYPES = frozenset(ParamType.__args__)  # type: ignore[attr-defined]
_DATA = "definitions/search-parameters.json.gz"


@dataclass(frozen=True, slots=True)
class SearchParamComponent:
    """One component of a composite parameter (``SearchParameter.component``).

    ``expression`` is relative to each value of the composite's expression;
    ``code`` and ``type`` are those of the parameter at ``definition``.
    """

    definition: str
    expression: str
    code: str
    type: ParamType


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A search parameter as it applies to one resource type."""

    resource_type: str
    code: str
    type: ParamType
    #: FHIRPath restricted to ``resource_type``'s branches; None: not indexed.
    expression: str | None
    url: str
    base: tuple[str, ...]
    targets: tuple[str, ...] = ()
    components: tuple[SearchParamComponent, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    multiple_or: bool | None = None
    multiple_and: bool | None = None
    xpath_usage: str = "normal"

    @property
    def indexed(self) -> bool:
        """Whether the extractor gives values for it (an expression, not ``special``)."""
        return self.expression is not None and self.type != "special"


def _restrict(expression: str | None, resource_type: str) -> str | None:
    """The branches of a union that start at ``resource_type`` (or Resource).

    A branch that starts with an element name (R4 ``InsurancePlan-name`` is
    ``name | alias``) is relative to the resource and kept.
    """
    if not expression:
        return None
    keep = []
    for branch in split_union(expression):
        root = branch_root(branch)
        if root in (resource_type, "Resource", "DomainResource") or (
            root is not None and not root[:1].isupper()
        ):
            keep.append(branch)
    return " | ".join(keep) if keep else None


class SearchRegistry:
    """All R4 search parameters, by resource type and code (thread-safe, lazy per type)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.fhir_version: str = data["fhirVersion"]
        self.choice_elements: frozenset[str] = frozenset(data.get("choice_elements", ()))
        self._defs: dict[str, dict[str, Any]] = {}
        self._by_type: dict[str, list[dict[str, Any]]] = {t: [] for t in RESOURCE_TYPES}
        for raw in data["params"]:
            if raw["type"] not in _PARAM_TYPES:
                raise ValueError(f"unknown search parameter type {raw['type']!r}")
            self._defs[raw["url"]] = raw
            for base in raw["base"]:
                if base == "Resource":
                    targets = list(RESOURCE_TYPES)
                elif base == "DomainResource":
                    targets = [t for t in RESOURCE_TYPES if t not in NON_DOMAIN_RESOURCES]
                elif base in self._by_type:
                    targets = [base]
                else:
                    raise ValueError(f"{raw['url']}: unknown base {base!r}")
                for rtype in targets:
                    self._by_type[rtype].append(raw)
        self._cache: dict[str, Mapping[str, SearchParam]] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path | None = None) -> SearchRegistry:
        """Read the packaged definitions (or the gzip JSON at ``path``)."""
        if path is None:
            raw = resources.files("salus.fhir").joinpath(_DATA).read_bytes()
        else:
            raw = Path(path).read_bytes()
        return cls(json.loads(gzip.decompress(raw)))

    # -- lookups -----------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of SearchParameter definitions."""
        return len(self._defs)

    def resource_types(self) -> tuple[str, ...]:
        return RESOURCE_TYPES

    def definitions(self) -> Iterator[Mapping[str, Any]]:
        """The compact definitions as generated (one per SearchParameter url)."""
        return iter(self._defs.values())

    def definition(self, url: str) -> Mapping[str, Any] | None:
        return self._defs.get(url)

    def params_for(self, resource_type: str) -> Mapping[str, SearchParam]:
        """Every parameter of ``resource_type`` by code (KeyError: not an R4 type)."""
        cached = self._cache.get(resource_type)
        if cached is not None:
            return cached
        if resource_type not in self._by_type:
            raise KeyError(f"not an R4 resource type: {resource_type!r}")
        with self._lock:
            params: dict[str, SearchParam] = {}
            for raw in self._by_type[resource_type]:
                param = self._build(raw, resource_type)
                if param.code in params:
                    raise ValueError(f"{resource_type}: two parameters named {param.code!r}")
                params[param.code] = param
            view: Mapping[str, SearchParam] = MappingProxyType(dict(sorted(params.items())))
            self._cache[resource_type] = view
        return view

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        """The parameter ``code`` of ``resource_type``, or None."""
        try:
            return self.params_for(resource_type).get(code)
        except KeyError:
            return None

    def _build(self, raw: Mapping[str, Any], resource_type: str) -> SearchParam:
        components = []
        for comp in raw.get("component", ()):
            target = self._defs.get(comp["definition"])
            if target is None:
                raise ValueError(f"{raw['url']}: unknown component {comp['definition']}")
            components.append(
                SearchParamComponent(
                    definition=comp["definition"],
                    expression=comp["expression"],
                    code=target["code"],
                    type=cast(ParamType, target["type"]),
                )
            )
        return SearchParam(
            resource_type=resource_type,
            code=raw["code"],
            type=cast(ParamType, raw["type"]),
            expression=_restrict(raw.get("expression"), resource_type),
            url=raw["url"],
            base=tuple(raw["base"]),
            targets=tuple(raw.get("target", ())),
            components=tuple(components),
            modifiers=tuple(raw.get("modifier", ())),
            comparators=tuple(raw.get("comparator", ())),
            multiple_or=raw.get("multipleOr"),
            multiple_and=raw.get("multipleAnd"),
            xpath_usage=raw.get("xpathUsage", "normal"),
        )


_registry: SearchRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> SearchRegistry:
    """The registry of the packaged R4 definitions (loaded once, on first use)."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = SearchRegistry.load()
    return _registry
