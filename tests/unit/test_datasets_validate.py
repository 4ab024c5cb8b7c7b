"""Reading and validating dataset submissions without a database: encodings,
separators, JSON, every issue code, limits, and no cell value in any message."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from salus.warehouse.datasets.definitions import ATC_CODES, SCHEMAS
from salus.warehouse.datasets.mapping import map_row, resource_id
from salus.warehouse.datasets.schema import schema_from_data
from salus.warehouse.datasets.validate import MAX_ISSUES, Report, parse_rows, validate_rows

TODAY = date(2026, 11, 23)
STAFF_HEADER = "org,period,staff_id,family_name,given_name,gender,role,department,fte,start_date"


def check(
    name: str, data: bytes, *, media: str = "auto", period: str | None = None, max_rows: int = 100
) -> tuple[list[dict[str, Any]], list[tuple[int, str | None, str]], Report]:
    report = Report()
    columns, rows, comma = parse_rows(data, media, report, max_rows=max_rows)
    typed: list[dict[str, Any]] = []
    if columns:
        typed = validate_rows(
            SCHEMAS[name], columns, rows, report, org="hosp-a", period=period, today=TODAY,
            decimal_comma=comma,
        ).rows  # fmt: skip
    return typed, [(i.row, i.column, i.code) for i in report.issues], report


def staff(*lines: str, sep: str = ",") -> bytes:
    return "\n".join([STAFF_HEADER.replace(",", sep), *lines]).encode()


def test_bom_and_semicolons_and_decimal_comma() -> None:
    body = (
        "\ufeff" + staff("hosp-a;2026-10;S1;Phạm;Quang Huy;male;nurse;ICU;0,75;", sep=";").decode()
    )
    rows, issues, _ = check("staff", body.encode())
    assert issues == []
    assert rows[0]["fte"] == 0.75 and rows[0]["family_name"] == "Phạm"
    assert rows[0]["start_date"] is None and rows[0]["period"] == "2026-10"


def test_decimal_comma_is_refused_in_comma_files() -> None:
    _, issues, _ = check("staff", staff('hosp-a,2026-10,S1,Phạm,,,nurse,,"0,75",'))
    assert issues == [(1, "fte", "type")]


def test_json_rows_accept_numbers_and_numeric_strings() -> None:
    body = json.dumps(
        [
            {"org": "hosp-a", "period": "2026-10", "indicator": "falls", "numerator": 2},
            {
                "org": "hosp-a",
                "period": "2026-10",
                "indicator": "infections",
                "numerator": "3",
                "denominator": 100.0,
            },
        ]  # fmt: skip
    ).encode()
    rows, issues, _ = check("quality", body)
    assert issues == []
    assert rows[0]["numerator"] == 2 and rows[1]["numerator"] == 3 and rows[1]["denominator"] == 100
    assert rows[0]["ward_id"] is None


def test_json_type_errors() -> None:
    body = json.dumps(
        [
            {"org": "hosp-a", "period": "2026-10", "indicator": "falls", "numerator": True},
            {"org": "hosp-a", "period": "2026-10", "indicator": ["x"], "numerator": 1.5},
            "not an object",
        ]  # fmt: skip
    ).encode()
    _, issues, _ = check("quality", body)
    assert sorted(issues, key=str) == sorted(
        [
            (1, "numerator", "type"),
            (2, "indicator", "type"),
            (2, "numerator", "type"),
            (3, None, "format"),
        ],  # fmt: skip
        key=str,
    )


def test_file_level_problems() -> None:
    assert check("staff", "Trân".encode("latin-1"))[1] == [(0, None, "encoding")]
    assert check("staff", b"")[1] == [(0, None, "format")]
    assert check("quality", b"[1,", media="json")[1] == [(0, None, "format")]
    assert check("staff", staff("a,b"))[1] == [(1, None, "row-length")]
    many = staff(*[f"hosp-a,2026-10,S{i},N,,,nurse,,1," for i in range(6)])
    assert check("staff", many, max_rows=5)[1] == [(0, None, "too-many-rows")]
    assert check("staff", staff())[1] == [(0, None, "empty")]
    header = b"org,period,staff_id,staff_id,family_name,role,fte\n"
    assert (0, "staff_id", "duplicate-column") in check("staff", header)[1]


def test_period_rules() -> None:
    rows = ["hosp-a,2026-10,S1,N,,,nurse,,1,", "hosp-a,2026-09,S2,N,,,nurse,,1,"]
    assert check("staff", staff(*rows))[1] == [(2, "period", "wrong-period")]
    assert check("staff", staff(rows[0]), period="2026-09")[1] == [(1, "period", "wrong-period")]
    assert check("staff", staff(rows[0]), period="2026/10")[1] == [(0, "period", "type")]
    future = "hosp-a,2026-12,S1,N,,,nurse,,1,"
    assert check("staff", staff(future))[1] == [(1, "period", "future-period")]
    assert check("staff", staff("hosp-a,2026-13,S1,N,,,nurse,,1,"))[1] == [(1, "period", "type")]


def test_quality_key_with_empty_ward_detects_duplicates() -> None:
    body = json.dumps(
        [
            {"org": "hosp-a", "period": "2026-10", "indicator": "falls", "numerator": 1},
            {
                "org": "hosp-a",
                "period": "2026-10",
                "indicator": "falls",
                "ward_id": "",
                "numerator": 2,
            },
        ]  # fmt: skip
    ).encode()
    assert check("quality", body)[1] == [(2, "indicator,ward_id", "duplicate-key")]


def test_beds_and_readmission_consistency() -> None:
    header = "org,period,ward_id,ward_name,ward_type,beds,occupied_bed_days,admissions,discharges"
    ok = f"{header}\nhosp-a,2026-02,W1,A,icu,10,280,1,1".encode()
    assert check("beds", ok)[1] == []
    over = f"{header}\nhosp-a,2026-02,W1,A,icu,10,281,1,1".encode()  # February: 28 days
    assert check("beds", over)[1] == [(1, "occupied_bed_days", "inconsistent")]
    quality = json.dumps(
        [
            {
                "org": "hosp-a",
                "period": "2026-10",
                "indicator": "readmissions_30d",
                "numerator": 5,
                "denominator": 4,
            }
        ]  # fmt: skip
    ).encode()
    assert check("quality", quality)[1] == [(1, "numerator", "inconsistent")]


def test_messages_never_quote_cell_values() -> None:
    secret = "Hoàng-Bảo-Ngọc-이서준"
    lines = [
        f"{secret},2026-10,S1,{secret},{secret},{secret},{secret},x,{secret},{secret}",
        f"hosp-a,{secret},{secret},N,,,nurse,,1,",
    ]
    _, issues, report = check("staff", staff(*lines))
    assert len(issues) >= 7
    text = json.dumps(report.to_json(), ensure_ascii=False)
    assert secret not in text and "Hoàng" not in text


def test_report_is_capped() -> None:
    lines = [f"hosp-b,2026-10,S{i},N,,,nurse,,1," for i in range(MAX_ISSUES + 10)]
    _, issues, report = check("staff", staff(*lines), max_rows=MAX_ISSUES + 10)
    assert len(issues) == MAX_ISSUES and report.truncated
    assert report.to_json()["truncated"] is True


def test_atc_list_codes_have_the_level5_shape() -> None:
    import re

    from salus.warehouse.datasets.definitions import ATC_PATTERN

    assert all(re.match(ATC_PATTERN, code) for code in ATC_CODES)
    assert SCHEMAS["medicines"].column("atc_code").values == tuple(sorted(ATC_CODES))


def test_templates_and_json_schemas() -> None:
    for schema in SCHEMAS.values():
        assert schema.template_csv() == ",".join(schema.names) + "\r\n"
        document = schema.json_schema("https://salus.example")
        items = document["items"]
        assert set(items["properties"]) == set(schema.names)
        assert set(items["required"]) == {c.name for c in schema.columns if c.required}
        assert document["$id"].endswith(f"/api/v1/datasets/{schema.name}/schema.json")


def test_json_schema_validates_the_samples() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    from pathlib import Path

    rows = json.loads(
        (Path(__file__).parents[1] / "data" / "datasets" / "quality.json").read_text()
    )
    jsonschema.validate(rows, SCHEMAS["quality"].json_schema())
    rows[0]["indicator"] = "not-an-indicator"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rows, SCHEMAS["quality"].json_schema())


@pytest.mark.parametrize(
    "change",
    [
        {"mode": "upsert"},
        {"period": "nope"},
        {"key": ["family_name"]},
        {"columns_extra": {"name": "x", "type": "blob"}},
        {"columns_extra": {"name": "y", "type": "code"}},
        {"columns_extra": {"name": "org", "type": "string"}},
    ],
)
def test_bad_schema_definitions_are_caught(change: dict[str, Any]) -> None:
    data = SCHEMAS["staff"].describe()
    data["columns"] = [{**c, "max_length": c.get("maxLength", 200)} for c in data["columns"]]
    extra = change.pop("columns_extra", None)
    if extra:
        data["columns"].append(extra)
    data.update(change)
    with pytest.raises(ValueError):
        schema_from_data(data)


def test_mapping_ids_are_stable_and_per_org() -> None:
    row = {"org": "hosp-a", "period": "2026-10", "device_id": "CT-01", "device_type": "ct",
           "status": "active", "downtime_hours": 0.0}  # fmt: skip
    device = map_row("equipment", "hosp-a", row)[0]
    assert device["id"] == resource_id("hosp-a", "equipment", "Device", "CT-01")
    assert device["id"] != resource_id("hosp-b", "equipment", "Device", "CT-01")
    assert len(device["id"]) <= 64 and "valueCode" not in device["property"][0]
