"""Envelope encryption at rest (AES-256-GCM, per-object data keys).

Every sealed object has its own random 256-bit data key; the key provider
wraps it under the active master key with a *context* that names the object
(for blobs: digest and size), so a wrapped key moved to another object no
longer opens. Rotation re-wraps data keys; the ciphertext itself is never
rewritten.

Two formats:

* **Segmented streams** (blobs; any size, streamed, random access): the
  plaintext is cut into 64 KiB segments, each sealed with AES-GCM under the
  nonce ``prefix(7) ‖ index(4, big endian) ‖ last(1)``: the STREAM
  construction (Hoang, Reyhanitabar, Rogaway, Vizár, 2015), as in Tink's
  streaming AEAD. Reordering, dropping, duplicating or truncating segments
  fails authentication, and a byte range decrypts only the segments it
  touches.
* **Sealed values** (small payloads such as resource bodies kept in the
  database): ``SV1 ‖ len(kid) ‖ kid ‖ len(wk) ‖ wk ‖ nonce ‖ ciphertext``.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from salus.errors import IntegrityError
from salus.storage.keys import KeyProvider

__all__ = [
    "SEGMENT_SIZE",
    "STREAM_ALG",
    "SegmentOpener",
    "SegmentSealer",
    "ValueSealer",
    "ciphertext_size",
    "segment_count",
]

SEGMENT_SIZE = 64 * 1024
TAG_SIZE = 16
STREAM_ALG = "A256GCM-STREAM-64K"
_PREFIX = 7


def segment_count(size: int) -> int:
    """Segments for ``size`` plaintext bytes (an empty stream has one)."""
    return max(1, -(-size // SEGMENT_SIZE))


def ciphertext_size(size: int) -> int:
    return size + TAG_SIZE * segment_count(size)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I?", index, last)


class SegmentSealer:
    """Seals one stream, segment by segment, under a fresh data key."""

    def __init__(self, provider: KeyProvider) -> None:
        self._provider = provider
        self._key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(self._key)
        self._prefix = os.urandom(_PREFIX)
        self._index = 0
        self._done = False

    def _next_nonce(self, length: int, last: bool) -> bytes:
        if self._done:
            raise RuntimeError("stream already finished")
        if length > SEGMENT_SIZE or (not last and length != SEGMENT_SIZE):
            raise ValueError("segments other than the last must be exactly SEGMENT_SIZE")
        nonce = _nonce(self._prefix, self._index, last)
        self._index += 1
        self._done = last
        return nonce

    def seal(self, segment: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        return self._aead.encrypt(self._next_nonce(len(segment), last), segment, None)

    def seal_into(
        self, segment: bytes | bytearray | memoryview, out: memoryview, *, last: bool
    ) -> int:
        """Seal into ``out`` (at least ``len(segment) + 16`` bytes); returns bytes written."""
        size = len(segment) + TAG_SIZE
        self._aead.encrypt_into(self._next_nonce(len(segment), last), segment, None, out[:size])
        return size

    def finish(self, context: bytes) -> dict[str, str]:
        """Wrap the data key for ``context``; returns the metadata to store."""
        if not self._done:
            raise RuntimeError("the last segment was not sealed")
        key_id, wrapped = self._provider.wrap(self._key, context)
        return {
            "alg": STREAM_ALG,
            "kid": key_id,
            "wk": base64.b64encode(wrapped).decode(),
            "np": base64.b64encode(self._prefix).decode(),
        }


class SegmentOpener:
    """Opens segments of one stream sealed by :class:`SegmentSealer`."""

    def __init__(self, provider: KeyProvider, meta: Mapping[str, str], context: bytes) -> None:
        if meta.get("alg") != STREAM_ALG:
            raise IntegrityError("A stored object has an unknown encryption format.")
        try:
            wrapped = base64.b64decode(meta["wk"], validate=True)
            self._prefix = base64.b64decode(meta["np"], validate=True)
            key_id = meta["kid"]
        except (KeyError, ValueError):
            raise IntegrityError("A stored object has damaged key metadata.") from None
        if len(self._prefix) != _PREFIX:
            raise IntegrityError("A stored object has damaged key metadata.")
        self._aead = AESGCM(provider.unwrap(key_id, wrapped, context))

    def open(self, index: int, sealed: bytes | memoryview, *, last: bool) -> bytes:
        try:
            return self._aead.decrypt(_nonce(self._prefix, index, last), sealed, None)
        except InvalidTag:
            raise IntegrityError("A stored object failed its integrity check.") from None

    def open_into(self, index: int, sealed: memoryview, out: memoryview, *, last: bool) -> int:
        """Open one sealed segment into ``out``; returns the plaintext length."""
        size = len(sealed) - TAG_SIZE
        if size < 0:
            raise IntegrityError("A stored object failed its integrity check.")
        try:
            self._aead.decrypt_into(_nonce(self._prefix, index, last), sealed, None, out[:size])
        except InvalidTag:
            raise IntegrityError("A stored object failed its integrity check.") from None
        return size


def rewrap_meta(
    provider: KeyProvider, meta: Mapping[str, str], context: bytes
) -> dict[str, str] | None:
    """Re-wrap a stream's data key under the active master key.

    Returns the new metadata, or None when it is already under the active key.
    """
    active = provider.active_key_id()
    if meta.get("kid") == active:
        return None
    try:
        wrapped = base64.b64decode(meta["wk"], validate=True)
        data_key = provider.unwrap(meta["kid"], wrapped, context)
    except (KeyError, ValueError):
        raise IntegrityError("A stored object has damaged key metadata.") from None
    key_id, new_wrapped = provider.wrap(data_key, context)
    new_meta = dict(meta)
    new_meta["kid"] = key_id
    new_meta["wk"] = base64.b64encode(new_wrapped).decode()
    return new_meta


class ValueSealer:
    """Seals small values (kept in database columns) with per-value data keys."""

    MAGIC = b"SV1"
    _NONCE = 12

    def __init__(self, provider: KeyProvider) -> None:
        self._provider = provider

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(self._NONCE)
        body = AESGCM(data_key).encrypt(nonce, plaintext, context)
        key_id, wrapped = self._provider.wrap(data_key, context)
        return self._pack(key_id, wrapped, nonce + body)

    def _pack(self, key_id: str, wrapped: bytes, body: bytes) -> bytes:
        kid = key_id.encode()
        return self.MAGIC + struct.pack(">BH", len(kid), len(wrapped)) + kid + wrapped + body

    def _unpack(self, sealed: bytes) -> tuple[str, bytes, bytes]:
        head = len(self.MAGIC) + 3
        if len(sealed) < head or sealed[: len(self.MAGIC)] != self.MAGIC:
            raise IntegrityError("A sealed value has an unknown format.")
        kid_len, wk_len = struct.unpack(">BH", sealed[len(self.MAGIC) : head])
        end_kid = head + kid_len
        end_wk = end_kid + wk_len
        if len(sealed) < end_wk + self._NONCE + TAG_SIZE:
            raise IntegrityError("A sealed value is truncated.")
        return sealed[head:end_kid].decode(), sealed[end_kid:end_wk], sealed[end_wk:]

    def open(self, sealed: bytes, context: bytes) -> bytes:
        key_id, wrapped, body = self._unpack(sealed)
        data_key = self._provider.unwrap(key_id, wrapped, context)
        try:
            return AESGCM(data_key).decrypt(body[: self._NONCE], body[self._NONCE :], context)
        except InvalidTag:
            raise IntegrityError("A sealed value failed its integrity check.") from None

    def key_id_of(self, sealed: bytes) -> str:
        return self._unpack(sealed)[0]

    def rewrap(self, sealed: bytes, context: bytes) -> bytes | None:
        """The value re-wrapped under the active key, or None if it already is."""
        key_id, wrapped, body = self._unpack(sealed)
        if key_id == self._provider.active_key_id():
            return None
        data_key = self._provider.unwrap(key_id, wrapped, context)
        new_id, new_wrapped = self._provider.wrap(data_key, context)
        return self._pack(new_id, new_wrapped, body)
