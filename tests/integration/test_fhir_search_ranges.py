"""Date ranges as ANDed conditions on one parameter (FHIR search.html#date and
search.html#combining: repeated parameters are ANDed, and each condition may
be met by a different value of a multi-valued element), on SQLite and
PostgreSQL: single-valued resources answered on one index row, multi-valued
ones condition by condition, long periods and short values that straddle the
start of the range."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from salus.db.tables import fhir_idx_date, fhir_resources
from salus.fhir.indexing import DATE_LONG, DATE_MULTI
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FHIR = "application/fhir+json"


def _post(world: World, resource: dict[str, Any]) -> str:
    response = world.client.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource).encode(),
        headers={**world.headers("a-feed"), "Content-Type": FHIR},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _goal(patient: str, *dues: str) -> dict[str, Any]:
    return {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": "HbA1c below 7 %"},
        "subject": {"reference": f"Patient/{patient}"},
        "target": [{"dueDate": due} for due in dues],
    }


def _encounter(patient: str, start: str, end: str | None) -> dict[str, Any]:
    period = {"start": start, **({"end": end} if end else {})}
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "IMP",
        },
        "subject": {"reference": f"Patient/{patient}"},
        "period": period,
    }


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("ranges")) as built:
        patient = _post(built, {"resourceType": "Patient", "name": [{"family": "Lê"}]})
        ids = {
            "goal_two": _post(built, _goal(patient, "2026-01-05", "2026-03-10")),
            "goal_one": _post(built, _goal(patient, "2026-01-05")),
            "goal_late": _post(built, _goal(patient, "2026-03-10")),
            # Encounters against the range 2026-01-10 .. 2026-01-20:
            "enc_long": _post(built, _encounter(patient, "2025-12-01", "2026-03-01")),
            "enc_open": _post(built, _encounter(patient, "2025-06-01T08:00:00Z", None)),
            "enc_straddle": _post(
                built, _encounter(patient, "2026-01-09T20:00:00Z", "2026-01-10T02:00:00Z")
            ),
            "enc_inside": _post(
                built, _encounter(patient, "2026-01-15T08:00:00Z", "2026-01-15T09:00:00Z")
            ),
            "enc_before": _post(
                built, _encounter(patient, "2026-01-01T08:00:00Z", "2026-01-01T09:00:00Z")
            ),
            "enc_after": _post(
                built, _encounter(patient, "2026-01-25T08:00:00Z", "2026-01-26T09:00:00Z")
            ),
        }
        built.ids = ids  # type: ignore[attr-defined]
        yield built


def _ids(world: World, query: str) -> set[str]:
    response = world.client.get(f"/fhir/{query}", headers=world.headers("a-feed"))
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


def test_index_rows_carry_their_shape(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    with world.services.db.read() as conn:
        rows = conn.execute(
            select(fhir_resources.c.res_id, fhir_idx_date.c.shape)
            .join(fhir_resources, fhir_resources.c.rid == fhir_idx_date.c.rid)
            .where(fhir_idx_date.c.param.in_(["target-date", "date"]))
        ).all()
    shapes: dict[str, set[int]] = {}
    for res_id, shape in rows:
        shapes.setdefault(str(res_id), set()).add(int(shape))
    assert shapes[ids["goal_two"]] == {DATE_MULTI}
    assert shapes[ids["goal_one"]] == {0}
    assert shapes[ids["enc_long"]] == {DATE_LONG}
    assert shapes[ids["enc_open"]] == {DATE_LONG}
    assert shapes[ids["enc_inside"]] == {0}
    assert shapes[ids["enc_after"]] == {DATE_LONG}  # 25 hours


def test_and_may_be_met_by_different_values_of_a_multi_valued_element(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    # No single due date lies in February or later and in January or before, but
    # goal_two has one of each: both conditions are met (by different values).
    assert _ids(world, "Goal?target-date=ge2026-02-01&target-date=le2026-01-31") == {
        ids["goal_two"]
    }
    assert _ids(world, "Goal?target-date=ge2026-01-01&target-date=lt2026-01-10") == {
        ids["goal_two"],
        ids["goal_one"],
    }
    assert _ids(world, "Goal?target-date=gt2026-03&target-date=le2026-12") == set()
    assert _ids(world, "Goal?target-date=ge2026-03-01&target-date=le2026-03-31") == {
        ids["goal_two"],
        ids["goal_late"],
    }


def test_single_values_must_meet_every_condition(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    found = _ids(world, "Encounter?date=ge2026-01-10&date=le2026-01-20")
    # The long stay and the open one overlap the range; the night stay began
    # before it and ended inside it; the others lie outside it.
    assert found == {ids["enc_long"], ids["enc_open"], ids["enc_straddle"], ids["enc_inside"]}
    assert _ids(world, "Encounter?date=gt2026-01-24&date=lt2026-02") == {
        ids["enc_long"],
        ids["enc_open"],
        ids["enc_after"],
    }
    # Three conditions; eq bounds both ends.
    assert _ids(world, "Encounter?date=ge2026-01&date=le2026-01-31&date=eq2026-01-15") == {
        ids["enc_inside"]
    }
    # Comparisons that are not ranges keep their own conditions.
    assert _ids(world, "Encounter?date=ge2026-01-10&date=ne2026-01-15") == {
        ids["enc_long"],
        ids["enc_open"],
        ids["enc_straddle"],
        ids["enc_after"],
    }
    # OR inside one of them: condition by condition, as before.
    assert _ids(world, "Encounter?date=ge2026-01-10&date=lt2026-01-02,gt2026-01-25") == {
        ids["enc_long"],
        ids["enc_open"],
        ids["enc_after"],
    }


def test_range_matches_what_separate_conditions_give(world: World) -> None:
    """The one-row plan gives what the condition-by-condition form gives for
    single-valued resources: compared against _lastUpdated-free equivalents."""
    ids = world.ids  # type: ignore[attr-defined]
    for low, high in [("2026-01-09", "2026-01-10"), ("2025-12-31", "2026-01-01"), ("2026", "2026")]:
        combined = _ids(world, f"Encounter?date=ge{low}&date=le{high}")
        separately = _ids(world, f"Encounter?date=ge{low}") & _ids(
            world, f"Encounter?date=le{high}"
        )
        assert combined == separately, (low, high)
    assert ids["enc_straddle"] in _ids(world, "Encounter?date=ge2026-01-10&date=le2026-01-10")


@pytest.mark.parametrize("lower", ["ge", "gt", "sa", "eq"])
@pytest.mark.parametrize("upper", ["le", "lt", "eb", "eq"])
def test_every_pair_of_prefixes_matches_what_separate_conditions_give(
    world: World, lower: str, upper: str
) -> None:
    """Each part of the range form leaves out or rewrites conditions it implies
    (a ``ge`` bound in the part read from the low index; bounds as filters in
    the parts read from the shape index, stop 18): for every pair of a lower
    and an upper prefix, the answer is that of the two conditions apart."""
    for low, high in [("2026-01-09", "2026-01-10"), ("2025-12-31", "2026-01-02"), ("2026", "2026")]:
        combined = _ids(world, f"Encounter?date={lower}{low}&date={upper}{high}")
        separately = _ids(world, f"Encounter?date={lower}{low}") & _ids(
            world, f"Encounter?date={upper}{high}"
        )
        assert combined == separately, (low, high)


@pytest.mark.parametrize(
    "query",
    [
        "Encounter?date=ge2025",
        "Encounter?date=ge2025&status=finished",
        "Encounter?subject:missing=false&date=lt2027",
        "Goal?target-date=ge2026-01-01&lifecycle-status=active",
    ],
)
def test_first_pages_of_dense_conditions_walk_in_rid_order(
    world: World, query: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every condition counted as dense, pages come from the rid-order walk
    (correlated EXISTS probes); they must be the pages of the collected form."""
    from salus.fhir import searching

    def pages(size: int) -> list[list[str]]:
        found: list[list[str]] = []
        for offset in range(0, 12, size):
            response = world.client.get(
                f"/fhir/{query}&_count={size}&_offset={offset}", headers=world.headers("a-feed")
            )
            assert response.status_code == 200, response.text
            found.append([e["resource"]["id"] for e in response.json().get("entry", [])])
        return found

    collected = pages(2)
    monkeypatch.setattr(searching, "DENSE_MATCHES", 1)
    walked = pages(2)
    assert walked == collected
    assert sum(len(page) for page in walked) >= 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # search.html#prefix against the stays, the search value 2026-01-10 being
        # [00:00, 23:59:59.999] of that day (the night stay overlaps its start).
        ("gt2026-01-10", {"enc_long", "enc_open", "enc_inside", "enc_after"}),
        ("sa2026-01-10", {"enc_inside", "enc_after"}),
        ("ge2026-01-10", {"enc_long", "enc_open", "enc_straddle", "enc_inside", "enc_after"}),
        ("lt2026-01-10", {"enc_long", "enc_open", "enc_straddle", "enc_before"}),
        ("eb2026-01-10", {"enc_before"}),
        ("le2026-01-10", {"enc_long", "enc_open", "enc_straddle", "enc_before"}),
        ("le2026-01-15", {"enc_long", "enc_open", "enc_straddle", "enc_inside", "enc_before"}),
        ("lt2026-01-15", {"enc_long", "enc_open", "enc_straddle", "enc_before"}),
        ("eq2026-01-15", {"enc_inside"}),
        ("ne2026-01-15", {"enc_long", "enc_open", "enc_straddle", "enc_before", "enc_after"}),
    ],
)
def test_each_prefix_compares_its_own_end_of_a_period(
    world: World, value: str, expected: set[str]
) -> None:
    """search.html#prefix on periods: ``gt`` (the target ends after the value)
    and ``sa`` (it begins after it), ``lt`` and ``eb``, ``ge`` and ``le``
    answer differently for periods that overlap the search value."""
    ids = world.ids  # type: ignore[attr-defined]
    assert _ids(world, f"Encounter?date={value}") == {ids[name] for name in expected}
