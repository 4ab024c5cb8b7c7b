"""Indicators computed on a schedule (issue 7, item 3), on SQLite and PostgreSQL: the
primary's schedule enqueues ``warehouse.indicators`` once per slot, the job
worker stores a snapshot per indicator, and API reads and open data use it
(without running DuckDB) until the next run or ``refresh=true``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from salus.db.tables import jobs
from salus.db.tables_opendata import indicator_snapshots
from salus.jobs import Worker
from salus.services import Services
from salus.storage.keys import FileKeyProvider
from salus.warehouse.indicators.engine import Indicators
from salus.warehouse.indicators.snapshots import IndicatorSchedule
from tests.conftest import BACKENDS, settings_for
from tests.integration.security_world import World, make_world
from tests.integration.test_indicators import DATA, seed_network

FHIR = "application/fhir+json"


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("schedule")) as built:
        seed_network(built, None)
        yield built


def submit_beds(world: World, hospital: str, text: str) -> None:
    feed = {"hosp-a": "a-feed", "hosp-b": "b-feed"}[hospital]
    response = world.client.post(
        "/api/v1/datasets/beds/submissions",
        content=text.encode(),
        headers=world.headers(feed, **{"Content-Type": "text/csv"}),
    )
    assert response.status_code in (200, 201), response.text[:800]


def occupancy(world: World, **params: str) -> tuple[float, str]:
    response = world.call("moh-analyst", "GET", "/api/v1/indicators/bed-occupancy", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    cell = next(c for c in body["cells"] if c["hospital"] == "hosp-b")
    return cell["value"], body["computedAt"]


def test_schedule_enqueues_once_per_slot_and_the_job_stores_snapshots(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = world.services
    submit_beds(world, "hosp-b", (DATA / "hosp-b_beds.csv").read_text())
    schedule = IndicatorSchedule(services, 3600)
    at = datetime(2026, 11, 23, 10, 5, tzinfo=UTC)
    first = schedule.tick(at)
    assert schedule.tick(at + timedelta(minutes=50)) == first  # same hour: same job
    second = schedule.tick(at + timedelta(hours=1))
    assert second != first
    worker = Worker(services.jobs, services.job_handlers, name="test-schedule")
    assert worker.drain() == 2
    with services.db.read() as conn:
        states = conn.execute(select(jobs.c.status).where(jobs.c.id.in_([first, second])))
        assert {s for (s,) in states} == {"done"}
        snaps = conn.execute(select(indicator_snapshots)).all()
    assert len(snaps) == 14 and {s.version for s in snaps} == {"1.0"}
    when = next(s.computed_at for s in snaps if s.indicator == "bed-occupancy")

    # reads use the snapshot: no DuckDB run
    def no_duckdb(self: Indicators, ind: object) -> None:
        raise AssertionError("computed instead of read from the snapshot")

    monkeypatch.setattr(Indicators, "_cells", no_duckdb)
    value, computed = occupancy(world)
    assert value == round(500 / 620 * 100, 4)
    assert datetime.fromisoformat(computed) == when.replace(microsecond=0)
    admissions = world.call("moh-analyst", "GET", "/api/v1/indicators/admissions").json()
    assert {c["hospital"]: c["value"] for c in admissions["cells"]}["hosp-a"] == 7
    monkeypatch.undo()

    # new data shows at the next computation, or at once with refresh=true
    submit_beds(
        world,
        "hosp-b",
        "org,period,ward_id,ward_name,ward_type,beds,occupied_bed_days,admissions,discharges\n"
        "hosp-b,2026-10,W-GEN,General,medical,20,310,60,58\n",
    )
    assert occupancy(world)[0] == round(500 / 620 * 100, 4)  # still the snapshot
    fresh, later = occupancy(world, refresh="true")
    assert fresh == 50.0 and later >= computed
    assert occupancy(world)[0] == 50.0  # refresh stored a new snapshot


def test_the_schedule_runs_in_the_server_loop(world: World) -> None:
    schedule = IndicatorSchedule(world.services, 0.4)

    def enqueued() -> int:
        with world.services.db.read() as conn:
            keys = conn.execute(
                select(jobs.c.dedup_key).where(jobs.c.dedup_key.like("warehouse.indicators@0.4:%"))
            ).all()
        return len(keys)

    async def run() -> int:
        await schedule.start()
        try:
            for _ in range(300):  # a slot boundary comes within 0.4 s; allow a slow machine
                await asyncio.sleep(0.05)
                if enqueued():
                    return enqueued()
            return 0
        finally:
            await schedule.stop()

    # a thread of its own: the schedule runs in a server's event loop, not the test's
    found: list[int] = []
    thread = threading.Thread(target=lambda: found.append(asyncio.run(run())))
    thread.start()
    thread.join(timeout=60)
    assert found and found[0] >= 1
    assert schedule._task is None  # stopped


def test_the_schedule_is_a_listener_of_a_server_with_jobs(tmp_path: Path) -> None:
    settings = settings_for("sqlite://", None, tmp_path / "data", warehouse_indicator_interval=60)
    FileKeyProvider.create(settings.key_path())
    services = Services.build(settings)
    try:
        assert "indicator-schedule" in [listener.name for listener in services.listeners]
    finally:
        services.close()
    off = settings_for(
        "sqlite://", None, tmp_path / "data", warehouse_indicator_interval=0, jobs_enabled=False
    )
    services = Services.build(off)
    try:
        assert "indicator-schedule" not in [listener.name for listener in services.listeners]
    finally:
        services.close()


def test_cli_compute_gives_fresh_cells_and_keeps_them(world: World) -> None:
    from tests.integration.test_opendata import cli

    submit_beds(
        world,
        "hosp-b",
        "org,period,ward_id,ward_name,ward_type,beds,occupied_bed_days,admissions,discharges\n"
        "hosp-b,2026-10,W-GEN,General,medical,20,434,60,58\n",
    )
    result = cli(world, "warehouse", "indicators", "--compute", "--id", "bed-occupancy")
    assert result.exit_code == 0, result.output
    assert "bed-occupancy,hosp-b,2026-10,434,620,70.0,False" in result.output
    assert occupancy(world)[0] == 70.0  # the API reads the snapshot the CLI stored
