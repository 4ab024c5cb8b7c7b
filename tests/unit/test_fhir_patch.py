"""FHIR R4 patch (salus.fhir.patch): JSON Patch and FHIRPath Patch, HTTP-free.

Official cases: tests/data/fhir/patch/ holds verbatim copies of HL7
FHIR/fhir-test-cases @ 2dee8a0f ``r4/patch/`` (Apache-2.0, see LICENSE.md
there): ``json-patch-tests.json`` (16 RFC 6902 cases, run as they are) and
``fhir-patch-tests.xml`` (33 FHIRPath Patch cases written in FHIR XML,
converted to FHIR JSON below with the R4 model, then run). All 49 run; a case
that had to be skipped would be listed in ``SKIPPED`` with its reason.
``xml-patch-tests.xml`` (RFC 5261 XML Patch) is not copied: that format is not
supported (415, see test_unsupported_media_types).

The Synthea patient comes from tests/data/fhir/synthea (Apache-2.0, synthetic).
"""

from __future__ import annotations

import copy
import gzip
import json
import xml.etree.ElementTree as ET  # noqa: S405 - parses only the checked-in test file
from pathlib import Path
from typing import Any

import pytest

from salus.errors import InvalidInput, UnprocessableContent, UnsupportedMediaType
from salus.fhir import model
from salus.fhir.patch import (
    JSON_PATCH,
    PATCH_MEDIA_TYPES,
    apply_fhirpath_patch,
    apply_json_patch,
    apply_patch,
)
from salus.fhir.validate import validate_resource

DATA = Path(__file__).resolve().parent.parent / "data" / "fhir"
PATCH_DATA = DATA / "patch"
SYNTHEA = DATA / "synthea" / "59a8543c-e24f-4a01-b28b-47ccde6bc11d.json.gz"
FHIR_JSON = "application/fhir+json"
XHTML = "http://www.w3.org/1999/xhtml"

#: Official cases not run, with the reason (none at present).
SKIPPED: dict[str, str] = {}


# --- FHIR XML to FHIR JSON (json.html), for the official FHIRPath Patch cases ---------


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _escape(text: str, attribute: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if attribute else text


def _xhtml(elem: ET.Element, root: bool = True) -> str:
    """Narrative.div as the JSON string form (narrative.html#xhtml)."""
    tag = _local(elem.tag)
    attrs = f' xmlns="{XHTML}"' if root else ""
    attrs += "".join(f' {_local(k)}="{_escape(v, True)}"' for k, v in elem.attrib.items())
    inner = _escape(elem.text or "")
    inner += "".join(_xhtml(child, False) + _escape(child.tail or "") for child in elem)
    return f"<{tag}{attrs}>{inner}</{tag}>"


def _primitive(elem: ET.Element, code: str) -> tuple[Any, dict[str, Any] | None]:
    raw = elem.get("value")
    prim = model.primitive(code)
    assert prim is not None
    value: Any = raw
    if raw is not None and prim.json == "boolean":
        value = raw == "true"
    elif raw is not None and prim.json == "integer":
        value = int(raw)
    elif raw is not None and prim.json == "decimal":
        value = float(raw) if any(c in raw for c in ".eE") else int(raw)
    ext: dict[str, Any] = {}
    if elem.get("id") is not None:
        ext["id"] = elem.get("id")
    extensions = [
        _complex(child, "Extension") for child in elem if _local(child.tag) == "extension"
    ]
    if extensions:
        ext["extension"] = extensions
    return value, ext or None


def _complex(elem: ET.Element, type_name: str) -> dict[str, Any]:
    td = model.type_def(type_name)
    out: dict[str, Any] = {}
    if td.kind == "resource":
        out["resourceType"] = type_name
    for attribute in ("id", "url"):  # Element.id and Extension.url are XML attributes
        if elem.get(attribute) is not None:
            out[attribute] = elem.get(attribute)
    repeating: dict[str, list[tuple[Any, Any]]] = {}
    for child in elem:
        name = _local(child.tag)
        element = td.elements.get(name) or next(
            e for e in td.elements.values() if name in e.json_names()
        )
        code = element.json_names().get(name, element.types[0])
        ext = None
        if code == "xhtml":
            value: Any = _xhtml(child)
        elif model.primitive(code) is not None:
            value, ext = _primitive(child, code)
        elif code == "Resource":
            (inner,) = list(child)
            value = _complex(inner, _local(inner.tag))
        else:
            value = _complex(child, code)
        if element.is_array:
            repeating.setdefault(name, []).append((value, ext))
        else:
            if value is not None:
                out[name] = value
            if ext is not None:
                out["_" + name] = ext
    for name, items in repeating.items():
        if any(value is not None for value, _ in items):
            out[name] = [value for value, _ in items]
        if any(ext is not None for _, ext in items):
            out["_" + name] = [ext for _, ext in items]
    return out


def _resource(container: ET.Element) -> dict[str, Any]:
    (elem,) = list(container)
    return _complex(elem, _local(elem.tag))


def fhirpath_cases() -> list[Any]:
    tree = ET.parse(PATCH_DATA / "fhir-patch-tests.xml")  # noqa: S314 - checked-in test file
    cases = []
    for case in tree.getroot().iter("case"):
        name = case.get("name", "")
        diff, output, error = case.find("diff"), case.find("output"), case.find("error")
        source = case.find("input")
        assert source is not None and diff is not None
        expected = _resource(output) if output is not None else None
        params = (_resource(source), _resource(diff), expected, error is not None)
        marks = [pytest.mark.skip(reason=SKIPPED[name])] if name in SKIPPED else []
        cases.append(pytest.param(*params, id=name, marks=marks))
    return cases


def json_patch_cases() -> list[Any]:
    cases = json.loads((PATCH_DATA / "json-patch-tests.json").read_text(encoding="utf-8"))
    return [
        pytest.param(case["doc"], case["patch"], case.get("expected"), id=case["comment"])
        for case in cases
    ]


# --- helpers --------------------------------------------------------------------


def operation(kind: str, path: str, **parts: Any) -> dict[str, Any]:
    """One FHIRPath Patch operation parameter; ``value`` is a (json name, value) pair."""
    out: list[dict[str, Any]] = [
        {"name": "type", "valueCode": kind},
        {"name": "path", "valueString": path},
    ]
    for name, value in parts.items():
        if name == "value" and isinstance(value, tuple):
            out.append({"name": "value", value[0]: value[1]})
        elif name == "value":  # nested parts
            out.append({"name": "value", "part": value})
        elif name == "name":
            out.append({"name": "name", "valueString": value})
        else:
            out.append({"name": name, "valueInteger": value})
    return {"name": "operation", "part": out}


def parameters(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def fhirpath_patch(resource: dict[str, Any], *operations: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(parameters(*operations)).encode()
    return apply_patch(resource, body, FHIR_JSON)


def json_patch(resource: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    return apply_patch(resource, json.dumps(operations).encode(), JSON_PATCH)


def synthea_patient() -> dict[str, Any]:
    with gzip.open(SYNTHEA, "rt", encoding="utf-8") as fh:
        bundle = json.load(fh)
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert isinstance(patient, dict)
    return patient


def assert_422(info: pytest.ExceptionInfo[UnprocessableContent], expression: str) -> None:
    """A 422 whose expression names the operation (``patch[i]``, ``Parameters.parameter[i]``)."""
    assert type(info.value) is UnprocessableContent
    assert info.value.http_status == 422
    assert info.value.expression == [expression]
    assert info.value.message.startswith(f"{expression}: ")


# --- official cases -----------------------------------------------------------------


@pytest.mark.parametrize(("resource", "patch", "expected", "fails"), fhirpath_cases())
def test_official_fhirpath_patch(
    resource: dict[str, Any], patch: dict[str, Any], expected: Any, fails: bool
) -> None:
    before = copy.deepcopy(resource)
    body = json.dumps(patch).encode()
    if fails:
        with pytest.raises(UnprocessableContent):
            apply_patch(resource, body, FHIR_JSON)
    else:
        assert apply_patch(resource, body, FHIR_JSON) == expected
    assert resource == before  # never mutated


@pytest.mark.parametrize(("doc", "patch", "expected"), json_patch_cases())
def test_official_json_patch(doc: dict[str, Any], patch: list[Any], expected: Any) -> None:
    before = copy.deepcopy(doc)
    if expected is None:  # the case gives "error"
        with pytest.raises(UnprocessableContent):
            json_patch(doc, patch)
    else:
        assert json_patch(doc, patch) == expected
    assert doc == before


def test_official_case_counts() -> None:
    """The copies are complete: 33 FHIRPath Patch and 16 JSON Patch cases."""
    assert len(fhirpath_cases()) == 33
    assert len(json_patch_cases()) == 16


# --- a Synthea patient (tests/data/fhir/synthea, synthetic) -----------------------------


def test_fhirpath_patch_synthea_patient() -> None:
    patient = synthea_patient()
    before = copy.deepcopy(patient)
    identifiers = patient["identifier"]
    assert patient["gender"] == "male" and patient["name"][0]["given"] == ["Gustavo"]
    telecom = {"system": "email", "value": "someone@example.org", "use": "home"}
    inserted = {"system": "urn:example:mrn", "value": "A-1"}
    result = fhirpath_patch(
        patient,
        operation("replace", "Patient.gender", value=("valueCode", "female")),
        operation("add", "Patient", name="telecom", value=("valueContactPoint", telecom)),
        operation("delete", "Patient.name.where(use = 'official').given[0]"),
        operation("insert", "Patient.identifier", index=1, value=("valueIdentifier", inserted)),
        operation("move", "Patient.identifier", source=4, destination=0),
    )
    assert result["gender"] == "female"
    assert result["telecom"] == [*patient["telecom"], telecom]
    assert "given" not in result["name"][0]  # its only given name: the array goes (ele-1)
    assert result["name"][0]["family"] == patient["name"][0]["family"]
    # insert at 1, then the old identifier[3] (now at 4) moves to the front
    assert result["identifier"] == [
        identifiers[3],
        identifiers[0],
        inserted,
        *identifiers[1:3],
        identifiers[4],
    ]
    assert [i for i in validate_resource(result) if i.severity == "error"] == []
    assert patient == before  # a new resource; the input is unchanged
    untouched = {"gender", "telecom", "name", "identifier"}
    assert {k: v for k, v in result.items() if k not in untouched} == {
        k: v for k, v in before.items() if k not in untouched
    }


def test_json_patch_synthea_patient() -> None:
    patient = synthea_patient()
    before = copy.deepcopy(patient)
    telecom = {"system": "email", "value": "someone@example.org"}
    result = json_patch(
        patient,
        [
            {"op": "test", "path": "/gender", "value": "male"},
            {"op": "replace", "path": "/gender", "value": "female"},
            {"op": "add", "path": "/telecom/-", "value": telecom},
            {"op": "remove", "path": "/name/0/prefix"},
            {"op": "move", "from": "/identifier/4", "path": "/identifier/0"},
            {"op": "copy", "from": "/id", "path": "/identifier/0/value"},
        ],
    )
    assert result["gender"] == "female"
    assert result["telecom"][-1] == telecom
    assert "prefix" not in result["name"][0]
    assert result["identifier"][0]["value"] == patient["id"]
    assert result["identifier"][1:] == patient["identifier"][:4]
    assert [i for i in validate_resource(result) if i.severity == "error"] == []
    assert patient == before


# --- JSON Patch --------------------------------------------------------------------


def patient_resource() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "3"},
        "name": [{"family": "Doe", "given": ["Jane", "Q"], "_given": [None, {"id": "g2"}]}],
        "gender": "female",
        "birthDate": "1980-02-29",
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1980-02-29T10:00:00Z",
                }
            ]
        },
    }


def test_json_patch_failed_test_is_422_naming_the_operation() -> None:
    ops = [
        {"op": "replace", "path": "/gender", "value": "other"},
        {"op": "test", "path": "/name/0/family", "value": "Doe"},
        {"op": "test", "path": "/birthDate", "value": "1999-01-01"},
        {"op": "replace", "path": "/gender", "value": "male"},
    ]
    with pytest.raises(UnprocessableContent) as info:
        json_patch(patient_resource(), ops)
    assert_422(info, "patch[2]")
    assert "test" in info.value.message
    assert "1980" not in info.value.message and "1999" not in info.value.message  # no values


@pytest.mark.parametrize(
    ("ops", "index"),
    [
        ([{"op": "remove", "path": "/nothing"}], 0),
        ([{"op": "add", "path": "/a/b", "value": 1}], 0),
        ([{"op": "replace", "path": "/name/5", "value": {}}], 0),
        ([{"op": "add", "path": "/name/0/family/x", "value": 1}], 0),
        ([{"op": "test", "path": "/gender", "value": "female"}, {"op": "jump", "path": "/a"}], 1),
        ([{"op": "add", "path": "/x"}], 0),  # no value
        ([{"path": "/x"}], 0),  # no op
        (["add"], 0),
        ([{"op": "add", "path": 3, "value": 1}], 0),
        ([{"op": "move", "from": "/name", "path": "/name/0"}], 0),
        ([{"op": "move", "from": "/missing", "path": "/x"}], 0),
        ([{"op": "remove", "path": ""}], 0),
        ([{"op": "replace", "path": "", "value": []}], 0),
        ([{"op": "remove", "path": "/name/-"}], 0),
    ],
)
def test_json_patch_invalid_operations_are_422(ops: list[Any], index: int) -> None:
    with pytest.raises(UnprocessableContent) as info:
        json_patch(patient_resource(), ops)
    assert_422(info, f"patch[{index}]")


@pytest.mark.parametrize(
    "op",
    [
        {"op": "replace", "path": "/id", "value": "p2"},
        {"op": "remove", "path": "/id"},
        {"op": "add", "path": "/id", "value": "p2"},
        {"op": "replace", "path": "/resourceType", "value": "Group"},
        {"op": "move", "from": "/id", "path": "/text"},
        {"op": "copy", "from": "/gender", "path": "/id"},
        {"op": "replace", "path": "/id", "value": "p1"},  # even to the same value
        {"op": "replace", "path": "", "value": {"resourceType": "Patient", "id": "p2"}},
        {"op": "replace", "path": "", "value": {"resourceType": "Patient"}},
    ],
)
def test_json_patch_cannot_change_id_or_type(op: dict[str, Any]) -> None:
    ops = [{"op": "test", "path": "/id", "value": "p1"}, op]
    with pytest.raises(UnprocessableContent) as info:
        json_patch(patient_resource(), ops)
    assert_422(info, "patch[1]")


def test_json_patch_whole_resource_with_same_identity() -> None:
    new = {"resourceType": "Patient", "id": "p1", "active": True}
    assert json_patch(patient_resource(), [{"op": "replace", "path": "", "value": new}]) == new
    copied = json_patch(patient_resource(), [{"op": "copy", "from": "/id", "path": "/a"}])
    assert copied["a"] == "p1"


def test_json_patch_does_not_share_values_with_the_body() -> None:
    telecom = [{"value": "1"}]
    ops: list[Any] = [{"op": "add", "path": "/telecom", "value": telecom}]
    resource = patient_resource()
    result = apply_json_patch(resource, ops)
    telecom[0]["value"] = "2"
    assert result["telecom"] == [{"value": "1"}]
    assert "telecom" not in resource


# --- bodies and media types ---------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/xml-patch+xml",
        "application/fhir+xml",
        "application/xml",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        "application/json-patch+json; charset=iso-8859-1",
        "application/fhir+json;charset=utf-16",
    ],
)
def test_unsupported_media_types(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        apply_patch(patient_resource(), b"[]", content_type)
    assert info.value.http_status == 415


@pytest.mark.parametrize(
    "content_type",
    ["application/json-patch+json; charset=UTF-8", "Application/JSON-Patch+JSON", JSON_PATCH],
)
def test_json_patch_media_type_variants(content_type: str) -> None:
    body = b'[{"op": "replace", "path": "/gender", "value": "other"}]'
    assert apply_patch(patient_resource(), body, content_type)["gender"] == "other"


@pytest.mark.parametrize(
    "content_type",
    ["application/fhir+json", "application/json", "application/fhir+json; fhirVersion=4.0"],
)
def test_fhirpath_patch_media_type_variants(content_type: str) -> None:
    body = json.dumps(parameters(operation("delete", "Patient.gender"))).encode()
    assert "gender" not in apply_patch(patient_resource(), body, content_type)
    assert set(PATCH_MEDIA_TYPES) >= {JSON_PATCH, "application/fhir+json", "application/json"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", JSON_PATCH),
        (b"[{]", JSON_PATCH),
        (b'{"op": "remove", "path": "/gender"}', JSON_PATCH),  # not an array
        (b'"text"', JSON_PATCH),
        (b'[{"op": "add", "path": "/a", "value": NaN}]', JSON_PATCH),
        (b'[{"op": "add", "path": "/a", "value": "\\ud800"}]', JSON_PATCH),  # no Unicode text
        (b"\xff\xfe[]", JSON_PATCH),
        (b"[" * 100_000 + b"]" * 100_000, JSON_PATCH),
        (b"not json", FHIR_JSON),
        (b'[{"op": "remove", "path": "/gender"}]', FHIR_JSON),  # JSON Patch as fhir+json
        (b'{"resourceType": "Patient"}', FHIR_JSON),
        (b"42", FHIR_JSON),
        (b'{"resourceType": "Parameters", "parameter": {}}', FHIR_JSON),
    ],
)
def test_malformed_bodies_are_400(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidInput) as info:
        apply_patch(patient_resource(), body, content_type)
    assert type(info.value) is InvalidInput
    assert info.value.http_status == 400


def test_empty_patches_change_nothing() -> None:
    resource = patient_resource()
    assert json_patch(resource, []) == resource
    assert fhirpath_patch(resource) == resource
    assert apply_patch(resource, b'{"resourceType": "Parameters"}', FHIR_JSON) == resource


# --- FHIRPath Patch ---------------------------------------------------------------


def test_fhirpath_patch_primitive_extensions_follow_their_values() -> None:
    resource = patient_resource()
    assert "_birthDate" not in fhirpath_patch(resource, operation("delete", "Patient.birthDate"))
    result = fhirpath_patch(resource, operation("delete", "Patient.name[0].given[0]"))
    assert result["name"][0]["given"] == ["Q"] and result["name"][0]["_given"] == [{"id": "g2"}]
    result = fhirpath_patch(resource, operation("delete", "Patient.name.given[1]"))
    assert result["name"][0]["given"] == ["Jane"] and "_given" not in result["name"][0]
    result = fhirpath_patch(
        resource,
        operation("insert", "Patient.name[0].given", index=0, value=("valueString", "Ann")),
        operation("move", "Patient.name[0].given", source=2, destination=0),
    )
    assert result["name"][0]["given"] == ["Q", "Ann", "Jane"]
    assert result["name"][0]["_given"] == [{"id": "g2"}, None, None]
    assert [i for i in validate_resource(result) if i.severity == "error"] == []


def test_fhirpath_patch_extensions_of_primitives() -> None:
    resource = patient_resource()
    url = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
    result = fhirpath_patch(resource, operation("delete", f"Patient.birthDate.extension('{url}')"))
    assert result["birthDate"] == "1980-02-29" and "_birthDate" not in result
    extension = {"url": "http://example.org/x", "valueString": "y"}
    result = fhirpath_patch(
        resource,
        operation(
            "add",
            "Patient.gender",
            name="extension",
            value=[
                {"name": "url", "valueUri": extension["url"]},
                {"name": "valueString", "valueString": "y"},
            ],
        ),
    )
    assert result["gender"] == "female" and result["_gender"] == {"extension": [extension]}
    replaced = fhirpath_patch(
        resource,
        operation(
            "replace", "Patient.birthDate.extension.value", value=("valueDateTime", "1980-02-29")
        ),
    )
    assert replaced["_birthDate"]["extension"][0]["valueDateTime"] == "1980-02-29"


def test_fhirpath_patch_choice_elements() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
        "component": [
            {"code": {"coding": [{"code": "a"}]}, "valueQuantity": {"value": 1, "unit": "mg"}},
            {"code": {"coding": [{"code": "b"}]}, "valueString": "high"},
        ],
    }
    result = fhirpath_patch(
        observation,
        operation(
            "replace",
            "Observation.component.where(code.coding.code = 'a').value",
            value=("valueString", "n/a"),
        ),
        operation("replace", "Observation.component[1].valueString", value=("valueBoolean", True)),
        operation("add", "Observation", name="value", value=("valueQuantity", {"value": 2.5})),
        operation("replace", "Observation.value.ofType(Quantity).value", value=("valueDecimal", 3)),
    )
    assert result["component"][0] == {"code": {"coding": [{"code": "a"}]}, "valueString": "n/a"}
    assert (
        result["component"][1]["valueBoolean"] is True
        and "valueString" not in result["component"][1]
    )
    assert result["valueQuantity"] == {"value": 3}
    with pytest.raises(UnprocessableContent) as info:  # a type the choice does not allow
        fhirpath_patch(
            observation,
            operation("add", "Observation", name="value", value=("valueUuid", "urn:uuid:x")),
        )
    assert_422(info, "Parameters.parameter[0]")
    with pytest.raises(UnprocessableContent) as info:  # already there (as valueQuantity)
        fhirpath_patch(
            result, operation("add", "Observation", name="valueString", value=("valueString", "x"))
        )
    assert_422(info, "Parameters.parameter[0]")


def test_fhirpath_patch_nested_parts_and_contained() -> None:
    resource = patient_resource()
    contact = [
        {"name": "name", "valueHumanName": {"family": "Roe"}},
        {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "1"}},
        {"name": "telecom", "valueContactPoint": {"system": "email", "value": "a@b.c"}},
        {"name": "period", "part": [{"name": "start", "valueDateTime": "2020"}]},
    ]
    result = fhirpath_patch(resource, operation("add", "Patient", name="contact", value=contact))
    assert result["contact"] == [
        {
            "name": {"family": "Roe"},
            "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b.c"}],
            "period": {"start": "2020"},
        }
    ]
    organization = {"resourceType": "Organization", "id": "org", "name": "Acme"}
    result = fhirpath_patch(
        resource,
        {
            "name": "operation",
            "part": [
                {"name": "type", "valueCode": "add"},
                {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "contained"},
                {"name": "value", "resource": organization},
            ],
        },
        operation(
            "replace",
            "Patient.contained.ofType(Organization).name",
            value=("valueString", "Acme 2"),
        ),
    )
    assert result["contained"] == [{**organization, "name": "Acme 2"}]
    bad = [{"name": "nickname", "valueString": "x"}]
    with pytest.raises(UnprocessableContent) as info:
        fhirpath_patch(resource, operation("add", "Patient", name="contact", value=bad))
    assert_422(info, "Parameters.parameter[0]")


def test_fhirpath_patch_insert_into_absent_list_and_bounds() -> None:
    resource = patient_resource()
    ident = {"system": "urn:x", "value": "1"}
    result = fhirpath_patch(
        resource,
        operation("insert", "Patient.identifier", index=0, value=("valueIdentifier", ident)),
    )
    assert result["identifier"] == [ident]
    for op in (
        operation("insert", "Patient.identifier", index=1, value=("valueIdentifier", ident)),
        operation("insert", "Patient.name", index=2, value=("valueHumanName", {"text": "x"})),
        operation("insert", "Patient.name", index=-1, value=("valueHumanName", {"text": "x"})),
        operation("insert", "Patient.gender", index=0, value=("valueCode", "male")),
        operation("move", "Patient.name", source=0, destination=1),
        operation("move", "Patient.name[0].given", source=2, destination=0),
        operation("move", "Patient.identifier", source=0, destination=0),
    ):
        with pytest.raises(UnprocessableContent) as info:
            fhirpath_patch(resource, operation("delete", "Patient.active"), op)
        assert_422(info, "Parameters.parameter[1]")


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (operation("replace", "Patient.name.given", value=("valueString", "x")), "2 elements"),
        (
            operation("replace", "Patient.address", value=("valueAddress", {"city": "x"})),
            "no element",
        ),
        (operation("replace", "Observation.status", value=("valueCode", "final")), "no element"),
        (operation("delete", "Patient.name.given"), "2 elements"),
        (operation("add", "Patient", name="gender", value=("valueCode", "male")), "use replace"),
        (operation("add", "Patient", name="nickname", value=("valueString", "x")), "no element"),
        (
            operation("add", "Patient.nothing", name="text", value=("valueString", "x")),
            "no element",
        ),
        (
            operation(
                "add",
                "Patient.identifier.where(use = 'official').period",
                name="end",
                value=("valueDate", "2021"),
            ),
            "no element",
        ),
        (operation("replace", "Patient.birthDate", value=("valueBoolean", True)), "does not fit"),
        (
            operation("replace", "Patient.name[0]", value=("valueAddress", {"city": "x"})),
            "does not fit",
        ),
        (operation("add", "Patient", name="active", value=("valueString", "true")), "does not fit"),
        (operation("replace", "Patient.id", value=("valueId", "p2")), "id cannot be changed"),
        (operation("replace", "Patient.id", value=("valueId", "p1")), "id cannot be changed"),
        (operation("delete", "Patient.id"), "id cannot be changed"),
        (operation("delete", "Patient"), "resource itself"),
        (operation("replace", "Patient", value=("valueString", "x")), "resource itself"),
        (
            operation("add", "Patient", name="resourceType", value=("valueString", "Group")),
            "cannot be changed",
        ),
        (
            operation(
                "replace", "Patient.managingOrganization.resolve().name", value=("valueString", "x")
            ),
            "resolve()",
        ),
        (
            operation("replace", "Patient.name.where(given = ", value=("valueString", "x")),
            "unbalanced",
        ),
        (
            operation("replace", "Patient.name.where(given ===== 'x')", value=("valueString", "x")),
            "could not be evaluated",
        ),
        (operation("replace", "Patient..gender", value=("valueCode", "male")), "supported"),
        (operation("replace", "Patient.gender.", value=("valueCode", "male")), "ends with a dot"),
        (operation("replace", "Patient.gender + 'x'", value=("valueCode", "male")), "supported"),
        (
            operation("replace", "Patient.name.first(1)", value=("valueCode", "male")),
            "no arguments",
        ),
        (operation("replace", "Patient.gender"), "needs the part value"),
        (operation("add", "Patient", value=("valueCode", "male")), "needs the part name"),
        (operation("insert", "Patient.name", value=("valueHumanName", {})), "needs the part index"),
        (operation("move", "Patient.name", source=0), "needs the part destination"),
        (operation("rename", "Patient.gender"), "type must be"),
        (
            {"name": "operation", "part": [{"name": "type", "valueCode": "delete"}]},
            "path is missing",
        ),
        ({"name": "op", "part": []}, "named 'operation'"),
        ({"name": "operation"}, "no parts"),
        ({"name": "operation", "part": [{"name": "colour", "valueString": "x"}]}, "parts must be"),
        (operation("delete", "Patient.gender", index=True), "valueInteger"),
        (operation("replace", "Patient.gender", value=[]), "no value"),
        (
            operation("replace", "Patient.gender", value=[{"name": "x", "valueString": "y"}]),
            "cannot be given as parts",
        ),
    ],
)
def test_fhirpath_patch_errors_are_422_naming_the_operation(
    op: dict[str, Any], message: str
) -> None:
    resource = patient_resource()
    with pytest.raises(UnprocessableContent) as info:
        fhirpath_patch(
            resource, operation("replace", "Patient.gender", value=("valueCode", "male")), op
        )
    assert_422(info, "Parameters.parameter[1]")
    assert message in info.value.message
    assert "Jane" not in info.value.message and "1980" not in info.value.message
    assert resource == patient_resource()


def test_fhirpath_patch_delete_of_nothing_is_a_no_op() -> None:
    resource = patient_resource()
    assert fhirpath_patch(resource, operation("delete", "Patient.address")) == resource
    assert (
        fhirpath_patch(resource, operation("delete", "Patient.name.where(family = 'X')"))
        == resource
    )
    assert fhirpath_patch(resource, operation("delete", "Patient.name[7]")) == resource


def test_fhirpath_patch_paths_without_the_type_and_with_functions() -> None:
    resource = patient_resource()
    result = fhirpath_patch(
        resource,
        operation("replace", "gender", value=("valueCode", "other")),
        operation("replace", "name.first().given.last()", value=("valueString", "R")),
        operation("replace", "Patient.name.single().family", value=("valueString", "Roe")),
        operation(
            "replace", "Patient.name.given.where($this = 'Jane')", value=("valueString", "J")
        ),
        operation(
            "replace", "Patient.meta.where(%resource.id = 'p1').versionId", value=("valueId", "4")
        ),
    )
    assert result["gender"] == "other"
    assert result["name"][0]["given"] == ["J", "R"] and result["name"][0]["family"] == "Roe"
    assert result["meta"]["versionId"] == "4"


def test_apply_fhirpath_patch_parsed_and_atomic() -> None:
    resource = patient_resource()
    params = parameters(
        operation("replace", "Patient.gender", value=("valueCode", "male")),
        operation("delete", "Patient.name.given"),
    )
    with pytest.raises(UnprocessableContent) as info:
        apply_fhirpath_patch(resource, params)
    assert_422(info, "Parameters.parameter[1]")
    assert resource == patient_resource()
    with pytest.raises(InvalidInput):
        apply_fhirpath_patch(resource, {"resourceType": "Bundle"})
