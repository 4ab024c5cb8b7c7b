"""Updates prepared before their write transaction (salus.fhir.updates, FHIR
R4 http.html#update) on SQLite and PostgreSQL: the search index follows the
new version, a concurrent update between the preparation and the transaction
is not lost, and ownership and If-Match are still checked on the locked row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from salus.db.tables import fhir_history, fhir_idx_string
from salus.errors import Forbidden, PreconditionFailed
from salus.fhir import store as store_module
from salus.fhir.rest import FhirRequest
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("update")) as built:
        yield built


def call(world: World, who: str, method: str, path: str, body: Any, **headers: str) -> Any:
    return world.services.fhir_router.handle(
        FhirRequest(
            method=method,
            path=path,
            query=[],
            headers={"content-type": "application/fhir+json", **headers},
            body=json.dumps(body).encode(),
            principal=world.services.tokens.verify(world.tokens[who]),
            purpose=None,
            base_url="http://test/fhir",
        )
    )


def patient(family: str, res_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family}]}
    if res_id is not None:
        body["id"] = res_id
    return body


def created(world: World, family: str) -> str:
    response = call(world, "a-feed", "POST", "Patient", patient(family))
    assert response.status == 201
    return str(response.headers["Location"].split("/")[-3])


def indexed_families(world: World, res_id: str) -> set[str]:
    with world.services.db.read() as conn:
        history = conn.execute(
            select(fhir_history.c.rid).where(fhir_history.c.res_id == res_id).limit(1)
        ).scalar_one()
        rows = conn.execute(
            select(fhir_idx_string.c.exact).where(
                fhir_idx_string.c.rid == history, fhir_idx_string.c.param == "family"
            )
        ).scalars()
        return set(rows)


def versions(world: World, res_id: str) -> list[tuple[int, str, str]]:
    store = world.services.fhir_store
    with world.services.db.read() as conn:
        rows = conn.execute(
            select(fhir_history)
            .where(fhir_history.c.res_id == res_id)
            .order_by(fhir_history.c.version)
        ).mappings()
        out = []
        for row in rows:
            body = store.stored_from_row(row).resource or {}
            out.append((int(row["version"]), str(row["method"]), body["name"][0]["family"]))
        return out


def test_update_replaces_the_index_rows(world: World) -> None:
    old, new = f"Old{uuid.uuid4().hex[:6]}", f"New{uuid.uuid4().hex[:6]}"
    res_id = created(world, old)
    assert indexed_families(world, res_id) == {old}
    response = call(world, "a-feed", "PUT", f"Patient/{res_id}", patient(new, res_id))
    assert response.status == 200
    assert response.headers["ETag"] == 'W/"2"'
    assert indexed_families(world, res_id) == {new}
    assert versions(world, res_id) == [(1, "POST", old), (2, "PUT", new)]


def test_update_raced_between_preparation_and_transaction(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    res_id = created(world, "First")
    plan_update = store_module.plan_update
    fired: list[int] = []
    started: list[bool] = []

    def plan_then_race(*args: Any, **kwargs: Any) -> Any:
        plan = plan_update(*args, **kwargs)
        if not started:  # another update commits after this one was prepared
            started.append(True)
            fired.append(
                call(world, "a-feed", "PUT", f"Patient/{res_id}", patient("Second", res_id)).status
            )
        return plan

    monkeypatch.setattr(store_module, "plan_update", plan_then_race)
    response = call(world, "a-feed", "PUT", f"Patient/{res_id}", patient("Third", res_id))
    assert fired == [200]
    assert response.status == 200
    # The prepared version 2 was not written over the one that got there first:
    # this update became version 3, made again from the current row.
    assert response.headers["ETag"] == 'W/"3"'
    assert versions(world, res_id) == [
        (1, "POST", "First"),
        (2, "PUT", "Second"),
        (3, "PUT", "Third"),
    ]
    assert indexed_families(world, res_id) == {"Third"}


def test_if_match_raced_between_preparation_and_transaction(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    res_id = created(world, "Alpha")
    plan_update = store_module.plan_update
    fired: list[int] = []
    started: list[bool] = []

    def plan_then_race(*args: Any, **kwargs: Any) -> Any:
        plan = plan_update(*args, **kwargs)
        if not started:
            started.append(True)
            fired.append(
                call(world, "a-feed", "PUT", f"Patient/{res_id}", patient("Beta", res_id)).status
            )
        return plan

    monkeypatch.setattr(store_module, "plan_update", plan_then_race)
    with pytest.raises(PreconditionFailed):
        call(
            world,
            "a-feed",
            "PUT",
            f"Patient/{res_id}",
            patient("Gamma", res_id),
            **{"if-match": 'W/"1"'},
        )
    assert fired == [200]
    assert [v[:2] for v in versions(world, res_id)] == [(1, "POST"), (2, "PUT")]
    assert indexed_families(world, res_id) == {"Beta"}


def test_another_hospital_cannot_update(world: World) -> None:
    res_id = created(world, "Owned")
    with pytest.raises(Forbidden):
        call(world, "b-feed", "PUT", f"Patient/{res_id}", patient("Taken", res_id))
    assert [v[2] for v in versions(world, res_id)] == ["Owned"]
    assert indexed_families(world, res_id) == {"Owned"}
