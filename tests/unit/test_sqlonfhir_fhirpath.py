"""The view runner beyond the official suite: error locations, the fhirpathpy
fallback, boundaries and reference keys (SQL-on-FHIR v2, FHIRPath N1/N2)."""

from __future__ import annotations

import pytest

from salus.warehouse.sqlonfhir import ViewDefinitionError, ViewRuntimeError, compile_view
from salus.warehouse.sqlonfhir.boundary import high_boundary, low_boundary
from salus.warehouse.sqlonfhir.functions import reference_key

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Nguyễn", "given": ["An", "Bình"]}],
    "birthDate": "1980-02",
}


def view(*columns: dict[str, object], **extra: object) -> dict[str, object]:
    return {"resource": "Patient", "select": [{"column": list(columns)}], **extra}


def test_errors_name_the_element() -> None:
    with pytest.raises(ViewDefinitionError) as caught:
        compile_view(view({"name": "a", "path": "id"}, {"name": "b", "path": "name.("}))
    assert caught.value.expression == ["ViewDefinition.select[0].column[1].path"]
    with pytest.raises(ViewDefinitionError) as caught:
        compile_view(view({"name": "a", "path": "%nope"}))
    assert "nope" in caught.value.message
    with pytest.raises(ViewDefinitionError):
        compile_view(view({"name": "a", "path": "id"}, {"name": "a", "path": "id"}))
    with pytest.raises(ViewDefinitionError):
        compile_view(view({"name": "1bad", "path": "id"}))


def test_runtime_errors_quote_no_values() -> None:
    compiled = compile_view(view({"name": "given", "path": "name.given"}))
    with pytest.raises(ViewRuntimeError) as caught:
        compiled.evaluate([PATIENT])
    assert "An" not in caught.value.message and "Bình" not in caught.value.message


def test_functions_outside_the_subset_run_through_fhirpathpy() -> None:
    compiled = compile_view(view({"name": "upper", "path": "name.family.first().upper()"}))
    assert compiled.evaluate([PATIENT]) == [{"upper": "NGUYỄN"}]
    with pytest.raises(ViewDefinitionError):
        compile_view(view({"name": "u", "path": "name.family.upper()"}), extended_fhirpath=False)


def test_compiled_subset() -> None:
    compiled = compile_view(
        view(
            {"name": "n", "path": "name.given.count()"},
            {"name": "s", "path": "name.given.join(' ') & '!'"},
            {"name": "i", "path": "iif(name.given.exists(), 1, 2) + 2 * 3"},
            {"name": "low", "path": "birthDate.lowBoundary()"},
        )
    )
    assert compiled.evaluate([PATIENT]) == [{"n": 2, "s": "An Bình!", "i": 7, "low": "1980-02-01"}]


def test_boundaries_and_reference_keys() -> None:
    assert float(low_boundary(2.50, "decimal")) == pytest.approx(2.45)
    assert high_boundary("2024-02", "date") == "2024-02-29"
    assert high_boundary("2024-02-03T10:00", "dateTime") == "2024-02-03T10:00:59.999-12:00"
    assert reference_key({"reference": "Patient/1/_history/2"}, None) == "Patient/1"
    assert reference_key({"reference": "http://x.org/fhir/Patient/1"}, None) is None
    assert reference_key({"reference": "Patient/1"}, "Group") is None
