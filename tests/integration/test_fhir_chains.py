"""Nested chains and reverse chains (FHIR search.html#chaining, #has): two
levels each, filtered by the caller's access at every level, and the depth
limit; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world
from tests.integration.test_fhir_search import _obs, _post, ids_of, search


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("chains")) as built:
        yield built


def test_nested_chains_and_has(world: World) -> None:
    """search.html#chaining and #has, nested: two levels each, and the limit."""
    org = _post(
        world,
        "a-feed",
        {"resourceType": "Organization", "name": "Bệnh viện Chợ Rẫy", "active": True},
    )["id"]
    patient = _post(
        world,
        "a-feed",
        {
            "resourceType": "Patient",
            "name": [{"family": "Lê"}],
            "identifier": [{"system": "urn:hosp-a:mrn", "value": "A-2002"}],
            "managingOrganization": {"reference": f"Organization/{org}"},
        },
    )["id"]
    obs = _post(world, "a-feed", _obs(patient, "1975-2", 12.0, "2026-03-01", "umol/L"))["id"]
    chained = "Observation?subject:Patient.organization.name=benh vien cho"
    assert ids_of(search(world, "a-feed", chained)) == {obs}
    assert (
        ids_of(search(world, "a-feed", "Observation?subject:Patient.organization.name=nowhere"))
        == set()
    )
    nested = "Organization?_has:Patient:organization:_has:Observation:subject:code=1975-2"
    assert ids_of(search(world, "a-feed", nested)) == {org}
    assert ids_of(search(world, "a-feed", nested.replace("1975-2", "2345-7"))) == set()
    # The other hospital sees none of it through the chain (each level is filtered).
    assert ids_of(search(world, "b-feed", chained)) == set()
    assert ids_of(search(world, "b-feed", nested)) == set()
    too_deep = "Observation?subject:Patient.organization.partof.partof.name=x"
    outcome = search(world, "a-feed", too_deep, status=400)
    assert "at most 3 levels" in outcome["issue"][0]["diagnostics"]
