"""The FHIR R4 server end to end: a real ``salus serve`` process over HTTP on loopback.

For each backend (SQLite in a temporary data folder; PostgreSQL too when
``SALUS_BENCH_DATABASE_URL`` is set, its ``public`` schema dropped and made
again so that every run starts empty) the benchmark

* starts ``python -m salus --data-dir DIR serve --port P`` (jobs off, log level
  WARNING, the token endpoint's rate limit raised, tokens valid for an hour),
* creates an organization and a ``hospital_integration`` client with the CLI
  and gets a token from ``POST /auth/token`` (client credentials, HTTP Basic),
* then measures, with ``--clients`` (8) threads that each hold one keep-alive
  ``httpx.Client``:

  1. ``POST Patient`` one by one (``--posts``, 2,000), resources/s;
  2. ``POST Observation`` one by one (2,000; each refers to a Patient of 1),
     resources/s;
  3. transaction Bundles of 100 new Patients and of 100 Observations (these
     refer to Patients created before), ``--bundle-resources`` (10,000) of
     each, resources/s;
  4. the Synthea transaction Bundles of ``../shared/corpora/synthea-r4`` (skipped
     with a note when absent), resources/s;
  5. read by id (``--reads``, 10,000 random Patients), requests/s, and update by
     id (``PUT``, ``--updates``, 2,000 distinct Patients), requests/s;
  6. grows the database to ``--scale`` resources with transaction Bundles of
     500 (50 Patients and 450 Observations referring to them by ``urn:uuid``),
     8 clients (the load rate is reported), reads by id again, then times
     searches from one client, sequentially, ``--queries`` (200) per kind (or
     fewer past ``--search-seconds`` per kind) with random values after 10
     untimed ones: token (``Observation?code=``), string (``Patient?family=``),
     reference (``Observation?subject=``), reference + token (Medplum's query;
     the code is one the Patient has), date (``Observation?date=ge…&_count=20``)
     and chained (``Observation?subject:Patient.family=``); token and date also
     with ``_total=none``, since Salus counts all matches by default. Extra
     kinds, run only when named by ``--kinds``: ``chained_prefix`` (a 2-letter
     family prefix) and ``date_range`` (``date=geX&date=ltY``, a week).

Bodies are generated and JSON-encoded before a phase starts; the clients only
send them and take the new id from the ``Location`` header (Bundle responses
are parsed). Every phase also records CPU time: the benchmark process itself
(the load generator: all its threads), the server process, PostgreSQL's
processes and the whole machine, so that a figure limited by the load
generator, or by a machine with no idle CPU left, shows as such.

A table per backend gives each figure beside Medplum's (``../shared/PEERS.md``:
Medplum 4.5.2, 8 clients, fresh database) and the issue's targets: at least
twice Medplum on every write figure (bundle ingest at least 2,000
resources/s), Medplum's 1,200-1,300 requests/s on reads, and a search p95
under 50 ms at 1,000,000 resources.

Run from the repository root in the project's virtualenv::

    python bench/fhir_bench.py [--scale 100000] [--backends sqlite,postgresql]
                               [--json out.json] [--profile DIR]

``--scale 1000000`` works the same way (about 21 minutes of loading on PostgreSQL
on a 2-core machine). ``--profile DIR`` runs ``py-spy record --gil`` on the server
during every phase (py-spy on PATH; it perturbs the figures, so profile in a
separate run).

PostgreSQL: ``SALUS_BENCH_DATABASE_URL=postgresql://salus:salus@127.0.0.1:5432/salus_bench``
(create it once with ``su postgres -c "createdb -O salus salus_bench"``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from _cpu import CpuSample, PhaseMeter, own_cpu
from _server import SalusServer, stop_profile, write_results

ROOT = Path(__file__).resolve().parent.parent
SYNTHEA = ROOT.parent / "shared" / "corpora" / "synthea-r4" / "bundles"
ORG = "bench-hosp"
CLIENT_ID = "bench-feed"
FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"

#: (code, display, unit, low, high): vital signs and common laboratory results.
CODES: list[tuple[str, str, str, float, float]] = [
    ("8867-4", "Heart rate", "/min", 45, 140),
    ("9279-1", "Respiratory rate", "/min", 10, 30),
    ("8310-5", "Body temperature", "Cel", 35.5, 40.5),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 90, 190),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 50, 120),
    ("29463-7", "Body weight", "kg", 3, 150),
    ("8302-2", "Body height", "cm", 45, 200),
    ("39156-5", "Body mass index", "kg/m2", 14, 45),
    ("59408-5", "Oxygen saturation", "%", 85, 100),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 60, 300),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 100, 320),
    ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 40, 500),
    ("2085-9", "HDL Cholesterol", "mg/dL", 20, 100),
    ("18262-6", "LDL Cholesterol", "mg/dL", 40, 250),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4, 14),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 7, 19),
    ("6690-2", "Leukocytes [#/volume] in Blood", "10*3/uL", 2, 25),
    ("777-3", "Platelets [#/volume] in Blood", "10*3/uL", 80, 500),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.4, 6),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 5, 80),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 125, 150),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 2.8, 6.2),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 90, 115),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume]", "U/L", 5, 300),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume]", "U/L", 5, 300),
    ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.1, 8),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 2, 5.5),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 60, 300),
    ("33914-3", "Glomerular filtration rate/1.73 sq M.predicted", "mL/min/{1.73_m2}", 10, 120),
    ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 0.1, 200),
]
_SYLLABLES = [
    "ba",
    "be",
    "bo",
    "da",
    "de",
    "do",
    "ga",
    "ha",
    "ho",
    "ka",
    "ke",
    "ki",
    "la",
    "le",
    "li",
    "lo",
    "ma",
    "me",
    "mi",
    "mo",
    "na",
    "ne",
    "ni",
    "no",
    "pa",
    "ra",
    "re",
    "ri",
    "ro",
    "sa",
    "se",
    "si",
    "ta",
    "te",
    "ti",
    "to",
    "va",
    "vi",
    "za",
    "zo",
]  # 40 syllables: 64,000 family names of 3; all 6 letters, so none is a prefix of another
GIVEN = [
    "An",
    "Binh",
    "Chi",
    "Dung",
    "Giang",
    "Hoa",
    "Khanh",
    "Lan",
    "Minh",
    "Nam",
    "Phuong",
    "Quang",
    "Thao",
    "Trung",
    "Vy",
    "Anna",
    "Paul",
    "Maria",
    "John",
    "Fatima",
    "Omar",
]
CITIES = ["Hà Nội", "Hải Phòng", "Huế", "Đà Nẵng", "Cần Thơ", "Hồ Chí Minh", "Nha Trang"]
DATE_FROM = datetime(2012, 1, 1, tzinfo=UTC)
DATE_SPAN_S = int((datetime(2026, 11, 1, tzinfo=UTC) - DATE_FROM).total_seconds())

#: Medplum 4.5.2 (../shared/PEERS.md): (low, high) of the rate, or (median, p95) in ms.
MEDPLUM: dict[str, tuple[float, float]] = {
    "post_patient": (225, 250),
    "post_observation": (125, 130),
    "bundle_patient": (560, 610),
    "bundle_observation": (165, 180),
    "read": (1200, 1300),
    "search_string": (5.4, 7.4),
    "search_subject_code": (4.5, 8.2),
    "search_date": (5.8, 7.9),
}
BUNDLE_TARGET = 2000.0  # resources/s, the floor for bundle ingest
SEARCH_P95_TARGET_MS = 50.0


# -- generated data ------------------------------------------------------------------------
class Data:
    """Generates resources and remembers what the server stored (ids, names)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.patient_ids: list[str] = []
        self.families: list[str] = []  # family names of stored Patients (with repeats)
        self.post_patients: list[tuple[str, dict[str, Any]]] = []  # (id, body) of phase 1
        #: Patients loaded at scale and the codes of their Observations.
        self.codes_of: dict[str, list[str]] = {}
        self.coded_patients: list[str] = []

    def family(self) -> str:
        return "".join(self.rng.choice(_SYLLABLES) for _ in range(3)).capitalize()

    def patient(self) -> dict[str, Any]:
        rng = self.rng
        birth = datetime(1930, 1, 1) + timedelta(days=rng.randrange(0, 33_000))
        return {
            "resourceType": "Patient",
            "identifier": [
                {
                    "system": "urn:oid:2.16.840.1.113883.19.5.99999.1",
                    "value": f"MRN-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}",
                }
            ],
            "active": True,
            "name": [
                {
                    "use": "official",
                    "family": self.family(),
                    "given": [rng.choice(GIVEN), rng.choice(GIVEN)],
                }
            ],
            "gender": rng.choice(["female", "male"]),
            "birthDate": birth.strftime("%Y-%m-%d"),
            "telecom": [
                {"system": "phone", "value": f"+84-9{rng.randrange(10**8):08d}", "use": "mobile"}
            ],
            "address": [
                {
                    "use": "home",
                    "line": [f"{rng.randrange(1, 500)} Đường Lê Lợi"],
                    "city": rng.choice(CITIES),
                    "country": "VN",
                }
            ],
        }

    def observation(self, subject: str) -> dict[str, Any]:
        rng = self.rng
        code, display, unit, low, high = rng.choice(CODES)
        when = DATE_FROM + timedelta(seconds=rng.randrange(DATE_SPAN_S))
        return {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs"
                            if code in {c[0] for c in CODES[:9]}
                            else "laboratory",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [{"system": LOINC, "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": subject},
            "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "valueQuantity": {
                "value": round(rng.uniform(low, high), 1),
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
        }

    def random_patient(self) -> str:
        return self.rng.choice(self.patient_ids)

    def remember(self, res_id: str, resource: dict[str, Any]) -> None:
        self.patient_ids.append(res_id)
        self.families.append(resource["name"][0]["family"])


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def transaction(entries: list[tuple[dict[str, Any], str | None]]) -> dict[str, Any]:
    """A transaction Bundle of POSTs; each entry is (resource, fullUrl or None)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                **({"fullUrl": url} if url else {}),
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for resource, url in entries
        ],
    }


def location_id(location: str) -> str:
    """``…/Patient/ID/_history/1`` -> ID."""
    parts = location.split("/")
    return parts[parts.index("_history") - 1] if "_history" in parts else parts[-1]


# -- CPU accounting ------------------------------------------------------------------------
@dataclass
class Cpu:
    """CPU use during a phase, in cores (CPU seconds per wall second)."""

    bench: float = 0.0
    server: float = 0.0
    postgres: float = 0.0
    machine_busy: float = 0.0  # fraction of all CPUs busy
    others: float = 0.0  # busy cores not accounted to the three above (other processes)


class CpuMeter(PhaseMeter):
    """:class:`_cpu.PhaseMeter` with this process's threads as the load generator and
    every PostgreSQL process counted."""

    def __init__(self, server_pid: int, with_postgres: bool) -> None:
        super().__init__(server_pid, own_cpu, with_postgres)

    @staticmethod
    def since(start: CpuSample, end: CpuSample) -> Cpu:
        use = PhaseMeter.use(start, end)
        return Cpu(
            bench=use.client,
            server=use.server,
            postgres=use.postgres,
            machine_busy=use.machine_busy,
            others=use.others,
        )


# -- the server ------------------------------------------------------------------------------
class Server(SalusServer):
    """``salus serve`` for the FHIR benches, started and watched by :mod:`_server`
    (jobs off, log level WARNING, the token endpoint's rate limit raised, tokens
    valid for an hour)."""

    def __init__(self, label: str, data_dir: Path, database_url: str | None) -> None:
        super().__init__(data_dir, database_url, label=label)
        self.client_id = CLIENT_ID

    def start(self) -> None:
        self.cli("init")
        self.serve()
        self.provision(ORG, "Bệnh viện Bench", CLIENT_ID)


def reset_postgres(url: str) -> None:
    """Drop and recreate the ``public`` schema (the database owner owns it)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


def analyze_postgres(url: str) -> None:
    """``VACUUM (ANALYZE)`` after a bulk load, as autovacuum would do within minutes
    (PostgreSQL 13+ vacuums after inserts): planner statistics, and the visibility
    map that lets index-only scans skip the table."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def postgres_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        buffers = conn.execute("SHOW shared_buffers").fetchone()
    return f"{row[0] if row else '?'} (shared_buffers {buffers[0] if buffers else '?'})"


def database_size(url: str | None, data_dir: Path) -> str:
    if url is None:
        size = sum(p.stat().st_size for p in data_dir.glob("salus.db*"))
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        size = int(row[0]) if row else 0
    return f"{size / 2**20:,.0f} MiB"


# -- load generation -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Call:
    method: str
    url: str
    body: bytes | None = None
    resources: int = 1  # resources this call writes (or requests it stands for)


@dataclass
class Phase:
    name: str
    calls: int
    resources: int
    wall_s: float
    cpu: Cpu
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    errors: int = 0
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.resources / self.wall_s if self.wall_s else 0.0

    def latency(self, q: float) -> float:
        return quantile(self.latencies_ms, q)


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


Handler = Callable[[Call, httpx.Response], None]


class Load:
    """Runs calls on N threads, each with its own keep-alive ``httpx.Client``."""

    def __init__(
        self, server: Server, meter: CpuMeter, clients: int, profile_dir: Path | None = None
    ) -> None:
        self.server = server
        self.meter = meter
        self.clients = clients
        self.profile_dir = profile_dir
        self.token = ""
        self.written = 0  # resources created through POST, all phases together

    def refresh(self) -> None:
        self.token = self.server.token()

    def profiler(self, name: str) -> subprocess.Popen[bytes] | None:
        """``py-spy record --gil`` of the server for this phase (collapsed stacks), if asked for.

        Only samples where a thread holds the GIL: what the one Python process spends its
        interpreter on. Time waiting for the database or the disk does not show.
        """
        if self.profile_dir is None:
            return None
        slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
        return self.server.profile(self.profile_dir / f"{self.server.label}-{slug}.txt")

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.server.base}/fhir",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
            },
            timeout=httpx.Timeout(600.0),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def run(
        self,
        name: str,
        calls: Sequence[Call],
        handler: Handler | None = None,
        clients: int | None = None,
    ) -> Phase:
        self.refresh()
        threads = clients or self.clients
        counter = itertools.count()
        latencies: list[list[float]] = [[] for _ in range(threads)]
        done = [0] * threads  # resources of the successful calls, per thread
        errors: list[str] = []
        lock = threading.Lock()
        ready = threading.Barrier(threads + 1)

        def worker(slot: int) -> None:
            with self.client() as http:
                http.get("metadata")  # open the connection before the clock starts
                ready.wait()
                mine = latencies[slot]
                clock = time.perf_counter
                while True:
                    index = next(counter)
                    if index >= len(calls):
                        return
                    call = calls[index]
                    began = clock()
                    try:
                        response = http.request(call.method, call.url, content=call.body)
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(f"{call.method} {call.url}: {exc!r}")
                        continue
                    mine.append((clock() - began) * 1000)
                    if response.status_code >= 400:
                        with lock:
                            errors.append(
                                f"{call.method} {call.url}: {response.status_code} "
                                f"{response.text[:600]}"
                            )
                        continue
                    done[slot] += call.resources
                    if handler is not None:
                        handler(call, response)

        pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
        for thread in pool:
            thread.start()
        spy = self.profiler(name)
        ready.wait()
        start = self.meter.sample()
        for thread in pool:
            thread.join()
        end = self.meter.sample()
        stop_profile(spy)
        if calls and all(c.method == "POST" for c in calls):
            self.written += sum(done)
        phase = Phase(
            name=name,
            calls=len(calls) - len(errors),
            resources=sum(done),
            wall_s=end.wall - start.wall,
            cpu=CpuMeter.since(start, end),
            latencies_ms=[x for lat in latencies for x in lat],
            errors=len(errors),
            first_error=errors[0] if errors else "",
        )
        report_phase(phase)
        return phase


def report_phase(phase: Phase) -> None:
    cpu = phase.cpu
    note = f", {phase.errors} errors: {phase.first_error[:400]}" if phase.errors else ""
    print(
        f"  {phase.name}: {phase.resources:,} in {phase.wall_s:.1f} s = {phase.rate:,.0f}/s; "
        f"latency p50 {phase.latency(0.5):.1f} ms p95 {phase.latency(0.95):.1f} ms; "
        f"CPU cores bench {cpu.bench:.2f} server {cpu.server:.2f} "
        f"postgres {cpu.postgres:.2f} others {cpu.others:.2f} "
        f"machine {cpu.machine_busy:.0%}{note}",
        flush=True,
    )


# -- the phases ------------------------------------------------------------------------------
@dataclass
class Search:
    key: str
    label: str
    medplum: str | None
    median_ms: float
    p95_ms: float
    max_ms: float
    mean_matches: float
    errors: int
    queries: int
    #: Server CPU per query, ms (load on the machine perturbs it far less than
    #: wall time), and PostgreSQL's (every PostgreSQL process: on a shared machine
    #: other databases' work counts too).
    cpu_ms: float = float("nan")
    pg_cpu_ms: float = float("nan")


@dataclass
class BackendResult:
    backend: str
    version: str
    scale: int
    stored: int
    database_size: str
    phases: dict[str, Phase] = field(default_factory=dict)
    searches: list[Search] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def post_one_by_one(load: Load, data: Data, n: int, result: BackendResult) -> None:
    bodies = [data.patient() for _ in range(n)]
    calls = [Call("POST", "Patient", encode(b)) for b in bodies]
    body_of = {id(c): b for c, b in zip(calls, bodies, strict=True)}
    lock = threading.Lock()

    def patient_created(call: Call, response: httpx.Response) -> None:
        res_id = location_id(response.headers["location"])
        with lock:
            data.post_patients.append((res_id, body_of[id(call)]))
            data.remember(res_id, body_of[id(call)])

    result.phases["post_patient"] = load.run("POST Patient", calls, patient_created)
    subjects = [pid for pid, _ in data.post_patients]
    calls = [
        Call(
            "POST", "Observation", encode(data.observation(f"Patient/{data.rng.choice(subjects)}"))
        )
        for _ in range(n)
    ]
    result.phases["post_observation"] = load.run("POST Observation", calls)


def entry_ids(response: httpx.Response) -> list[str]:
    bundle = response.json()
    return [location_id(e["response"]["location"]) for e in bundle.get("entry", [])]


def bundles(load: Load, data: Data, total: int, size: int, result: BackendResult) -> None:
    patient_bodies: list[list[dict[str, Any]]] = []
    calls: list[Call] = []
    for _ in range(max(1, total // size)):
        group = [data.patient() for _ in range(size)]
        patient_bodies.append(group)
        calls.append(Call("POST", "", encode(transaction([(p, None) for p in group])), size))
    group_of = {id(c): g for c, g in zip(calls, patient_bodies, strict=True)}
    lock = threading.Lock()

    def stored(call: Call, response: httpx.Response) -> None:
        ids = entry_ids(response)
        with lock:
            for res_id, body in zip(ids, group_of[id(call)], strict=True):
                data.remember(res_id, body)

    result.phases["bundle_patient"] = load.run(
        f"transaction Bundles of {size} Patients", calls, stored
    )
    calls = [
        Call(
            "POST",
            "",
            encode(
                transaction(
                    [
                        (data.observation(f"Patient/{data.random_patient()}"), None)
                        for _ in range(size)
                    ]
                )
            ),
            size,
        )
        for _ in range(max(1, total // size))
    ]
    result.phases["bundle_observation"] = load.run(
        f"transaction Bundles of {size} Observations", calls
    )


def synthea(load: Load, data: Data, result: BackendResult) -> None:
    files = sorted(SYNTHEA.glob("*.json")) if SYNTHEA.is_dir() else []
    if not files:
        result.notes.append(f"Synthea bundles skipped: no {SYNTHEA}.")
        print(f"  Synthea: skipped (no {SYNTHEA})")
        return
    loaded = [json.loads(p.read_bytes()) for p in files]
    # Bundles without a Patient (practitioners, organizations) go first.
    loaded.sort(
        key=lambda b: any(e["resource"]["resourceType"] == "Patient" for e in b.get("entry", []))
    )
    leading = [
        b
        for b in loaded
        if not any(e["resource"]["resourceType"] == "Patient" for e in b.get("entry", []))
    ]
    patients = loaded[len(leading) :]
    if leading:  # referenced by the others: stored first, untimed
        load.run(
            "Synthea (practitioner/organization Bundles, untimed set-up)",
            [Call("POST", "", encode(b), len(b["entry"])) for b in leading],
        )
    calls = [Call("POST", "", encode(b), len(b["entry"])) for b in patients]
    sizes = [c.resources for c in calls]
    result.notes.append(
        f"Synthea: {len(calls)} patient Bundles, {sum(sizes):,} resources "
        f"({min(sizes)}-{max(sizes)} per Bundle, median {statistics.median(sizes):.0f}); "
        f"{len(leading)} Bundle(s) without a Patient stored first, untimed."
    )
    result.phases["synthea"] = load.run("Synthea transaction Bundles", calls)


def reads_and_updates(
    load: Load, data: Data, reads: int, updates: int, result: BackendResult, key: str = "read"
) -> None:
    calls = [Call("GET", f"Patient/{data.random_patient()}") for _ in range(reads)]
    result.phases[key] = load.run(f"read Patient by id ({key})", calls)
    if updates <= 0:
        return
    chosen = data.rng.sample(data.post_patients, min(updates, len(data.post_patients)))
    calls = []
    for res_id, body in chosen:
        changed = {
            **body,
            "id": res_id,
            "telecom": [
                {"system": "phone", "value": f"+84-9{data.rng.randrange(10**8):08d}", "use": "home"}
            ],
        }
        calls.append(Call("PUT", f"Patient/{res_id}", encode(changed)))
    result.phases["update"] = load.run("update Patient by id (PUT)", calls)


def grow(
    load: Load,
    data: Data,
    target: int,
    stored: int,
    result: BackendResult,
    size: int = 500,
    patients_per_bundle: int = 50,
) -> int:
    """Transaction Bundles of ``size``: Patients and Observations that refer to them."""
    missing = target - stored
    if missing <= 0:
        return stored
    per_patient = size // patients_per_bundle - 1
    count = -(-missing // size)
    print(
        f"  growing to {target:,} resources: {count:,} Bundles of {size} "
        f"({patients_per_bundle} Patients + {patients_per_bundle * per_patient} Observations)",
        flush=True,
    )
    lock = threading.Lock()
    families: dict[int, list[tuple[dict[str, Any], list[str]]]] = {}

    def make(_: int) -> Call:
        entries: list[tuple[dict[str, Any], str | None]] = []
        group = []
        for _p in range(patients_per_bundle):
            url = f"urn:uuid:{uuid.UUID(int=data.rng.getrandbits(128))}"
            patient = data.patient()
            observations = [data.observation(url) for _ in range(per_patient)]
            group.append((patient, [o["code"]["coding"][0]["code"] for o in observations]))
            entries.append((patient, url))
            entries.extend((o, None) for o in observations)
        call = Call("POST", "", encode(transaction(entries)), len(entries))
        families[id(call)] = group
        return call

    stride = 1 + per_patient

    def stored_bundle(call: Call, response: httpx.Response) -> None:
        ids = entry_ids(response)[::stride]
        with lock:
            for res_id, (body, codes) in zip(ids, families[id(call)], strict=True):
                data.remember(res_id, body)
                data.codes_of[res_id] = codes
                data.coded_patients.append(res_id)

    # Built in chunks so that 1,000,000 resources never sit in memory as JSON at once.
    chunk = 200
    phases: list[Phase] = []
    for first in range(0, count, chunk):
        families.clear()
        calls = [make(i) for i in range(first, min(count, first + chunk))]
        phases.append(
            load.run(
                f"load at scale, Bundles {first + 1}-{first + len(calls)}", calls, stored_bundle
            )
        )
    wall = sum(p.wall_s for p in phases)
    resources = sum(p.resources for p in phases)
    cpu = Cpu(
        *(
            sum(getattr(p.cpu, f) * p.wall_s for p in phases) / wall
            for f in ("bench", "server", "postgres", "machine_busy", "others")
        )
    )
    rates = [p.rate for p in phases]
    result.phases["load"] = Phase(
        "load at scale (Bundles of 500, 8 clients)",
        sum(p.calls for p in phases),
        resources,
        wall,
        cpu,
        [x for p in phases for x in p.latencies_ms],
        sum(p.errors for p in phases),
        next((p.first_error for p in phases if p.errors), ""),
    )
    result.notes.append(
        f"Load at scale: {resources:,} resources in {wall:.0f} s; rate per chunk of "
        f"{chunk} Bundles from {rates[0]:,.0f}/s (first) to {rates[-1]:,.0f}/s (last), "
        f"min {min(rates):,.0f}/s."
    )
    return stored + resources


def grow_by_import(
    load: Load,
    data: Data,
    target: int,
    stored: int,
    result: BackendResult,
    work: Path,
    workers: int,
    patients_per_group: int = 50,
) -> int:
    """Grows the database with the product's bulk import (``salus fhir import``, NDJSON).

    The same mix as :func:`grow` (per Patient, 9 Observations that refer to it),
    with ids chosen here, written to ``workers`` NDJSON files before the clock
    starts; one ``salus fhir import`` process per file runs at once against the
    live server's database (validated, indexed, audited, committed in batches of
    500 as any import). The rate counts the import processes' wall time only.
    """
    missing = target - stored
    if missing <= 0:
        return stored
    per_patient = 9
    files = [work / f"import-{n}.ndjson" for n in range(workers)]
    handles = [path.open("w", encoding="utf-8") for path in files]
    written = 0
    group = 0
    try:
        while written < missing:
            out = handles[group % workers]
            group += 1
            for _ in range(patients_per_group):
                if written >= missing:
                    break
                patient = data.patient()
                res_id = uuid.UUID(int=data.rng.getrandbits(128)).hex
                patient["id"] = res_id
                out.write(json.dumps(patient, ensure_ascii=False) + "\n")
                written += 1
                codes = []
                for _o in range(min(per_patient, missing - written)):
                    observation = data.observation(f"Patient/{res_id}")
                    observation["id"] = uuid.UUID(int=data.rng.getrandbits(128)).hex
                    codes.append(observation["code"]["coding"][0]["code"])
                    out.write(json.dumps(observation, ensure_ascii=False) + "\n")
                    written += 1
                data.remember(res_id, patient)
                if codes:
                    data.codes_of[res_id] = codes
                    data.coded_patients.append(res_id)
    finally:
        for handle in handles:
            handle.close()
    print(
        f"  growing to {target:,} resources: {written:,} by bulk import "
        f"({workers} processes of salus fhir import)",
        flush=True,
    )
    began = load.meter.sample()
    children_before = os.times()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "salus",
                "--data-dir",
                str(load.server.data_dir),
                "fhir",
                "import",
                "--org",
                ORG,
                str(path),
            ],
            env=load.server.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for path in files
    ]
    outputs = [p.communicate()[0].decode(errors="replace") for p in procs]
    ended = load.meter.sample()
    children_after = os.times()
    for path in files:
        path.unlink(missing_ok=True)
    failed = [out for p, out in zip(procs, outputs, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"salus fhir import failed: {failed[0][-2000:]}")
    wall = ended.wall - began.wall
    cpu = CpuMeter.since(began, ended)
    importers = (children_after.children_user + children_after.children_system) - (
        children_before.children_user + children_before.children_system
    )
    cpu.bench += importers / wall  # the import processes are the bench's children
    cpu.others = max(0.0, cpu.others - importers / wall)
    phase = Phase(f"load at scale (bulk import, {workers} processes)", workers, written, wall, cpu)
    result.phases["load"] = phase
    result.notes.append(
        f"Load at scale by bulk import: {written:,} resources in {wall:.0f} s "
        f"({phase.rate:,.0f}/s) with {workers} `salus fhir import` processes; their CPU "
        f"{importers / written * 1000:.2f} ms per resource (counted as the bench's)."
    )
    print(f"  imported {written:,} in {wall:.0f} s: {phase.rate:,.0f} resources/s", flush=True)
    return stored + written


#: Search kinds run only when named in ``--kinds`` (not part of the standard run).
EXTRA_KINDS = frozenset({"chained_prefix", "date_range"})


def searches(
    load: Load,
    data: Data,
    queries: int,
    budget_s: float,
    result: BackendResult,
    only: frozenset[str] | None = None,
) -> None:
    load.refresh()
    rng = data.rng

    def date() -> str:
        when = DATE_FROM + timedelta(seconds=rng.randrange(DATE_SPAN_S))
        return when.strftime("%Y-%m-%d")

    def date_range() -> str:
        """Two ANDed conditions, a week apart: the range that reads the date shape
        index for long and multi-valued dates (migrations 0016, 0020)."""
        start = DATE_FROM + timedelta(seconds=rng.randrange(DATE_SPAN_S))
        end = start + timedelta(days=7)
        return f"Observation?date=ge{start:%Y-%m-%d}&date=lt{end:%Y-%m-%d}&_count=20"

    def subject_code() -> str:
        """A Patient loaded at scale and the code of one of its Observations (a match)."""
        if data.coded_patients:
            patient = rng.choice(data.coded_patients)
            code = rng.choice(data.codes_of[patient])
        else:
            patient, code = data.random_patient(), rng.choice(CODES)[0]
        return f"Observation?subject=Patient/{patient}&code={quote(LOINC)}%7C{code}"

    kinds: list[tuple[str, str, str | None, Callable[[], str]]] = [
        (
            "token",
            "token: `Observation?code=loinc\\|X`",
            None,
            lambda: f"Observation?code={quote(LOINC)}%7C{rng.choice(CODES)[0]}",
        ),
        (
            "token_nototal",
            "token, `_total=none`",
            None,
            lambda: f"Observation?code={quote(LOINC)}%7C{rng.choice(CODES)[0]}&_total=none",
        ),
        (
            "string",
            "string: `Patient?family=X`",
            "search_string",
            lambda: f"Patient?family={rng.choice(data.families)}",
        ),
        (
            "reference",
            "reference: `Observation?subject=Patient/X`",
            None,
            lambda: f"Observation?subject=Patient/{data.random_patient()}",
        ),
        (
            "subject_code",
            "reference + token: `Observation?subject=..&code=..`",
            "search_subject_code",
            subject_code,
        ),
        (
            "date",
            "date: `Observation?date=geX&_count=20`",
            "search_date",
            lambda: f"Observation?date=ge{date()}&_count=20",
        ),
        (
            "date_nototal",
            "date, `_total=none`",
            None,
            lambda: f"Observation?date=ge{date()}&_count=20&_total=none",
        ),
        (
            "date_range",
            "date range: `Observation?date=geX&date=ltY&_count=20` (extra kind)",
            None,
            date_range,
        ),
        (
            "chained",
            "chained: `Observation?subject:Patient.family=X`",
            None,
            lambda: f"Observation?subject:Patient.family={rng.choice(data.families)}",
        ),
        (
            "chained_prefix",
            "chained, 2-letter prefix: `Observation?subject:Patient.family=Xy`",
            None,
            # ~2,500 Patients, ~22,500 Observations each at 1,000,000 (ADR 22, stop 15)
            lambda: f"Observation?subject:Patient.family={rng.choice(data.families)[:2]}",
        ),
    ]
    kinds = [k for k in kinds if (k[0] in only if only else k[0] not in EXTRA_KINDS)]
    with load.client() as http:
        for key, label, medplum, make in kinds:
            for _ in range(10):  # warm-up, untimed
                http.get(make())
            spy = load.profiler(f"search {key}")
            cpu_began = load.meter.sample()
            times: list[float] = []
            matches: list[int] = []
            errors = 0
            deadline = time.monotonic() + budget_s
            for _ in range(queries):
                if time.monotonic() > deadline:
                    break
                url = make()
                began = time.perf_counter()
                response = http.get(url)
                elapsed = (time.perf_counter() - began) * 1000
                if response.status_code != 200:
                    errors += 1
                    if errors == 1:
                        print(f"    {url}: {response.status_code} {response.text[:300]}")
                    continue
                times.append(elapsed)
                body = response.json()
                matches.append(int(body.get("total", len(body.get("entry", [])))))
            cpu_ended = load.meter.sample()
            stop_profile(spy)
            cpu = CpuMeter.since(cpu_began, cpu_ended)
            wall = cpu_ended.wall - cpu_began.wall
            per_query = wall * 1000 / max(len(times) + errors, 1)
            search = Search(
                key,
                label,
                medplum,
                quantile(times, 0.5),
                quantile(times, 0.95),
                max(times, default=float("nan")),
                statistics.fmean(matches) if matches else 0.0,
                errors,
                len(times),
                cpu.server * per_query,
                cpu.postgres * per_query,
            )
            result.searches.append(search)
            print(
                f"  search {key}: median {search.median_ms:.1f} ms, p95 {search.p95_ms:.1f} "
                f"ms, max {search.max_ms:.0f} ms, {search.mean_matches:,.0f} matches on "
                f"average; CPU per query: server {search.cpu_ms:.1f} ms, PostgreSQL "
                f"{search.pg_cpu_ms:.1f} ms"
                f"{f', {errors} errors' if errors else ''}",
                flush=True,
            )


# -- the report ------------------------------------------------------------------------------
def _rate_row(
    label: str,
    phase: Phase | None,
    medplum: tuple[float, float] | None,
    target: float | None,
    unit: str,
) -> str:
    if phase is None:
        return f"| {label} | skipped | | | | |"
    value = phase.rate
    mp = f"{medplum[0]:,.0f}-{medplum[1]:,.0f}" if medplum else "—"
    ratio = f"{value / ((medplum[0] + medplum[1]) / 2):.2f}×" if medplum else "—"
    if target is None:
        verdict, goal = "—", "—"
    else:
        goal = f"≥ {target:,.0f}"
        verdict = "met" if value >= target else f"**not met** ({value / target:.0%} of it)"
    errors = f" ({phase.errors} errors)" if phase.errors else ""
    return f"| {label} | {value:,.0f} {unit}{errors} | {mp} | {ratio} | {goal} | {verdict} |"


def render(result: BackendResult) -> str:
    p = result.phases
    lines = [
        f"### {result.backend}: {result.stored:,} resources stored "
        f"(`--scale {result.scale}`), database {result.database_size}",
        "",
        "| measure | Salus | Medplum | Salus ÷ Medplum | target | met? |",
        "|---|---:|---:|---:|---:|---|",
    ]

    def write_target(key: str) -> float:
        return max(2 * MEDPLUM[key][1], BUNDLE_TARGET if key.startswith("bundle") else 0.0)

    rows = [
        (
            "POST Patient, one by one, 8 clients",
            "post_patient",
            "post_patient",
            "res/s",
            write_target("post_patient"),
        ),
        (
            "POST Observation, one by one, 8 clients",
            "post_observation",
            "post_observation",
            "res/s",
            write_target("post_observation"),
        ),
        (
            "transaction Bundles of 100 Patients, 8 clients",
            "bundle_patient",
            "bundle_patient",
            "res/s",
            write_target("bundle_patient"),
        ),
        (
            "transaction Bundles of 100 Observations, 8 clients",
            "bundle_observation",
            "bundle_observation",
            "res/s",
            write_target("bundle_observation"),
        ),
        ("Synthea transaction Bundles, 8 clients", "synthea", None, "res/s", BUNDLE_TARGET),
        ("read Patient by id, 8 clients", "read", "read", "req/s", MEDPLUM["read"][0]),
        ("update Patient by id (PUT), 8 clients", "update", None, "req/s", None),
        (
            f"load to {result.stored:,}: " + (p["load"].name if "load" in p else ""),
            "load",
            None,
            "res/s",
            BUNDLE_TARGET,
        ),
        (
            f"read Patient by id at {result.stored:,}, 8 clients",
            "read_at_scale",
            "read",
            "req/s",
            MEDPLUM["read"][0],
        ),
    ]
    for label, key, medplum_key, unit, target in rows:
        if key == "load" and key not in p:
            continue
        lines.append(_rate_row(label, p.get(key), MEDPLUM.get(medplum_key or ""), target, unit))
    for s in result.searches:
        mp = MEDPLUM.get(s.medplum or "")
        mp_text = f"{mp[0]} / {mp[1]} ms" if mp else "—"
        ratio = f"{mp[1] / s.p95_ms:.2f}× (p95)" if mp else "—"
        verdict = (
            "met"
            if s.p95_ms < SEARCH_P95_TARGET_MS
            else f"**not met** ({s.p95_ms / SEARCH_P95_TARGET_MS:.1f}× over)"
        )
        errors = f", {s.errors} errors" if s.errors else ""
        lines.append(
            f"| search {s.label}, 1 client (median / p95 of {s.queries}; "
            f"~{s.mean_matches:,.0f} matches"
            f"{errors}; server CPU {s.cpu_ms:.1f} ms/query) | {s.median_ms:.1f} / "
            f"{s.p95_ms:.1f} ms | "
            f"{mp_text} | {ratio} | "
            f"p95 < 50 ms | {verdict} |"
        )
    lines += [
        "",
        "Salus ÷ Medplum: rate over the middle of Medplum's range (above 1: Salus is faster); "
        "for searches, Medplum's p95 over Salus's (above 1: Salus is faster).",
        "",
        "| phase | calls | wall s | p50 / p95 ms per call | CPU cores: bench (load generator) "
        "| server | PostgreSQL | other processes | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in p.values():
        c = phase.cpu
        lines.append(
            f"| {phase.name} | {phase.calls:,} | {phase.wall_s:.1f} | "
            f"{phase.latency(0.5):.1f} / {phase.latency(0.95):.1f} | {c.bench:.2f} | "
            f"{c.server:.2f} | {c.postgres:.2f} | {c.others:.2f} | {c.machine_busy:.0%} |"
        )
    notes = list(result.notes)
    busiest = max(p.values(), key=lambda ph: ph.cpu.bench, default=None)
    if busiest is not None:
        cpus = os.cpu_count() or 1
        idle = min(1 - ph.cpu.machine_busy for ph in p.values()) * cpus
        notes.append(
            f"Load generator: at most {busiest.cpu.bench:.2f} of a core ({busiest.name}, "
            f"{busiest.cpu.bench / max(busiest.rate, 1e-9) * 1000:.2f} ms of CPU per call); "
            f"the machine ({cpus} CPUs) had at least {idle:.2f} of a core idle in every phase."
        )
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


# -- driver ----------------------------------------------------------------------------------
def run_backend(name: str, url: str | None, args: argparse.Namespace) -> BackendResult:
    work = Path(tempfile.mkdtemp(prefix=f"salus-fhir-bench-{name}-"))
    if url:
        reset_postgres(url)
    server = Server(name, work, url)
    print(f"\n== {name} ({work}) ==", flush=True)
    server.remove_data = not args.keep
    with server:
        server.start()
        version = postgres_version(url) if url else f"SQLite {sqlite_version()}"
        meter = CpuMeter(server.pid, with_postgres=url is not None)
        load = Load(server, meter, args.clients, args.profile)
        data = Data(args.seed)
        result = BackendResult(name, version, args.scale, 0, "")
        post_one_by_one(load, data, args.posts, result)
        bundles(load, data, args.bundle_resources, 100, result)
        synthea(load, data, result)
        reads_and_updates(load, data, args.reads, args.updates, result)
        if args.load == "import":
            stored = grow_by_import(
                load, data, args.scale, load.written, result, work, args.import_workers
            )
            if url:
                analyze_postgres(url)  # as autovacuum would, without waiting for it
            server.restart()  # fresh connections read the planner statistics
            meter.server_pid = server.pid
            load.refresh()
        else:
            stored = grow(load, data, args.scale, load.written, result)
        save_state(work, data, stored, server.secret)
        reads_and_updates(load, data, args.reads, 0, result, key="read_at_scale")
        result.stored = stored
        searches(load, data, args.queries, args.search_seconds, result, args.kinds)
        result.database_size = database_size(url, work)
        return result


STATE_FILE = "bench-state.json"


def save_state(work: Path, data: Data, stored: int, secret: str) -> None:
    """What a later ``--reuse`` run needs to search the kept database: ids, names, codes."""
    state = {
        "stored": stored,
        "client_id": CLIENT_ID,
        "secret": secret,
        "patient_ids": data.patient_ids,
        "families": data.families,
        "codes_of": data.codes_of,
        "coded_patients": data.coded_patients,
    }
    (work / STATE_FILE).write_text(json.dumps(state))


def load_state(work: Path, data: Data) -> int:
    state = json.loads((work / STATE_FILE).read_text())
    data.patient_ids = list(state["patient_ids"])
    data.families = list(state["families"])
    data.codes_of = {k: list(v) for k, v in state["codes_of"].items()}
    data.coded_patients = list(state["coded_patients"])
    return int(state["stored"])


def search_again(name: str, url: str | None, work: Path, args: argparse.Namespace) -> BackendResult:
    """``--reuse``: the searches only, against a database kept by ``--keep`` (its data
    folder and, for PostgreSQL, the database in SALUS_BENCH_DATABASE_URL), migrated to
    head first (``salus migrate``), its planner statistics refreshed."""
    state = json.loads((work / STATE_FILE).read_text())
    server = Server(name, work, url)
    server.client_id = str(state.get("client_id", CLIENT_ID))
    server.secret = str(state["secret"])
    print(f"\n== {name}, searches only, kept database ({work}) ==", flush=True)
    began = time.monotonic()
    server.cli("migrate")
    if url:
        analyze_postgres(url)
    else:
        import sqlite3

        with sqlite3.connect(work / "salus.db") as sqlite:
            sqlite.execute("PRAGMA analysis_limit=1000")
            sqlite.execute("ANALYZE")
    print(f"  migrated and analyzed in {time.monotonic() - began:.0f} s", flush=True)
    with server:
        server.restart()
        version = postgres_version(url) if url else f"SQLite {sqlite_version()}"
        meter = CpuMeter(server.pid, with_postgres=url is not None)
        load = Load(server, meter, args.clients, args.profile)
        data = Data(args.seed)
        stored = load_state(work, data)
        result = BackendResult(name, version, args.scale, stored, "")
        searches(load, data, args.queries, args.search_seconds, result, args.kinds)
        result.database_size = database_size(url, work)
        return result


def sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def environment() -> dict[str, str]:
    import sqlalchemy
    import uvicorn

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    try:
        import psycopg

        psycopg_version = psycopg.__version__
    except ImportError:
        psycopg_version = "-"
    return {
        "commit": commit or "?",
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "uvicorn": uvicorn.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg_version,
        "sqlite": sqlite_version(),
        "cpu": f"{cpu}, {os.cpu_count()} CPUs, {int(mem) / 2**20:.0f} GiB",
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument(
        "--scale",
        type=int,
        default=100_000,
        help="resources in the database before the searches (default 100,000)",
    )
    parser.add_argument(
        "--backends",
        default="sqlite,postgresql",
        help="comma-separated; postgresql needs SALUS_BENCH_DATABASE_URL",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--bundle-resources", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--load",
        choices=("bundles", "import"),
        default="bundles",
        help="how to grow to --scale: transaction Bundles of 500 over HTTP, or "
        "the product's bulk import (salus fhir import, NDJSON; minutes for "
        "1,000,000 instead of most of an hour)",
    )
    parser.add_argument(
        "--import-workers",
        type=int,
        default=2,
        help="salus fhir import processes at once with --load import",
    )
    parser.add_argument(
        "--search-seconds",
        type=float,
        default=180,
        help="time limit per kind of search (fewer queries past it)",
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: frozenset(k for k in text.split(",") if k),
        help="comma-separated search kinds to run (default: the standard ones; "
        "extra: chained_prefix, date_range)",
    )
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary data folders (and the PostgreSQL database) for a later --reuse",
    )
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="BACKEND=DIR",
        help="searches only, against the data folder DIR kept by an earlier "
        "--keep run of BACKEND (sqlite or postgresql; for postgresql the "
        "database in SALUS_BENCH_DATABASE_URL); repeat for both",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record the server during each phase into DIR (collapsed "
        "stacks; needs py-spy on PATH; the profiler slows the server)",
    )
    args = parser.parse_args(argv)

    env = environment()
    print("Salus FHIR benchmark: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    results: list[BackendResult] = []
    pg_url = os.environ.get("SALUS_BENCH_DATABASE_URL")
    for reuse in args.reuse:
        backend, _, folder = reuse.partition("=")
        if backend not in ("sqlite", "postgresql") or not folder:
            parser.error(f"--reuse takes sqlite=DIR or postgresql=DIR, not {reuse!r}")
        if backend == "postgresql" and not pg_url:
            parser.error("--reuse postgresql=DIR needs SALUS_BENCH_DATABASE_URL")
        label = "SQLite" if backend == "sqlite" else "PostgreSQL"
        results.append(
            search_again(label, pg_url if backend == "postgresql" else None, Path(folder), args)
        )
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if args.reuse:
            break
        if backend == "sqlite":
            results.append(run_backend("SQLite", None, args))
        elif backend == "postgresql":
            if not pg_url:
                print("\nPostgreSQL skipped: SALUS_BENCH_DATABASE_URL is not set.")
                continue
            results.append(run_backend("PostgreSQL", pg_url, args))
        else:
            parser.error(f"unknown backend {backend!r}")
    print()
    for result in results:
        print(f"{result.backend} {result.version}")
        print(render(result))
        print()
    if args.json:
        write_results(args.json, env, args, [_jsonable(r) for r in results])
    return 0


def _jsonable(result: BackendResult) -> dict[str, Any]:
    out = asdict(result)
    for key, phase in result.phases.items():
        out["phases"][key] = {
            "name": phase.name,
            "calls": phase.calls,
            "resources": phase.resources,
            "wall_s": phase.wall_s,
            "rate": phase.rate,
            "cpu": asdict(phase.cpu),
            "p50_ms": phase.latency(0.5),
            "p95_ms": phase.latency(0.95),
            "errors": phase.errors,
            "first_error": phase.first_error,
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
