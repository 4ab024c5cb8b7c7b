"""Server-assigned FHIR ids (salus.fhir.storereads.new_id) are UUIDs of
version 7 (RFC 9562 section 5.7): valid FHIR ids, unique, random in their
last 74 bits, and in creation order at millisecond precision, so that the
id's index b-trees grow at their end (ADR 21, stop-18 amendment)."""

from __future__ import annotations

import time
import uuid

import pytest

from salus.fhir import storereads
from salus.fhir.storereads import check_id, new_id


def test_new_id_is_a_uuid_of_version_7_and_a_valid_fhir_id() -> None:
    for _ in range(200):
        made = new_id()
        parsed = uuid.UUID(made)
        assert str(parsed) == made
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert check_id(made) == made


def test_new_id_tells_the_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid.UUID(new_id())
    after = time.time_ns() // 1_000_000
    assert before <= made.int >> 80 <= after


def test_ids_made_in_later_milliseconds_sort_after(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_790_000_000_000 * 1_000_000]
    monkeypatch.setattr(storereads.time, "time_ns", lambda: now[0])
    earlier = [new_id() for _ in range(50)]
    now[0] += 1_000_000  # one millisecond later
    later = [new_id() for _ in range(50)]
    assert max(earlier) < min(later)
    # Within one millisecond the order is random, not a counter.
    assert sorted(earlier) != earlier or sorted(later) != later


def test_new_ids_are_unique_and_random_in_their_last_74_bits() -> None:
    made = [uuid.UUID(new_id()).int for _ in range(20_000)]
    assert len(set(made)) == len(made)
    random_bits = (1 << 62) - 1  # rand_b; rand_a is the 12 bits after the version
    low = {value & random_bits for value in made}
    assert len(low) == len(made)
