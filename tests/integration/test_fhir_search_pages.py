"""Pages in the default order (FHIR search.html#count, #sort: no ``_sort``, the
server's order is stable) are the same whichever form the search takes: every
condition collected (``rid IN`` the index), every condition probed by rid (a
walk in rid order that stops at the page), or a mix (sparse conditions
collected, dense ones probed; see ``salus.fhir.searching.DENSE_MATCHES``).
On SQLite and PostgreSQL, with the access filter at every level of a chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from salus.db.tables import fhir_idx_token, fhir_resources
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FHIR = "application/fhir+json"
R_JOIN = fhir_resources.c.rid == fhir_idx_token.c.rid
LOINC = "http://loinc.org"
CODES = ("8867-4", "8310-5", "29463-7")
FAMILIES = ("Nguyễn", "Trần", "Nguyễn", "Lê", "Nguyên", "Trần")


def _post(world: World, who: str, resource: dict[str, Any]) -> str:
    response = world.client.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource).encode(),
        headers={**world.headers(who), "Content-Type": FHIR},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _observation(patient: str, code: str, when: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
    }


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("pages")) as built:
        patients = [
            _post(built, "a-feed", {"resourceType": "Patient", "name": [{"family": f}]})
            for f in FAMILIES
        ]
        observations: list[tuple[str, str, str, str, str]] = []  # id, patient, code, date, status
        n = 0
        for p, patient in enumerate(patients):
            for k in range(3):
                code = CODES[(p + k) % 3]
                when = f"2026-0{1 + n % 6}-{10 + n % 15}T08:00:00Z"
                status = "final" if n % 4 else "amended"
                res_id = _post(built, "a-feed", _observation(patient, code, when, status))
                observations.append((res_id, patient, code, when, status))
                n += 1
        # The other hospital: its own Patient of the same name, and an Observation
        # that refers to one of hospital A's Patients (which it cannot read).
        b_patient = _post(
            built, "b-feed", {"resourceType": "Patient", "name": [{"family": "Nguyễn"}]}
        )
        b_own = _post(built, "b-feed", _observation(b_patient, CODES[0], "2026-02-01T08:00:00Z"))
        b_cross = _post(
            built, "b-feed", _observation(patients[0], CODES[0], "2026-02-01T09:00:00Z")
        )
        built.data = {  # type: ignore[attr-defined]
            "patients": patients,
            "observations": observations,
            "b_patient": b_patient,
            "b_own": b_own,
            "b_cross": b_cross,
        }
        yield built


def _pages(world: World, who: str, query: str, size: int) -> list[str]:
    """Every match, page by page (``_count``/``_offset``), in the order given."""
    found: list[str] = []
    for offset in range(0, 40, size):
        response = world.client.get(
            f"/fhir/{query}&_count={size}&_offset={offset}", headers=world.headers(who)
        )
        assert response.status_code == 200, response.text
        page = [e["resource"]["id"] for e in response.json().get("entry", [])]
        found += page
        if len(page) < size:
            break
    return found


QUERIES = [
    "Observation?code=http://loinc.org|8867-4",
    "Observation?code=http://loinc.org|8867-4,http://loinc.org|8310-5",
    "Observation?date=ge2026-03-01",
    "Observation?status=final&date=lt2026-04-01",
    "Observation?subject=Patient/{p0}&code=http://loinc.org|8310-5",
    "Observation?subject:Patient.family=Nguyen",
    "Observation?subject:Patient.family=Nguyen&code=http://loinc.org|29463-7",
    "Observation?subject:Patient.family=Nguyen&status=final",
    "Observation?code:not=http://loinc.org|8867-4",
    # Two tokens: the page read from the code's index, the status probed in the same table.
    "Observation?code=http://loinc.org|8867-4&status=final",
    "Patient?family=Ng",
    "Patient?_has:Observation:subject:code=http://loinc.org|29463-7",
]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("who", ["a-feed", "b-feed"])
def test_pages_are_the_same_collected_probed_or_mixed(
    world: World, query: str, who: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from salus.fhir import searching

    query = query.format(p0=world.data["patients"][0])  # type: ignore[attr-defined]
    forms: dict[int, list[str]] = {}
    for dense in (0, 1, 4):  # collected, all probed, mixed
        monkeypatch.setattr(searching, "DENSE_MATCHES", dense)
        forms[dense] = _pages(world, who, query, 2)
        assert len(set(forms[dense])) == len(forms[dense]), (dense, "a match twice")
    assert forms[1] == forms[0]
    assert forms[4] == forms[0]
    monkeypatch.setattr(searching, "DENSE_MATCHES", 0)
    response = world.client.get(f"/fhir/{query}&_count=100", headers=world.headers(who))
    assert [e["resource"]["id"] for e in response.json().get("entry", [])] == forms[0]


CHAINS = [
    "Observation?subject:Patient.family=Nguyen",
    "Observation?subject:Patient.family=Tr",
    "Observation?subject:Patient.family=N",
    "Observation?subject:Patient.family:exact=Lê",
    "Observation?subject:Patient._id={p0}",
    "Observation?subject:Patient._has:Observation:subject:code=http://loinc.org|29463-7",
]


@pytest.mark.parametrize("query", CHAINS)
@pytest.mark.parametrize("who", ["a-feed", "b-feed"])
def test_a_lone_chain_pages_the_same_collected_sorted_or_walked(
    world: World, query: str, who: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain alone (ADR 22, stop 15): its matches collected (``DENSE_MATCHES =
    0``), its references sorted before any resource is read (PostgreSQL), the
    resources walked in rid order with the chain probed per resource (as when
    ``CHAIN_WALK_TARGETS`` targets match: forced here with 1), and such a walk
    whose budget of resources runs out before the page is full give the same
    pages, under each hospital's filter at both levels."""
    from salus.fhir import searching

    query = query.format(p0=world.data["patients"][0])  # type: ignore[attr-defined]
    forms: dict[str, list[str]] = {}
    for form, dense, walk, budget in (
        ("collected", 0, 5000, 10_000),
        ("sorted", 2000, 5000, 10_000),
        ("walked", 1, 1, 10_000),
        ("budget spent", 1, 1, 5),
    ):
        monkeypatch.setattr(searching, "DENSE_MATCHES", dense)
        monkeypatch.setattr(searching, "CHAIN_WALK_TARGETS", walk)
        monkeypatch.setattr(searching, "CHAIN_WALK_BUDGET", budget)
        forms[form] = _pages(world, who, query, 2)
        assert len(set(forms[form])) == len(forms[form]), (form, "a match twice")
    assert forms["sorted"] == forms["collected"]
    assert forms["walked"] == forms["collected"]
    assert forms["budget spent"] == forms["collected"]
    if who == "a-feed" and "_has" not in query:
        assert forms["collected"], query


def test_a_lone_chain_walked_finds_what_its_targets_hold(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walked form's matches themselves, in rid order; hospital B finds its own
    Observation only, not the one that refers to hospital A's Patient."""
    from salus.fhir import searching

    monkeypatch.setattr(searching, "CHAIN_WALK_TARGETS", 1)
    data = world.data  # type: ignore[attr-defined]
    patients = data["patients"]
    nguyen = {patients[i] for i, f in enumerate(FAMILIES) if f in ("Nguyễn", "Nguyên")}
    tran = {patients[i] for i, f in enumerate(FAMILIES) if f == "Trần"}
    assert _pages(world, "a-feed", CHAINS[0], 2) == _expected(world, lambda r: r[1] in nguyen)
    assert _pages(world, "a-feed", CHAINS[1], 3) == _expected(world, lambda r: r[1] in tran)
    assert _pages(world, "b-feed", CHAINS[0], 2) == [data["b_own"]]
    assert _pages(world, "b-feed", CHAINS[2], 2) == [data["b_own"]]
    # _total=accurate counts every match, whichever form found the page.
    response = world.client.get(
        f"/fhir/{CHAINS[0]}&_count=2&_total=accurate", headers=world.headers("a-feed")
    )
    body = response.json()
    assert body["total"] == len(_expected(world, lambda r: r[1] in nguyen))
    assert len(body["entry"]) == 2


def _expected(world: World, test: Any) -> list[str]:
    rows = world.data["observations"]  # type: ignore[attr-defined]
    return [row[0] for row in rows if test(row)]


@pytest.mark.parametrize("dense", [0, 1, 4])
def test_what_the_pages_hold(world: World, dense: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The matches themselves, in creation (rid) order, under each form."""
    from salus.fhir import searching

    monkeypatch.setattr(searching, "DENSE_MATCHES", dense)
    data = world.data  # type: ignore[attr-defined]
    patients = data["patients"]
    nguyen = {patients[i] for i, f in enumerate(FAMILIES) if f in ("Nguyễn", "Nguyên")}
    assert _pages(world, "a-feed", QUERIES[0], 2) == _expected(world, lambda r: r[2] == CODES[0])
    assert _pages(world, "a-feed", QUERIES[2], 3) == _expected(world, lambda r: r[3] >= "2026-03")
    assert _pages(world, "a-feed", QUERIES[3], 2) == _expected(
        world, lambda r: r[4] == "final" and r[3] < "2026-04"
    )
    assert _pages(world, "a-feed", QUERIES[4].format(p0=patients[0]), 1) == _expected(
        world, lambda r: r[1] == patients[0] and r[2] == CODES[1]
    )
    assert _pages(world, "a-feed", QUERIES[5], 2) == _expected(world, lambda r: r[1] in nguyen)
    assert _pages(world, "a-feed", QUERIES[6], 2) == _expected(
        world, lambda r: r[1] in nguyen and r[2] == CODES[2]
    )
    assert _pages(world, "a-feed", QUERIES[7], 2) == _expected(
        world, lambda r: r[1] in nguyen and r[4] == "final"
    )
    # Hospital B: its own Observation through its own Patient only; the one that
    # refers to hospital A's Patient does not match through a Patient it cannot read.
    assert _pages(world, "b-feed", QUERIES[5], 2) == [data["b_own"]]
    assert _pages(world, "b-feed", QUERIES[0], 2) == [data["b_own"], data["b_cross"]]


def test_string_prefixes_at_the_edges_of_their_range(world: World) -> None:
    """search.html#string (starts with, case- and accent-insensitive), answered
    from the index by the range of code points a prefix spans: values just past
    the range's end, LIKE wildcards and characters outside the BMP."""
    names = ["Qabz", "Qab{", "Qac", "Qa_b", "Qaxb", "Q𝒜lpha", "Q𝒜", "Qǿrn", "QÖrn"]
    made = {
        name: _post(world, "a-feed", {"resourceType": "Patient", "name": [{"family": name}]})
        for name in names
    }

    def found(prefix: str) -> set[str]:
        ids = set(_pages(world, "a-feed", f"Patient?family={quote(prefix)}", 5))
        return {name for name, res_id in made.items() if res_id in ids}

    assert found("Qab") == {"Qabz", "Qab{"}
    assert found("qa") == {"Qabz", "Qab{", "Qac", "Qa_b", "Qaxb"}
    assert found("Qa_") == {"Qa_b"}
    assert found("Q𝒜") == {"Q𝒜lpha", "Q𝒜"}
    assert found("Q𝒜l") == {"Q𝒜lpha"}
    assert found("qor") == {"Qǿrn", "QÖrn"}
    assert found("Qz") == set()


def test_a_resource_with_two_index_rows_of_one_code_is_one_match(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two codings of one system|code (different displays) are two index rows; the
    page read from the index in rid order still holds the resource once."""
    from salus.fhir import searching

    data = world.data  # type: ignore[attr-defined]
    twice = _observation(data["patients"][1], "8867-4", "2026-06-01T08:00:00Z")
    twice["code"]["coding"] = [
        {"system": LOINC, "code": "8867-4", "display": "Heart rate"},
        {"system": LOINC, "code": "8867-4", "display": "Pulse"},
    ]
    twice_id = _post(world, "a-feed", twice)
    with world.services.db.read() as conn:
        rows = conn.execute(
            select(func.count())
            .select_from(fhir_idx_token.join(fhir_resources, R_JOIN))
            .where(fhir_resources.c.res_id == twice_id, fhir_idx_token.c.param == "code")
        ).scalar_one()
    assert rows == 2
    forms = {}
    for dense in (0, 1):
        monkeypatch.setattr(searching, "DENSE_MATCHES", dense)
        forms[dense] = _pages(world, "a-feed", QUERIES[0], 1)
    assert forms[1] == forms[0]
    assert forms[0].count(twice_id) == 1
    assert forms[0] == _expected(world, lambda r: r[2] == CODES[0]) + [twice_id]


def test_postgresql_plans_each_search_for_its_values(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 22 (6): psycopg prepares a statement run five times on a connection and
    PostgreSQL may then keep one generic plan for it, blind to the values (1-2 s
    instead of 0.3 ms for ``subject=X&code=Y`` at 1,000,000 resources). Every
    search, through the REST path, runs with ``plan_cache_mode =
    force_custom_plan`` in its own transaction only (``SET LOCAL``): the pooled
    connection is back to ``auto`` afterwards."""
    if world.services.db.is_sqlite:
        pytest.skip("plan_cache_mode is a PostgreSQL setting; SQLite plans every statement")
    from salus.fhir import searching

    seen: list[tuple[str, bool]] = []
    original = searching.Searcher._includes

    def spy(self: Any, conn: Any, *args: Any, **kwargs: Any) -> Any:
        mode = conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one()
        seen.append((str(mode), bool(conn.in_transaction())))
        return original(self, conn, *args, **kwargs)

    monkeypatch.setattr(searching.Searcher, "_includes", spy)
    for query in (QUERIES[0], QUERIES[4].format(p0=world.data["patients"][0])):  # type: ignore[attr-defined]
        for _ in range(7):  # past psycopg's prepare threshold of five runs
            response = world.client.get(f"/fhir/{query}", headers=world.headers("a-feed"))
            assert response.status_code == 200, response.text
            assert response.json().get("entry"), query
    assert seen == [("force_custom_plan", True)] * 14
    with world.services.db.read() as conn:
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one() == "auto"


@pytest.mark.parametrize("prefix", ["ge", "gt", "le", "lt", "sa", "eb"])
def test_a_one_sided_date_is_counted_from_the_end_of_its_index(world: World, prefix: str) -> None:
    """ADR 22, stop 16: whether ``date=geX`` (and the other one-sided prefixes)
    has ``n`` index rows is read from the end of the date index (the ``n``-th
    highest ``high`` passes ``>= X``), not counted from X: the same answer as the
    count for every ``n`` around the number of matches, at dates on, between and
    beyond the stored ones."""
    from sqlalchemy import true

    from salus.fhir.query import SearchPlan, build_search, type_lookup
    from salus.fhir.search.registry import get_registry

    lookup = type_lookup(get_registry().params_for)
    days = ["2025-12-31", "2026-01-10", "2026-02-01", "2026-03-12", "2026-03", "2026-06-24"]
    days += ["2026-07-01", "2026-02-01T08:00:00Z", "2026"]
    with world.services.db.read() as conn:
        for day in days:
            plan = SearchPlan(lookup, lambda _table: true())
            parsed = build_search(plan, "Observation", [("date", f"{prefix}{day}")], lenient=False)
            (condition,) = parsed.conditions
            assert id(condition) in plan.edges, (prefix, day)
            matches = conn.execute(plan.count_query(condition, 10_000)).scalar_one()
            for enough in range(1, matches + 3):
                from_end = plan.matches_at_least(conn, condition, enough)
                assert from_end is (matches >= enough), (prefix, day, enough, matches)
