"""The content-addressed blob store, encrypted at rest.

Blobs (DICOM Part-10 files, raw HL7 messages, bulk files) are addressed by
the SHA-256 of their plaintext, so the same bytes are stored once. With a key
provider every blob is sealed (:mod:`salus.storage.envelope`) before it
reaches the object store: plaintext never touches the disk or the bucket.

Integrity: an encrypted blob's data key is wrapped for the context
``digest + size``, and each 64 KiB segment is authenticated, so a flipped
byte, a truncated file, a swapped or renamed object all fail with
:class:`~salus.errors.IntegrityError`; wrong bytes are never returned.

Deletion is unconditional: callers that share content between records keep
their own references and delete only when none is left.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from salus.errors import ConfigurationError, IntegrityError, InvalidInput, NotFound
from salus.storage.envelope import (
    SEGMENT_SIZE,
    TAG_SIZE,
    SegmentOpener,
    SegmentSealer,
    ciphertext_size,
    rewrap_meta,
    segment_count,
)
from salus.storage.keys import KeyProvider
from salus.storage.objects import ObjectNotFound, ObjectReader, ObjectStore, ObjectWriter

__all__ = ["BlobNotFound", "BlobRef", "BlobStore", "RewrapReport"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1024 * 1024
_SEALED_SEGMENT = SEGMENT_SIZE + TAG_SIZE
#: Sealed segments read per call when streaming (about 1 MiB).
_SEGMENTS_PER_READ = 4


class BlobNotFound(NotFound):
    code = "blob-not-found"

    @classmethod
    def default_message(cls) -> str:
        return "The blob does not exist."


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A stored blob: the SHA-256 of its content (hex) and its size in bytes."""

    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class RewrapReport:
    scanned: int
    rewrapped: int


def _check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise InvalidInput("A blob digest must be 64 lower-case hexadecimal characters.")
    return digest


def _context(digest: str, size: int) -> bytes:
    return f"salus-blob/1:{digest}:{size}".encode()


def _chunks(data: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    if hasattr(data, "read"):
        stream: BinaryIO = data  # type: ignore[assignment]
        while chunk := stream.read(_READ_CHUNK):
            yield chunk
    else:
        for chunk in data:
            if chunk:
                yield bytes(chunk)


class _SegmentWriter:
    """Cuts a byte stream into sealed segments as it arrives, writing about
    1 MiB of ciphertext at a time from one reused buffer."""

    def __init__(self, sealer: SegmentSealer, out: ObjectWriter) -> None:
        self._sealer = sealer
        self._out = out
        self._pending = bytearray()
        self._buffer = bytearray(_SEGMENTS_PER_READ * _SEALED_SEGMENT)
        self._fill = 0

    def _emit(self, segment: memoryview | bytearray, *, last: bool) -> None:
        if self._fill + _SEALED_SEGMENT > len(self._buffer):
            self._flush()
        with memoryview(self._buffer) as view:
            self._fill += self._sealer.seal_into(segment, view[self._fill :], last=last)

    def _flush(self) -> None:
        if self._fill:
            with memoryview(self._buffer) as view:
                self._out.write(view[: self._fill])
            self._fill = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self._pending += chunk
        # Keep at least one byte back: only the final segment may be flagged last.
        if len(self._pending) > SEGMENT_SIZE:
            full = (len(self._pending) - 1) // SEGMENT_SIZE * SEGMENT_SIZE
            with memoryview(self._pending) as view:
                for start in range(0, full, SEGMENT_SIZE):
                    self._emit(view[start : start + SEGMENT_SIZE], last=False)
            del self._pending[:full]

    def finish(self) -> None:
        self._emit(self._pending, last=True)
        self._flush()
        self._pending.clear()


_scratch = threading.local()


#: Largest buffer a thread keeps for sealing whole puts; bigger blobs go in pieces.
_PUT_BUFFER_MAX = 8 * 1024 * 1024


def _put_buffer(wanted: int) -> bytearray:
    buffer: bytearray | None = getattr(_scratch, "put", None)
    size = min(max(wanted, _SEALED_SEGMENT), _PUT_BUFFER_MAX)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.put = bytearray(size)
    return buffer


def _scratch_buffer() -> bytearray:
    """A per-thread buffer for sealed segments (reads allocate nothing per call)."""
    buffer: bytearray | None = getattr(_scratch, "buffer", None)
    if buffer is None:
        buffer = _scratch.buffer = bytearray(_SEGMENTS_PER_READ * _SEALED_SEGMENT)
    return buffer


class BlobStore:
    """Content-addressed blobs over an :class:`ObjectStore`, optionally sealed."""

    def __init__(self, objects: ObjectStore, keys: KeyProvider | None = None) -> None:
        self.objects = objects
        self.keys = keys

    @property
    def encrypted(self) -> bool:
        return self.keys is not None

    # -- writing ---------------------------------------------------------------------
    def put(
        self,
        data: bytes | bytearray | memoryview | BinaryIO | Iterable[bytes],
        *,
        sha256: str | None = None,
    ) -> BlobRef:
        """Store bytes (or a stream of them); returns the blob's address.

        Storing content that is already present writes nothing new. A caller that
        has just hashed the same bytes in memory passes their SHA-256 (hex) as
        ``sha256`` so that they are not hashed twice; it must be theirs.
        """
        if isinstance(data, bytes | bytearray | memoryview):
            digest = sha256 or hashlib.sha256(data).hexdigest()
            if self.objects.exists(digest):
                return BlobRef(digest, len(data))
            return self._write_whole(memoryview(data).cast("B"), digest)
        return self._write(_chunks(data), known_digest=None)

    def _write_whole(self, data: memoryview, digest: str) -> BlobRef:
        """Bytes already in memory: seal every segment into one buffer, write once."""
        size = len(data)
        writer = self.objects.writer()
        try:
            meta = {"v": "1", "size": str(size)}
            if self.keys is None:
                writer.write(data)
            else:
                sealer = SegmentSealer(self.keys)
                final = segment_count(size) - 1
                # Seal into a per-thread buffer reused across puts (a fresh buffer per
                # put costs page faults comparable to the encryption itself).
                scratch = _put_buffer(ciphertext_size(size))
                with memoryview(scratch) as buffer:
                    offset = 0
                    for index in range(final + 1):
                        segment = data[index * SEGMENT_SIZE : (index + 1) * SEGMENT_SIZE]
                        offset += sealer.seal_into(segment, buffer[offset:], last=index == final)
                        if offset + _SEALED_SEGMENT > len(buffer) and index < final:
                            writer.write(buffer[:offset])
                            offset = 0
                    writer.write(buffer[:offset])
                meta.update(sealer.finish(_context(digest, size)))
        except BaseException:
            writer.abort()
            raise
        writer.commit(digest, meta)
        return BlobRef(digest, size)

    def _write(self, chunks: Iterable[bytes], known_digest: str | None) -> BlobRef:
        writer = self.objects.writer()
        hasher = hashlib.sha256() if known_digest is None else None
        size = 0
        try:
            sealer = SegmentSealer(self.keys) if self.keys is not None else None
            sink: _SegmentWriter | ObjectWriter = (
                _SegmentWriter(sealer, writer) if sealer is not None else writer
            )
            for chunk in chunks:
                if hasher is not None:
                    hasher.update(chunk)
                size += len(chunk)
                sink.write(chunk)
            digest = known_digest or (hasher.hexdigest() if hasher is not None else "")
            meta = {"v": "1", "size": str(size)}
            if sealer is not None:
                assert isinstance(sink, _SegmentWriter)  # noqa: S101 - narrowing
                sink.finish()
                meta.update(sealer.finish(_context(digest, size)))
        except BaseException:
            writer.abort()
            raise
        writer.commit(digest, meta)
        return BlobRef(digest, size)

    # -- reading ---------------------------------------------------------------------
    def _open(self, digest: str) -> tuple[ObjectReader, int, SegmentOpener | None]:
        try:
            reader = self.objects.open(_check_digest(digest))
        except ObjectNotFound:
            raise BlobNotFound() from None
        try:
            meta = reader.meta
            try:
                size = int(meta["size"])
            except (KeyError, ValueError):
                raise IntegrityError("A stored blob has damaged metadata.") from None
            if "alg" not in meta:
                if reader.size != size:
                    raise IntegrityError("A stored blob has the wrong length.")
                return reader, size, None
            if self.keys is None:
                raise ConfigurationError("A blob is encrypted but no key provider is configured.")
            if reader.size != ciphertext_size(size):
                raise IntegrityError("A stored blob has the wrong length.")
            opener = SegmentOpener(self.keys, meta, _context(digest, size))
            if size > _SEGMENTS_PER_READ * SEGMENT_SIZE:
                reader.prefetch()  # decrypt early batches while later ones are read
            return reader, size, opener
        except BaseException:
            reader.close()
            raise

    def stat(self, digest: str) -> BlobRef:
        reader, size, _ = self._open(digest)
        reader.close()
        return BlobRef(digest, size)

    def exists(self, digest: str) -> bool:
        return self.objects.exists(_check_digest(digest))

    def get(self, digest: str) -> bytes | bytearray:
        """The whole blob. Decrypted blobs come back as a ``bytearray``: one
        allocation, no copy (a second copy of every blob read costs more than
        the decryption itself)."""
        reader, size, opener = self._open(digest)
        try:
            if opener is None:
                return reader.read_range(0, size)
            plain = bytearray(size)
            with memoryview(plain) as out:
                self._open_segments(reader, opener, 0, segment_count(size) - 1, size, out)
            return plain
        finally:
            reader.close()

    def stream(self, digest: str) -> Iterator[bytes | bytearray]:
        """The blob's bytes in chunks of about 1 MiB, each verified before it is yielded."""
        reader, size, opener = self._open(digest)
        return self._stream(reader, size, opener)

    def _stream(
        self, reader: ObjectReader, size: int, opener: SegmentOpener | None
    ) -> Iterator[bytes | bytearray]:
        try:
            if opener is None:
                yield from reader.iter_chunks(_READ_CHUNK)
                return
            final = segment_count(size) - 1
            for first in range(0, final + 1, _SEGMENTS_PER_READ):
                last = min(final, first + _SEGMENTS_PER_READ - 1)
                plain = bytearray(min(size, (last + 1) * SEGMENT_SIZE) - first * SEGMENT_SIZE)
                with memoryview(plain) as out:
                    self._open_segments(reader, opener, first, last, size, out)
                yield plain
        finally:
            reader.close()

    def _open_segments(
        self,
        reader: ObjectReader,
        opener: SegmentOpener,
        first: int,
        last: int,
        size: int,
        out: memoryview,
    ) -> int:
        """Open segments ``first..last`` into ``out``; returns plaintext bytes written."""
        final = segment_count(size) - 1
        scratch = _scratch_buffer()
        index, written = first, 0
        with memoryview(scratch) as buffer:
            while index <= last:
                batch_end = min(last, index + _SEGMENTS_PER_READ - 1)
                wanted = (batch_end - index + 1) * _SEALED_SEGMENT
                got = reader.readinto(index * _SEALED_SEGMENT, buffer[:wanted])
                offset = 0
                while index <= batch_end:
                    length = _SEALED_SEGMENT if index < final else got - offset
                    written += opener.open_into(
                        index,
                        buffer[offset : offset + length],
                        out[written:],
                        last=index == final,
                    )
                    offset += length
                    index += 1
        return written

    def get_range(self, digest: str, start: int, end: int | None = None) -> bytes | bytearray:
        """Bytes ``[start, end)`` of the blob (``end`` defaults to its size)."""
        reader, size, opener = self._open(digest)
        try:
            end = size if end is None else min(end, size)
            if start < 0 or end < start:
                raise InvalidInput("Invalid byte range.")
            if start == end:
                return b""
            if opener is None:
                return reader.read_range(start, end - start)
            first, last = start // SEGMENT_SIZE, (end - 1) // SEGMENT_SIZE
            plain = bytearray(min(size, (last + 1) * SEGMENT_SIZE) - first * SEGMENT_SIZE)
            with memoryview(plain) as out:
                self._open_segments(reader, opener, first, last, size, out)
            offset = start - first * SEGMENT_SIZE
            if offset == 0 and len(plain) == end - start:
                return plain
            return plain[offset : offset + (end - start)]
        finally:
            reader.close()

    def verify(self, digest: str) -> BlobRef:
        """Read the whole blob and check it against its address (scrubbing)."""
        hasher = hashlib.sha256()
        size = 0
        for chunk in self.stream(digest):
            hasher.update(chunk)
            size += len(chunk)
        if hasher.hexdigest() != digest:
            raise IntegrityError("A stored blob does not match its digest.")
        return BlobRef(digest, size)

    # -- housekeeping ----------------------------------------------------------------
    def delete(self, digest: str) -> bool:
        return self.objects.delete(_check_digest(digest))

    def list(self) -> Iterator[str]:
        for name in self.objects.list():
            if _DIGEST.match(name):
                yield name

    def rewrap(self, progress: Callable[[int], None] | None = None) -> RewrapReport:
        """Re-wrap every blob's data key under the active master key (online)."""
        if self.keys is None:
            return RewrapReport(0, 0)
        scanned = rewrapped = 0
        for digest in self.list():
            scanned += 1
            meta = self.objects.head(digest)
            if meta is not None and "alg" in meta:
                new_meta = rewrap_meta(self.keys, meta, _context(digest, int(meta["size"])))
                if new_meta is not None:
                    self.objects.replace_meta(digest, new_meta)
                    rewrapped += 1
            if progress is not None:
                progress(1)
        return RewrapReport(scanned, rewrapped)

    def check(self) -> None:
        self.objects.check()
