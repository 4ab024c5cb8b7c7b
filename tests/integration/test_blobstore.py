"""The blob store on the filesystem and on a real S3 endpoint (moto server on
loopback), with and without encryption at rest."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from salus.errors import IntegrityError, InvalidInput
from salus.storage.blobstore import BlobNotFound, BlobStore
from salus.storage.envelope import SEGMENT_SIZE
from salus.storage.keys import FileKeyProvider
from salus.storage.objects import FileObjectStore, ObjectStore
from salus.storage.s3 import S3ObjectStore

MARKER = b"PATIENT-NAME:Tr\xe1\xba\xa7n Th\xe1\xbb\x8b B\xc3\xadch;"


def _s3_client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(params=["filesystem", "s3"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "filesystem":
        return FileObjectStore(tmp_path / "blobs")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(bucket, prefix="salus", client=_s3_client(endpoint))


@pytest.fixture(params=["plain", "encrypted"])
def store(request: pytest.FixtureRequest, objects: ObjectStore, tmp_path: Path) -> BlobStore:
    keys = FileKeyProvider.create(tmp_path / "keys.json") if request.param == "encrypted" else None
    return BlobStore(objects, keys)


def _payload(size: int) -> bytes:
    body = os.urandom(max(0, size - len(MARKER)))
    return (MARKER + body)[:size]


@pytest.mark.parametrize(
    "size", [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 5 * SEGMENT_SIZE + 77]
)
def test_put_get_round_trip(store: BlobStore, size: int) -> None:
    data = _payload(size)
    ref = store.put(data)
    assert ref.digest == hashlib.sha256(data).hexdigest()
    assert ref.size == size
    assert store.exists(ref.digest)
    assert store.get(ref.digest) == data
    assert store.stat(ref.digest) == ref
    assert store.verify(ref.digest) == ref


def test_stream_and_iterable_inputs(store: BlobStore) -> None:
    data = _payload(3 * SEGMENT_SIZE + 5)
    from_file = store.put(io.BytesIO(data))
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]

    def gen() -> Iterator[bytes]:
        yield from pieces

    from_iter = store.put(gen())
    assert from_file == from_iter
    assert b"".join(store.stream(from_file.digest)) == data


def test_same_content_is_stored_once(store: BlobStore) -> None:
    data = _payload(100_000)
    first = store.put(data)
    second = store.put(io.BytesIO(data))
    assert first == second
    assert list(store.list()) == [first.digest]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),
        (0, None),
        (10, 20),
        (SEGMENT_SIZE - 3, SEGMENT_SIZE + 3),
        (2 * SEGMENT_SIZE, 3 * SEGMENT_SIZE),
        (3 * SEGMENT_SIZE + 4, None),
        (50, 50),
        (0, 10**9),
    ],
)
def test_byte_ranges(store: BlobStore, start: int, end: int | None) -> None:
    data = _payload(3 * SEGMENT_SIZE + 10)
    ref = store.put(data)
    assert store.get_range(ref.digest, start, end) == data[start:end]


def test_invalid_range_and_digest(store: BlobStore) -> None:
    ref = store.put(b"abc")
    with pytest.raises(InvalidInput):
        store.get_range(ref.digest, 2, 1)
    with pytest.raises(InvalidInput):
        store.get("../../etc/passwd")


def test_missing_blob(store: BlobStore) -> None:
    absent = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(absent)
    with pytest.raises(BlobNotFound):
        store.get(absent)
    with pytest.raises(BlobNotFound):
        store.get_range(absent, 0, 1)
    assert store.delete(absent) is False


def test_delete_and_list(store: BlobStore) -> None:
    refs = [store.put(_payload(1000 + i)) for i in range(5)]
    assert sorted(store.list()) == sorted(r.digest for r in refs)
    assert store.delete(refs[0].digest)
    assert not store.exists(refs[0].digest)
    assert sorted(store.list()) == sorted(r.digest for r in refs[1:])


def test_failed_stream_leaves_nothing(store: BlobStore) -> None:
    def broken() -> Iterator[bytes]:
        yield _payload(SEGMENT_SIZE * 2)
        raise OSError("sender went away")

    with pytest.raises(OSError, match="sender went away"):
        store.put(broken())
    assert list(store.list()) == []


# -- encryption at rest -----------------------------------------------------------------
def _raw_objects(objects: ObjectStore, endpoint: str | None) -> Iterator[tuple[str, bytes]]:
    """Every stored byte, as the disk or the bucket holds it."""
    if isinstance(objects, FileObjectStore):
        for path in objects.root.rglob("*"):
            if path.is_file():
                yield str(path), path.read_bytes()
    else:
        assert isinstance(objects, S3ObjectStore)
        client = objects.client
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=objects.bucket):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=objects.bucket, Key=item["Key"])
                yield item["Key"], body["Body"].read() + repr(body.get("Metadata")).encode()


def test_encrypted_bytes_at_rest_hold_no_plaintext(objects: ObjectStore, tmp_path: Path) -> None:
    store = BlobStore(objects, FileKeyProvider.create(tmp_path / "k.json"))
    data = (MARKER * 4000) + b"THE-END"
    ref = store.put(data)
    stored = list(_raw_objects(objects, None))
    assert stored, "nothing was written"
    for name, raw in stored:
        assert MARKER not in raw, name
        assert b"THE-END" not in raw, name
        assert MARKER[:16] not in raw, name
    assert store.get(ref.digest) == data


def test_plain_store_does_hold_plaintext(objects: ObjectStore) -> None:
    # The control for the test above: the scan would find plaintext if it were there.
    BlobStore(objects, None).put(MARKER * 10)
    assert any(MARKER in raw for _, raw in _raw_objects(objects, None))


def _flip_byte(objects: ObjectStore, digest: str, offset: int) -> None:
    if isinstance(objects, FileObjectStore):
        path = objects.path_for(digest)
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 0x01
        path.write_bytes(bytes(raw))
        return
    assert isinstance(objects, S3ObjectStore)
    key = objects.key_for(digest)
    got = objects.client.get_object(Bucket=objects.bucket, Key=key)
    raw = bytearray(got["Body"].read())
    raw[offset] ^= 0x01
    objects.client.put_object(
        Bucket=objects.bucket, Key=key, Body=bytes(raw), Metadata=got["Metadata"]
    )


@pytest.mark.parametrize("where", ["first", "middle", "last-tag", "trailer"])
def test_a_flipped_byte_is_detected(objects: ObjectStore, tmp_path: Path, where: str) -> None:
    if where == "trailer" and not isinstance(objects, FileObjectStore):
        pytest.skip("S3 keeps metadata in headers; the metadata case is covered below")
    store = BlobStore(objects, FileKeyProvider.create(tmp_path / "k.json"))
    data = _payload(3 * SEGMENT_SIZE + 100)
    ref = store.put(data)
    body = 3 * SEGMENT_SIZE + 100 + 4 * 16
    offset = {"first": 0, "middle": SEGMENT_SIZE + 50, "last-tag": body - 1, "trailer": body + 5}[
        where
    ]
    _flip_byte(objects, ref.digest, offset)
    with pytest.raises(IntegrityError):
        store.get(ref.digest)
    with pytest.raises(IntegrityError):
        store.verify(ref.digest)
    if where in {"first", "middle"}:
        segment_start = (offset // (SEGMENT_SIZE + 16)) * SEGMENT_SIZE
        with pytest.raises(IntegrityError):
            store.get_range(ref.digest, segment_start, segment_start + 10)
    # Bytes yielded before the damaged segment are genuine; nothing wrong is returned.
    received = b""
    with pytest.raises(IntegrityError):
        for chunk in store.stream(ref.digest):
            received += chunk
    assert data.startswith(received)


def test_tampered_metadata_is_detected(objects: ObjectStore, tmp_path: Path) -> None:
    store = BlobStore(objects, FileKeyProvider.create(tmp_path / "k.json"))
    data = _payload(5000)
    ref = store.put(data)
    meta = dict(objects.head(ref.digest) or {})
    for key, value in [("size", "4999"), ("np", "AAAAAAAAAA=="), ("kid", "mk-x")]:
        objects.replace_meta(ref.digest, {**meta, key: value})
        with pytest.raises(IntegrityError):
            store.get(ref.digest)
    objects.replace_meta(ref.digest, meta)
    assert store.get(ref.digest) == data


def test_swapped_objects_are_detected(tmp_path: Path) -> None:
    objects = FileObjectStore(tmp_path / "blobs")
    store = BlobStore(objects, FileKeyProvider.create(tmp_path / "k.json"))
    a, b = store.put(b"a" * 100), store.put(b"b" * 100)
    objects.path_for(a.digest).replace(objects.path_for(b.digest))  # same size, other content
    with pytest.raises(IntegrityError):
        store.get(b.digest)


def test_truncated_object_is_detected(tmp_path: Path) -> None:
    objects = FileObjectStore(tmp_path / "blobs")
    store = BlobStore(objects, FileKeyProvider.create(tmp_path / "k.json"))
    ref = store.put(_payload(3 * SEGMENT_SIZE))
    path = objects.path_for(ref.digest)
    raw = path.read_bytes()
    path.write_bytes(raw[:100] + raw[-200:])
    with pytest.raises(IntegrityError):
        store.get(ref.digest)
    path.write_bytes(b"SLO1")
    with pytest.raises(IntegrityError):
        store.get(ref.digest)


def test_rotation_rewraps_and_keeps_everything_readable(
    objects: ObjectStore, tmp_path: Path
) -> None:
    keys = FileKeyProvider.create(tmp_path / "k.json")
    store = BlobStore(objects, keys)
    old_key = keys.active_key_id()
    before = {store.put(_payload(70_000 + i)).digest: i for i in range(6)}
    new_key = keys.rotate()
    # Written before the re-wrap: still readable under the old key.
    assert all(store.get(d) for d in before)
    added = store.put(_payload(1234))  # new writes use the new key at once
    assert (objects.head(added.digest) or {})["kid"] == new_key
    report = store.rewrap()
    assert report.scanned == 7
    assert report.rewrapped == 6
    for digest in [*before, added.digest]:
        assert (objects.head(digest) or {})["kid"] == new_key
        assert store.verify(digest)
    assert store.rewrap().rewrapped == 0  # resumable: nothing left to do
    assert old_key in keys.key_ids()


def test_encrypted_blob_without_keys_is_refused(tmp_path: Path) -> None:
    objects = FileObjectStore(tmp_path / "blobs")
    ref = BlobStore(objects, FileKeyProvider.create(tmp_path / "k.json")).put(b"secret")
    from salus.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        BlobStore(objects, None).get(ref.digest)


def test_large_stream_uses_multipart_on_s3(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    objects = S3ObjectStore(s3_bucket, client=_s3_client(s3_endpoint))
    store = BlobStore(objects, FileKeyProvider.create(tmp_path / "k.json"))
    data = os.urandom(19 * 1024 * 1024)  # three 8 MiB parts
    ref = store.put(io.BytesIO(data))
    assert store.get(ref.digest) == data
    assert store.get_range(ref.digest, 9_000_000, 9_000_100) == data[9_000_000:9_000_100]
    keys = [k for k in objects.list()]
    assert keys == [ref.digest]  # the temporary upload is gone


def test_stale_temporaries_are_cleaned(tmp_path: Path) -> None:
    objects = FileObjectStore(tmp_path / "blobs")
    writer = objects.writer()
    writer.write(b"partial")  # a writer that dies here leaves a .part file
    assert len(list(objects.tmp_dir.glob("*.part"))) == 1
    assert objects.remove_stale_temporaries(max_age=0) == 1
    assert list(objects.list()) == []
    writer.abort()


def test_whole_puts_larger_than_the_sealing_buffer(tmp_path: Path) -> None:
    store = BlobStore(
        FileObjectStore(tmp_path / "blobs"), FileKeyProvider.create(tmp_path / "k.json")
    )
    data = os.urandom(9 * 1024 * 1024 + 12345)
    ref = store.put(data)
    assert store.get(ref.digest) == data
    assert store.verify(ref.digest) == ref
    small = store.put(b"after a large one")  # the buffer is reused, not stale
    assert store.get(small.digest) == b"after a large one"


def test_file_store_syncs_each_new_entry_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put syncs its file (fdatasync) and its folder; a new shard folder's entry
    is synced in its parent once, and later puts into that shard sync only the
    shard itself (the folder is remembered, not looked up or synced again)."""
    from salus.storage import objects as objects_module

    synced: list[Path] = []
    data_synced: list[int] = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(objects_module, "_fsync_dir", lambda path: synced.append(path))

    def fdatasync(fd: int) -> None:
        data_synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(objects_module.os, "fdatasync", fdatasync)
    root = tmp_path / "blobs"
    files = FileObjectStore(root)
    name = "ab" + "cd" + "0" * 60

    writer = files.writer()
    writer.write(b"first")
    assert writer.commit(name, {"v": "1"})
    shard = root / "ab" / "cd"
    assert synced[0] == shard  # the file's entry
    assert sorted(synced[1:]) == [root, root / "ab"]  # the two new folders' entries
    assert len(data_synced) == 1

    synced.clear()
    writer = files.writer()
    writer.write(b"second")
    assert writer.commit("abcd" + "1" * 60, {"v": "1"})
    assert synced == [shard]  # the shard is known: only the new file's entry
    assert len(data_synced) == 2
    assert files.open(name).read_range(0, 5) == b"first"
