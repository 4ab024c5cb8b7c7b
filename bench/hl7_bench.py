"""HL7 v2 over MLLP end to end: a real ``salus serve`` process on loopback.

For each backend (SQLite in a temporary data folder; PostgreSQL too when
``SALUS_BENCH_DATABASE_URL`` is set, its ``public`` schema dropped and made
again before every server start) and each ``SALUS_HL7_APPLY`` mode (``sync``:
the ACK follows the FHIR mapping; ``async``: it follows the commit of the raw
message, and a background applier maps), the benchmark

* starts ``python -m salus --data-dir DIR serve`` with the MLLP listener on a
  free port (jobs off, log level WARNING) and an HL7 profiles file that maps
  facility ``BENCH`` to a ``hospital_integration`` client of ``bench-hosp``,
* then streams pre-built messages over ``--connections`` (1 and 8) MLLP
  connections, one thread and socket each, every message waiting for its ACK
  (AA, or it counts as an error) before the next is sent on that connection:

  1. ADT: a mix of A01 (a new Patient and Encounter; half of them for a
     Patient already known) and A08 (an update of a known Patient), 50/50;
  2. ORU R01: one OBR with 5 numeric OBX per message (a DiagnosticReport and
     5 Observations) for a known Patient.

  Rates are messages acknowledged per second: every acknowledged message is
  committed (SQLite ``synchronous=FULL``, PostgreSQL's default
  ``synchronous_commit``). In ``async`` mode the benchmark then waits until
  the applier has mapped every message and reports that rate too ("applied").

The parse-only floor is measured in the same run, in this process, on one
core: python-hl7's ``parse`` of each message and its ``create_ack``, no I/O.
CPU time is accounted as in ``fhir_bench.py``: the load generator (this
process), the server, PostgreSQL and the whole machine.

Run from the repository root in the project's virtualenv::

    python bench/hl7_bench.py [--messages 3000] [--backends sqlite,postgresql]
                              [--modes sync,async] [--json out.json] [--profile DIR]

``--profile DIR`` runs ``py-spy record`` on the server (all threads, idle
ones left out) during every phase (in async mode until the backlog is
applied); it perturbs the figures.
PostgreSQL: ``SALUS_BENCH_DATABASE_URL=postgresql://salus:salus@127.0.0.1:5432/salus_bench``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hl7

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import SalusServer, free_port, stop_profile  # noqa: E402
from fhir_bench import (  # noqa: E402 - the shared benchmark helpers
    Cpu,
    CpuMeter,
    environment,
    postgres_version,
    quantile,
    reset_postgres,
    sqlite_version,
)

ORG = "bench-hosp"
CLIENT_ID = "bench-feed"
FACILITY = "BENCH"
START, END = b"\x0b", b"\x1c\x0d"
TARGET = 1000.0  # ADT messages/s stored and acknowledged (issue 6)
PROFILES = f"""
[org.{ORG}]
client = "{CLIENT_ID}"
facilities = ["{FACILITY}"]
mrn_authorities = ["{FACILITY}"]
timezone = "Asia/Ho_Chi_Minh"
"""
FAMILIES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng"]
GIVEN = ["Văn^An", "Thị^Bình", "Minh^Châu", "Quốc^Dũng", "Thu^Hà", "Ngọc^Lan"]
LABS = [("2345-7", "Glucose", "mg/dL", "70-99"), ("2160-0", "Creatinine", "mg/dL", "0.6-1.2"),
        ("718-7", "Hemoglobin", "g/dL", "12-16"), ("2951-2", "Sodium", "mmol/L", "135-145"),
        ("2823-3", "Potassium", "mmol/L", "3.5-5.1")]  # fmt: skip


# -- messages --------------------------------------------------------------------------------
class Messages:
    """Builds ADT and ORU messages; remembers the MRNs the server has seen."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.run = f"{seed % 10_000:04d}{int(time.time()) % 100_000:05d}"
        self.counter = itertools.count(1)
        self.known: list[str] = []  # MRNs sent in an earlier phase

    def _msh(self, mtype: str) -> str:
        control = f"B{self.run}-{next(self.counter)}"
        when = time.strftime("%Y%m%d%H%M%S")
        return f"MSH|^~\\&|HIS|{FACILITY}|SALUS|SALUS|{when}||{mtype}|{control}|P|2.5.1"

    def _pid(self, mrn: str) -> str:
        rng = self.rng
        birth = f"{rng.randrange(1930, 2020)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        return (
            f"PID|1||{mrn}^^^{FACILITY}^MR||{rng.choice(FAMILIES)}^{rng.choice(GIVEN)}||"
            f"{birth}|{rng.choice('MF')}|||{rng.randrange(1, 500)} Lê Lợi^^Huế^^^VN^H"
        )

    def adt(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        fresh: list[str] = []
        for _ in range(n):
            rng = self.rng
            pool = self.known + fresh
            if rng.random() < 0.5 or not pool:
                event = "A01"
                if pool and rng.random() < 0.5:
                    mrn = rng.choice(pool)
                else:
                    mrn = f"M{self.run}-{next(self.counter)}"
                    fresh.append(mrn)
            else:
                event, mrn = "A08", rng.choice(pool)
            visit = f"V{self.run}-{next(self.counter)}"
            segments = [
                self._msh(f"ADT^{event}^ADT_A01"),
                f"EVN|{event}|{time.strftime('%Y%m%d%H%M%S')}",
                self._pid(mrn),
                f"PV1|1|I|W{rng.randrange(1, 9)}^R{rng.randrange(1, 40)}^B1|||||||||||||||"
                f"{visit}|||||||||||||||||||||||||{time.strftime('%Y%m%d%H%M%S')}",
            ]
            out.append(("\r".join(segments) + "\r").encode())
        self.known += fresh
        return out

    def oru(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        for _ in range(n):
            rng = self.rng
            mrn = rng.choice(self.known)
            order = f"F{self.run}-{next(self.counter)}"
            segments = [
                self._msh("ORU^R01^ORU_R01"),
                self._pid(mrn),
                f"OBR|1||{order}|24323-8^Metabolic panel^LN|||20240101083000|||||||||||||||"
                "20240101090000|||F",
            ]
            for i, (code, name, unit, ref) in enumerate(LABS, 1):
                value = round(rng.uniform(0.5, 150), 1)
                segments.append(f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}^^UCUM|{ref}|N|||F")
            out.append(("\r".join(segments) + "\r").encode())
        return out


def default_in_flight(url: str | None) -> int:
    """The server's SALUS_HL7_COMMITS_IN_FLIGHT when unset (salus.config: 1 on both backends)."""
    return 1


def parse_floor(messages: Sequence[bytes]) -> float:
    """Messages per second that python-hl7 parses and acknowledges on one core (no I/O)."""
    began = time.perf_counter()
    for raw in messages:
        message = hl7.parse(raw.decode("utf-8"))
        str(message.create_ack("AA", application="SALUS", facility="SALUS"))
    return len(messages) / (time.perf_counter() - began)


# -- the server ------------------------------------------------------------------------------
class Server(SalusServer):
    """``salus serve`` with the MLLP listener (started and watched by :mod:`_server`)."""

    def __init__(
        self,
        label: str,
        data_dir: Path,
        database_url: str | None,
        apply: str,
        in_flight: int | None = None,
    ) -> None:
        self.mllp_port = free_port()
        profiles = data_dir / "hl7-profiles.toml"
        data_dir.mkdir(parents=True, exist_ok=True)
        profiles.write_text(PROFILES)
        settings = {
            "mllp_enabled": "true",
            "mllp_port": str(self.mllp_port),
            "hl7_profiles_file": str(profiles),
            "hl7_apply": apply,
            # One server process: MLLP runs in the primary only, and the CPU meter
            # reads one pid.
            "http_workers": "1",
        }
        if in_flight is not None:  # None: the server's default for the backend
            settings["hl7_commits_in_flight"] = str(in_flight)
        super().__init__(
            data_dir, database_url, label=label, settings=settings, listen=[self.mllp_port]
        )

    def start(self) -> None:
        self.cli("init")
        self.provision(ORG, "Bệnh viện Bench", CLIENT_ID)
        self.serve()

    def pending(self) -> int:
        """Messages committed but not applied yet (read from the database directly)."""
        query = "SELECT count(*) FROM hl7_messages WHERE state = 'received'"
        if self.database_url:
            import psycopg

            with psycopg.connect(self.database_url) as conn:
                row = conn.execute(query).fetchone()
        else:
            import sqlite3

            with sqlite3.connect(self.data_dir / "salus.db", timeout=30) as conn:
                row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


# -- load ------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    messages: int
    wall_s: float
    cpu: Cpu
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    errors: int = 0
    first_error: str = ""
    applied_s: float | None = None  # async mode: until the last message was mapped
    #: PostgreSQL counters over the phase (see pg_counters), per message where it says so
    pg: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s if self.wall_s else 0.0

    @property
    def applied_rate(self) -> float | None:
        return self.messages / self.applied_s if self.applied_s else None


def _ack_code(reply: bytes) -> str:
    for segment in reply.split(b"\r"):
        if segment.startswith(b"MSA|"):
            return segment[4:6].decode()
    return "?"


#: What ``pg_counters`` reads: cluster-wide WAL statistics (pg_stat_wal, PostgreSQL 14+),
#: checkpoints, and autovacuum / autoanalyze runs on the message store.
_PG_COUNTERS = """
SELECT w.wal_records, w.wal_fpi, w.wal_bytes, w.wal_write, w.wal_sync,
       b.checkpoints_timed + b.checkpoints_req, b.buffers_backend_fsync,
       coalesce((SELECT autovacuum_count + autoanalyze_count FROM pg_stat_user_tables
                 WHERE relname = 'hl7_messages' AND schemaname = current_schema()), 0)
FROM pg_stat_wal w, pg_stat_bgwriter b
"""
_PG_NAMES = (
    "wal_records",
    "wal_fpi",
    "wal_bytes",
    "wal_write",
    "wal_sync",
    "checkpoints",
    "backend_fsyncs",
    "autovacuums",
)


def pg_counters(url: str | None) -> dict[str, float]:
    """PostgreSQL's cumulative counters now (empty without PostgreSQL or when unreadable).

    They explain commit latency that moves between runs: a checkpoint during a
    phase (and the full-page images, ``wal_fpi``, that every page touched
    after it costs in WAL), autovacuum on the table being written, and how
    many WAL syncs the commits needed. Cluster-wide: other databases' work
    counts too.
    """
    if not url:
        return {}
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(_PG_COUNTERS).fetchone()
    except psycopg.Error:
        return {}
    return {k: float(v) for k, v in zip(_PG_NAMES, row or (), strict=False)}


def stream(
    server: Server,
    meter: CpuMeter,
    name: str,
    messages: Sequence[bytes],
    connections: int,
    profile_dir: Path | None,
    wait_applied: bool,
) -> Phase:
    """Send ``messages`` over ``connections`` sockets, each waiting for its ACKs."""
    shares = [list(messages[i::connections]) for i in range(connections)]
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[str] = []
    ready = threading.Barrier(connections + 1)

    def worker(slot: int) -> None:
        with socket.create_connection(("127.0.0.1", server.mllp_port), timeout=120) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mine, buffer, clock = latencies[slot], b"", time.perf_counter
            ready.wait()
            for raw in shares[slot]:
                began = clock()
                sock.sendall(START + raw + END)
                while END not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        errors.append("the server closed the connection")
                        return
                    buffer += chunk
                reply, buffer = buffer.split(END, 1)
                mine.append((clock() - began) * 1000)
                if _ack_code(reply) != "AA":
                    errors.append(reply[:300].decode("utf-8", "replace"))

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for thread in pool:
        thread.start()
    spy = _profiler(server, name, profile_dir)
    pg_before = pg_counters(server.database_url)
    ready.wait()
    start = meter.sample()
    for thread in pool:
        thread.join()
    end = meter.sample()
    pg_after = pg_counters(server.database_url)
    applied_s = None
    if wait_applied:
        while server.pending():
            time.sleep(0.05)
        applied_s = time.perf_counter() - start.wall
    stop_profile(spy)  # the profile covers the applier's backlog too
    phase = Phase(
        name,
        len(messages) - len(errors),
        end.wall - start.wall,
        CpuMeter.since(start, end),
        [x for lat in latencies for x in lat],
        len(errors),
        errors[0] if errors else "",
        applied_s,
    )
    if pg_before and pg_after:
        phase.pg = {k: pg_after[k] - pg_before[k] for k in pg_before}
    report_phase(phase)
    return phase


def _profiler(
    server: Server, name: str, profile_dir: Path | None
) -> subprocess.Popen[bytes] | None:
    if profile_dir is None:
        return None
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    return server.profile(profile_dir / f"{server.label}-{slug}.txt", rate=200)


def _ms_per(cores: float, phase: Phase) -> str:
    """CPU milliseconds per acknowledged message, from cores busy over the phase."""
    return f"{cores / phase.rate * 1000:.2f}" if phase.rate else "-"


def report_phase(phase: Phase) -> None:
    cpu = phase.cpu
    note = f", {phase.errors} errors: {phase.first_error[:300]!r}" if phase.errors else ""
    applied = (
        f"; applied after {phase.applied_s:.1f} s = {phase.applied_rate:,.0f}/s"
        if phase.applied_rate
        else ""
    )
    print(
        f"  {phase.name}: {phase.messages:,} in {phase.wall_s:.1f} s = {phase.rate:,.0f}/s "
        f"ACKed{applied}; latency p50 {quantile(phase.latencies_ms, 0.5):.1f} ms p95 "
        f"{quantile(phase.latencies_ms, 0.95):.1f} ms; CPU cores bench {cpu.bench:.2f} server "
        f"{cpu.server:.2f} ({_ms_per(cpu.server, phase)} ms/msg) postgres {cpu.postgres:.2f} "
        f"({_ms_per(cpu.postgres, phase)} ms/msg) others {cpu.others:.2f} machine "
        f"{cpu.machine_busy:.0%}{note}",
        flush=True,
    )
    if phase.pg and phase.messages:
        per = {k: v / phase.messages for k, v in phase.pg.items()}
        print(
            f"    PostgreSQL (cluster-wide) per message: WAL {per['wal_bytes'] / 1024:.2f} KB, "
            f"{per['wal_records']:.1f} records, {per['wal_fpi']:.2f} full-page images, "
            f"{per['wal_sync']:.2f} WAL syncs; during the phase: "
            f"{phase.pg['checkpoints']:.0f} checkpoint(s) started, "
            f"{phase.pg['autovacuums']:.0f} autovacuum/analyze run(s) on hl7_messages",
            flush=True,
        )


# -- driver ----------------------------------------------------------------------------------
@dataclass
class Result:
    backend: str
    version: str
    mode: str
    in_flight: int | None = None
    url: str | None = field(default=None, repr=False)
    floor_adt: float = 0.0
    floor_oru: float = 0.0
    phases: dict[str, Phase] = field(default_factory=dict)


def run(
    backend: str, url: str | None, mode: str, in_flight: int | None, args: argparse.Namespace
) -> Result:
    work = Path(tempfile.mkdtemp(prefix=f"salus-hl7-bench-{backend.lower()}-{mode}-"))
    if url:
        reset_postgres(url)
    server = Server(backend, work, url, mode, in_flight)
    print(
        f"\n== {backend}, SALUS_HL7_APPLY={mode}, "
        f"SALUS_HL7_COMMITS_IN_FLIGHT={in_flight or default_in_flight(url)} "
        f"({work}) ==",
        flush=True,
    )
    server.remove_data = not args.keep
    with server:
        server.start()
        version = postgres_version(url) if url else f"SQLite {sqlite_version()}"
        meter = CpuMeter(server.pid, with_postgres=url is not None)
        data = Messages(args.seed)
        result = Result(backend, version, mode, in_flight, url)
        waiting = mode == "async"
        # Warm up (patients the ORU phases refer to; connections, caches).
        stream(server, meter, "warm-up", data.adt(200), 2, None, waiting)
        for connections in args.connections if "adt" in args.kinds else []:
            adt = data.adt(args.messages)
            result.floor_adt = max(result.floor_adt, parse_floor(adt))
            key = f"adt-{connections}"
            result.phases[key] = stream(
                server,
                meter,
                f"ADT A01/A08, {connections} conn.",
                adt,
                connections,
                args.profile,
                waiting,
            )
        for connections in args.connections if "oru" in args.kinds else []:
            oru = data.oru(max(args.messages // 2, 100))
            result.floor_oru = max(result.floor_oru, parse_floor(oru))
            key = f"oru-{connections}"
            result.phases[key] = stream(
                server,
                meter,
                f"ORU R01 (5 OBX), {connections} conn.",
                oru,
                connections,
                args.profile,
                waiting,
            )
        floors = [
            f"{kind} {floor:,.0f}/s"
            for kind, floor in (("ADT", result.floor_adt), ("ORU", result.floor_oru))
            if floor  # a kind not run (--kinds) has no floor
        ]
        print(
            f"  parse-only floor (python-hl7 parse + create_ack, 1 core): {', '.join(floors)}",
            flush=True,
        )
        return result


def render(results: list[Result]) -> str:
    lines = [
        "| backend | apply | in flight | measure | ACKed msg/s | applied msg/s | p50 / p95 ms | "
        "parse-only floor | CPU cores: bench / server / PostgreSQL / others | target |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for key, phase in r.phases.items():
            floor = r.floor_adt if key.startswith("adt") else r.floor_oru
            c = phase.cpu
            applied = f"{phase.applied_rate:,.0f}" if phase.applied_rate else "(= ACKed)"
            target = "—"
            if key.startswith("adt"):
                met = "met" if phase.rate >= TARGET else f"**not met** ({phase.rate / TARGET:.0%})"
                target = f"≥ {TARGET:,.0f}: {met}"
            errors = f" ({phase.errors} errors)" if phase.errors else ""
            p50, p95 = quantile(phase.latencies_ms, 0.5), quantile(phase.latencies_ms, 0.95)
            in_flight = r.in_flight or default_in_flight(r.url)
            lines.append(
                f"| {r.backend} | {r.mode} | {in_flight} | {phase.name} | "
                f"{phase.rate:,.0f}{errors} | {applied} | {p50:.1f} / {p95:.1f} | "
                f"{floor:,.0f} | {c.bench:.2f} / {c.server:.2f} / {c.postgres:.2f} / "
                f"{c.others:.2f} | {target} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=3000, help="ADT messages per phase")
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--modes", default="sync,async")
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folders")
    parser.add_argument("--profile", type=Path, metavar="DIR")
    parser.add_argument("--kinds", default="adt,oru", help="message kinds: adt, oru or both")
    parser.add_argument(
        "--commits-in-flight",
        default="default",
        metavar="N[,N…]",
        help="SALUS_HL7_COMMITS_IN_FLIGHT values ('default': unset, the server's default, "
        "1); with several (e.g. 1,2) the "
        "servers alternate, each value measured in turn, --rounds times",
    )
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    args.connections = [int(c) for c in str(args.connections).split(",") if c.strip()]
    args.kinds = {k.strip() for k in str(args.kinds).split(",") if k.strip()}
    in_flight = [
        None if n.strip() == "default" else int(n)
        for n in str(args.commits_in_flight).split(",")
        if n.strip()
    ]

    env = environment()
    env["python-hl7"] = hl7.__version__ if hasattr(hl7, "__version__") else "?"
    print("Salus HL7 benchmark: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    pg_url = os.environ.get("SALUS_BENCH_DATABASE_URL")
    results: list[Result] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
        if backend == "postgresql" and not pg_url:
            print("\nPostgreSQL skipped: SALUS_BENCH_DATABASE_URL is not set.")
            continue
        label, url = ("SQLite", None) if backend == "sqlite" else ("PostgreSQL", pg_url)
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            for _, n in itertools.product(range(args.rounds), in_flight):
                results.append(run(label, url, mode, n, args))
    print()
    for r in {(r.backend, r.version) for r in results}:
        print(f"{r[0]}: {r[1]}")
    print(render(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "environment": env,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": [
                        {
                            **{k: v for k, v in asdict(r).items() if k not in ("phases", "url")},
                            "phases": {
                                k: {
                                    "name": p.name,
                                    "messages": p.messages,
                                    "wall_s": p.wall_s,
                                    "rate": p.rate,
                                    "applied_rate": p.applied_rate,
                                    "p50_ms": quantile(p.latencies_ms, 0.5),
                                    "p95_ms": quantile(p.latencies_ms, 0.95),
                                    "cpu": asdict(p.cpu),
                                    "errors": p.errors,
                                    "first_error": p.first_error,
                                }
                                for k, p in r.phases.items()
                            },
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
