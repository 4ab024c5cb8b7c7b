"""Search parameter registry and index value extraction (FHIR R4 search.html).

Hand-written resources check every value kind and the precision rules of
search.html (date intervals, number precision, string normalisation,
reference shapes, composites); three Synthea bundles under
tests/data/fhir/synthea-extract/ must extract without error; the extended
test runs over every bundle of ../shared/corpora/synthea-r4 when present.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import statistics
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from salus.fhir.search import (
    DATE_MAX,
    DATE_MIN,
    NUMBER_MAX,
    NUMBER_MIN,
    CompositeValue,
    DateValue,
    Extractor,
    NumberValue,
    QuantityValue,
    ReferenceIdentifierValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    compile_expression,
    date_interval,
    decimal_range,
    extract,
    get_extractor,
    get_registry,
    normalize_string,
    parse_reference,
    patient_compartment,
    patient_compartments,
)
from salus.fhir.search.compartment import PATIENT_COMPARTMENT
from salus.fhir.search.resource_types import RESOURCE_TYPES

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "fhir" / "synthea-extract"
SHARED = ROOT.parent / "shared" / "corpora"
SHARED_BUNDLE = SHARED / "fhir-r4-definitions" / "Bundle-searchParams.json"
SHARED_SYNTHEA = SHARED / "synthea-r4" / "bundles"
SHARED_NDJSON = SHARED / "synthea-r4" / "bulk-ndjson-10-patients"
GENERATOR = ROOT / "scripts" / "gen_search_params.py"
PACKAGED = ROOT / "src" / "salus" / "fhir" / "definitions" / "search-parameters.json.gz"


def dt(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def values(resource: Mapping[str, Any], code: str) -> list[Any]:
    return [v for v in extract(resource) if v.param == code]


# -- registry ----------------------------------------------------------------------------


def test_registry_has_every_r4_definition() -> None:
    registry = get_registry()
    assert len(registry) == 1375
    assert registry.fhir_version == "4.0.1"
    assert len(RESOURCE_TYPES) == 146
    total = sum(len(registry.params_for(t)) for t in RESOURCE_TYPES)
    assert total == 3008  # 1,375 definitions spread over their base types
    common = {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_content"}
    for rtype in RESOURCE_TYPES:
        params = registry.params_for(rtype)
        assert common <= set(params), rtype
        assert ("_text" in params) == (rtype not in ("Binary", "Bundle", "Parameters"))
    assert len(registry.params_for("Observation")) == 47
    assert len(registry.params_for("Patient")) == 32


def test_registry_restricts_union_expressions_to_the_type() -> None:
    registry = get_registry()
    code = registry.get("Observation", "code")
    assert code is not None
    assert code.type == "token"
    assert code.expression == "Observation.code"
    assert code.url == "http://hl7.org/fhir/SearchParameter/clinical-code"
    assert "Condition" in code.base
    med = registry.get("MedicationRequest", "code")
    assert med is not None and med.expression == "(MedicationRequest.medication as CodeableConcept)"
    allergy = registry.get("AllergyIntolerance", "code")
    assert allergy is not None
    assert allergy.expression == "AllergyIntolerance.code | AllergyIntolerance.reaction.substance"
    patient = registry.get("Observation", "patient")
    assert patient is not None
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.targets == ("Patient", "Group")
    ident = registry.get("Patient", "_id")
    assert ident is not None and ident.expression == "Resource.id" and ident.indexed
    # R4's InsurancePlan-name is relative ("name | alias"): kept as is.
    plan = registry.get("InsurancePlan", "name")
    assert plan is not None and plan.expression == "name | alias"
    # declared, not indexed
    text = registry.get("Patient", "_text")
    assert text is not None and text.expression is None and not text.indexed
    near = registry.get("Location", "near")
    assert near is not None and near.type == "special" and not near.indexed
    assert registry.get("Observation", "no-such-param") is None
    assert registry.get("NotAType", "_id") is None
    with pytest.raises(KeyError):
        registry.params_for("NotAType")


def test_registry_composites_have_typed_components() -> None:
    combo = get_registry().get("Observation", "combo-code-value-quantity")
    assert combo is not None
    assert combo.type == "composite"
    assert combo.expression == "Observation | Observation.component"
    assert [(c.code, c.type, c.expression) for c in combo.components] == [
        ("combo-code", "token", "code"),
        ("combo-value-quantity", "quantity", "value.as(Quantity)"),
    ]
    assert combo.multiple_or is False


def test_every_r4_expression_compiles_without_fallback() -> None:
    report = Extractor().compile_all()
    assert report.params == 3008
    assert report.indexed == 2572  # less _text/_content/_query and Location.near
    assert report.fallback == ()
    assert report.fallback_params == 0


def test_patient_compartment_params_are_reference_params() -> None:
    registry = get_registry()
    for rtype, codes in PATIENT_COMPARTMENT.items():
        for code in codes:
            param = registry.get(rtype, code)
            assert param is not None, (rtype, code)
            assert param.type == "reference", (rtype, code)


@pytest.mark.skipif(not SHARED_BUNDLE.exists(), reason=f"{SHARED_BUNDLE} not present")
def test_packaged_definitions_regenerate_identically(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_search_params", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out.json.gz"
    assert module.main(["gen", str(SHARED_BUNDLE), str(out)]) == 0
    assert out.read_bytes() == PACKAGED.read_bytes()


# -- value conversions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", dt(2020, 1, 1), dt(2020, 12, 31, 23, 59, 59, 999999)),
        ("2020-02", dt(2020, 2, 1), dt(2020, 2, 29, 23, 59, 59, 999999)),
        ("2021-02", dt(2021, 2, 1), dt(2021, 2, 28, 23, 59, 59, 999999)),
        ("2020-12", dt(2020, 12, 1), dt(2020, 12, 31, 23, 59, 59, 999999)),
        ("2020-02-29", dt(2020, 2, 29), dt(2020, 2, 29, 23, 59, 59, 999999)),
        ("2020-03-04T10:20:30Z", dt(2020, 3, 4, 10, 20, 30), dt(2020, 3, 4, 10, 20, 30, 999999)),
        (
            "2020-03-04T10:20:30.5+02:00",
            dt(2020, 3, 4, 8, 20, 30, 500000),
            dt(2020, 3, 4, 8, 20, 30, 599999),
        ),
        (
            "2020-03-04T23:20:30.123-05:30",
            dt(2020, 3, 5, 4, 50, 30, 123000),
            dt(2020, 3, 5, 4, 50, 30, 123999),
        ),
        (
            "2020-03-04T10:20:30.123456789Z",
            dt(2020, 3, 4, 10, 20, 30, 123456),
            dt(2020, 3, 4, 10, 20, 30, 123456),
        ),
        # no time zone: taken as UTC
        ("2020-03-04T10:20:30", dt(2020, 3, 4, 10, 20, 30), dt(2020, 3, 4, 10, 20, 30, 999999)),
        ("2020-03-04T10:20Z", dt(2020, 3, 4, 10, 20), dt(2020, 3, 4, 10, 20, 59, 999999)),
        ("9999", dt(9999, 1, 1), DATE_MAX),
    ],
)
def test_date_interval_follows_precision(text: str, low: datetime, high: datetime) -> None:
    assert date_interval(text) == (low, high)


@pytest.mark.parametrize(
    "text", ["2020-13", "2020-02-30", "20200101", "soon", "", "2020-01-01T25:00:00Z"]
)
def test_date_interval_rejects_invalid(text: str) -> None:
    assert date_interval(text) is None


@pytest.mark.parametrize(
    ("number", "low", "high"),
    [
        (Decimal("100"), "99.5", "100.5"),
        (Decimal("100.0"), "99.95", "100.05"),
        (Decimal("100.00"), "99.995", "100.005"),
        (Decimal("1E+2"), "50", "150"),
        (Decimal("0.001"), "0.0005", "0.0015"),
        (Decimal("-2.5"), "-2.55", "-2.45"),
        (3, "2.5", "3.5"),
        (0.1, "0.05", "0.15"),  # a float is read through repr
        (100.0, "99.95", "100.05"),
    ],
)
def test_decimal_range_is_the_implicit_precision(number: Any, low: str, high: str) -> None:
    found = decimal_range(number)
    assert found is not None
    assert found[:2] == (Decimal(low), Decimal(high))
    assert found[2] == Decimal(str(number))


@pytest.mark.parametrize("number", [True, "12", None, float("nan"), Decimal("Infinity"), {}])
def test_decimal_range_rejects_non_numbers(number: Any) -> None:
    assert decimal_range(number) is None


def test_decimal_range_cache_keeps_numbers_as_written() -> None:
    """JSON numbers are cached: 1, 1.0 and true are equal keys to Python."""
    for _ in range(2):  # the second time from the cache
        assert decimal_range(1) == (Decimal("0.5"), Decimal("1.5"), Decimal("1"))
        assert decimal_range(1.0) == (Decimal("0.95"), Decimal("1.05"), Decimal("1.0"))
        assert decimal_range(True) is None and decimal_range(False) is None
        assert str(decimal_range(-0.0)[2]) == "-0.0"  # type: ignore[index]
        assert str(decimal_range(0.0)[2]) == "0.0"  # type: ignore[index]
        assert str(decimal_range(0)[2]) == "0"  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("SMITH", "smith"),
        ("Nguyễn", "nguyen"),
        ("Trần Văn Đức", "tran van duc"),
        ("Đặng Thị Hồng Nhung", "dang thi hong nhung"),
        ("Phạm Ngọc Ánh", "pham ngoc anh"),
        ("김민준", "김민준"),
        ("이서연", "이서연"),
        ("王小明", "王小明"),
        ("ｶﾀｶﾅ", "カタカナ"),  # half-width kana: NFKC
        ("ＡＢＣ", "abc"),
        ("Müller-Lüdenscheidt", "muller-ludenscheidt"),
        ("Ørsted Łukasz", "orsted lukasz"),
        ("Straße", "strasse"),
        ("José María", "jose maria"),
    ],
)
def test_normalize_string(text: str, normalized: str) -> None:
    assert normalize_string(text) == normalized


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", ("Patient", "123", None, None)),
        ("Patient/123/_history/4", ("Patient", "123", None, "4")),
        (
            "https://fhir.example.org/r4/Patient/p-1",
            ("Patient", "p-1", "https://fhir.example.org/r4/Patient/p-1", None),
        ),
        (
            "https://fhir.example.org/r4/Observation/o.1/_history/7",
            ("Observation", "o.1", "https://fhir.example.org/r4/Observation/o.1/_history/7", "7"),
        ),
        (
            "http://example.org/fhir/Questionnaire/phq-9|3.1",
            ("Questionnaire", "phq-9", "http://example.org/fhir/Questionnaire/phq-9", "3.1"),
        ),
        (
            "http://hl7.org/fhir/ValueSet/observation-codes",
            (
                "ValueSet",
                "observation-codes",
                "http://hl7.org/fhir/ValueSet/observation-codes",
                None,
            ),
        ),
        (
            "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
            (None, None, "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", None),
        ),
        ("urn:oid:1.2.3", (None, None, "urn:oid:1.2.3", None)),
        ("#med1", (None, None, "#med1", None)),
        (
            "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999974592",
            (None, None, "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999974592", None),
        ),
        ("http://example.org/some/page", (None, None, "http://example.org/some/page", None)),
        ("Unknown/1", (None, None, "Unknown/1", None)),
        ("", (None, None, None, None)),
    ],
)
def test_parse_reference(reference: str, expected: tuple[str | None, ...]) -> None:
    assert parse_reference(reference) == expected


# -- hand-written resources --------------------------------------------------------------

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "vn-1",
    "meta": {
        "lastUpdated": "2024-05-06T07:08:09.123+07:00",
        "profile": ["http://example.org/StructureDefinition/vn-patient"],
        "tag": [{"system": "http://example.org/tags", "code": "import"}],
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
        ],
        "source": "http://hospital.example.vn/his#a1",
    },
    "identifier": [
        {
            "use": "official",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}
                ],
                "text": "CCCD",
            },
            "system": "urn:oid:2.16.704.1.1",
            "value": "001080012345",
        },
        {"system": "http://hospital.example.vn/mrn", "value": "MRN-42"},
    ],
    "active": True,
    "name": [
        {
            "use": "official",
            "text": "Nguyễn Văn Đức",
            "family": "Nguyễn",
            "given": ["Văn", "Đức"],
        },
        {"family": "김", "given": ["민준"], "prefix": ["Dr."]},
    ],
    "telecom": [
        {"system": "phone", "value": "+84 24 3825 1234", "use": "home"},
        {"system": "email", "value": "duc@example.vn"},
    ],
    "gender": "male",
    "birthDate": "1980-05",
    "deceasedDateTime": "2023-11-02T14:00:00+07:00",
    "address": [
        {
            "line": ["12 Phố Huế"],
            "city": "Hà Nội",
            "district": "Hai Bà Trưng",
            "postalCode": "100000",
            "country": "VN",
        }
    ],
    "generalPractitioner": [{"reference": "https://fhir.example.vn/r4/Practitioner/gp-7"}],
    "managingOrganization": {
        "identifier": {"system": "urn:oid:2.16.704.1.2", "value": "BV-BACHMAI"},
        "display": "Bạch Mai",
    },
    "link": [{"other": {"reference": "Patient/vn-old/_history/3"}, "type": "replaces"}],
}


def test_patient_tokens_identifiers_and_telecom() -> None:
    assert values(PATIENT, "identifier") == [
        TokenValue(
            "identifier",
            "urn:oid:2.16.704.1.1",
            "001080012345",
            "CCCD",
            "http://terminology.hl7.org/CodeSystem/v2-0203",
            "NI",
        ),
        TokenValue("identifier", "http://hospital.example.vn/mrn", "MRN-42"),
    ]
    assert values(PATIENT, "phone") == [TokenValue("phone", "phone", "+84 24 3825 1234")]
    assert values(PATIENT, "email") == [TokenValue("email", "email", "duc@example.vn")]
    assert len(values(PATIENT, "telecom")) == 2
    assert values(PATIENT, "gender") == [TokenValue("gender", None, "male")]
    assert values(PATIENT, "active") == [TokenValue("active", None, "true")]
    assert values(PATIENT, "deceased") == [TokenValue("deceased", None, "true")]
    assert values(PATIENT, "_id") == [TokenValue("_id", None, "vn-1")]
    assert values(PATIENT, "_tag") == [TokenValue("_tag", "http://example.org/tags", "import")]
    assert values(PATIENT, "_security") == [
        TokenValue("_security", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")
    ]


def test_patient_strings_are_normalised_per_part() -> None:
    assert values(PATIENT, "family") == [
        StringValue("family", "nguyen", "Nguyễn"),
        StringValue("family", "김", "김"),
    ]
    assert values(PATIENT, "given") == [
        StringValue("given", "van", "Văn"),
        StringValue("given", "duc", "Đức"),
        StringValue("given", "민준", "민준"),
    ]
    assert values(PATIENT, "name") == [
        StringValue("name", "nguyen", "Nguyễn"),
        StringValue("name", "van", "Văn"),
        StringValue("name", "duc", "Đức"),
        StringValue("name", "nguyen van duc", "Nguyễn Văn Đức"),
        StringValue("name", "김", "김"),
        StringValue("name", "민준", "민준"),
        StringValue("name", "dr.", "Dr."),
    ]
    assert values(PATIENT, "address") == [
        StringValue("address", "12 pho hue", "12 Phố Huế"),
        StringValue("address", "ha noi", "Hà Nội"),
        StringValue("address", "hai ba trung", "Hai Bà Trưng"),
        StringValue("address", "100000", "100000"),
        StringValue("address", "vn", "VN"),
    ]
    assert values(PATIENT, "address-city") == [StringValue("address-city", "ha noi", "Hà Nội")]


def test_patient_dates_uris_and_references() -> None:
    assert values(PATIENT, "birthdate") == [
        DateValue("birthdate", dt(1980, 5, 1), dt(1980, 5, 31, 23, 59, 59, 999999))
    ]
    assert values(PATIENT, "death-date") == [
        DateValue("death-date", dt(2023, 11, 2, 7), dt(2023, 11, 2, 7, 0, 0, 999999))
    ]
    assert values(PATIENT, "_lastUpdated") == [
        DateValue("_lastUpdated", dt(2024, 5, 6, 0, 8, 9, 123000), dt(2024, 5, 6, 0, 8, 9, 123999))
    ]
    assert values(PATIENT, "_profile") == [
        UriValue("_profile", "http://example.org/StructureDefinition/vn-patient")
    ]
    assert values(PATIENT, "_source") == [UriValue("_source", "http://hospital.example.vn/his#a1")]
    assert values(PATIENT, "general-practitioner") == [
        ReferenceValue(
            "general-practitioner",
            "Practitioner",
            "gp-7",
            "https://fhir.example.vn/r4/Practitioner/gp-7",
        )
    ]
    assert values(PATIENT, "organization") == [
        ReferenceIdentifierValue("organization", "urn:oid:2.16.704.1.2", "BV-BACHMAI")
    ]
    assert values(PATIENT, "link") == [ReferenceValue("link", "Patient", "vn-old", None, "3")]


def test_deceased_token_follows_the_r4_expression() -> None:
    alive = {"resourceType": "Patient", "id": "a", "deceasedBoolean": False}
    unknown = {"resourceType": "Patient", "id": "b"}
    dead = {"resourceType": "Patient", "id": "c", "deceasedBoolean": True}
    assert values(alive, "deceased") == [TokenValue("deceased", None, "false")]
    assert values(unknown, "deceased") == [TokenValue("deceased", None, "false")]
    assert values(dead, "deceased") == [TokenValue("deceased", None, "true")]


LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
BP_JSON = """{
  "resourceType": "Observation",
  "id": "bp-1",
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs"}]}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "BP panel"}],
           "text": "Blood pressure"},
  "subject": {"reference": "Patient/p1/_history/2"},
  "encounter": {"reference": "urn:uuid:5f0b7a4e-1d5c-4a8b-9e0f-3c2d1b0a9f8e", "type": "Encounter"},
  "performer": [{"reference": "https://fhir.example.org/r4/Practitioner/dr-a"},
                {"reference": "#perf"}],
  "effectivePeriod": {"start": "2024-01-15T08:30:00+01:00"},
  "valueQuantity": {"value": 120.50, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]"},
  "component": [
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
     "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                       "code": "mm[Hg]"}},
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}], "text": "Diastolic"},
     "valueQuantity": {"value": 80.0, "comparator": "<", "unit": "mmHg",
                       "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
  ]
}"""
BP: dict[str, Any] = json.loads(BP_JSON, parse_float=Decimal)


def test_observation_quantities_keep_decimal_precision() -> None:
    assert values(BP, "value-quantity") == [
        QuantityValue(
            "value-quantity",
            UCUM,
            "mm[Hg]",
            "mmHg",
            Decimal("120.495"),
            Decimal("120.505"),
            Decimal("120.50"),
        )
    ]
    assert values(BP, "component-value-quantity") == [
        QuantityValue(
            "component-value-quantity",
            UCUM,
            "mm[Hg]",
            "mmHg",
            Decimal("119.5"),
            Decimal("120.5"),
            Decimal("120"),
        ),
        # comparator "<": open below
        QuantityValue(
            "component-value-quantity",
            UCUM,
            "mm[Hg]",
            "mmHg",
            NUMBER_MIN,
            Decimal("80.05"),
            Decimal("80.0"),
        ),
    ]


def test_observation_tokens_dates_and_references() -> None:
    assert values(BP, "code") == [
        TokenValue("code", LOINC, "85354-9", "BP panel"),
        TokenValue("code", None, None, "Blood pressure"),
    ]
    assert values(BP, "component-code") == [
        TokenValue("component-code", LOINC, "8480-6"),
        TokenValue("component-code", LOINC, "8462-4"),
        TokenValue("component-code", None, None, "Diastolic"),
    ]
    assert values(BP, "date") == [DateValue("date", dt(2024, 1, 15, 7, 30), DATE_MAX)]
    assert values(BP, "subject") == [ReferenceValue("subject", "Patient", "p1", None, "2")]
    assert values(BP, "patient") == [ReferenceValue("patient", "Patient", "p1", None, "2")]
    assert values(BP, "encounter") == [
        ReferenceValue(
            "encounter", "Encounter", None, "urn:uuid:5f0b7a4e-1d5c-4a8b-9e0f-3c2d1b0a9f8e"
        )
    ]
    assert values(BP, "performer") == [
        ReferenceValue(
            "performer", "Practitioner", "dr-a", "https://fhir.example.org/r4/Practitioner/dr-a"
        ),
        ReferenceValue("performer", None, None, "#perf"),
    ]


def test_observation_composites_per_root() -> None:
    panel = TokenValue("code", LOINC, "85354-9", "BP panel")
    whole = QuantityValue(
        "value-quantity", UCUM, "mm[Hg]", "mmHg", Decimal("120.495"), Decimal("120.505"),
        Decimal("120.50"),
    )  # fmt: skip
    # code-value-quantity: the Observation itself (text-only tokens are not combined)
    assert values(BP, "code-value-quantity") == [
        CompositeValue("code-value-quantity", (panel, whole))
    ]
    # component-code-value-quantity: one per component
    component = values(BP, "component-code-value-quantity")
    assert [(c.parts[0].code, c.parts[1].value) for c in component] == [
        ("8480-6", Decimal("120")),
        ("8462-4", Decimal("80.0")),
    ]
    assert all(isinstance(c, CompositeValue) for c in component)
    assert component[0].parts[0] == TokenValue("component-code", LOINC, "8480-6")
    # combo: the Observation and each component
    combo = values(BP, "combo-code-value-quantity")
    assert [(c.parts[0].code, c.parts[1].value) for c in combo] == [
        ("85354-9", Decimal("120.50")),
        ("8480-6", Decimal("120")),
        ("8462-4", Decimal("80.0")),
    ]
    assert {p.param for c in combo for p in c.parts} == {"combo-code", "combo-value-quantity"}


def test_observation_with_group_subject_has_no_patient() -> None:
    obs = {
        "resourceType": "Observation",
        "id": "g",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Group/g1"},
        "performer": [{"reference": "Patient/self-reporter"}],
        "effectiveTiming": {
            "event": ["2024-03-01", "2024-02-10T10:00:00Z"],
            "repeat": {"boundsPeriod": {"start": "2024-01-01", "end": "2024-06"}},
        },
        "valueCodeableConcept": {
            "coding": [{"system": "http://snomed.info/sct", "code": "373066001"}]
        },
        "valueString": "ignored: one value[x] only, but a test of the typed keys",
    }
    assert values(obs, "patient") == []
    assert values(obs, "subject") == [ReferenceValue("subject", "Group", "g1", None)]
    # a Timing covers its events and bounds (search.html: the outer limits)
    assert values(obs, "date") == [
        DateValue("date", dt(2024, 1, 1), dt(2024, 6, 30, 23, 59, 59, 999999))
    ]
    assert values(obs, "value-concept") == [
        TokenValue("value-concept", "http://snomed.info/sct", "373066001")
    ]
    assert values(obs, "value-string") == [
        StringValue("value-string", "ignored: one value[x] only, but a test of the typed keys",
                    "ignored: one value[x] only, but a test of the typed keys"),
    ]  # fmt: skip
    assert values(obs, "value-quantity") == []
    assert patient_compartment(obs) == "self-reporter"


def test_condition_choice_types_and_ranges() -> None:
    cond = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
        "onsetAge": {"value": 45, "unit": "a", "system": UCUM, "code": "a"},
        "abatementRange": {"low": {"value": 50, "system": UCUM, "code": "a"}},
        "recordedDate": "2020-06-01",
    }
    assert values(cond, "onset-age") == [
        QuantityValue("onset-age", UCUM, "a", "a", Decimal("44.5"), Decimal("45.5"), Decimal(45))
    ]
    assert values(cond, "abatement-age") == [
        QuantityValue("abatement-age", UCUM, "a", None, Decimal(50), NUMBER_MAX)
    ]
    assert values(cond, "onset-date") == []
    assert values(cond, "recorded-date") == [
        DateValue("recorded-date", dt(2020, 6, 1), dt(2020, 6, 1, 23, 59, 59, 999999))
    ]
    assert values(cond, "code") == [TokenValue("code", "http://hl7.org/fhir/sid/icd-10", "E11.9")]
    assert patient_compartment(cond) == "p1"


def test_numbers_money_periods_and_canonicals() -> None:
    risk = {
        "resourceType": "RiskAssessment",
        "id": "r",
        "subject": {"reference": "Patient/p2"},
        "prediction": [
            {"probabilityDecimal": Decimal("0.25")},
            {"probabilityRange": {"low": {"value": 10}, "high": {"value": 20}}},
        ],
    }
    assert values(risk, "probability") == [
        NumberValue("probability", Decimal("0.245"), Decimal("0.255"), Decimal("0.25")),
        NumberValue("probability", Decimal(10), Decimal(20)),
    ]
    charge = {
        "resourceType": "ChargeItem",
        "id": "ch",
        "status": "billable",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/p2"},
        "factorOverride": 0.8,
        "priceOverride": {"value": 150000, "currency": "VND"},
        "occurrencePeriod": {"end": "2024-02-03"},
    }
    assert values(charge, "factor-override") == [
        NumberValue("factor-override", Decimal("0.75"), Decimal("0.85"), Decimal("0.8"))
    ]
    assert values(charge, "price-override") == [
        QuantityValue(
            "price-override", "urn:iso:std:iso:4217", "VND", "VND", Decimal("149999.5"),
            Decimal("150000.5"), Decimal(150000),
        )
    ]  # fmt: skip
    assert values(charge, "occurrence") == [
        DateValue("occurrence", DATE_MIN, dt(2024, 2, 3, 23, 59, 59, 999999))
    ]
    plan = {
        "resourceType": "PlanDefinition",
        "id": "pd",
        "status": "active",
        "url": "http://example.org/fhir/PlanDefinition/diabetes",
        "relatedArtifact": [
            {"type": "depends-on", "resource": "http://example.org/fhir/Library/lib|1.2"},
            {"type": "citation", "citation": "x"},
        ],
        "library": ["http://example.org/fhir/Library/other"],
    }
    assert values(plan, "url") == [
        UriValue("url", "http://example.org/fhir/PlanDefinition/diabetes")
    ]
    assert values(plan, "depends-on") == [
        ReferenceValue(
            "depends-on", "Library", "lib", "http://example.org/fhir/Library/lib", "1.2"
        ),
        ReferenceValue("depends-on", "Library", "other", "http://example.org/fhir/Library/other"),
    ]
    assert values(plan, "composed-of") == []


def test_medication_choice_code_or_reference() -> None:
    coded = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p3"},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "310965"}]
        },
    }
    referenced = dict(coded, id="m2")
    del referenced["medicationCodeableConcept"]
    referenced["medicationReference"] = {"reference": "Medication/med-9"}
    assert values(coded, "code") == [
        TokenValue("code", "http://www.nlm.nih.gov/research/umls/rxnorm", "310965")
    ]
    assert values(coded, "medication") == []
    assert values(referenced, "code") == []
    assert values(referenced, "medication") == [
        ReferenceValue("medication", "Medication", "med-9", None)
    ]


def test_bundle_composition_and_duplicates() -> None:
    bundle = {
        "resourceType": "Bundle",
        "id": "doc",
        "type": "document",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
        "timestamp": "2024-01-01T00:00:00Z",
        "entry": [{"resource": {"resourceType": "Composition", "id": "comp-1"}}],
    }
    assert values(bundle, "composition") == [
        ReferenceValue("composition", "Composition", "comp-1", None)
    ]
    assert values(bundle, "message") == [ReferenceValue("message", "Composition", "comp-1", None)]
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a",
        "patient": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "227493005"}]},
        "reaction": [
            {"substance": {"coding": [{"system": "http://snomed.info/sct", "code": "227493005"}]}}
        ],
    }
    # reached through two branches of the union: one value
    assert values(allergy, "code") == [TokenValue("code", "http://snomed.info/sct", "227493005")]


def test_extract_rejects_non_resources() -> None:
    with pytest.raises(ValueError, match="resourceType"):
        extract({"id": "x"})
    with pytest.raises(ValueError, match="not an R4 resource type"):
        extract({"resourceType": "Spaceship"})


def test_malformed_values_are_skipped() -> None:
    odd = {
        "resourceType": "Observation",
        "id": "odd",
        "status": ["final"],
        "code": {"coding": [{"system": 12, "code": None}, "nonsense"], "text": ""},
        "subject": {"reference": 42},
        "effectiveDateTime": "last tuesday",
        "valueQuantity": {"value": "12"},
        "issued": "2024-13-01T00:00:00Z",
    }
    found = extract(odd)
    assert [v.param for v in found] == ["_id", "status"]


# -- the compiler ------------------------------------------------------------------------


def test_compiler_subset() -> None:
    patient = {
        "resourceType": "Patient",
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "Huế"},
            }
        ],
        "name": [{"given": ["A", "B"]}, {"given": ["C"]}],
        "telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}],
    }
    choice = frozenset({"value"})

    def run(expression: str) -> list[Any]:
        compiled = compile_expression(expression, choice_elements=choice)
        assert not compiled.fallback, expression
        return compiled.evaluate(patient, patient)

    birth_place = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
    assert run(f"Patient.extension('{birth_place}').value") == [{"city": "Huế"}]
    assert run(f"Patient.extension.where(url = '{birth_place}').value.ofType(Address).city") == [
        "Huế"
    ]
    assert run("Patient.name.given") == ["A", "B", "C"]
    assert run("Patient.name[1].given") == ["C"]
    assert run("Patient.name.given.first()") == ["A"]
    assert run("Patient.telecom.where(system='phone').value") == ["1"]
    assert run("Patient.telecom.where(system='phone' or system='email').value") == ["a@b", "1"]
    assert run("Patient.name.exists() and Patient.gender.empty()") == [True]
    assert run("Patient.birthDate.exists().not()") == [True]
    assert run("%resource.name.given | Patient.telecom.value") == ["A", "B", "C", "a@b", "1"]


def test_compiler_falls_back_to_fhirpathpy() -> None:
    pytest.importorskip("fhirpathpy")
    patient = {"resourceType": "Patient", "name": [{"given": ["A", "B"]}, {"given": ["C"]}]}
    compiled = compile_expression("Patient.name.given.count()")
    assert compiled.fallback
    assert compiled.evaluate(patient, patient) == [3]
    broken = compile_expression("Patient.name.given.substring(1, 'x')")
    assert broken.fallback
    assert broken.evaluate(patient, patient) == []


# -- compartments ------------------------------------------------------------------------


def test_patient_compartment() -> None:
    assert patient_compartment(PATIENT) == "vn-1"
    assert patient_compartment(BP) == "p1"
    assert patient_compartment({"resourceType": "Organization", "id": "o"}) is None
    coverage = {
        "resourceType": "Coverage",
        "id": "cov",
        "status": "active",
        "beneficiary": {"reference": "Patient/ben"},
        "payor": [{"reference": "Organization/ins"}],
    }
    assert patient_compartment(coverage) == "ben"
    group = {
        "resourceType": "Group",
        "id": "g",
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "Practitioner/x"}},
            {"entity": {"reference": "Patient/b"}},
            {"entity": {"reference": "Patient/a"}},
        ],
    }
    assert patient_compartment(group) == "a"
    assert patient_compartments(group) == ("a", "b")
    found = extract(coverage)
    assert get_extractor().patient_compartment(coverage, found) == "ben"


# -- Synthea -----------------------------------------------------------------------------


def resolve_transaction(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bundle's resources with ``urn:uuid:`` references rewritten to ``Type/id``,
    as a transaction does before storing (FHIR http.html#trules)."""
    ids = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
        if "fullUrl" in e
    }

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: fix(v) for k, v in node.items()}
            ref = out.get("reference")
            if isinstance(ref, str) and ref in ids:
                out["reference"] = ids[ref]
            return out
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return [fix(e["resource"]) for e in bundle["entry"]]


def load_bundle(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh, parse_float=Decimal)
    return data


def synthea_resources() -> Iterator[dict[str, Any]]:
    for path in sorted(DATA.glob("*.json.gz")):
        yield from resolve_transaction(load_bundle(path))


def check_all(resources: list[dict[str, Any]]) -> int:
    registry = get_registry()
    count = 0
    for resource in resources:
        codes = registry.params_for(resource["resourceType"])
        found = extract(resource)
        for value in found:
            assert value.param in codes
            if isinstance(value, CompositeValue):
                assert all(part.param in codes for part in value.parts)
        count += len(found)
        if resource["resourceType"] in PATIENT_COMPARTMENT:
            patient_compartment(resource, found)
    return count


def test_synthea_bundles_extract() -> None:
    resources = list(synthea_resources())
    assert len(resources) == 308
    assert check_all(resources) > 4000
    by_id = {r["id"]: r for r in resources}
    patient = by_id["c19264dc-4d8e-488f-b6df-31a896089080"]
    assert values(patient, "given") == [StringValue("given", "jesus", "Jesús")]
    assert values(patient, "family") == [StringValue("family", "alvarez", "Alvarez")]
    assert values(patient, "birthdate") == [
        DateValue("birthdate", dt(1984, 10, 12), dt(1984, 10, 12, 23, 59, 59, 999999))
    ]
    assert TokenValue(
        "identifier",
        "http://hl7.org/fhir/sid/us-ssn",
        "999-21-4429",
        "Social Security Number",
        "http://terminology.hl7.org/CodeSystem/v2-0203",
        "SS",
    ) in values(patient, "identifier")
    bp = by_id["b1bc0741-8eb1-4228-bf43-9029da97ea89"]
    assert patient_compartment(bp) == "c19264dc-4d8e-488f-b6df-31a896089080"
    assert values(bp, "patient") == [
        ReferenceValue("patient", "Patient", "c19264dc-4d8e-488f-b6df-31a896089080", None)
    ]
    assert values(bp, "code-value-quantity") == []  # the panel has no value of its own
    combo = values(bp, "component-code-value-quantity")
    assert [(c.parts[0].code, c.parts[1].value) for c in combo] == [
        ("8462-4", Decimal("79.01646430726908")),
        ("8480-6", Decimal("123.67579257257195")),
    ]
    assert values(bp, "date") == [
        DateValue("date", dt(2013, 3, 22, 14, 1, 6), dt(2013, 3, 22, 14, 1, 6, 999999))
    ]
    practitioners = [r for r in resources if r["resourceType"] == "Practitioner"]
    assert len(practitioners) == 104
    for practitioner in practitioners:
        (npi,) = values(practitioner, "identifier")
        assert isinstance(npi, TokenValue) and npi.system == "http://hl7.org/fhir/sid/us-npi"
    in_compartment = [
        r for r in resources if r["resourceType"] not in ("Patient", "Practitioner", "Organization")
    ]
    assert all(patient_compartment(r) is not None for r in in_compartment)


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED_SYNTHEA.is_dir(), reason=f"extended test: {SHARED_SYNTHEA} not present"
)
def test_every_shared_synthea_bundle_extracts(capsys: pytest.CaptureFixture[str]) -> None:
    resources: list[dict[str, Any]] = []
    for path in sorted(SHARED_SYNTHEA.glob("*.json")):
        resources.extend(resolve_transaction(load_bundle(path)))
    assert len(resources) == 10803
    count = check_all(resources)  # nothing raised; warms the plan cache
    timings = []
    for resource in resources:
        start = time.perf_counter_ns()
        extract(resource)
        timings.append(time.perf_counter_ns() - start)
    median_us = statistics.median(timings) / 1000
    rate = len(resources) / (sum(timings) / 1e9)
    with capsys.disabled():
        print(
            f"\nsearch extraction: {len(resources)} Synthea resources, {count} index values, "
            f"median {median_us:.1f} µs per resource, {rate:,.0f} resources/s (one core)"
        )
    assert rate > 500  # a guard against falling back to a general FHIRPath engine


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED_NDJSON.is_dir(), reason=f"extended test: {SHARED_NDJSON} not present"
)
def test_shared_bulk_export_extracts() -> None:
    resources = []
    for path in sorted(SHARED_NDJSON.glob("*.000.ndjson")):
        with path.open(encoding="utf-8") as fh:
            resources.extend(json.loads(line, parse_float=Decimal) for line in fh if line.strip())
    assert len(resources) == 7160
    assert check_all(resources) > 50000
    clinical = [r for r in resources if r["resourceType"] in PATIENT_COMPARTMENT]
    assert clinical and all(patient_compartment(r) is not None for r in clinical)


def test_invalid_expressions_are_refused() -> None:
    pytest.importorskip("fhirpathpy")
    with pytest.raises(ValueError, match="not a valid FHIRPath"):
        compile_expression("Patient.name.$$$")
