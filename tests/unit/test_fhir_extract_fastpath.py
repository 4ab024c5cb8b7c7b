"""The extractor's fast path gives exactly the index values of the general one.

:meth:`Extractor.extract` skips the parameters whose first steps the resource
lacks (:mod:`salus.fhir.search.rootkeys`) and shares composite component
values between parameters; :meth:`Extractor.extract_every_plan` evaluates
every parameter on its own. Both must give the same values in the same order
(so the same index rows, FHIR R4 ``search.html``) for every resource type and
parameter in the Synthea test bundles, the search tests' resources and the
benchmark's generated ones, also with each top-level element removed in turn.
The extended test does the same over the shared Synthea corpus.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from salus.fhir.indexing import Indexer, _composite_row, _date_shapes
from salus.fhir.search import Extractor, get_extractor
from salus.fhir.search.rootkeys import BARE, key_matches, root_keys
from tests.unit.test_fhir_extract import (
    BP_JSON,
    SHARED_SYNTHEA,
    load_bundle,
    resolve_transaction,
    synthea_resources,
)

ROOT = Path(__file__).resolve().parents[2]
SYNTHEA = ROOT / "tests" / "data" / "fhir" / "synthea"


def _search_test_resources() -> Iterator[dict[str, Any]]:
    """Shapes of the search tests' and the load benchmark's resources."""
    rng = random.Random(4)
    for family in ("Nguyễn", "Trần", "김"):
        yield {
            "resourceType": "Patient",
            "id": uuid.uuid4().hex,
            "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"},
            "identifier": [{"system": "urn:hosp-a:mrn", "value": f"A-{rng.randrange(999)}"}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": ["Văn", "An"]}],
            "gender": "male",
            "birthDate": "1970-05-20",
            "telecom": [{"system": "phone", "value": "+84-900000000", "use": "mobile"}],
            "address": [{"use": "home", "line": ["1 Lê Lợi"], "city": "Huế", "country": "VN"}],
        }
    for value, unit in ((5.4, "mmol/L"), (13.2, "g/dL")):
        yield {
            "resourceType": "Observation",
            "id": uuid.uuid4().hex,
            "status": "final",
            "category": [{"coding": [{"system": "urn:cat", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}], "text": "t"},
            "subject": {"reference": f"Patient/{uuid.uuid4()}"},
            "effectiveDateTime": "2026-01-10T10:00:00Z",
            "valueQuantity": {
                "value": value,
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
        }
    yield json.loads(BP_JSON)
    yield from HAND_WRITTEN


#: Other types and value kinds (choice types, Range, Age, Money, Timing,
#: canonical, extensions on primitives, a document Bundle).
HAND_WRITTEN: list[dict[str, Any]] = [
    {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"text": "asthma"},
        "subject": {"reference": "Patient/p1"},
        "onsetRange": {"low": {"value": 3, "unit": "a"}, "high": {"value": 5, "unit": "a"}},
        "abatementAge": {"value": 9, "system": "http://unitsofmeasure.org", "code": "a"},
        "_recordedDate": {"extension": [{"url": "urn:x", "valueString": "unknown"}]},
    },
    {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "Medication/m1"},
        "subject": {"reference": "Patient/p1"},
        "dosageInstruction": [{"timing": {"event": ["2024-01-01", "2024-02-01"]}}],
        "instantiatesCanonical": ["http://example.org/PlanDefinition/x|2"],
    },
    {
        "resourceType": "ChargeItem",
        "status": "billable",
        "code": {"coding": [{"code": "x"}]},
        "subject": {"reference": "Patient/p1"},
        "priceOverride": {"value": 12.5, "currency": "EUR"},
        "factorOverride": 0.5,
        "occurrenceTiming": {"repeat": {"boundsPeriod": {"start": "2024-01-01"}}},
    },
    {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 0.25, "outcome": {"text": "stroke"}}],
    },
    {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "characteristic": [
            {
                "code": {"coding": [{"code": "age"}]},
                "valueQuantity": {"value": 40},
                "exclude": False,
            }
        ],
        "member": [{"entity": {"reference": "Patient/p1"}}],
    },
    {
        "resourceType": "Bundle",
        "type": "document",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
        "timestamp": "2024-01-01T00:00:00Z",
        "entry": [
            {"resource": {"resourceType": "Composition", "id": "c1", "status": "final"}},
            {"resource": {"resourceType": "Patient", "id": "p1"}},
        ],
    },
    *(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            key: value,
            "component": [{"code": {"coding": [{"code": "c"}]}, key: value}],
        }
        for key, value in (
            ("valueCodeableConcept", {"coding": [{"system": "urn:v", "code": "pos"}]}),
            ("valueString", "trace"),
            ("valueDateTime", "2024-03-01T10:00:00Z"),
            ("valuePeriod", {"start": "2024-03-01", "end": "2024-03-02"}),
            ("valueBoolean", True),
            ("valueInteger", 3),
            ("valueRange", {"low": {"value": 1}, "high": {"value": 2}}),
            ("valueRatio", {"numerator": {"value": 1}, "denominator": {"value": 2}}),
            ("valueSampledData", {"origin": {"value": 0}, "period": 1, "dimensions": 1}),
            ("valueTime", "10:00:00"),
            ("_valueString", {"extension": [{"url": "urn:x", "valueCode": "masked"}]}),
        )
    ),
    {
        "resourceType": "Patient",
        "deceasedBoolean": False,
        "extension": [{"url": "urn:race", "valueString": "x"}],
        "_gender": {"extension": [{"url": "urn:x", "valueCode": "unknown"}]},
        "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}],
    },
]


def _synthea_test_resources() -> list[dict[str, Any]]:
    resources = list(synthea_resources())
    for path in sorted(SYNTHEA.glob("*.json.gz")):
        resources.extend(resolve_transaction(load_bundle(path)))
    resources.extend(_search_test_resources())
    return resources


def _same(extractor: Extractor, resource: dict[str, Any]) -> None:
    fast = extractor.extract(resource)
    general = extractor.extract_every_plan(resource)
    assert fast == general, resource["resourceType"]


def test_fast_path_equals_every_plan_on_test_bundles() -> None:
    extractor = get_extractor()
    resources = _synthea_test_resources()
    types = {r["resourceType"] for r in resources}
    assert len(types) >= 17 and {"Patient", "Observation", "Encounter"} <= types
    values = 0
    for resource in resources:
        _same(extractor, resource)
        values += len(extractor.extract(resource))
    assert values > 9_000
    # Rows, as stored, through the indexer.
    indexer = Indexer(extractor.extract)
    reference = Indexer(extractor.extract_every_plan)
    for resource in resources[:200]:
        rtype = resource["resourceType"]
        assert indexer.rows(7, rtype, resource) == reference.rows(7, rtype, resource)


def test_fast_path_with_each_top_level_element_removed() -> None:
    """Every skip decision is met: each key absent in turn (one resource per shape)."""
    extractor = get_extractor()
    seen: set[tuple[str, frozenset[str]]] = set()
    checked = 0
    for resource in _synthea_test_resources():
        shape = (resource["resourceType"], frozenset(resource))
        if shape in seen:
            continue
        seen.add(shape)
        for key in resource:
            if key == "resourceType":
                continue
            smaller = {k: v for k, v in resource.items() if k != key}
            _same(extractor, smaller)
            checked += 1
    assert checked > 300


def test_fast_path_skips_what_is_absent() -> None:
    extractor = get_extractor()
    observation = {"resourceType": "Observation", "status": "final"}
    plans = extractor.plans("Observation")
    dispatch = extractor._dispatch["Observation"]
    mask = dispatch.mask(observation)
    ran = {p.param.code for i, p in enumerate(plans) if mask >> i & 1}
    assert "status" in ran and "_id" not in ran
    assert not {"code", "value-quantity", "code-value-quantity", "subject"} & ran
    # A choice element's typed key, and a primitive's extension key, count.
    with_value = {**observation, "valueQuantity": {"value": 1}, "_effectiveDateTime": {}}
    mask = dispatch.mask(with_value)
    ran = {p.param.code for i, p in enumerate(plans) if mask >> i & 1}
    assert {"value-quantity", "combo-value-quantity", "date"} <= ran
    assert extractor.extract(with_value) == extractor.extract_every_plan(with_value)
    # A value cast to a type needs that type's key: valueQuantity runs the
    # Quantity parameters and composites, not the concept, string or date ones.
    assert {"code-value-quantity", "combo-code-value-quantity"} <= ran
    assert not {"value-concept", "value-string", "value-date", "code-value-concept"} & ran
    assert not {"code-value-string", "code-value-date", "combo-value-concept"} & ran
    coded = {**observation, "code": {"text": "x"}, "valueString": "trace"}
    mask = dispatch.mask(coded)
    ran = {p.param.code for i, p in enumerate(plans) if mask >> i & 1}
    assert {"value-string", "code-value-string", "code"} <= ran
    assert not {"value-quantity", "code-value-quantity", "code-value-concept"} & ran
    assert extractor.extract(coded) == extractor.extract_every_plan(coded)


def test_composite_parts_shared_between_parameters() -> None:
    extractor = get_extractor()
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "valueQuantity": {"value": 5.4, "system": "http://unitsofmeasure.org", "code": "mg"},
        "component": [
            {"code": {"coding": [{"code": "a"}]}, "valueQuantity": {"value": 1}},
            {"code": {"coding": [{"code": "b"}]}, "valueString": "x"},
        ],
    }
    found = extractor.extract(observation)
    assert found == extractor.extract_every_plan(copy.deepcopy(observation))
    combos: list[Any] = [v for v in found if v.param == "combo-code-value-quantity"]
    assert [(c.parts[0].code, c.parts[1].value) for c in combos] == [
        ("2345-7", Decimal("5.4")),
        ("a", Decimal("1")),
    ]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("Patient.name", {"name"}),
        ("Resource.meta.lastUpdated", {"meta"}),
        (
            "(Observation.value as Quantity) | (Observation.component.value as Quantity)",
            {
                "valueQuantity",
                "valueAge",
                "valueCount",
                "valueDistance",
                "valueDuration",
                "=value",
                "component",
            },
        ),
        ("(Observation.value as CodeableConcept).text", {"valueCodeableConcept", "=value"}),
        ("Observation.subject.where(resolve() is Patient)", {"subject"}),
        ("Patient.telecom.where(system='email')", {"telecom"}),
        ("Observation | Observation.component", {BARE, "component"}),
        (
            "value.as(Quantity)",
            {"valueQuantity", "valueAge", "valueCount", "valueDistance", "valueDuration", "=value"},
        ),
        ("value.ofType(string)", {"valueString", "=value"}),
        ("Observation.value.as(FHIR.Period).start", {"valuePeriod", "=value"}),
        ("Observation.value.where(true).as(Period)", {"value"}),  # not cast at once
        ("Observation.component.value.as(Quantity)", {"component"}),
        ("Patient.extension('http://x')", {"extension"}),
        ("extension('http://x').value", {"extension"}),
        ("Bundle.entry[0].resource", {"entry"}),
        ("Patient.name.first().family", {"name"}),
    ],
)
def test_root_keys_of_paths(expression: str, expected: set[str]) -> None:
    assert root_keys(expression) == frozenset(expected)


@pytest.mark.parametrize(
    "expression",
    [
        "Patient.deceased.exists() and Patient.deceased != false",
        "Patient.name.exists()",
        "Patient.name.empty()",
        "Patient.active = true",
        "%resource.name",
        "Patient.name | %resource.id",
        "(Patient.name | Patient.address).where(use='home')",
        "Observation.subject.resolve() is Patient",
        "Patient.name.count()",
        "'x'",
        "now()",
    ],
)
def test_root_keys_refuses_what_empty_input_can_answer(expression: str) -> None:
    assert root_keys(expression) is None


def test_key_matches() -> None:
    assert key_matches("valueQuantity", "value")
    assert key_matches("_birthDate", "birthDate")
    assert key_matches("name", "name")
    assert not key_matches("code", "value")
    assert key_matches("value", "=value")
    assert key_matches("_value", "=value")
    assert not key_matches("valueQuantity", "=value")
    assert key_matches("valueQuantity", "valueQuantity")
    assert not key_matches("valueString", "valueQuantity")


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED_SYNTHEA.is_dir(), reason=f"extended test: {SHARED_SYNTHEA} not present"
)
def test_fast_path_equals_every_plan_on_the_shared_corpus() -> None:
    extractor = get_extractor()
    count = 0
    for path in sorted(SHARED_SYNTHEA.glob("*.json")):
        for resource in resolve_transaction(load_bundle(path)):
            _same(extractor, resource)
            count += 1
    assert count == 10803


# -- index rows: the row mapping as it was before stop 16 (the reference) ------------


def _reference_rows(rid: int, res_type: str, resource: dict[str, Any]) -> dict[str, list[Any]]:
    """Indexer.rows as first written (tables by name): each value through
    a chain of class-name tests, then de-duplicated by the row's content."""

    def cut(value: Any, limit: int = 255) -> str | None:
        return None if value is None else str(value)[:limit]

    def row(value: Any) -> tuple[str, dict[str, Any]] | None:
        kind, param = type(value).__name__, value.param
        if kind == "TokenValue":
            return "fhir_idx_token", {
                "param": param,
                "system": cut(value.system),
                "code": cut(value.code),
                "text": cut(value.text),
                "type_system": cut(value.type_system),
                "type_code": cut(value.type_code),
            }
        if kind == "StringValue":
            return "fhir_idx_string", {
                "param": param,
                "norm": cut(value.normalized) or "",
                "exact": cut(value.exact) or "",
            }
        if kind in ("DateValue", "NumberValue"):
            table = "fhir_idx_date" if kind == "DateValue" else "fhir_idx_number"
            return table, {"param": param, "low": value.low, "high": value.high}
        if kind == "QuantityValue":
            return "fhir_idx_quantity", {
                "param": param,
                "system": cut(value.system),
                "code": cut(value.code),
                "low": value.low,
                "high": value.high,
            }
        if kind == "ReferenceValue":
            return "fhir_idx_reference", {
                "param": param,
                "target_type": cut(value.target_type, 64),
                "target_id": cut(value.target_id, 64),
                "url": cut(value.url, 1024),
            }
        if kind == "ReferenceIdentifierValue":
            return "fhir_idx_token", {
                "param": f"{param}:identifier",
                "system": cut(value.system),
                "code": cut(value.code),
                "text": None,
                "type_system": None,
                "type_code": None,
            }
        if kind == "UriValue":
            return "fhir_idx_uri", {"param": param, "value": cut(value.value, 1024) or ""}
        if kind == "CompositeValue":
            mapped = _composite_row(value)
            return None if mapped is None else (mapped[0].name, mapped[1])
        return None

    grouped: dict[str, list[Any]] = {}
    seen: set[tuple[Any, ...]] = set()
    for value in get_extractor().extract_every_plan(resource):
        mapped = row(value)
        if mapped is None:
            continue
        table, values = mapped
        key = (table, *values.values())
        if key in seen:
            continue
        seen.add(key)
        values.update(rid=rid, res_type=res_type)
        grouped.setdefault(table, []).append(values)
    if "fhir_idx_date" in grouped:
        _date_shapes(grouped["fhir_idx_date"])
    return grouped


def test_index_rows_equal_the_reference_mapping() -> None:
    """Same tables, rows, columns and column order as the first mapping
    (long texts included: they are cut at the column's length)."""
    indexer = Indexer()
    resources = _synthea_test_resources()
    long_name = {
        "resourceType": "Patient",
        "name": [{"family": "N" * 300, "given": ["x" * 255, "y" * 256]}],
        "identifier": [{"system": "urn:" + "s" * 300, "value": "v" * 256}],
        "managingOrganization": {"reference": "Organization/" + "o" * 63},
        "generalPractitioner": [{"reference": "Practitioner/" + "p" * 65}],
        "link": [{"other": {"reference": "http://x.org/" + "p" * 1012}, "type": "refer"}],
    }
    rows_checked = 0
    for resource in [*resources, long_name]:
        rtype = resource["resourceType"]
        got = indexer.rows(11, rtype, resource)
        expected = _reference_rows(11, rtype, resource)
        assert {t.name: rows for t, rows in got.items()} == expected
        for table, rows in got.items():
            for found, wanted in zip(rows, expected[table.name], strict=True):
                assert list(found) == list(wanted)  # the key order too
                rows_checked += 1
    assert rows_checked > 9_000
