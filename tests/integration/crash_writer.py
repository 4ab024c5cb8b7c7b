"""A writer process for the crash-safety test: puts blobs and commits rows
that point to them, printing ``ACK <seq>`` after each commit, until killed.

Run as: python crash_writer.py DATABASE_URL SCHEMA|- BLOB_DIR KEY_FILE START
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table

from salus.db import create_database
from salus.storage.blobstore import BlobStore
from salus.storage.keys import FileKeyProvider
from salus.storage.objects import FileObjectStore

meta = MetaData()
acked = Table(
    "crash_acked",
    meta,
    Column("seq", Integer, primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("size", Integer, nullable=False),
)


def payload(seq: int) -> bytes:
    """Deterministic content of 1 KiB to about 600 KiB per sequence number."""
    seed = hashlib.sha256(str(seq).encode()).digest()
    size = 1024 + int.from_bytes(seed[:4], "big") % (600 * 1024)
    return (seed * (size // 32 + 1))[:size]


def main() -> None:
    url, schema, blob_dir, key_file, start = sys.argv[1:6]
    db = create_database(url, schema=None if schema == "-" else schema)
    meta.create_all(db.engine)
    store = BlobStore(FileObjectStore(Path(blob_dir)), FileKeyProvider(Path(key_file)))
    seq = int(start)
    while True:
        data = payload(seq)
        # Alternate whole-bytes and streamed puts: both paths must be atomic.
        ref = store.put(data) if seq % 2 else store.put(io.BytesIO(data))
        with db.write() as conn:
            conn.execute(acked.insert().values(seq=seq, digest=ref.digest, size=ref.size))
        sys.stdout.write(f"ACK {seq}\n")
        sys.stdout.flush()
        seq += 1


if __name__ == "__main__":
    main()
