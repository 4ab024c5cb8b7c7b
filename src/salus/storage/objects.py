"""Object stores: named, immutable byte objects with a little metadata.

The lowest storage layer (compare Orthanc's ``IStorageArea``: create, read,
remove by id). It knows nothing of content addressing or encryption; the
:class:`~salus.storage.blobstore.BlobStore` builds those on top.

Writes are atomic: bytes go to a temporary object, and only a complete,
durable object is published under its final name (temporary file, fsync,
rename, fsync of the folder). A crash at any point leaves either the whole
object or nothing under that name.

Filesystem layout: ``<root>/ab/cd/abcd…`` (two levels of 256 shards), each
file holding the body followed by a trailer: the metadata as JSON, its
length (4 bytes, big endian) and the magic ``SLO1``. The body starts at
offset 0, so a byte range is a plain ``pread``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from salus.errors import IntegrityError, InvalidInput, NotFound

__all__ = [
    "FileObjectStore",
    "ObjectNotFound",
    "ObjectReader",
    "ObjectStore",
    "ObjectWriter",
    "validate_name",
]

_NAME = re.compile(r"^[0-9a-z][0-9a-z._-]{3,199}$")
_MAGIC = b"SLO1"
_TRAILER = struct.Struct(">I4s")
_MAX_META = 64 * 1024
_READ_CHUNK = 1024 * 1024


class ObjectNotFound(NotFound):
    code = "object-not-found"

    @classmethod
    def default_message(cls) -> str:
        return "The stored object does not exist."


def validate_name(name: str) -> str:
    """Object names are lower-case, path-safe and at least four characters."""
    if not _NAME.match(name) or ".." in name:
        raise InvalidInput("Invalid object name.")
    return name


class ObjectWriter(Protocol):
    """An object being written; invisible until :meth:`commit`."""

    def write(self, chunk: bytes | memoryview) -> None: ...

    def commit(self, name: str, meta: Mapping[str, str]) -> bool:
        """Publish under ``name``. Returns False when ``name`` already existed
        (the new bytes are discarded: content-addressed callers deduplicate)."""
        ...

    def abort(self) -> None: ...


class ObjectReader(Protocol):
    meta: Mapping[str, str]
    size: int

    def read_range(self, start: int, length: int) -> bytes: ...

    def readinto(self, start: int, buffer: memoryview) -> int:
        """Fill ``buffer`` from ``start`` (up to the end of the body); returns bytes read."""
        ...

    def prefetch(self) -> None:
        """Hint that the whole body will be read soon (may do nothing)."""
        ...

    def iter_chunks(self, chunk_size: int = _READ_CHUNK) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class ObjectStore(Protocol):
    """Create, read, list and remove immutable named objects."""

    def writer(self) -> ObjectWriter: ...

    def open(self, name: str) -> ObjectReader:
        """Raises :class:`ObjectNotFound`."""
        ...

    def head(self, name: str) -> Mapping[str, str] | None:
        """The object's metadata, or None if it does not exist."""
        ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def replace_meta(self, name: str, meta: Mapping[str, str]) -> None:
        """Atomically replace the metadata of an existing object."""
        ...

    def check(self) -> None:
        """Raise if the store cannot be reached (readiness probe)."""
        ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_meta(meta: Mapping[str, str]) -> bytes:
    raw = json.dumps(dict(meta), separators=(",", ":"), sort_keys=True).encode()
    if len(raw) > _MAX_META:
        raise InvalidInput("Object metadata is too large.")
    return raw


class _FileWriter:
    def __init__(self, store: FileObjectStore) -> None:
        self._store = store
        self._tmp = store.tmp_dir / f"{uuid.uuid4().hex}.part"
        self._fd: int | None = os.open(
            self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )

    def write(self, chunk: bytes | memoryview) -> None:
        assert self._fd is not None, "writer is closed"  # noqa: S101 - programming error
        view = memoryview(chunk)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def commit(self, name: str, meta: Mapping[str, str]) -> bool:
        validate_name(name)
        assert self._fd is not None, "writer is closed"  # noqa: S101
        try:
            trailer = _encode_meta(meta)
            self.write(trailer + _TRAILER.pack(len(trailer), _MAGIC))
            if self._store.fsync:
                # fdatasync: the data and the size (what a read needs); the folder
                # entry is synced after the rename.
                os.fdatasync(self._fd)
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = None
        return self._store.publish(self._tmp, name)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tmp.unlink(missing_ok=True)


class _FileReader:
    def __init__(self, path: Path) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound() from None
        try:
            total = os.fstat(self._fd).st_size
            if total < _TRAILER.size:
                raise IntegrityError("A stored object is truncated.")
            meta_len, magic = _TRAILER.unpack(
                os.pread(self._fd, _TRAILER.size, total - _TRAILER.size)
            )
            if magic != _MAGIC or meta_len > min(_MAX_META, total - _TRAILER.size):
                raise IntegrityError("A stored object has a damaged trailer.")
            self.size = total - _TRAILER.size - meta_len
            raw = os.pread(self._fd, meta_len, self.size)
            try:
                loaded = json.loads(raw)
            except ValueError:
                raise IntegrityError("A stored object has damaged metadata.") from None
            if not isinstance(loaded, dict):
                raise IntegrityError("A stored object has damaged metadata.")
            self.meta: Mapping[str, str] = {str(k): str(v) for k, v in loaded.items()}
        except BaseException:
            os.close(self._fd)
            raise

    def read_range(self, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise InvalidInput("Invalid byte range.")
        length = max(0, min(length, self.size - start))
        if length == 0:
            return b""
        parts: list[bytes] = []
        offset = start
        while length > 0:
            data = os.pread(self._fd, length, offset)
            if not data:
                raise IntegrityError("A stored object is shorter than its trailer says.")
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def prefetch(self) -> None:
        """Ask the kernel to read the body ahead, so that a caller working on it
        piece by piece (decrypting) overlaps its work with the disk."""
        os.posix_fadvise(self._fd, 0, self.size, os.POSIX_FADV_WILLNEED)

    def readinto(self, start: int, buffer: memoryview) -> int:
        length = max(0, min(len(buffer), self.size - start))
        done = 0
        while done < length:
            got = os.preadv(self._fd, [buffer[done:length]], start + done)
            if got <= 0:
                raise IntegrityError("A stored object is shorter than its trailer says.")
            done += got
        return done

    def iter_chunks(self, chunk_size: int = _READ_CHUNK) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:
            chunk = self.read_range(offset, chunk_size)
            offset += len(chunk)
            yield chunk

    def copy_body_to(self, fd: int) -> None:
        """Kernel-side copy of the body into another file (no user-space bytes)."""
        offset = 0
        while offset < self.size:
            copied = os.copy_file_range(self._fd, fd, self.size - offset, offset)
            if copied <= 0:
                raise IntegrityError("A stored object is shorter than its trailer says.")
            offset += copied

    def close(self) -> None:
        os.close(self._fd)


class FileObjectStore:
    """Objects as files in sharded folders under ``root``."""

    #: Temporary files older than this are leftovers of a crashed writer.
    STALE_TMP_SECONDS = 3600.0

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        #: Shard folders known to exist durably (created by this process or found).
        self._shards: set[Path] = set()
        self._creating: set[Path] = set()
        self._shard_lock = threading.Lock()
        self.tmp_dir = root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.remove_stale_temporaries()

    def remove_stale_temporaries(self, max_age: float | None = None) -> int:
        """Delete ``.part`` files left by writers that died; returns how many."""
        limit = time.time() - (self.STALE_TMP_SECONDS if max_age is None else max_age)
        removed = 0
        for entry in self.tmp_dir.glob("*.part"):
            try:
                if entry.stat().st_mtime <= limit:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def ensure_shard(self, folder: Path) -> None:
        """Create a shard folder durably: a new folder's entry is fsynced in its parent."""
        new_parents = self._make_shard(folder)
        if self.fsync and new_parents:
            for parent in new_parents:
                _fsync_dir(parent)
            self._shard_synced(folder)

    def publish(self, tmp: Path, name: str) -> bool:
        """Move a finished temporary file (its data already synced) into place as
        ``name``, durably: the file's entry, then any new shard folder's entry in
        its parent, are synced before this returns. False (and ``tmp`` removed)
        when an object of that name exists already (content addressing: the same
        bytes). (Handing these syncs to one thread per round was measured slower:
        the folders of concurrent puts differ, so a round syncs them one after
        another, where separate writers' fsyncs share the journal commits.)"""
        final = self.path_for(name)
        if final.exists():
            tmp.unlink(missing_ok=True)
            return False
        new_parents = self._make_shard(final.parent)
        os.replace(tmp, final)
        if self.fsync:
            for folder in (final.parent, *new_parents):
                _fsync_dir(folder)
            if new_parents:
                self._shard_synced(final.parent)
        return True

    def _make_shard(self, folder: Path) -> tuple[Path, ...]:
        """Create a shard folder if needed; returns the folders whose entries still
        need a sync (the caller syncs them before anything is acknowledged).

        Shards whose creation has been synced are remembered, so a put into one
        costs no ``stat`` and no sync beyond its own file's entry. A shard that
        another writer created but has not synced yet is synced by this writer
        too. A shard found on disk is taken as durable (the writer that created
        it synced it before acknowledging anything)."""
        if folder in self._shards:
            return ()
        with self._shard_lock:
            if folder in self._shards:
                return ()
            if folder in self._creating:
                return (folder.parent, folder.parent.parent)
            created: list[Path] = []
            for level in (folder.parent, folder):
                if not level.is_dir():
                    try:
                        level.mkdir(mode=0o700)
                    except FileExistsError:
                        pass  # another process: its writer syncs it; sync it again
                    created.append(level.parent)
            if not created or not self.fsync:
                self._shards.add(folder)
            else:
                self._creating.add(folder)
            return tuple(created)

    def _shard_synced(self, folder: Path) -> None:
        with self._shard_lock:
            if folder in self._creating:
                self._creating.discard(folder)
                self._shards.add(folder)

    def path_for(self, name: str) -> Path:
        validate_name(name)
        return self.root / name[0:2] / name[2:4] / name

    def writer(self) -> ObjectWriter:
        return _FileWriter(self)

    def open(self, name: str) -> _FileReader:
        return _FileReader(self.path_for(name))

    def head(self, name: str) -> Mapping[str, str] | None:
        try:
            reader = self.open(name)
        except ObjectNotFound:
            return None
        try:
            return reader.meta
        finally:
            reader.close()

    def exists(self, name: str) -> bool:
        return self.path_for(name).is_file()

    def delete(self, name: str) -> bool:
        path = self.path_for(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        if self.fsync:
            _fsync_dir(path.parent)
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        for first in sorted(self.root.glob("[0-9a-z][0-9a-z]")):
            if prefix and not (first.name.startswith(prefix[:2]) or prefix.startswith(first.name)):
                continue
            for second in sorted(first.iterdir()):
                if not second.is_dir():
                    continue
                for entry in sorted(second.iterdir()):
                    if entry.name.startswith(prefix) and _NAME.match(entry.name):
                        yield entry.name

    def replace_meta(self, name: str, meta: Mapping[str, str]) -> None:
        reader = self.open(name)
        writer = _FileWriter(self)
        try:
            assert writer._fd is not None  # noqa: S101
            reader.copy_body_to(writer._fd)
            os.lseek(writer._fd, 0, os.SEEK_END)
        except BaseException:
            writer.abort()
            raise
        finally:
            reader.close()
        try:
            trailer = _encode_meta(meta)
            writer.write(trailer + _TRAILER.pack(len(trailer), _MAGIC))
            if self.fsync:
                assert writer._fd is not None  # noqa: S101
                os.fsync(writer._fd)
        except BaseException:
            writer.abort()
            raise
        assert writer._fd is not None  # noqa: S101
        os.close(writer._fd)
        writer._fd = None
        final = self.path_for(name)
        os.replace(writer._tmp, final)
        if self.fsync:
            _fsync_dir(final.parent)

    def check(self) -> None:
        probe = self.tmp_dir / f"ready-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
