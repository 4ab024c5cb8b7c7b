"""Synthea transaction Bundles (synthetic, Apache-2.0; tests/data/fhir/synthea)
load through the HTTP API as transactions, and every resource reads back equal
to what was sent, its urn:uuid references rewritten to the assigned ids; on
SQLite and PostgreSQL. The extended variant loads every bundle of the shared
corpus when it is present."""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKENDS
from tests.fhirdata import rewrite_references
from tests.integration.security_world import World, make_world

DATA = Path(__file__).resolve().parents[1] / "data" / "fhir" / "synthea"
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "synthea-r4" / "bundles"
FHIR = "application/fhir+json"


def _bundles(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern))


def _load(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        bundle: dict[str, Any] = json.load(handle)
    return bundle


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("synthea")) as built:
        yield built


def load_and_compare(world: World, bundle: dict[str, Any]) -> int:
    sent = copy.deepcopy(bundle)
    response = world.client.post(
        "/fhir",
        content=json.dumps(bundle).encode(),
        headers={**world.headers("a-feed"), "Content-Type": FHIR},
    )
    assert response.status_code == 200, response.text[:500]
    result = response.json()
    ids = {}
    for entry, answer in zip(sent["entry"], result["entry"], strict=True):
        assert answer["response"]["status"] == "201 Created"
        ids[entry["fullUrl"]] = answer["response"]["location"].split("/_history")[0]
    for entry in sent["entry"]:
        location = ids[entry["fullUrl"]]
        read = world.client.get(f"/fhir/{location}", headers=world.headers("a-feed"))
        assert read.status_code == 200, location
        expected = _strip(rewrite_references(entry["resource"], ids))
        assert _strip(read.json()) == expected, location
    return len(sent["entry"])


@pytest.mark.parametrize("path", _bundles(DATA, "*.json.gz"), ids=lambda p: p.name[:8])
def test_synthea_bundle_round_trip(world: World, path: Path) -> None:
    assert load_and_compare(world, _load(path)) > 50


def test_synthea_patients_are_searchable(world: World) -> None:
    bundle = _load(_bundles(DATA, "*.json.gz")[0])
    load_and_compare(world, bundle)
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    family = patient["name"][0]["family"]
    found = world.client.get(
        f"/fhir/Patient?family={family}", headers=world.headers("a-feed")
    ).json()
    assert found["total"] >= 1
    pid = found["entry"][0]["resource"]["id"]
    everything = world.client.get(
        f"/fhir/Patient/{pid}/$everything?_count=1000", headers=world.headers("a-feed")
    ).json()
    assert everything["total"] >= 10


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared Synthea corpus is not present")
def test_every_corpus_bundle_loads(world: World) -> None:
    total = 0
    for path in _bundles(CORPUS, "*.json"):
        total += load_and_compare(world, _load(path))
    assert total > 10_000
