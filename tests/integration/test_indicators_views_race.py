"""The indicators' bundled ViewDefinitions are stored once even when the
first requests of a fresh install arrive together (PostgreSQL refused the
second insert before)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from salus.warehouse.indicators.engine import Indicators
from tests.conftest import BACKENDS
from tests.integration.security_world import make_world


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_first_calls_store_each_view_once(backend: str, tmp_path: Path) -> None:
    with make_world(backend, tmp_path) as world:
        engines = [Indicators(world.services) for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda engine: engine.ensure_views(), engines))
        ids = [{name: view.id for name, view in result.items()} for result in results]
        assert ids[0] and all(found == ids[0] for found in ids)
        catalog = world.services.warehouse.catalog  # type: ignore[union-attr]
        for name, view_id in ids[0].items():
            assert catalog.by_name(name).id == view_id
