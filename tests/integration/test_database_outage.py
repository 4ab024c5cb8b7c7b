"""A lost database connection is a 503 with an OperationOutcome, never a 500,
and the next request reconnects (PostgreSQL: the pool does not ping before
each checkout, see ADR 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.integration.security_world import make_world

pytestmark = pytest.mark.postgres  # make_world skips with the reason when it is not configured


def test_connections_killed_under_the_server(tmp_path: Path) -> None:
    with make_world("postgresql", tmp_path) as world:
        headers = {**world.headers("a-feed"), "Content-Type": "application/fhir+json"}
        body = json.dumps({"resourceType": "Patient", "gender": "male"})
        created = world.client.post("/fhir/Patient", content=body, headers=headers)
        assert created.status_code == 201, created.text
        location = "/fhir/" + created.headers["location"].split("/fhir/", 1)[1]
        location = location.split("/_history", 1)[0]
        engine = world.services.db.engine
        # Every connection the pool holds, then the server-side kill of each.
        held = [engine.connect() for _ in range(engine.pool.size())]  # type: ignore[attr-defined]
        pids = [int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()) for conn in held]
        for conn in held:
            conn.close()
        with engine.connect() as killer:
            pids = [
                pid
                for pid in pids
                if pid != killer.execute(text("SELECT pg_backend_pid()")).scalar_one()
            ]
            for pid in pids:
                killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killer.commit()

        statuses = []
        for _ in range(3):
            response = world.client.get(location, headers=world.headers("a-feed"))
            statuses.append(response.status_code)
            if response.status_code == 503:
                outcome = response.json()
                assert outcome["resourceType"] == "OperationOutcome"
                assert "database" in outcome["issue"][0]["diagnostics"]
            else:
                assert response.status_code == 200, response.text
        assert 500 not in statuses, statuses
        assert statuses[-1] == 200, statuses  # the pool reconnected
