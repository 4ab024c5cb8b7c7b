"""The Spark hand-off (issue 7, item 6): the indicators' inputs of a small network
(the views materialized as Parquet, the hospitals, the operational datasets)
are extracted as plain Parquet files, and every indicator's SQL runs on them
unchanged on DuckDB and on a local Spark session (``pyspark``, Java 17), with
the same cells; DuckDB over the files also matches the engine's own path.

One Spark session for the module (start-up is about 20 s). SQLite only: past
the Parquet files the database plays no part. Skips when Java or pyspark is
missing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from salus.warehouse.indicators.definitions_index import indicators
from salus.warehouse.indicators.engine import Indicators, system_principal
from salus.warehouse.indicators.portable import handoff, statements
from tests.integration.security_world import World, make_world
from tests.integration.test_indicators import seed_network

if shutil.which("java") is None:
    pytest.skip("Spark needs Java (java not on PATH)", allow_module_level=True)
pyspark_sql = pytest.importorskip("pyspark.sql", reason="pyspark is not installed (dev extra)")

FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world("sqlite", tmp_path_factory.mktemp("spark")) as built:
        seed_network(built)
        yield built


@pytest.fixture(scope="module")
def files(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    engine = Indicators(world.services)
    engine.refresh()
    return handoff(engine, system_principal(), tmp_path_factory.mktemp("handoff"))


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = (
        pyspark_sql.SparkSession.builder.master("local[1]")
        .appName("salus-handoff-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "512m")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.codegen.wholeStage", "false")  # tiny data: compiling costs more
        .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config(
            "spark.driver.extraJavaOptions", "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto"
        )
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def normalize(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out = []
    for row in rows:
        values = []
        for key in sorted(row):
            v = row[key]
            if isinstance(v, int | float) and not isinstance(v, bool):
                v = round(float(v), 6)
            elif v is not None and not isinstance(v, str):
                v = float(v)  # Decimal
            values.append((key, v))
        out.append(tuple(values))
    return sorted(out, key=repr)


def duckdb_cells(files: dict[str, Path], sql: str) -> list[dict[str, Any]]:
    con = duckdb.connect(":memory:")
    try:
        for name, path in files.items():
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")  # noqa: S608
        for statement in statements("duckdb"):
            con.execute(statement)
        cursor = con.execute(sql)
        assert cursor.description is not None
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    finally:
        con.close()


def test_handoff_files(files: dict[str, Path]) -> None:
    folder = next(iter(files.values())).parent
    assert {"ind_encounters", "ind_patients", "hospitals", "ds_beds_rows", "ds_submissions"} <= set(
        files
    )
    catalog = json.loads((folder / "indicators.json").read_text())
    assert len(catalog) == 14
    spark_sql = (folder / "prelude-spark.sql").read_text()
    assert "CREATE OR REPLACE TEMPORARY FUNCTION days_between" in spark_sql


def test_every_indicator_gives_the_same_cells_on_duckdb_and_spark(
    world: World, files: dict[str, Path], spark: Any
) -> None:
    for name, path in files.items():
        spark.read.parquet(str(path)).createOrReplaceTempView(name)
    for statement in statements("spark"):
        spark.sql(statement)
    engine = Indicators(world.services)
    compared = 0
    for ind in indicators():
        on_duckdb = duckdb_cells(files, ind.sql)
        on_engine = engine._cells(ind)
        on_spark = [r.asDict() for r in spark.sql(ind.sql).collect()]
        assert on_duckdb, ind.id  # the small network has cells for every indicator
        assert normalize(on_duckdb) == normalize(on_engine), ind.id
        assert normalize(on_spark) == normalize(on_duckdb), ind.id
        compared += 1
    assert compared == 14
