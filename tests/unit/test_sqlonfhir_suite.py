"""The official SQL-on-FHIR v2 test suite (tests/data/sql-on-fhir-v2, MIT).

Every test case of every file is its own pytest id, ``file::title``; run
with ``-v`` to list all 134. Rows are compared as the suite's reference
runner does: as multisets of rows (order does not matter), with the columns
in ``expectColumns`` order when a test gives it; ``expectError`` cases must
raise a view error (at compile time or while evaluating the resources).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from salus.fhir.search.resource_types import RESOURCE_TYPES
from salus.warehouse.sqlonfhir import ViewDefinitionError, ViewRuntimeError, compile_view

SUITE = Path(__file__).resolve().parents[1] / "data" / "sql-on-fhir-v2"


def _cases() -> list[Any]:
    cases = []
    for path in sorted(SUITE.glob("*.json")):
        suite = json.loads(path.read_text(encoding="utf-8"))
        for case in suite["tests"]:
            cases.append(pytest.param(suite, case, id=f"{path.stem}::{case['title']}"))
    return cases


CASES = _cases()


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


def test_the_whole_suite_is_here() -> None:
    assert len(list(SUITE.glob("*.json"))) == 22
    assert len(CASES) == 134


@pytest.mark.parametrize(("suite", "case"), CASES)
def test_sql_on_fhir_v2(suite: dict[str, Any], case: dict[str, Any]) -> None:
    resources = suite["resources"]
    if case.get("expectError"):
        with pytest.raises((ViewDefinitionError, ViewRuntimeError)):
            view = compile_view(case["view"], resource_types=RESOURCE_TYPES)
            view.evaluate(resources)
        return
    view = compile_view(case["view"], resource_types=RESOURCE_TYPES)
    rows = view.evaluate(resources)
    if "expectCount" in case:
        assert len(rows) == case["expectCount"]
        return
    if "expectColumns" in case:
        assert view.column_names == case["expectColumns"]
    expected = case["expect"]
    for row in rows:
        assert set(row) == set(view.column_names)
    # Every expected row names every column, except where the suite leaves
    # out nulls; compare on the view's columns with absent meaning null.
    got = Counter(_canonical(row) for row in rows)
    want = Counter(
        _canonical({name: row.get(name) for name in view.column_names}) for row in expected
    )
    assert got == want
