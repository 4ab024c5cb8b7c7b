"""Extraction of search index values from resources (FHIR R4 ``search.html``).

:func:`extract` evaluates every indexed search parameter of the resource's
type (the R4 SearchParameter ``expression``, restricted to that type; see
:mod:`salus.fhir.search.registry`) and converts what it finds into index
values (:mod:`salus.fhir.search.values`, which documents the conventions:
date intervals, number precision, string normalisation, reference shapes).

Each expression is compiled once (:mod:`salus.fhir.search.fhirpath`) and the
compiled plans are cached per resource type, so that indexing costs tens of
microseconds per resource. Values the data does not allow (an unparseable
date, a number in a string, a malformed Coding) are skipped, not raised: the
resource was validated before; the index holds what can be searched.

Type of the FHIR value found: this module reads the JSON shape (a
CodeableConcept has ``coding``/``text``, an Identifier or ContactPoint
``value``, a Period ``start``/``end``, a Range ``low``/``high`` ...) rather
than a StructureDefinition model; for choice elements the JSON key
(``valueQuantity``) already tells it.

Composite parameters (``search.html`` §3.1.1.9) give one
:class:`~salus.fhir.search.values.CompositeValue` per combination of component
values found under the same root (``Observation`` and each
``Observation.component`` for ``combo-code-value-quantity``); token parts
without a code (CodeableConcept.text alone) are not combined.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from salus.fhir.search.compartment import PATIENT_COMPARTMENT
from salus.fhir.search.fhirpath import CompiledExpression, compile_expression
from salus.fhir.search.registry import SearchParam, SearchRegistry, get_registry
from salus.fhir.search.rootkeys import BARE, EXACT, key_matches, root_keys
from salus.fhir.search.values import (
    DATE_MAX,
    DATE_MIN,
    NUMBER_MAX,
    NUMBER_MIN,
    CompositeValue,
    DateValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    ReferenceIdentifierValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    date_interval,
    decimal_range,
    normalize_string,
    parse_reference,
    to_decimal,
)

__all__ = [
    "CompileReport",
    "Extractor",
    "extract",
    "get_extractor",
    "patient_compartment",
    "patient_compartments",
]

Converter = Callable[[str, list[Any], list[IndexValue]], None]
Evaluate = Callable[[Any, Mapping[str, Any]], list[Any]]


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# -- converters, one per parameter type ------------------------------------------------


def _first_coding(concept: Any) -> tuple[str | None, str | None]:
    if isinstance(concept, Mapping):
        codings = concept.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                if isinstance(coding, Mapping):
                    return _s(coding.get("system")), _s(coding.get("code"))
    return None, None


def _tokens(code: str, items: list[Any], out: list[IndexValue]) -> None:
    """Token values (``search.html`` §3.1.1.3)."""
    for v in items:
        if isinstance(v, str):
            if v:
                out.append(TokenValue(code, None, v))
        elif isinstance(v, bool):
            out.append(TokenValue(code, None, "true" if v else "false"))
        elif isinstance(v, Mapping):
            if "coding" in v or ("text" in v and "value" not in v and "code" not in v):
                codings = v.get("coding")
                if isinstance(codings, list):
                    for c in codings:
                        if isinstance(c, Mapping):
                            system, value = _s(c.get("system")), _s(c.get("code"))
                            if system or value:
                                out.append(TokenValue(code, system, value, _s(c.get("display"))))
                text = _s(v.get("text"))
                if text:
                    out.append(TokenValue(code, None, None, text))
            elif "value" in v:  # Identifier, ContactPoint
                value = _s(v.get("value"))
                if value is None:
                    continue
                kind = v.get("type")
                type_system, type_code = _first_coding(kind)
                text = _s(kind.get("text")) if isinstance(kind, Mapping) else None
                out.append(
                    TokenValue(code, _s(v.get("system")), value, text, type_system, type_code)
                )
            elif "code" in v or "system" in v:  # Coding
                system, value = _s(v.get("system")), _s(v.get("code"))
                if system or value:
                    out.append(TokenValue(code, system, value, _s(v.get("display"))))
        elif isinstance(v, int | Decimal):
            out.append(TokenValue(code, None, str(v)))


_STRING_PARTS = (
    "family", "given", "prefix", "suffix", "text",  # HumanName
    "line", "city", "district", "state", "postalCode", "country",  # Address
)  # fmt: skip


def _string(code: str, value: Any, out: list[IndexValue]) -> None:
    if isinstance(value, str):
        text = value.strip()
        if text:
            out.append(StringValue(code, normalize_string(text), text))


def _strings(code: str, items: list[Any], out: list[IndexValue]) -> None:
    """String values (``search.html`` §3.1.1.6): each HumanName/Address part separately."""
    for v in items:
        if isinstance(v, str):
            _string(code, v, out)
        elif isinstance(v, Mapping):
            for key in _STRING_PARTS:
                part = v.get(key)
                if isinstance(part, list):
                    for p in part:
                        _string(code, p, out)
                elif part is not None:
                    _string(code, part, out)


def _dates(code: str, items: list[Any], out: list[IndexValue]) -> None:
    """Date intervals (``search.html`` §3.1.1.4): date, dateTime, instant, Period, Timing."""
    for v in items:
        if isinstance(v, str):
            interval = date_interval(v)
            if interval is not None:
                out.append(DateValue(code, *interval))
        elif isinstance(v, Mapping):
            if "start" in v or "end" in v:
                bounds = _period(v)
                if bounds is not None:
                    out.append(DateValue(code, *bounds))
            elif "event" in v or "repeat" in v:
                lows, highs = [], []
                events = v.get("event")
                for event in events if isinstance(events, list) else ():
                    interval = date_interval(event) if isinstance(event, str) else None
                    if interval is not None:
                        lows.append(interval[0])
                        highs.append(interval[1])
                repeat = v.get("repeat")
                bounds_period = repeat.get("boundsPeriod") if isinstance(repeat, Mapping) else None
                if isinstance(bounds_period, Mapping):
                    bounds = _period(bounds_period)
                    if bounds is not None:
                        lows.append(bounds[0])
                        highs.append(bounds[1])
                if lows:
                    out.append(DateValue(code, min(lows), max(highs)))


def _period(period: Mapping[str, Any]) -> tuple[Any, Any] | None:
    start, end = period.get("start"), period.get("end")
    low = high = None
    if isinstance(start, str):
        interval = date_interval(start)
        if interval is None:
            return None
        low = interval[0]
    if isinstance(end, str):
        interval = date_interval(end)
        if interval is None:
            return None
        high = interval[1]
    if low is None and high is None:
        return None
    return low or DATE_MIN, high or DATE_MAX


def _numbers(code: str, items: list[Any], out: list[IndexValue]) -> None:
    """Number ranges (``search.html`` §3.1.1.1): integer, decimal, Range, Quantity value."""
    for v in items:
        if isinstance(v, Mapping):
            if "low" in v or "high" in v:
                low, high = _range_ends(v)
                if low is not None or high is not None:
                    out.append(NumberValue(code, low or NUMBER_MIN, high or NUMBER_MAX))
                continue
            v = v.get("value")
        found = decimal_range(v)
        if found is not None:
            out.append(NumberValue(code, *found))


def _range_ends(rng: Mapping[str, Any]) -> tuple[Decimal | None, Decimal | None]:
    low, high = rng.get("low"), rng.get("high")
    return (
        to_decimal(low.get("value")) if isinstance(low, Mapping) else None,
        to_decimal(high.get("value")) if isinstance(high, Mapping) else None,
    )


def _quantities(code: str, items: list[Any], out: list[IndexValue]) -> None:
    """Quantity ranges (``search.html`` §3.1.1.5): Quantity kinds, Money, Range."""
    for v in items:
        if isinstance(v, Mapping):
            if "low" in v or "high" in v:  # Range
                low, high = _range_ends(v)
                if low is None and high is None:
                    continue
                unit_of = v.get("low") if isinstance(v.get("low"), Mapping) else v.get("high")
                assert isinstance(unit_of, Mapping)  # noqa: S101 - one end has a value
                out.append(
                    QuantityValue(
                        code,
                        _s(unit_of.get("system")),
                        _s(unit_of.get("code")),
                        _s(unit_of.get("unit")),
                        NUMBER_MIN if low is None else low,
                        NUMBER_MAX if high is None else high,
                    )
                )
                continue
            found = decimal_range(v.get("value"))
            if found is None:
                continue  # SampledData, no value
            low, high, value = found
            currency = _s(v.get("currency"))
            if currency:  # Money
                out.append(
                    QuantityValue(
                        code, "urn:iso:std:iso:4217", currency, currency, low, high, value
                    )
                )
                continue
            comparator = v.get("comparator")
            if comparator in ("<", "<="):
                low = NUMBER_MIN
            elif comparator in (">", ">="):
                high = NUMBER_MAX
            out.append(
                QuantityValue(
                    code,
                    _s(v.get("system")),
                    _s(v.get("code")),
                    _s(v.get("unit")),
                    low,
                    high,
                    value,
                )  # fmt: skip
            )
        else:
            found = decimal_range(v)
            if found is not None:
                out.append(QuantityValue(code, None, None, None, *found))


def _references(code: str, items: list[Any], out: list[IndexValue]) -> None:
    """References (``search.html`` §3.1.1.7): Reference, canonical, uri."""
    for v in items:
        if isinstance(v, str):
            rtype, rid, url, version = parse_reference(v)
            if rtype or url:
                out.append(ReferenceValue(code, rtype, rid, url, version))
        elif isinstance(v, Mapping):
            if "resourceType" in v:  # Bundle.entry[0].resource: the resource itself
                rtype, rid = _s(v.get("resourceType")), _s(v.get("id"))
                if rtype and rid:
                    out.append(ReferenceValue(code, rtype, rid, None))
                continue
            ref = _s(v.get("reference"))
            if ref is not None:
                rtype, rid, url, version = parse_reference(ref)
                if rtype is None:
                    rtype = _s(v.get("type"))
                if rtype or url:
                    out.append(ReferenceValue(code, rtype, rid, url, version))
            ident = v.get("identifier")
            if isinstance(ident, Mapping):
                value = _s(ident.get("value"))
                if value is not None:
                    type_system, type_code = _first_coding(ident.get("type"))
                    out.append(
                        ReferenceIdentifierValue(
                            code, _s(ident.get("system")), value, type_system, type_code
                        )
                    )


def _uris(code: str, items: list[Any], out: list[IndexValue]) -> None:
    """URIs (``search.html`` §3.1.1.8)."""
    for v in items:
        if isinstance(v, str) and v:
            out.append(UriValue(code, v))


CONVERTERS: Mapping[str, Converter] = {
    "token": _tokens,
    "string": _strings,
    "date": _dates,
    "number": _numbers,
    "quantity": _quantities,
    "reference": _references,
    "uri": _uris,
}


# -- plans -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Component:
    code: str
    evaluate: Evaluate
    convert: Converter
    coded_only: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    param: SearchParam
    evaluate: Evaluate
    convert: Converter | None
    components: tuple[_Component, ...]
    #: The top-level keys without which the plan finds nothing (None: always run).
    keys: frozenset[str] | None = None


def _plan_keys(param: SearchParam) -> frozenset[str] | None:
    """:func:`~salus.fhir.search.rootkeys.root_keys` of a parameter; for a
    composite whose root is the resource itself, the keys of one component
    (a root without any component value gives no composite value): one cast
    to a type if there is one (``value.as(Quantity)`` rather than ``code``,
    which every Observation has), else the first that is a plain path."""
    keys = root_keys(param.expression or "")
    if keys is None or BARE not in keys:
        return keys
    usable = []
    for comp in param.components:
        comp_keys = root_keys(comp.expression)
        if comp_keys is not None and BARE not in comp_keys:
            usable.append(comp_keys)
    if not usable:
        return None
    typed = [k for k in usable if any(key.startswith(EXACT) for key in k)]
    return (keys - {BARE}) | (typed or usable)[0]


@dataclass(slots=True)
class _Dispatch:
    """Which plans of one resource type a top-level key can give values to."""

    plans: tuple[_Plan, ...]
    always: int  # bit i: plan i runs whatever the keys
    by_key: dict[str, int]

    def mask(self, resource: Mapping[str, Any]) -> int:
        found = self.always
        by_key = self.by_key
        for key in resource:
            bits = by_key.get(key)
            if bits is None:
                bits = 0
                for i, plan in enumerate(self.plans):
                    if plan.keys is not None and any(key_matches(key, k) for k in plan.keys):
                        bits |= 1 << i
                if len(by_key) < _MAX_KEYS:  # keys come from the request body
                    by_key[key] = bits
            found |= bits
        return found


_MAX_KEYS = 4096


@dataclass(frozen=True, slots=True)
class CompileReport:
    """How the R4 expressions compiled (see :meth:`Extractor.compile_all`)."""

    params: int  # (resource type, code) pairs
    indexed: int  # of which with values to extract
    expressions: int  # distinct expressions (parameters and composite components)
    fallback: tuple[str, ...]  # expressions evaluated by fhirpathpy
    fallback_params: int  # indexed (type, code) pairs that use one of them


#: Component values per (root's id, component), for one resource: see
#: :meth:`Extractor._composite`.
_PartsCache = dict[tuple[Any, ...], tuple[Any, list[IndexValue]]]

#: At most this many composite values per root (a guard against combinatorial blow-up).
MAX_COMBINATIONS = 256


class Extractor:
    """Compiles and caches extraction plans per resource type (thread-safe)."""

    def __init__(self, registry: SearchRegistry | None = None) -> None:
        self.registry = registry or get_registry()
        self._compiled: dict[str, CompiledExpression] = {}
        self._plans: dict[str, tuple[_Plan, ...]] = {}
        self._dispatch: dict[str, _Dispatch] = {}
        self._lock = threading.Lock()

    def compile(self, expression: str) -> CompiledExpression:
        found = self._compiled.get(expression)
        if found is None:
            found = compile_expression(expression, choice_elements=self.registry.choice_elements)
            self._compiled[expression] = found
        return found

    def plans(self, resource_type: str) -> tuple[_Plan, ...]:
        plans = self._plans.get(resource_type)
        if plans is not None:
            return plans
        params = self.registry.params_for(resource_type)  # KeyError: unknown type
        with self._lock:
            built = []
            for param in params.values():
                if not param.indexed or param.expression is None:
                    continue
                components = tuple(
                    _Component(
                        comp.code,
                        self.compile(comp.expression).evaluate,
                        CONVERTERS[comp.type],
                        comp.type == "token",
                    )
                    for comp in param.components
                )
                built.append(
                    _Plan(
                        param,
                        self.compile(param.expression).evaluate,
                        CONVERTERS.get(param.type),
                        components,
                        _plan_keys(param),
                    )
                )
            plans = tuple(built)
            always = 0
            for i, plan in enumerate(plans):
                if plan.keys is None:
                    always |= 1 << i
            self._dispatch[resource_type] = _Dispatch(plans, always, {})
            self._plans[resource_type] = plans
        return plans

    def compile_all(self) -> CompileReport:
        """Compile every R4 parameter of every type; what needed the fallback."""
        params = indexed = fallback_params = 0
        for rtype in self.registry.resource_types():
            params += len(self.registry.params_for(rtype))
            for plan in self.plans(rtype):
                indexed += 1
                exprs = [plan.param.expression or ""] + [
                    c.expression for c in plan.param.components
                ]
                if any(self.compile(e).fallback for e in exprs):
                    fallback_params += 1
        fallback = tuple(sorted(e for e, c in self._compiled.items() if c.fallback))
        return CompileReport(params, indexed, len(self._compiled), fallback, fallback_params)

    # -- extraction ---------------------------------------------------------------------

    def extract(self, resource: Mapping[str, Any]) -> list[IndexValue]:
        """Every index value of ``resource`` (ValueError: no or unknown resourceType).

        Only the plans whose first steps the resource has are evaluated
        (:mod:`salus.fhir.search.rootkeys`); the others would find nothing.
        """
        plans = self._plans_of(resource)
        mask = self._dispatch[resource["resourceType"]].mask(resource)
        out: list[IndexValue] = []
        parts_cache: _PartsCache = {}
        for plan in plans:
            if mask & 1:
                self._run(plan, resource, out, parts_cache)
            mask >>= 1
        return out

    def extract_every_plan(self, resource: Mapping[str, Any]) -> list[IndexValue]:
        """:meth:`extract` evaluating every plan (the reference the tests compare with)."""
        out: list[IndexValue] = []
        for plan in self._plans_of(resource):
            self._run(plan, resource, out)
        return out

    def extract_param(self, resource: Mapping[str, Any], code: str) -> list[IndexValue]:
        """The index values of one parameter ``code`` of ``resource``."""
        out: list[IndexValue] = []
        for plan in self._plans_of(resource):
            if plan.param.code == code:
                self._run(plan, resource, out)
        return out

    def _plans_of(self, resource: Mapping[str, Any]) -> tuple[_Plan, ...]:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            raise ValueError("not a FHIR resource: no resourceType")
        try:
            return self.plans(rtype)
        except KeyError:
            raise ValueError(f"not an R4 resource type: {rtype!r}") from None

    def _run(
        self,
        plan: _Plan,
        resource: Mapping[str, Any],
        out: list[IndexValue],
        parts_cache: _PartsCache | None = None,
    ) -> None:
        items = plan.evaluate(resource, resource)
        if not items:
            return
        start = len(out)
        if plan.components:
            self._composite(plan, items, resource, out, {} if parts_cache is None else parts_cache)
        elif plan.convert is not None:
            plan.convert(plan.param.code, items, out)
        if len(out) - start > 1:  # the same value reached twice is one value
            segment = out[start:]
            unique = list(dict.fromkeys(segment))
            if len(unique) != len(segment):
                out[start:] = unique

    def _composite(
        self,
        plan: _Plan,
        roots: list[Any],
        resource: Mapping[str, Any],
        out: list[IndexValue],
        parts_cache: _PartsCache,
    ) -> None:
        """Combinations of the component values under each root. A
        component's values under a root are made once per resource
        (``parts_cache``, keyed by the root's identity: the roots live as long
        as the cache, which keeps them): Observation's eight ``code``-first composites share
        their ``code`` part."""
        code = plan.param.code
        for root in roots:
            parts: list[list[IndexValue]] = []
            for comp in plan.components:
                key = (id(root), comp.code, comp.evaluate, comp.convert, comp.coded_only)
                cached = parts_cache.get(key)
                if cached is not None:
                    values = cached[1]
                else:
                    values = []
                    comp.convert(comp.code, comp.evaluate(root, resource), values)
                    if comp.coded_only:
                        values = [v for v in values if isinstance(v, TokenValue) and v.code]
                    values = list(dict.fromkeys(values))
                    # The root is kept with its values: while the cache lives,
                    # no other object can take its id.
                    parts_cache[key] = (root, values)
                if not values:
                    break
                parts.append(values)
            else:
                combos = itertools.islice(itertools.product(*parts), MAX_COMBINATIONS)
                out.extend(CompositeValue(code, combo) for combo in combos)

    # -- compartments -------------------------------------------------------------------

    def patient_compartments(
        self, resource: Mapping[str, Any], values: list[IndexValue] | None = None
    ) -> tuple[str, ...]:
        """Ids of the Patients whose compartment holds ``resource`` (R4 CompartmentDefinition).

        In the order of the compartment definition's parameters, without
        duplicates. ``values``: the resource's :meth:`extract` result, if at hand.
        """
        return self._patient_ids(resource, values, first=False)

    def patient_compartment(
        self, resource: Mapping[str, Any], values: list[IndexValue] | None = None
    ) -> str | None:
        """The id of the Patient ``resource`` belongs to (the first one), or None."""
        found = self._patient_ids(resource, values, first=True)
        return found[0] if found else None

    def _patient_ids(
        self, resource: Mapping[str, Any], values: list[IndexValue] | None, first: bool
    ) -> tuple[str, ...]:
        """The ids of :meth:`patient_compartments`; with ``first``, the first one
        alone, no parameter extracted after the one it comes from."""
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            own = _s(resource.get("id"))
            return (own,) if own else ()
        codes = PATIENT_COMPARTMENT.get(rtype) if isinstance(rtype, str) else None
        found: dict[str, None] = {}
        for code in codes or ():
            refs = (
                [v for v in values if v.param == code]
                if values is not None
                else self.extract_param(resource, code)
            )
            for ref in refs:
                if isinstance(ref, ReferenceValue) and ref.target_type == "Patient":
                    if ref.target_id:
                        if first:
                            return (ref.target_id,)
                        found[ref.target_id] = None
        return tuple(found)


_default: Extractor | None = None
_default_lock = threading.Lock()


def get_extractor() -> Extractor:
    """The shared extractor over the packaged R4 registry."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Extractor()
    return _default


def extract(resource: Mapping[str, Any]) -> list[IndexValue]:
    """Every search index value of ``resource`` (see :class:`Extractor`)."""
    return get_extractor().extract(resource)


def patient_compartment(
    resource: Mapping[str, Any], values: list[IndexValue] | None = None
) -> str | None:
    """The id of the Patient whose compartment holds ``resource`` (Patient: its own id)."""
    return get_extractor().patient_compartment(resource, values)


def patient_compartments(
    resource: Mapping[str, Any], values: list[IndexValue] | None = None
) -> tuple[str, ...]:
    """Ids of every Patient whose compartment holds ``resource``."""
    return get_extractor().patient_compartments(resource, values)
