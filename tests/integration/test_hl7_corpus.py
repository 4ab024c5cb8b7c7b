"""Public HL7 v2 messages through a real MLLP socket, each with a correct ACK.

The copied subset in ``tests/data/hl7v2`` always runs with its expected
outcomes; the whole corpus (``../shared/corpora/hl7v2``) runs when present.
A correct ACK: MSA-2 echoes MSH-10; AA means the message is stored and its
resources written (they passed the FHIR validator on the way in); AE and AR
carry an ERR segment and match the stored state (failed / rejected); AR is
the answer for types Salus does not map (ERR 200/201).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from salus.hl7.mapping import IGNORED, SUPPORTED
from salus.hl7.mllp import frame
from salus.hl7.parse import split_segments
from tests.conftest import BACKENDS
from tests.integration.hl7_world import DATA, Hl7World, adt, hl7_world, segments_of
from tests.integration.security_world import SYSTEM

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "hl7v2"

EXPECTED = {
    "001_Epic_ORM_O01.hl7": ("AE", "102"),  # PID-7 holds the text "DOB"
    "001_TX_OML_O21.hl7": ("AR", "100"),  # a segment broken over two lines (CR: enhanced)
    "BAR-P01-01.hl7": ("AR", "200"),  # not a type Salus maps
    "ADT-A40-02.hl7": ("silent", None),  # MSH-15 NE: no accept acknowledgment
    "ORU-R01-01.hl7": ("CA", None),  # enhanced mode: accepted, then applied
}


def header_fields(raw: bytes) -> list[str]:
    first = split_segments(raw.decode("utf-8-sig", "replace"))[0]
    return first.split(first[3])


def unique_control_id(raw: bytes, control_id: str) -> bytes:
    """Sample files reuse MSH-10 values (MSG00001…): make each one unique, or the
    duplicate detection (tested elsewhere) would answer them all as the first."""
    start = raw.find(b"MSH")
    end = min(i for i in (raw.find(b"\r", start), raw.find(b"\n", start), len(raw)) if i >= 0)
    sep = raw[start + 3 : start + 4]
    fields = raw[start:end].split(sep)
    fields[9] = control_id.encode()
    return raw[:start] + sep.join(fields) + raw[end:]


def _row_of(w: Hl7World, control_id: str) -> dict[str, object]:
    rows = [r for r in w.runtime.store.list(limit=5) if r["control_id"] == control_id]
    return rows[0]


def check_ack(w: Hl7World, name: str, raw: bytes, reply: bytes) -> tuple[str, str | None]:
    parts = segments_of(reply)
    code = parts["MSA"][1]
    fields = header_fields(raw)
    assert parts["MSA"][2] == fields[9], name  # MSA-2 = MSH-10
    mtype = fields[8].split("^")
    row = _row_of(w, fields[9])
    if code == "CA":  # enhanced mode: accepted (committed); applied in the background
        w.runtime.apply_pending()
        row = _row_of(w, fields[9])
        assert row["state"] in ("applied", "failed", "ignored"), name
        return "CA", row["error_code"]
    code = {"CE": "AE", "CR": "AR"}.get(code, code)
    error = None
    if code == "AA":
        assert "ERR" not in parts, name
        if mtype[0] in IGNORED:
            assert row["state"] == "ignored", name
        else:
            assert row["state"] == "applied" and row["resources"], name
    else:
        assert code in ("AE", "AR"), name
        err = parts["ERR"]
        # v2.5+: ERR-3 code; before: ERR-1 (ELD) segment^sequence^field^code&text.
        error = err[3].split("^")[0] if len(err) > 3 else err[1].split("^")[3].split("&")[0]
        assert error == row["error_code"], name
        assert row["state"] == ("failed" if code == "AE" else "rejected"), name
        supported = mtype[0] in SUPPORTED and mtype[1:2] and mtype[1] in SUPPORTED[mtype[0]]
        if not supported:
            assert code == "AR" and error in ("200", "201"), name
    return code, error


def run_files(w: Hl7World, files: list[Path]) -> dict[str, tuple[str, str | None]]:
    # Every loopback connection is hosp-a's feed (an MLLP edge identity by address).
    w.world.services.directory.add_edge_identity(
        SYSTEM, kind="mllp", client_id="a-feed", address="127.0.0.1/32"
    )
    w.runtime.forget_peers()
    c = w.client()
    outcomes = {}
    for index, path in enumerate(files):
        raw = unique_control_id(path.read_bytes(), f"F{index}")
        c.send_raw(frame(raw))
        # MSH-15 NE/ER/SU may leave a message unanswered: a probe's ACK tells.
        probe = f"PROBE{index}"
        c.send_raw(frame(adt(probe, "A28", mrn="PROBE")))
        reply = c.read_ack()
        assert reply is not None
        if segments_of(reply)["MSA"][2] == probe:
            assert header_fields(raw)[14] in ("NE", "ER", "SU"), path.name
            outcomes[path.name] = ("silent", None)
            continue
        probe_reply = c.read_ack()
        assert probe_reply is not None and segments_of(probe_reply)["MSA"][1:3] == ["AA", probe]
        outcomes[path.name] = check_ack(w, path.name, raw, reply)
    return outcomes


@pytest.mark.parametrize("backend", BACKENDS)
def test_copied_subset_gets_the_expected_acks(backend: str, tmp_path: Path) -> None:
    files = sorted(DATA.glob("*.hl7"))
    assert len(files) >= 15
    with hl7_world(backend, tmp_path) as w:
        outcomes = run_files(w, files)
    for name, outcome in outcomes.items():
        assert outcome == EXPECTED.get(name, ("AA", None)), name


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # ~20 s; PostgreSQL runs the subset above
def test_whole_corpus_over_mllp(backend: str, tmp_path: Path) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"the HL7 v2 corpus is not present at {CORPUS}")
    files = sorted(CORPUS.rglob("*.hl7"))
    with hl7_world(backend, tmp_path, mllp_max_message_bytes=1 << 20) as w:
        outcomes = run_files(w, files)
    accepted = [
        n for n, (code, err) in outcomes.items() if code == "AA" or (code, err) == ("CA", None)
    ]
    # Most of the corpus maps; the rest are types Salus does not map or bad data.
    assert len(outcomes) == len(files) and len(accepted) >= 110
