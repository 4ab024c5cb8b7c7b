"""``salus.jsoncodec`` gives what the standard library's ``json`` gives.

orjson reads and writes the FHIR bodies; wherever it would differ from
``json`` (big integers, non-numbers, lone surrogates, other encodings, byte
order marks, dates) the codec must fall back, so every body reads and writes
as it did before. Compared on the Synthea test bundles, on generated numbers
and on each edge case.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import math
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from salus import jsoncodec

ROOT = Path(__file__).resolve().parents[2]
SYNTHEA = ROOT / "tests" / "data" / "fhir" / "synthea"


def _std_dumps(value: Any, allow_nan: bool = True) -> bytes:
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan
    ).encode()


def _same_value(left: Any, right: Any) -> bool:
    """Equal, and of the same types throughout (1 and 1.0 differ; NaN is NaN)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(_same_value(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same_value, left, right))
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return bool(left == right)


def test_synthea_bundles_read_and_write_as_with_json() -> None:
    paths = sorted(SYNTHEA.glob("*.json.gz"))
    assert paths
    resources = 0
    for path in paths:
        raw = gzip.decompress(path.read_bytes())
        bundle = jsoncodec.loads(raw)
        assert _same_value(bundle, json.loads(raw))
        for entry in bundle["entry"]:
            resource = entry["resource"]
            written = jsoncodec.dumps(resource)
            assert written == _std_dumps(resource)  # Synthea writes no 1e+16-like floats
            assert _same_value(json.loads(written), resource)
            resources += 1
    assert resources > 200


def test_numbers_read_as_with_json() -> None:
    rng = random.Random(11)
    texts = [
        "0",
        "-0",
        "1",
        "-1",
        "0.0",
        "-0.0",
        "1.50",
        "1e5",
        "1E-7",
        "5e-324",
        "1.7976931348623157e308",
    ]
    texts += [str(2**63 - 1), str(-(2**63)), str(2**64 - 1), str(2**64), str(-(2**63) - 1)]
    texts += ["1" * 19, "9" * 19, "1" * 20, "9" * 20, "1" * 30, "-" + "7" * 25]
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 24)))
        fraction = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 20)))
        exponent = rng.choice(["", f"e{rng.randint(-330, 330)}", f"E+{rng.randint(0, 20)}"])
        text = digits.lstrip("0") or "0"
        if fraction:
            text += "." + fraction
        texts.append(rng.choice(["", "-"]) + text + exponent)
    for text in texts:
        body = f'{{"value":{text},"list":[{text}]}}'
        assert _same_value(jsoncodec.loads(body.encode()), json.loads(body)), text
        assert _same_value(jsoncodec.loads(body), json.loads(body)), text


def test_integers_beyond_64_bits_stay_exact() -> None:
    big = 123456789012345678901234567890
    assert jsoncodec.loads(b'{"v":123456789012345678901234567890}') == {"v": big}
    assert jsoncodec.dumps({"v": big}) == b'{"v":123456789012345678901234567890}'
    assert jsoncodec.dumps({"v": -(2**64)}) == _std_dumps({"v": -(2**64)})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v":"\\ud800"}',  # a lone surrogate escape
        b'{"v":"\\udc00x","w":"\\ud83d\\ude00"}',
        '{"v":"é"}'.encode("utf-16"),
        '{"v":"é"}'.encode("utf-32-le"),
        b'\xef\xbb\xbf{"v":1}',  # a UTF-8 byte order mark
        b'{"a":1,"a":2}',  # the last of duplicate keys
        b'{"v":1e400}',  # beyond a double: infinity for json
        b' \n{"v":[]}\t',
    ],
)
def test_what_orjson_refuses_reads_as_with_json(raw: bytes) -> None:
    assert _same_value(jsoncodec.loads(raw), json.loads(raw))


@pytest.mark.parametrize(
    "raw", [b"", b"{", b'{"v":}', b"\xff\xfe\x00", b'{"v":1}x', b"[" * 100_000, b'{"v":tru}']
)
def test_invalid_json_is_refused_as_by_json(raw: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as ours:
        jsoncodec.loads(raw)
    with pytest.raises((ValueError, RecursionError)) as theirs:
        json.loads(raw)
    assert type(ours.value) is type(theirs.value)


def test_non_numbers_and_lone_surrogates_refused_when_strict() -> None:
    for raw in (b'{"v":NaN}', b'{"v":Infinity}', b'{"v":[-Infinity]}'):
        assert _same_value(jsoncodec.loads(raw), json.loads(raw))
        with pytest.raises(ValueError, match="not a JSON number"):
            jsoncodec.loads(raw, strict=True)
    for raw in (
        b'{"v":"\\ud800"}',
        b'{"\\udc00":1}',
        b'{"n":1234567890123456789012,"v":"\\ud800"}',
    ):
        assert _same_value(jsoncodec.loads(raw), json.loads(raw))
        with pytest.raises(ValueError, match="lone surrogate"):
            jsoncodec.loads(raw, strict=True)
    with pytest.raises(ValueError, match="nested too deep"):
        jsoncodec.loads(b"[" * 100_000, strict=True)  # json: RecursionError
    pair = b'{"v":"\\ud83d\\ude00","n":1234567890123456789012}'  # a pair is one character
    assert jsoncodec.loads(pair, strict=True) == {"v": "\U0001f600", "n": 1234567890123456789012}
    for value in ({"v": math.nan}, {"v": [1.0, -math.inf]}, {"v": {"w": math.inf}}):
        assert jsoncodec.dumps(value) == _std_dumps(value)  # NaN, as json writes it
        with pytest.raises(ValueError):
            jsoncodec.dumps(value, allow_nan=False)
    assert jsoncodec.dumps({"v": None, "w": [None]}) == b'{"v":null,"w":[null]}'


def test_writes_as_json_does() -> None:
    value = {
        "s": 'é\u2028</script>"\\\x00\x1f\x7f🙂',
        "n": [0, -1, 2**63 - 1, 1.5, 0.1 + 0.2, -0.0, 1e-7, 1e16, True, False, None],
        "nested": {"": [], "k": {}},
    }
    written = jsoncodec.dumps(value)
    assert _same_value(json.loads(written), value)
    plain = {**value, "n": [0, -1, 2**63 - 1, 1.5, 0.1 + 0.2, -0.0, True, False, None]}
    assert jsoncodec.dumps(plain) == _std_dumps(plain)


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        {"v": "\ud800"},  # json writes it; encoding to UTF-8 then fails
        {"v": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)},
        {"v": dt.date(2024, 1, 1)},
        {"v": _Point(1)},
        {"v": Decimal("1.5")},
        {"v": {1, 2}},
    ],
)
def test_what_json_refuses_is_refused(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as ours:
        jsoncodec.dumps(value)
    with pytest.raises((TypeError, ValueError)) as theirs:
        _std_dumps(value)
    assert type(ours.value) is type(theirs.value)


def test_keys_json_converts_are_converted() -> None:
    value = {1: "a", 2.5: "b", False: "c", None: "d"}
    assert jsoncodec.dumps(value) == _std_dumps(value)
