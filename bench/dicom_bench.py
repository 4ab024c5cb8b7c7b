"""The DICOM archive end to end: Salus against Orthanc and dcmtk ``storescp``, on loopback.

Three targets, each a real process started by the benchmark:

* **Salus**: ``python -m salus serve`` on SQLite (a temporary data folder; one
  HTTP worker, jobs off, log level WARNING), DIMSE listener on, calling AE
  titles mapped to a ``hospital_integration`` client
  (``SALUS_DICOM_UNKNOWN_AE_CLIENT``);
* **Orthanc** (Debian package, default SQLite index, filesystem storage,
  ``StorageCompression`` off, the DICOMweb plugin, no authentication);
* **dcmtk storescp** (``--fork``, writing files: the floor), ingest only.

Every DICOM socket runs with TCP_NODELAY (``TCP_NODELAY=1`` for dcmtk and
Orthanc; Salus and the pynetdicom query client set it themselves), as
``../shared/PEERS.md`` asks.

Phases (the targets alternate inside each phase, so that drift on this shared
machine hits them alike):

1. **C-STORE ingest** of ``--instances`` (2,000) synthetic 512 x 512 16-bit CT
   instances (pydicom + numpy: 40 studies of 50, plausible headers, ~526 KB each)
   with dcmtk ``storescu`` (the same sender for all three) over 1 and 4
   associations (the files shared out), into a freshly started target each
   time; instances/s and MB/s, ``--rounds`` times.
2. Then one Salus and one Orthanc stay up: both get the CT studies and a
   1,000-instance study (64 x 64 images), then an index of ``--scale`` more
   instances (default 20,000; 10 per study, 2 studies per patient, study
   dates over 11 years). **Orthanc's index can only grow by storing**, so it
   gets small instances through its REST API (4 threads). **Salus's index is
   grown by inserting rows in bulk** into its four index tables (not files:
   those rows have no blob and cannot be retrieved; queries only read the
   index), which makes ``--scale 1000000`` practical (a few minutes).
3. **Queries** from one client, sequentially, ``--queries`` (200) per kind
   after 10 untimed: C-FIND (pynetdicom SCU, one association) and QIDO-RS at
   study level by PatientID and by a StudyDate range (30 days at 20,000
   instances, narrower at larger ``--scale`` so that a range matches about 15
   studies: a C-FIND answer costs ~1 ms per match in pynetdicom; ``--range-days``);
   median and p95 latency. C-FIND runs twice: with pynetdicom's SCU and with
   :class:`SocketFindSCU` (a plain-socket SCU whose own cost per response is
   negligible), the same client for every target.
4. **WADO-RS metadata** of the 1,000-instance study (``--meta-repeats``
   requests); median and p95.
5. **WADO-RS retrieval** of whole CT studies (multipart, Explicit VR Little
   Endian as stored: no transcoding) by 4 clients for ``--wado-seconds``;
   instances/s and MB/s.

CPU is accounted per phase: the target's process tree (waited-for children
included: storescp ``--fork``), the senders (storescu processes, waited for by
this one), this process, and the whole machine (others = busy cores not
accounted to these).

Targets (issue 5): ingest at least 1.5x Orthanc and 0.5x storescp; query p95
under 20 ms (at 1,000,000 instances); study metadata of 1,000 instances under
300 ms.

Run from the repository root in the project's virtualenv (dcmtk and Orthanc
installed: ``apt-get install dcmtk orthanc orthanc-dicomweb``)::

    python bench/dicom_bench.py [--instances 2000] [--scale 20000] [--rounds 1]
                                [--json out.json] [--profile DIR] [--skip-ingest]

``--profile DIR`` runs ``py-spy record`` on the Salus server during the
ingest phases (it perturbs the figures). ``--phases queries`` runs only the
query phase (the live targets get only the scale index: the 1,000,000-instance
run is ``--targets salus --phases queries --scale 1000000``). ``--floors`` runs
only the ingest floors: the same ``storescu`` into (i) a bare pynetdicom Storage
SCP whose handler returns 0x0000 and keeps nothing, (ii) the same writing each
data set to a file with ``fdatasync`` (Orthanc's one sync per instance), (iii)
Salus with one server process, (iv) Salus with two (``salus2``: the DIMSE
listener in both), (v) Orthanc and (vi) ``storescp``, over 1 and 4
associations, with the receiver's CPU per instance.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import (  # noqa: E402 - how every benchmark starts and watches salus serve
    SalusServer,
    free_port,
    machine,
    processes,
    stop_profile,
    tree_cpu,
    wait_listening,
)
from fhir_bench import environment, quantile  # noqa: E402

ORG, CLIENT_ID = "bench-hosp", "bench-feed"
CT = "1.2.840.10008.5.1.4.1.1.2"
ROOT_UID = "1.2.826.0.1.3680043.8.498."  # pydicom's root, for generate_uid
INGEST_VS_ORTHANC, INGEST_VS_STORESCP = 1.5, 0.5
QUERY_P95_MS, METADATA_MS = 20.0, 300.0
DICOM_ACCEPT = 'multipart/related; type="application/dicom"'


def dcmtk(tool: str) -> str:
    """dcmtk's binary, not pynetdicom's Python apps of the same names in the venv."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    found = shutil.which(tool, path=path)
    if found is None:
        raise SystemExit(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")
    return found


# -- data -------------------------------------------------------------------------------------
def _uid(*parts: object) -> str:
    return generate_uid(prefix=ROOT_UID, entropy_srcs=[str(p) for p in parts])


def _dataset(patient: int, study: int, series: int, number: int, rows: int, run: str) -> Dataset:
    """A CT image with the headers a scanner writes (synthetic values)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = _uid(run, "instance", study, series, number)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    day = date(2015, 1, 1) + timedelta(days=(study * 7919) % 4000)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{(study * 37) % 24:02d}{study % 60:02d}00"
    ds.AccessionNumber = f"A{study:08d}"
    ds.Modality = "CT"
    ds.Manufacturer = "Salus Bench Imaging"
    ds.ReferringPhysicianName = "Tran^Minh"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 1.25mm"
    ds.PatientName = f"Nguyen^Van^{patient:06d}"
    ds.PatientID = f"P{patient:07d}"
    ds.PatientBirthDate = f"{1940 + patient % 60}0{1 + patient % 9}1{patient % 9}"
    ds.PatientSex = "MF"[patient % 2]
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.StudyInstanceUID = _uid(run, "study", study)
    ds.SeriesInstanceUID = _uid(run, "series", study, series)
    ds.StudyID = str(study)
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = number + 1
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-number * 1.25:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = _uid(run, "frame", study)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.PixelSpacing = ["0.9765625", "0.9765625"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    return ds


class _Values:
    """The index values :func:`_dataset` would write, without building a data set
    (growing Salus's index by a million rows)."""

    def __init__(self, patient: int, study: int, number: int, run: str) -> None:
        day = date(2015, 1, 1) + timedelta(days=(study * 7919) % 4000)
        self.StudyDate = self.SeriesDate = self.ContentDate = day.strftime("%Y%m%d")
        clock = f"{(study * 37) % 24:02d}{study % 60:02d}00"
        self.StudyTime = self.SeriesTime = self.ContentTime = clock
        self.AccessionNumber = f"A{study:08d}"
        self.StudyDescription = "CT CHEST WITH CONTRAST"
        self.SeriesDescription = "AXIAL 1.25mm"
        self.PatientName = f"Nguyen^Van^{patient:06d}"
        self.PatientID = f"P{patient:07d}"
        self.PatientBirthDate = f"{1940 + patient % 60}0{1 + patient % 9}1{patient % 9}"
        self.PatientSex = "MF"[patient % 2]
        self.StudyID = str(study)
        self.StudyInstanceUID = _uid(run, "study", study) if number == 0 else ""
        self.SeriesInstanceUID = _uid(run, "series", study, 0) if number == 0 else ""
        self.SOPInstanceUID = _uid(run, "instance", study, 0, number)


def write_ct(
    folder: Path, count: int, per_study: int, rows: int, run: str, first_study: int = 0
) -> list[Path]:
    """``count`` CT files, ``per_study`` per study, 2 studies per patient."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261123)
    base = (rng.normal(1024, 200, (rows, rows)).clip(0, 4095)).astype("<u2")
    paths = []
    for i in range(count):
        study = first_study + i // per_study
        ds = _dataset(study // 2, study, 0, i % per_study, rows, run)
        ds.PixelData = np.roll(base, i, axis=0).tobytes()
        path = folder / f"{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def small_instance(i: int, run: str) -> bytes:
    """Instance ``i`` of the scale index (no pixel data), as a Part-10 file."""
    from io import BytesIO

    study = 1_000_000 + i // 10
    ds = _dataset(study // 2, study, 0, i % 10, 8, run)
    ds.PixelData = b"\0" * 128
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# -- CPU --------------------------------------------------------------------------------------
@dataclass
class Cpu:
    target: float = 0.0
    senders: float = 0.0
    bench: float = 0.0
    others: float = 0.0
    machine_busy: float = 0.0


class Meter:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> tuple[float, float, float, float, float, float]:
        busy, total = machine()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            time.perf_counter(),
            tree_cpu(processes(), self.pid),
            children.ru_utime + children.ru_stime,
            time.process_time(),
            busy,
            total,
        )

    @staticmethod
    def since(a: tuple[float, ...], b: tuple[float, ...]) -> Cpu:
        wall = max(b[0] - a[0], 1e-9)
        cpu = Cpu(
            (b[1] - a[1]) / wall,
            (b[2] - a[2]) / wall,
            (b[3] - a[3]) / wall,
            machine_busy=(b[4] - a[4]) / max(b[5] - a[5], 1e-9),
        )
        busy = cpu.machine_busy * (os.cpu_count() or 1)
        cpu.others = max(0.0, busy - cpu.target - cpu.senders - cpu.bench)
        return cpu


# -- targets ----------------------------------------------------------------------------------
class Target:
    name = ""
    ae = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "target.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self, args: list[str], env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_listening(self.dicom_port, self.process, self.name, self.log, time.monotonic() + 90)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class Salus(Target):
    """``salus serve`` on SQLite, started and watched by :class:`_server.SalusServer`."""

    name, ae = "Salus", "SALUS"
    workers = "1"
    server: SalusServer

    def start(self) -> Salus:
        self.server = SalusServer(
            self.folder,
            settings={
                "http_workers": self.workers,
                "dicom_enabled": "true",
                "dicom_port": str(self.dicom_port),
                "dicom_unknown_ae_client": CLIENT_ID,
                "dicom_max_associations": "16",
                "dicomweb_qido_max_results": "10000",
            },
            listen=[self.dicom_port],
            log=self.log,
        )
        self.server.cli("init")
        self.server.provision(ORG, "Bench Hospital", CLIENT_ID)
        self._serve()
        return self

    @property
    def pid(self) -> int:
        return self.server.pid

    def _serve(self) -> None:
        self.server.serve(append=True)

    def stop(self) -> None:
        if hasattr(self, "server"):
            self.server.stop()

    def restart(self) -> None:
        """Stop and serve again: SQLite loads planner statistics per connection when
        it opens, so connections opened before :meth:`grow`'s ANALYZE keep the plans
        of an empty index (a PatientID query scanned all 100,000 studies at
        1,000,000 instances: 70 ms instead of ~1). A production server's
        connections are opened on an index that grew through it."""
        self.stop()
        self._serve()
        self.wait_dimse()

    def wait_dimse(self, seconds: float = 300.0) -> None:
        """Until an association is accepted (a server starting on a large index
        checkpoints its WAL and refreshes statistics first)."""
        from pynetdicom import AE

        ae = AE(ae_title="BENCH")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.acse_timeout = 120
        deadline = time.monotonic() + seconds
        while True:
            assoc = ae.associate("127.0.0.1", self.dicom_port, ae_title=self.ae)
            if assoc.is_established:
                assoc.release()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Salus accepted no association in {seconds:.0f} s")
            time.sleep(1.0)

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.server.base}/dicomweb",
            timeout=120,
            headers={"Authorization": f"Bearer {self.server.token()}"},
        )

    def grow(self, count: int, run: str) -> float:
        """Insert ``count`` instances' index rows in bulk (see the module docstring)."""
        from salus.db import create_database
        from salus.db.tables_dicom import (
            dicom_instances,
            dicom_patients,
            dicom_series,
            dicom_studies,
        )
        from salus.db.types import utcnow
        from salus.dicom.parse import norm_pn, time_key

        began = time.perf_counter()
        db = create_database(f"sqlite:///{self.folder / 'salus.db'}")
        now, base = utcnow(), 10_000_000
        try:
            for start in range(0, count, 20_000):
                chunk = range(start, min(count, start + 20_000))
                patients, studies, series, instances = [], [], [], []
                for i in chunk:
                    study = 1_000_000 + i // 10
                    ds = _Values(study // 2, study, i % 10, run)
                    if i % 20 == 0:
                        patients.append(
                            {
                                "pk": base + study // 2,
                                "org_id": ORG,
                                "patient_id": ds.PatientID,
                                "issuer": "",
                                "patient_name": str(ds.PatientName),
                                "patient_name_norm": norm_pn(str(ds.PatientName)),
                                "birth_date": ds.PatientBirthDate,
                                "sex": ds.PatientSex,
                                "patient_key": None,
                                "created_at": now,
                                "updated_at": now,
                            }
                        )
                    if i % 10 == 0:
                        studies.append(
                            {
                                "pk": base + study,
                                "study_uid": ds.StudyInstanceUID,
                                "patient_pk": base + study // 2,
                                "org_id": ORG,
                                "patient_key": None,
                                "study_date": ds.StudyDate,
                                "study_time": ds.StudyTime,
                                "study_time_key": time_key(ds.StudyTime),
                                "accession_number": ds.AccessionNumber,
                                "accession_issuer": None,
                                "referring_physician_name": "Tran^Minh",
                                "referring_physician_name_norm": "TRAN^MINH",
                                "study_id": ds.StudyID,
                                "study_description": ds.StudyDescription,
                                "modalities": "CT",
                                "num_series": 1,
                                "num_instances": 10,
                                "fhir_id": None,
                                "fhir_sync_pending": False,
                                "last_instance_at": now,
                                "stable_check_at": None,
                                "created_at": now,
                                "updated_at": now,
                            }
                        )
                        series.append(
                            {
                                "pk": base + study,
                                "series_uid": ds.SeriesInstanceUID,
                                "study_pk": base + study,
                                "org_id": ORG,
                                "modality": "CT",
                                "series_number": 1,
                                "series_description": ds.SeriesDescription,
                                "body_part_examined": "CHEST",
                                "laterality": None,
                                "series_date": ds.SeriesDate,
                                "series_time": ds.SeriesTime,
                                "pps_start_date": None,
                                "pps_start_time": None,
                                "pps_start_time_key": None,
                                "num_instances": 10,
                                "created_at": now,
                                "updated_at": now,
                            }
                        )
                    instances.append(
                        {
                            "pk": base + i,
                            "sop_instance_uid": ds.SOPInstanceUID,
                            "series_pk": base + study,
                            "study_pk": base + study,
                            "org_id": ORG,
                            "sop_class_uid": CT,
                            "instance_number": i % 10 + 1,
                            "rows": 8,
                            "columns": 8,
                            "number_of_frames": None,
                            "bits_allocated": 16,
                            "content_date": ds.ContentDate,
                            "content_time": ds.ContentTime,
                            "transfer_syntax_uid": ExplicitVRLittleEndian,
                            "blob_digest": "0" * 64,
                            "size": 0,
                            "dataset_offset": 0,
                            "metadata_json": b"{}",
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                with db.write() as conn:
                    for table, rows in (
                        (dicom_patients, patients),
                        (dicom_studies, studies),
                        (dicom_series, series),
                        (dicom_instances, instances),
                    ):
                        if rows:  # the driver's executemany: no per-row SQLAlchemy work
                            names = list(rows[0])
                            marks = ", ".join("?" for _ in names)
                            sql = f"INSERT INTO {table.name} ({', '.join(names)})"  # noqa: S608
                            conn.exec_driver_sql(
                                f"{sql} VALUES ({marks})",
                                [tuple(_sql_value(r[n]) for n in names) for r in rows],
                            )
            with db.write() as conn:
                conn.exec_driver_sql("ANALYZE")
        finally:
            db.dispose()
        return time.perf_counter() - began


def _sql_value(value: Any) -> Any:
    """A value as SQLite stores it through Salus's column types (UTCDateTime: ISO text)."""
    from datetime import datetime

    if isinstance(value, datetime):
        return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


class Orthanc(Target):
    name, ae = "Orthanc", "ORTHANC"

    def start(self) -> Orthanc:
        self.http_port = free_port()
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageCompression": False,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomScpTimeout": 120,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "DicomModalities": {"bench": ["BENCH", "127.0.0.1", 104]},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self._spawn(
            [orthanc, str(self.folder / "orthanc.json")], {**os.environ, "TCP_NODELAY": "1"}
        )
        return self

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}/dicom-web", timeout=120)

    def grow(self, count: int, run: str) -> float:
        """Store ``count`` small instances through the REST API, 4 threads."""
        began = time.perf_counter()
        errors: list[str] = []

        def work(slot: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=60) as c:
                for i in range(slot, count, 4):
                    r = c.post("/instances", content=small_instance(i, run))
                    if r.status_code != 200:
                        errors.append(r.text[:200])

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"Orthanc refused {len(errors)} instances: {errors[0]}")
        return time.perf_counter() - began


class StoreSCP(Target):
    name, ae = "storescp", "STORESCP"

    def start(self) -> StoreSCP:
        (self.folder / "out").mkdir(exist_ok=True)
        self._spawn(
            [
                dcmtk("storescp"),
                "--fork",
                "-aet",
                self.ae,
                "-od",
                str(self.folder / "out"),
                str(self.dicom_port),
            ],
            {**os.environ, "TCP_NODELAY": "1"},
        )
        return self


class BareSCP(Target):
    """The floor of the mandated library: a pynetdicom Storage SCP whose handler
    returns 0x0000 and keeps nothing (this script, ``--bare-scp``, in its own process)."""

    name, ae = "pynetdicom", "BARE"
    sync = False

    def start(self) -> BareSCP:
        args = [sys.executable, str(Path(__file__).resolve()), "--bare-scp", str(self.dicom_port)]
        if self.sync:
            (self.folder / "out").mkdir(exist_ok=True)
            args += ["--sync-dir", str(self.folder / "out")]
        self._spawn(args, dict(os.environ))
        return self


class SyncSCP(BareSCP):
    """The same SCP writing each received data set to a new file, ``fdatasync``ed
    before the success status (Orthanc's one sync per instance)."""

    name, ae = "pynetdicom+sync", "BARESYNC"
    sync = True


def serve_bare_scp(port: int, sync_dir: Path | None) -> int:
    """Run the floor SCP (``--bare-scp``) until SIGTERM."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    counter = iter(range(1 << 62))

    def on_store(event: Any) -> int:
        if sync_dir is not None:
            data = event.request.DataSet.getbuffer()
            fd = os.open(sync_dir / f"{next(counter):08d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                os.write(fd, data)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.maximum_associations = 16
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, _nodelay)],
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


class Salus2(Salus):
    """Salus with two server processes (``SALUS_HTTP_WORKERS=2``): the DIMSE listener
    runs in both on the shared port (``SALUS_DICOM_PROCESSES``, default all)."""

    name = "Salus 2 proc"
    workers = "2"

    def _serve(self) -> None:
        super()._serve()
        # The supervisor listens before its workers serve: wait for an association,
        # then until the workers' start-up CPU has settled (both listeners up).
        self.wait_dimse()
        self.server.settle(limit_s=60, interval=0.5, cores=0.1)


TARGETS: dict[str, Callable[[Path], Target]] = {
    "salus": Salus,
    "salus2": Salus2,
    "orthanc": Orthanc,
    "storescp": StoreSCP,
    "pynetdicom": BareSCP,
    "pynetdicom+sync": SyncSCP,
}
FLOOR_TARGETS = ("pynetdicom", "pynetdicom+sync", "salus", "salus2", "orthanc", "storescp")


# -- phases -----------------------------------------------------------------------------------
@dataclass
class Ingest:
    target: str
    associations: int
    instances: int
    megabytes: float
    wall_s: float
    cpu: Cpu
    errors: str = ""

    @property
    def rate(self) -> float:
        return self.instances / self.wall_s

    @property
    def mb_s(self) -> float:
        return self.megabytes / self.wall_s


def ingest(
    target: Target, files: Sequence[Path], associations: int, profile: Path | None
) -> Ingest:
    shares = [list(files[i::associations]) for i in range(associations)]
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    env = {**os.environ, "TCP_NODELAY": "1"}
    spy = None
    if profile is not None and isinstance(target, Salus):
        spy = target.server.profile(profile / f"salus-ingest-{associations}.txt", rate=200)
    meter = Meter(target.pid)
    start = meter.sample()
    senders = [
        subprocess.Popen(
            [
                dcmtk("storescu"),
                "-R",
                "-aet",
                "BENCH",
                "-aec",
                target.ae,
                "127.0.0.1",
                str(target.dicom_port),
                *map(str, share),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for share in shares
    ]
    failures = []
    for sender in senders:
        _out, err = sender.communicate()
        if sender.returncode != 0:
            failures.append(err.decode(errors="replace")[-300:])
    end = meter.sample()
    stop_profile(spy)
    result = Ingest(
        target.name,
        associations,
        len(files),
        megabytes,
        end[0] - start[0],
        Meter.since(start, end),
        failures[0] if failures else "",
    )
    c = result.cpu
    print(
        f"  {target.name:8s} {associations} assoc.: {result.rate:7.1f} inst/s "
        f"{result.mb_s:6.1f} MB/s  CPU cores target {c.target:.2f} storescu {c.senders:.2f} "
        f"others {c.others:.2f} machine {c.machine_busy:.0%}"
        + (f"  ERRORS: {result.errors!r}" if failures else ""),
        flush=True,
    )
    return result


def _nodelay(event: Any) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SocketFindSCU:
    """A minimal Study Root C-FIND SCU on a plain socket (PS3.8 9.3 PDUs, PS3.7
    9.1.2 / 9.3.2 messages, Implicit VR Little Endian), so that a query's latency is
    the server's and not the client's: pynetdicom's SCU costs ~0.3-0.5 ms of CPU per
    pending response (its DUL loop, state machine and a pydicom decode of every
    Command Set and Identifier), dcmtk ``findscu`` ~0.2 ms. It reads each
    response's Command Set for its Status and counts the Identifiers without
    decoding them (the same for every target)."""

    MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND
    IMPLICIT = "1.2.840.10008.1.2"

    def __init__(self, port: int, called: str, calling: str = "BENCH") -> None:
        import struct

        self._struct = struct
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.message_id = 0

        def item(kind: int, body: bytes) -> bytes:
            return struct.pack(">BxH", kind, len(body)) + body

        context = item(
            0x20,
            b"\x01\x00\x00\x00"
            + item(0x30, self.MODEL.encode())
            + item(0x40, self.IMPLICIT.encode()),
        )
        user = item(
            0x50,
            item(0x51, struct.pack(">I", 1 << 16)) + item(0x52, b"1.2.826.0.1.3680043.8.498.1"),
        )
        body = (
            struct.pack(">H2x", 1)
            + called.encode().ljust(16)
            + calling.encode().ljust(16)
            + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1")
            + context
            + user
        )
        self.sock.sendall(struct.pack(">BxI", 0x01, len(body)) + body)
        kind, reply = self._pdu()
        if kind != 0x02:
            raise RuntimeError(f"association not accepted (PDU type {kind:#x})")
        at = 68  # after the fixed fields: the items
        while at < len(reply):
            sub, length = reply[at], struct.unpack(">H", reply[at + 2 : at + 4])[0]
            if sub == 0x21 and reply[at + 6] != 0:
                raise RuntimeError("the Study Root FIND context was rejected")
            at += 4 + length

    def _recv(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise RuntimeError("the peer closed the connection")
            out += chunk
        return bytes(out)

    def _pdu(self) -> tuple[int, bytes]:
        kind, length = self._struct.unpack(">BxI", self._recv(6))
        return kind, self._recv(length)

    @staticmethod
    def _elements(data: bytes) -> dict[int, bytes]:
        out, at = {}, 0
        while at + 8 <= len(data):
            group, elem, length = SocketFindSCU._unpack_head(data, at)
            out[(group << 16) | elem] = data[at + 8 : at + 8 + length]
            at += 8 + length
        return out

    @staticmethod
    def _unpack_head(data: bytes, at: int) -> tuple[int, int, int]:
        import struct

        group, elem, length = struct.unpack_from("<HHI", data, at)
        return group, elem, length

    def find(self, identifier: Dataset) -> int:
        """Send one C-FIND-RQ; the number of pending responses before the final one."""
        from pydicom.dataset import Dataset as Ds
        from pynetdicom.dsutils import encode

        struct = self._struct
        self.message_id += 1
        command = Ds()
        command.AffectedSOPClassUID = self.MODEL
        command.CommandField = 0x0020
        command.MessageID = self.message_id
        command.Priority = 0
        command.CommandDataSetType = 0x0001
        body = encode(command, True, True)
        raw_command = struct.pack("<HHII", 0, 0, 4, len(body)) + body
        data = encode(identifier, True, True)
        pdvs = b"".join(
            struct.pack(">IBB", len(part) + 2, 1, header) + part
            for header, part in ((0x03, raw_command), (0x02, data))
        )
        self.sock.sendall(struct.pack(">BxI", 0x04, len(pdvs)) + pdvs)
        matches, fragments = 0, bytearray()
        while True:
            kind, pdu = self._pdu()
            if kind != 0x04:
                raise RuntimeError(f"unexpected PDU type {kind:#x} during C-FIND")
            at = 0
            while at < len(pdu):
                length = struct.unpack_from(">I", pdu, at)[0]
                header = pdu[at + 5]
                fragments += pdu[at + 6 : at + 4 + length]
                at += 4 + length
                if not header & 0x02:  # not the last fragment
                    continue
                part, fragments = bytes(fragments), bytearray()
                if not header & 0x01:  # the last fragment of an Identifier
                    continue
                status = struct.unpack("<H", self._elements(part)[0x00000900])[0]
                if status in (0xFF00, 0xFF01):
                    matches += 1
                else:
                    return matches if status == 0x0000 else -1

    def release(self) -> None:
        self.sock.sendall(self._struct.pack(">BxI4x", 0x05, 4))
        try:
            self._pdu()
        finally:
            self.sock.close()


@dataclass
class Latency:
    target: str
    kind: str
    samples_ms: list[float] = field(repr=False, default_factory=list)
    matches: float = 0.0

    @property
    def p50(self) -> float:
        return quantile(self.samples_ms, 0.5)

    @property
    def p95(self) -> float:
        return quantile(self.samples_ms, 0.95)


def _timed(kind: str, target: str, calls: Sequence[Callable[[], int]]) -> Latency:
    for call in calls[:10]:
        call()
    out = Latency(target, kind)
    found = 0
    for call in calls[10:]:
        began = time.perf_counter()
        found += call()
        out.samples_ms.append((time.perf_counter() - began) * 1000)
    out.matches = found / max(1, len(calls) - 10)
    print(
        f"  {target:8s} {kind:34s} p50 {out.p50:7.1f} ms  p95 {out.p95:7.1f} ms  "
        f"({out.matches:.1f} matches)",
        flush=True,
    )
    return out


def _study_query(key: str, value: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for name in (
        "StudyInstanceUID",
        "StudyDate",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
    ):
        setattr(ds, name, "")
    setattr(ds, key, value)
    return ds


def queries(targets: list[Target], patients: list[str], months: list[str], n: int) -> list[Latency]:
    from pynetdicom import AE, evt

    results = []
    from pynetdicom import _config

    # The bench's pynetdicom SCU does not format every message for a debug log
    # (pynetdicom's default "standard" handlers do, whatever the log level).
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
    for kind in (
        "C-FIND by PatientID",
        "C-FIND by StudyDate range",
        "C-FIND by PatientID (socket SCU)",
        "C-FIND by StudyDate range (socket SCU)",
        "QIDO-RS by PatientID",
        "QIDO-RS by StudyDate range",
    ):
        for target in targets:
            values = patients if "PatientID" in kind else months
            key = "PatientID" if "PatientID" in kind else "StudyDate"
            if kind.endswith("(socket SCU)"):
                scu = SocketFindSCU(target.dicom_port, target.ae)

                def raw_find(value: str, scu: SocketFindSCU = scu, key: str = key) -> int:
                    found = scu.find(_study_query(key, value))
                    if found < 0:
                        raise RuntimeError("C-FIND failed")
                    return found

                results.append(
                    _timed(kind, target.name, [lambda v=v: raw_find(v) for v in values[: n + 10]])
                )
                scu.release()
            elif kind.startswith("C-FIND"):
                ae = AE(ae_title="BENCH")
                ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.1")
                ae.acse_timeout = 120
                assoc = ae.associate(
                    "127.0.0.1",
                    target.dicom_port,
                    ae_title=target.ae,
                    evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
                )
                if not assoc.is_established:
                    raise RuntimeError(f"{target.name} did not accept the C-FIND association")

                def find(value: str, assoc: Any = assoc, key: str = key) -> int:
                    return sum(
                        1
                        for s, _ in assoc.send_c_find(
                            _study_query(key, value), "1.2.840.10008.5.1.4.1.2.2.1"
                        )
                        if s and s.Status == 0xFF00
                    )

                calls = [lambda v=v: find(v) for v in values[: n + 10]]
                results.append(_timed(kind, target.name, calls))
                assoc.release()
            else:
                client = target.http()  # type: ignore[attr-defined]

                def qido(value: str, client: httpx.Client = client, key: str = key) -> int:
                    r = client.get(
                        "/studies",
                        params={key: value},
                        headers={"Accept": "application/dicom+json"},
                    )
                    if r.status_code == 204:
                        return 0
                    r.raise_for_status()
                    return len(r.json())

                calls = [lambda v=v: qido(v) for v in values[: n + 10]]
                results.append(_timed(kind, target.name, calls))
                client.close()
    return results


def metadata(targets: list[Target], study: str, n: int) -> list[Latency]:
    results = []
    for target in targets:
        client = target.http()  # type: ignore[attr-defined]

        def get(client: httpx.Client = client) -> int:
            r = client.get(
                f"/studies/{study}/metadata", headers={"Accept": "application/dicom+json"}
            )
            r.raise_for_status()
            return len(r.json())

        results.append(_timed("WADO-RS metadata, 1,000 instances", target.name, [get] * (n + 10)))
        client.close()
    return results


@dataclass
class Retrieval:
    target: str
    instances: int
    megabytes: float
    wall_s: float
    cpu: Cpu


def retrieve(target: Target, studies: list[str], seconds: float, clients: int = 4) -> Retrieval:
    counts = [0] * clients
    sizes = [0] * clients
    stop = time.monotonic() + seconds

    def work(slot: int) -> None:
        client = target.http()  # type: ignore[attr-defined]
        k = slot
        while time.monotonic() < stop:
            study = studies[k % len(studies)]
            k += clients
            with client.stream("GET", f"/studies/{study}", headers={"Accept": DICOM_ACCEPT}) as r:
                r.raise_for_status()
                body = b"".join(r.iter_bytes())
            sizes[slot] += len(body)
            counts[slot] += body.count(b"Content-Type: application/dicom") or body.count(
                b"content-type: application/dicom"
            )
        client.close()

    meter = Meter(target.pid)
    start = meter.sample()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = meter.sample()
    result = Retrieval(
        target.name, sum(counts), sum(sizes) / 1e6, end[0] - start[0], Meter.since(start, end)
    )
    print(
        f"  {target.name:8s} WADO-RS studies, {clients} clients: "
        f"{result.instances / result.wall_s:7.1f} inst/s "
        f"{result.megabytes / result.wall_s:6.1f} MB/s  CPU target {result.cpu.target:.2f} "
        f"bench {result.cpu.bench:.2f}",
        flush=True,
    )
    return result


def store_all(target: Target, files: Sequence[Path]) -> None:
    result = ingest(target, files, 4, None)
    if result.errors:
        raise RuntimeError(f"{target.name} refused files: {result.errors}")


# -- driver -----------------------------------------------------------------------------------
def months_of(count: int, rng: random.Random, days: int = 30) -> list[str]:
    """``count`` StudyDate ranges of ``days`` days (a month by default)."""
    out = []
    for _ in range(count):
        first = date(2015, 1, 1) + timedelta(days=rng.randrange(0, 3900))
        last = first + timedelta(days=days - 1)
        out.append(f"{first:%Y%m%d}-{last:%Y%m%d}")
    return out


def render(ingests: list[Ingest], lat: list[Latency], wado: list[Retrieval], scale: int) -> str:
    lines = [
        "| measure | Salus | Orthanc | storescp (floor) | Salus / Orthanc | Salus / storescp "
        "| target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for assoc in sorted({i.associations for i in ingests}):
        med: dict[str, Ingest] = {}
        for name in ("Salus", "Orthanc", "storescp"):
            runs = sorted(
                (i for i in ingests if i.target == name and i.associations == assoc),
                key=lambda i: i.rate,
            )
            if runs:
                med[name] = runs[len(runs) // 2]

        def cell(name: str, med: dict[str, Ingest] = med) -> str:
            i = med.get(name)
            return f"{i.rate:,.0f} inst/s ({i.mb_s:,.0f} MB/s)" if i else "—"

        def ratio(a: str, b: str, med: dict[str, Ingest] = med) -> float:
            return med[a].rate / med[b].rate if a in med and b in med else float("nan")

        ro, rs = ratio("Salus", "Orthanc"), ratio("Salus", "storescp")
        met = ro >= INGEST_VS_ORTHANC and rs >= INGEST_VS_STORESCP
        ro_text = "—" if ro != ro else f"{ro:.2f}x"  # NaN: a target not in this run
        rs_text = "—" if rs != rs else f"{rs:.2f}x"
        lines.append(
            f"| C-STORE ingest, {assoc} association(s) | {cell('Salus')} | "
            f"{cell('Orthanc')} | {cell('storescp')} | {ro_text} | {rs_text} | "
            f"≥ 1.5x Orthanc, ≥ 0.5x storescp: {'met' if met else '**not met**'} |"
        )
    for kind in dict.fromkeys(x.kind for x in lat):
        cells = {x.target: x for x in lat if x.kind == kind}
        s, o = cells.get("Salus"), cells.get("Orthanc")
        goal = METADATA_MS if "metadata" in kind else QUERY_P95_MS
        label = f"{kind} ({scale:,}-instance index)" if "metadata" not in kind else kind
        salus = f"{s.p50:.1f} / {s.p95:.1f}" if s else "—"
        orthanc = f"{o.p50:.1f} / {o.p95:.1f}" if o else "—"
        ratio = f"{o.p95 / s.p95:.1f}x faster (p95)" if s and o else "—"
        verdict = f"p95 < {goal:.0f} ms: {'met' if s.p95 < goal else '**not met**'}" if s else "—"
        lines.append(
            f"| {label}, p50 / p95 ms | {salus} | {orthanc} | — | {ratio} | — | {verdict} |"
        )
    for r in wado:
        lines.append(
            f"| WADO-RS whole studies, 4 clients ({r.target}) | "
            f"{r.instances / r.wall_s:,.0f} inst/s ({r.megabytes / r.wall_s:,.0f} MB/s)"
            f" | | | | | |"
        )
    return "\n".join(lines)


def floors(files: Sequence[Path], rounds: int, names: Sequence[str]) -> list[Ingest]:
    """``--floors``: the same ``storescu`` into each receiver, alternated, 1 and 4 associations."""
    out: list[Ingest] = []
    for round_ in range(rounds):
        for assoc in (1, 4):
            print(f"\n== Floors, round {round_ + 1}, {assoc} association(s)", flush=True)
            order = list(names[round_ % len(names) :]) + list(names[: round_ % len(names)])
            for name in order:
                target = TARGETS[name](Path(tempfile.mkdtemp(prefix=f"floor-{name}-"))).start()
                try:
                    out.append(ingest(target, files, assoc, None))
                finally:
                    target.stop()
                    shutil.rmtree(target.folder, ignore_errors=True)
    return out


def render_floors(ingests: list[Ingest]) -> str:
    """Median over rounds of inst/s and server CPU per instance, against Orthanc."""
    lines = [
        "| receiver | assoc. | inst/s | MB/s | CPU ms / instance (receiver) | x Orthanc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for assoc in sorted({i.associations for i in ingests}):
        med: dict[str, Ingest] = {}
        for name in dict.fromkeys(i.target for i in ingests):
            runs = sorted(
                (i for i in ingests if i.target == name and i.associations == assoc),
                key=lambda i: i.rate,
            )
            if runs:
                med[name] = runs[len(runs) // 2]
        orthanc = med.get("Orthanc")
        for name, i in med.items():
            cpu_ms = i.cpu.target * i.wall_s / i.instances * 1000
            ratio = f"{i.rate / orthanc.rate:.2f}x" if orthanc else "—"
            lines.append(
                f"| {name} | {assoc} | {i.rate:,.0f} | {i.mb_s:,.0f} | {cpu_ms:.2f} | {ratio} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--range-days",
        type=int,
        default=0,
        help="StudyDate range width (default: 30 days at 20,000 instances, "
        "narrower as --scale grows, so that a range matches ~15 studies)",
    )
    parser.add_argument("--meta-repeats", type=int, default=20)
    parser.add_argument("--wado-seconds", type=float, default=15.0)
    parser.add_argument("--targets", default="salus,orthanc,storescp")
    parser.add_argument("--skip-ingest", action="store_true", help="= --phases without ingest")
    parser.add_argument(
        "--phases",
        default="ingest,queries,metadata,wado",
        help="comma-separated: ingest, queries, metadata, wado (queries only: "
        "the live targets get just the scale index, no CT studies)",
    )
    parser.add_argument(
        "--floors",
        action="store_true",
        help="only the ingest floors: storescu into a bare pynetdicom SCP, the same "
        "with fdatasync, Salus, Orthanc and storescp (--targets to narrow)",
    )
    parser.add_argument("--bare-scp", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--sync-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, metavar="DIR")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.bare_scp:
        return serve_bare_scp(args.bare_scp, args.sync_dir)
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if args.skip_ingest:
        phases.discard("ingest")
    if args.floors and args.targets == parser.get_default("targets"):
        names = list(FLOOR_TARGETS)
    env = environment()
    env["orthanc"] = subprocess.run(
        ["Orthanc", "--version"], capture_output=True, text=True, check=False
    ).stdout.split("\n", 1)[0]
    env["dcmtk"] = subprocess.run(
        [dcmtk("storescu"), "--version"], capture_output=True, text=True, check=False
    ).stdout.split("\n", 1)[0]
    import pydicom
    import pynetdicom

    env["pydicom / pynetdicom"] = f"{pydicom.__version__} / {pynetdicom.__version__}"
    print("Salus DICOM benchmark: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    work = Path(tempfile.mkdtemp(prefix="salus-dicom-bench-"))
    run = f"{int(time.time())}"
    rng = random.Random(20261123)
    ingests: list[Ingest] = []
    lat: list[Latency] = []
    wado: list[Retrieval] = []
    try:
        needs_ct = args.floors or bool(phases & {"ingest", "metadata", "wado"})
        if needs_ct:
            print(
                f"\nGenerating {args.instances:,} CT instances and a 1,000-instance study in "
                f"{work} ...",
                flush=True,
            )
        ct = write_ct(work / "ct", args.instances if needs_ct else 0, 50, 512, run)
        if args.floors:
            ingests = floors(ct, args.rounds, names)
            print()
            print(render_floors(ingests))
            return 0
        meta_files = write_ct(work / "meta", 1000 if needs_ct else 0, 1000, 64, run, 900_000)
        meta_study = _uid(run, "study", 900_000)
        if "ingest" in phases:
            for round_ in range(args.rounds):
                for assoc in (1, 4):
                    print(
                        f"\n== C-STORE ingest, round {round_ + 1}, {assoc} association(s)",
                        flush=True,
                    )
                    order = names[round_ % len(names) :] + names[: round_ % len(names)]
                    for name in order:
                        target = TARGETS[name](work / f"{name}-{round_}-{assoc}").start()
                        try:
                            ingests.append(ingest(target, ct, assoc, args.profile))
                        finally:
                            target.stop()
                            shutil.rmtree(target.folder, ignore_errors=True)
        live = [TARGETS[n](work / f"{n}-live").start() for n in names if n != "storescp"]
        try:
            print(
                "\n== Loading: "
                + ("the CT studies, the 1,000-instance study, then " if needs_ct else "")
                + f"an index of {args.scale:,} instances",
                flush=True,
            )
            for target in live:
                if phases & {"metadata", "wado"}:
                    store_all(target, ct)
                    store_all(target, meta_files)
                took = target.grow(args.scale, run)  # type: ignore[attr-defined]
                print(f"  {target.name}: index grown by {args.scale:,} in {took:.0f} s", flush=True)
                if isinstance(target, Salus):
                    target.restart()
            patients = [
                f"P{(1_000_000 + rng.randrange(args.scale // 10)) // 2:07d}"
                for _ in range(args.queries + 10)
            ]
            days = args.range_days or max(1, round(30 * 20_000 / max(args.scale, 1)))
            ranges = months_of(args.queries + 10, rng, days)
            if "queries" in phases:
                print("\n== Queries (one client, sequential)", flush=True)
                print(f"  date ranges of {days} day(s)", flush=True)
                lat += queries(live, patients, ranges, args.queries)
            if "metadata" in phases:
                print("\n== WADO-RS metadata", flush=True)
                lat += metadata(live, meta_study, args.meta_repeats)
            if "wado" in phases:
                print("\n== WADO-RS retrieval", flush=True)
                studies = list(dict.fromkeys(_uid(run, "study", i // 50) for i in range(len(ct))))
                for target in live:
                    wado.append(retrieve(target, studies, args.wado_seconds))
        finally:
            for target in live:
                target.stop()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    table = render(ingests, lat, wado, args.scale)
    print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "environment": env,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "ingest": [{**asdict(i), "rate": i.rate, "mb_s": i.mb_s} for i in ingests],
                    "latency": [
                        {
                            "target": x.target,
                            "kind": x.kind,
                            "p50_ms": x.p50,
                            "p95_ms": x.p95,
                            "matches": x.matches,
                            "n": len(x.samples_ms),
                        }
                        for x in lat
                    ],
                    "wado": [asdict(r) for r in wado],
                    "table": table,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
