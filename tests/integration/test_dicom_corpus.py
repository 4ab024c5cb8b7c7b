"""Every readable file in and out through every path; malformed files refused cleanly.

For each file: when pydicom reads it (File Meta Information, every element) and
it has what an archive cannot do without (the four UIDs, valid; a transfer
syntax; native Pixel Data as long as the image module says, PS3.5 8.1.1), it is
stored through C-STORE (pynetdicom SCU, data set bytes as in the file) and
retrieved byte-identical through C-GET, C-MOVE (to a loopback SCP) and WADO-RS
(``transfer-syntax=*``), deleted, then stored through STOW-RS and retrieved
through WADO-RS again (the very file posted). Any other file is refused: a
STOW-RS FailureReason and, when its File Meta lets an SCU send it, a C-STORE
failure status (0xA9xx, 0xCxxx); neither leaves an index row or a blob.

The copied subset (``tests/data/dicom/corpus`` and the samples beside it) runs on
both backends. The whole shared corpus (``../shared/corpora/dicom``, about 360
files, ~3 minutes: about five associations per file) runs on SQLite when
``SALUS_DICOM_CORPUS=all`` is set::

    SALUS_DICOM_CORPUS=all python -m pytest -q tests/integration/test_dicom_corpus.py
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom import _config as pynetdicom_config
from sqlalchemy import func, select

from salus.db.tables_dicom import dicom_instances
from salus.dicom.dimse import QR_GET, QR_MOVE, DimseListener
from tests.conftest import BACKENDS
from tests.integration.dicom_world import (
    DATA,
    STORE_AE,
    StoreSCP,
    dataset_bytes,
    nodelay,
    split_multipart,
    stow_body,
)
from tests.integration.security_world import SYSTEM, World, make_world

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "dicom"
SUBSET = sorted((DATA / "corpus").glob("*.dcm")) + [
    DATA / name
    for name in (
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
        "MR_truncated.dcm",
        "rtplan_truncated.dcm",
        "no_meta.dcm",
    )
]
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Files pydicom reads without complaint although they are cut short (checked by
#: hand: the last element's value length runs past the end of the file; pydicom
#: keeps what is there or drops the element).
TRUNCATED = {"rtplan_truncated.dcm", "GH179B.dcm"}
_STORE_FAILURES = (range(0xA700, 0xA800), range(0xA900, 0xAA00), range(0xC000, 0xD000))
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def storable(name: str, data: bytes) -> bool:
    """Whether an archive must keep this file (see the module docstring)."""
    if Path(name).name in TRUNCATED:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(BytesIO(data))
            for _elem in ds:
                pass
    except Exception:
        return False
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not syntax:
        return False
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword) or "").strip().rstrip("\x00")
        if not value or len(value) > 64 or not _UID.match(value):
            return False
    if "PixelData" in ds and not ds["PixelData"].is_undefined_length:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if samples == 3 and ds.get("PhotometricInterpretation") == "YBR_FULL_422":
            samples = 2
        try:
            frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        except ValueError:
            frames = 1
        bits = int(ds.Rows) * int(ds.Columns) * samples * frames * int(ds.BitsAllocated)
        return len(ds.PixelData or b"") >= (bits + 7) // 8
    return True


@dataclass
class Outcome:
    stored: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    private: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Rig:
    web: World
    port: int
    scp: StoreSCP

    def rows(self) -> int:
        with self.web.services.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(dicom_instances)).scalar_one())

    def blobs(self) -> int:
        folder = Path(self.web.services.settings.blob_path())
        return sum(1 for p in folder.rglob("*") if p.is_file())


@contextmanager
def rig(backend: str, folder: Path) -> Iterator[Rig]:
    """The HTTP app (DICOMweb), a DIMSE listener and a C-MOVE destination."""
    scp = StoreSCP()
    saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes
    try:
        with make_world(
            backend,
            folder,
            dicom_port=0,
            dicom_move_destinations={STORE_AE: f"127.0.0.1:{scp.port}"},
            dicom_duplicate_policy="replace",
        ) as web:
            web.services.directory.add_edge_identity(
                SYSTEM, kind="dicom", client_id="a-feed", ae_title="MOD_A"
            )
            listener = DimseListener(web.services)
            listener.start_sync()
            try:
                yield Rig(web, listener.port, scp)
            finally:
                listener.stop_sync()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = saved
        scp.stop()


def _association(rig: Rig, contexts: list[tuple[str, list[str]]], **kw: object) -> object:
    ae = AE(ae_title="MOD_A")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    handlers = [*kw.pop("evt_handlers", []), (evt.EVT_CONN_OPEN, nodelay)]  # type: ignore[misc]
    return ae.associate(
        "127.0.0.1",
        rig.port,
        ae_title="SALUS",
        evt_handlers=handlers,
        **kw,  # type: ignore[arg-type]
    )


def _c_store(rig: Rig, path: Path, sop_class: str, syntax: str) -> int | None:
    """The C-STORE status, or None when no presentation context was accepted."""
    assoc = _association(rig, [(sop_class, [syntax])])
    if not assoc.is_established:  # type: ignore[attr-defined]
        return None  # the SCU aborts when no presentation context was accepted
    try:
        status = assoc.send_c_store(path)  # type: ignore[attr-defined]
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()  # type: ignore[attr-defined]


def _identifier(ds: Dataset) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = str(ds.StudyInstanceUID).strip().rstrip("\x00")
    query.SeriesInstanceUID = str(ds.SeriesInstanceUID).strip().rstrip("\x00")
    query.SOPInstanceUID = str(ds.SOPInstanceUID).strip().rstrip("\x00")
    return query


def _c_get(rig: Rig, ds: Dataset, sop_class: str, syntax: str) -> bytes | None:
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    assoc = _association(
        rig,
        [(QR_GET[1], ["1.2.840.10008.1.2.1"]), (sop_class, [syntax])],
        ext_neg=[build_role(sop_class, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    try:
        list(assoc.send_c_get(_identifier(ds), QR_GET[1]))  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    return received[0] if len(received) == 1 else None


def _c_move(rig: Rig, ds: Dataset, sop: str) -> bytes | None:
    rig.scp.received.pop(sop, None)
    assoc = _association(rig, [(QR_MOVE[1], ["1.2.840.10008.1.2.1"])])
    try:
        list(assoc.send_c_move(_identifier(ds), STORE_AE, QR_MOVE[1]))  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    return rig.scp.received.get(sop)


def _wado(rig: Rig, study: str, series: str, sop: str) -> bytes | None:
    response = rig.web.client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers=rig.web.headers("a-feed", Accept=DICOM_ANY),
    )
    if response.status_code != 200:
        return None
    parts = split_multipart(response.headers["content-type"], response.content)
    return parts[0][1] if len(parts) == 1 else None


def _stow(rig: Rig, data: bytes) -> tuple[int, dict[str, object]]:
    body, content_type = stow_body([data])
    response = rig.web.client.post(
        "/dicomweb/studies",
        content=body,
        headers=rig.web.headers("a-feed", **{"Content-Type": content_type}),
    )
    return response.status_code, response.json() if response.content else {}


def _delete(rig: Rig, study: str) -> None:
    rig.web.services.dicom.delete(  # type: ignore[union-attr]
        rig.web.services.directory.client_principal("a-feed"), study
    )


def check(rig: Rig, paths: list[Path], root: Path) -> Outcome:
    outcome = Outcome()
    for path in paths:
        name = str(path.relative_to(root))
        data = path.read_bytes()
        if storable(name, data):
            _stored(rig, path, data, name, outcome)
        else:
            _refused(rig, path, data, name, outcome)
    return outcome


def _stored(rig: Rig, path: Path, data: bytes, name: str, outcome: Outcome) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
    sop_class = str(ds.SOPClassUID).strip().rstrip("\x00")
    syntax = str(ds.file_meta.TransferSyntaxUID).strip().rstrip("\x00")
    study, series, sop = (
        str(ds.get(k)).strip().rstrip("\x00")
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    meta_sop = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")).strip().rstrip("\x00")
    expected = dataset_bytes(data)
    problems = outcome.problems
    meta_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "")).strip().rstrip("\x00")
    # C-STORE sends the data set under the File Meta's UIDs (a pynetdicom SCU needs
    # them); the archive indexes the data set's own. Only files whose two agree can
    # round-trip through DIMSE.
    if meta_sop == sop and meta_class == sop_class:
        status = _c_store(rig, path, sop_class, syntax)
        if status is None and not sop_class.startswith("1.2.840.10008."):
            # A private SOP class: no presentation context for it (as Orthanc's
            # default UnknownSopClassAccepted=false); STOW-RS below still stores it.
            outcome.private.append(name)
        elif status != 0x0000:
            problems.append(f"{name}: C-STORE status {status}")
        else:
            if _c_get(rig, ds, sop_class, syntax) != expected:
                problems.append(f"{name}: C-GET not byte-identical")
            if _c_move(rig, ds, sop) != expected:
                problems.append(f"{name}: C-MOVE not byte-identical")
            wado = _wado(rig, study, series, sop)
            if wado is None or dataset_bytes(wado) != expected:
                problems.append(f"{name}: WADO-RS after C-STORE not byte-identical")
            _delete(rig, study)
    code, answer = _stow(rig, data)
    if code != 200:
        problems.append(f"{name}: STOW-RS {code} {str(answer)[:200]}")
        return
    if _wado(rig, study, series, sop) != data:
        problems.append(f"{name}: WADO-RS after STOW-RS not the file posted")
    _delete(rig, study)
    outcome.stored.append(name)


def _refused(rig: Rig, path: Path, data: bytes, name: str, outcome: Outcome) -> None:
    rows, blobs = rig.rows(), rig.blobs()
    problems = outcome.problems
    code, answer = _stow(rig, data)
    failed = answer.get("00081198", {})
    reasons = [
        item.get("00081197", {}).get("Value", [None])[0]
        for item in (failed.get("Value", []) if isinstance(failed, dict) else [])
    ]
    if code != 409 or len(reasons) != 1 or reasons[0] is None:
        problems.append(f"{name}: STOW-RS of a malformed file gave {code} {reasons}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = read_file_meta_info(path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        syntax = str(meta.TransferSyntaxUID)
        UID(syntax).is_little_endian  # noqa: B018 - a syntax pynetdicom can frame
        sendable = bool(meta.MediaStorageSOPInstanceUID)
    except Exception:
        sendable = False
    if sendable:
        try:
            status = _c_store(rig, path, sop_class, syntax)
        except Exception:  # pynetdicom cannot read the data set to send it
            status = None
        if status is not None and not any(status in r for r in _STORE_FAILURES):
            problems.append(f"{name}: C-STORE of a malformed file gave 0x{status:04X}")
    if (rig.rows(), rig.blobs()) != (rows, blobs):
        problems.append(f"{name}: a refusal left rows or blobs")
    outcome.refused.append(name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_copied_subset(backend: str, tmp_path: Path) -> None:
    with rig(backend, tmp_path) as r:
        outcome = check(r, SUBSET, DATA)
    assert outcome.problems == []
    assert sorted(outcome.refused) == [
        "MR_truncated.dcm",
        "corpus/DICOMDIR-empty.dcm",
        "corpus/meta_missing_tsyntax.dcm",
        "no_meta.dcm",
        "rtplan_truncated.dcm",
    ]
    assert len(outcome.stored) == len(SUBSET) - 5


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_whole_corpus(tmp_path: Path) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"the DICOM corpus is not present at {CORPUS}")
    if os.environ.get("SALUS_DICOM_CORPUS") != "all":
        pytest.skip("takes ~3 min: set SALUS_DICOM_CORPUS=all to run it")
    paths = [
        p
        for p in sorted(CORPUS.rglob("*"))
        if p.is_file()
        and p.suffix.lower() not in (".csv", ".md", ".txt", ".json", ".py")
        and not p.name.upper().startswith(("LICENSE", "README", "COPYING"))
    ]
    with rig("sqlite", tmp_path) as r:
        outcome = check(r, paths, CORPUS)
    assert outcome.problems == [], "\n".join(outcome.problems)
    assert len(outcome.stored) >= 280 and len(outcome.refused) >= 30
