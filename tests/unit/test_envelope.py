"""Envelope encryption formats: segmented streams and sealed values."""

from __future__ import annotations

import os

import pytest

from salus.errors import IntegrityError
from salus.storage.envelope import (
    SEGMENT_SIZE,
    SegmentOpener,
    SegmentSealer,
    ValueSealer,
    ciphertext_size,
    segment_count,
)
from salus.storage.keys import FileKeyProvider


@pytest.mark.parametrize(
    ("size", "segments"),
    [(0, 1), (1, 1), (SEGMENT_SIZE, 1), (SEGMENT_SIZE + 1, 2), (3 * SEGMENT_SIZE, 3)],
)
def test_segment_arithmetic(size: int, segments: int) -> None:
    assert segment_count(size) == segments
    assert ciphertext_size(size) == size + 16 * segments


def _seal(provider: FileKeyProvider, chunks: list[bytes]) -> tuple[list[bytes], dict[str, str]]:
    sealer = SegmentSealer(provider)
    out = [sealer.seal(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    return out, sealer.finish(b"ctx")


def test_segments_round_trip_and_resist_reordering(key_provider: FileKeyProvider) -> None:
    chunks = [os.urandom(SEGMENT_SIZE), os.urandom(SEGMENT_SIZE), b"tail"]
    sealed, meta = _seal(key_provider, chunks)
    opener = SegmentOpener(key_provider, meta, b"ctx")
    assert [opener.open(i, s, last=i == 2) for i, s in enumerate(sealed)] == chunks
    with pytest.raises(IntegrityError):  # swapped segments
        opener.open(0, sealed[1], last=False)
    with pytest.raises(IntegrityError):  # truncation: a middle segment presented as last
        opener.open(1, sealed[1], last=True)
    with pytest.raises(IntegrityError):  # wrong context (another object)
        SegmentOpener(key_provider, meta, b"other")


def test_sealer_enforces_segment_discipline(key_provider: FileKeyProvider) -> None:
    sealer = SegmentSealer(key_provider)
    with pytest.raises(ValueError, match="exactly SEGMENT_SIZE"):
        sealer.seal(b"short", last=False)
    with pytest.raises(RuntimeError, match="last segment"):
        sealer.finish(b"ctx")
    sealer.seal(b"end", last=True)
    with pytest.raises(RuntimeError, match="finished"):
        sealer.seal(b"more", last=True)


def test_damaged_metadata_is_an_integrity_error(key_provider: FileKeyProvider) -> None:
    _, meta = _seal(key_provider, [b"x"])
    for key, value in [("alg", "ROT13"), ("wk", "!!notbase64"), ("np", "AAAA")]:
        with pytest.raises(IntegrityError):
            SegmentOpener(key_provider, {**meta, key: value}, b"ctx")
    without = {k: v for k, v in meta.items() if k != "kid"}
    with pytest.raises(IntegrityError):
        SegmentOpener(key_provider, without, b"ctx")


def test_sealed_values(key_provider: FileKeyProvider) -> None:
    sealer = ValueSealer(key_provider)
    plaintext = b'{"resourceType":"Patient","name":[{"family":"Nguy\xe1\xbb\x85n"}]}'
    sealed = sealer.seal(plaintext, b"Patient/1/1")
    assert plaintext not in sealed and b"Nguy" not in sealed
    assert sealer.open(sealed, b"Patient/1/1") == plaintext
    with pytest.raises(IntegrityError):
        sealer.open(sealed, b"Patient/2/1")
    for position in (len(sealed) - 1, len(sealed) // 2, 6):
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityError):
            sealer.open(bytes(damaged), b"Patient/1/1")
    with pytest.raises(IntegrityError):
        sealer.open(sealed[:20], b"Patient/1/1")
    with pytest.raises(IntegrityError):
        sealer.open(b"XX" + sealed, b"Patient/1/1")


def test_sealed_value_rewrap(key_provider: FileKeyProvider) -> None:
    sealer = ValueSealer(key_provider)
    sealed = sealer.seal(b"body", b"ctx")
    assert sealer.rewrap(sealed, b"ctx") is None  # already under the active key
    old_id = sealer.key_id_of(sealed)
    new_id = key_provider.rotate()
    assert sealer.open(sealed, b"ctx") == b"body"  # old key still opens it
    rewrapped = sealer.rewrap(sealed, b"ctx")
    assert rewrapped is not None
    assert sealer.key_id_of(rewrapped) == new_id != old_id
    assert sealer.open(rewrapped, b"ctx") == b"body"
    assert rewrapped.endswith(sealed[-20:])  # the ciphertext itself is not rewritten
