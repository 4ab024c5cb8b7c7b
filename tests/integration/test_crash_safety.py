"""Crash safety: SIGKILL a writer in the middle of a stream of blob puts and
database commits; after a restart there is no partial object, no row that
points to a missing blob, and every acknowledged write is intact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from salus.db import Database
from salus.storage.blobstore import BlobStore
from salus.storage.keys import FileKeyProvider
from salus.storage.objects import FileObjectStore
from tests.integration.crash_writer import acked, payload

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 4


def _run_until_killed(args: list[str], acks_wanted: int, rng: random.Random) -> list[int]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(WRITER.parents[2])},
    )
    acks: list[int] = []
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        while len(acks) < acks_wanted and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acks.append(int(line.split()[1]))
        # Kill at a random moment inside the next put or commit.
        time.sleep(rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert acks, f"the writer acknowledged nothing: {stderr[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    return acks


@pytest.mark.slow
def test_sigkill_during_puts_and_commits(db: Database, tmp_path: Path) -> None:
    rng = random.Random(20261123)  # noqa: S311 - test timing only
    blob_dir = tmp_path / "blobs"
    key_file = tmp_path / "keys.json"
    FileKeyProvider.create(key_file)
    url = db.engine.url.render_as_string(hide_password=False)
    schema = db.schema or "-"
    all_acked: list[int] = []
    next_seq = 0
    for _ in range(ROUNDS):
        acks = _run_until_killed(
            [url, schema, str(blob_dir), str(key_file), str(next_seq)], rng.randint(5, 25), rng
        )
        all_acked.extend(acks)

        # Restart: open the store as a new process would.
        objects = FileObjectStore(blob_dir)
        objects.remove_stale_temporaries(max_age=0)
        store = BlobStore(objects, FileKeyProvider(key_file))
        with db.read() as conn:
            rows = {r.seq: r for r in conn.execute(select(acked))}

        # Every acknowledged write is there, with the bytes that were written.
        missing = [seq for seq in all_acked if seq not in rows]
        assert not missing, f"acknowledged writes lost: {missing}"
        for seq, row in rows.items():
            # No row points to a missing or damaged blob.
            assert store.get(row.digest) == payload(seq), f"row {seq} has bad bytes"
        # No partial object under a final name: every object opens and verifies.
        for digest in store.list():
            store.verify(digest)
        assert list(objects.tmp_dir.glob("*.part")) == []
        next_seq = max(rows) + 1
    assert len(all_acked) >= ROUNDS * 5
