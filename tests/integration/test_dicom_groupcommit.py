"""Group commit of index writes on SQLite and PostgreSQL: pieces queued while a commit
runs share the next transaction; a piece that fails rolls back alone (its savepoint);
every caller returns only after the commit; concurrent C-STOREs all land."""

from __future__ import annotations

import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.engine import Connection

from salus.db import Database
from salus.dicom.groupcommit import GroupCommit
from tests.conftest import BACKENDS
from tests.integration.dicom_world import dicom_world, web_sample

scratch = Table(
    "t_group", MetaData(), Column("id", Integer, primary_key=True), Column("v", String(20))
)


def test_pieces_share_a_transaction_and_fail_alone(db: Database) -> None:
    with db.write() as conn:
        scratch.create(conn)
    group = GroupCommit(db)
    results: dict[int, Any] = {}

    def piece(i: int) -> Any:
        def fn(conn: Connection) -> int:
            conn.execute(scratch.insert().values(id=i, v=f"v{i}"))
            if i == 3:
                raise ValueError("refused")
            return i

        return fn

    def call(i: int) -> None:
        try:
            results[i] = group.run(piece(i))
        except ValueError as exc:
            results[i] = exc

    with group._commit_lock:  # a commit "runs": everything queues behind it
        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(group._queue) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(10)
    assert group.transactions == 1 and group.pieces == 6
    assert isinstance(results.pop(3), ValueError)
    assert results == {0: 0, 1: 1, 2: 2, 4: 4, 5: 5}
    with db.read() as conn:
        assert sorted(conn.execute(select(scratch.c.id)).scalars()) == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_stores_all_land(backend: str, tmp_path: Path) -> None:
    base = dcmread(BytesIO(web_sample("CT_small.dcm")))
    files = []
    for _ in range(12):
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = BytesIO()
        base.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
    with dicom_world(backend, tmp_path) as dw:
        principal = dw.principal()
        outcomes: list[str] = []

        def store(data: bytes) -> None:
            outcomes.append(dw.archive.store(principal, data).outcome)

        threads = [threading.Thread(target=store, args=(f,)) for f in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert outcomes == ["stored"] * 12
        [study] = dw.archive.find(principal, "STUDY", {"NumberOfStudyRelatedInstances": ""})
        assert study.attributes["NumberOfStudyRelatedInstances"] == 12
        group = dw.archive.group
        assert group.pieces == 12 and group.transactions <= 12
