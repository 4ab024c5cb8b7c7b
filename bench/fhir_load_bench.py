"""FHIR R4 write and read throughput with ``wrk`` as the load generator.

``fhir_bench.py`` drives the server from Python (8 threads of httpx), which on a
2-core machine burns about as much CPU as the server does, so its throughput
phases partly measure the client. This benchmark measures the same throughput
phases with ``wrk`` (C, event loop; Debian package ``wrk``) and Lua scripts it
writes into a temporary folder, against the same server set-up: a real
``salus serve`` process per backend (``fhir_bench.Server``: SQLite in a
temporary data folder; PostgreSQL too when ``SALUS_BENCH_DATABASE_URL`` is
set, its ``public`` schema dropped and made again so that every run starts
empty), jobs off, log level WARNING, security and audit on, a
``hospital_integration`` client with a bearer token.

Phases, each ``--rounds`` (3) rounds of ``--seconds`` (10) with
``--connections`` (8) keep-alive connections on ``--threads`` (2) wrk threads;
the median round is reported with the min and max:

1. ``POST /fhir/Patient`` one by one: 40 distinct generated Patients rotated,
   each request with its own identifier value (``MRN-round-thread-n``);
2. ``POST /fhir/Observation`` one by one, each referring to a random existing
   Patient (ids taken with ``GET /fhir/Patient?_count=500&_elements=id``,
   following the ``next`` links, up to ``--max-ids`` (20,000), into a file the
   Lua script reads; taken again after the Patient Bundles for 3-5);
3. transaction Bundles (FHIR ``http.html#transaction``) of 100 new Patients,
   then of 100 Observations referring to existing Patients; 20 distinct
   pre-generated Bundles of each kind, rotated; resources/s = Bundles/s x 100;
4. ``GET /fhir/Patient/{id}`` of a random Patient, requests/s;
5. ``PUT /fhir/Patient/{id}`` (update, ``http.html#update``; the body carries
   the id): each wrk thread walks its own slice of the Patients not updated in
   an earlier round, so every update hits a distinct Patient, requests/s.

Every response is checked: a Lua ``response()`` counts the non-2xx ones (and
keeps the first for the report), wrk's ``Non-2xx or 3xx responses`` line and
its socket errors are read too; a phase with any error is reported as FAILED
and the benchmark exits with status 1. CPU use per round, in cores: the server
(the ``salus serve`` process and all its descendants: worker processes count),
wrk, PostgreSQL (its processes, less the backends of other databases: the
PostgreSQL server is shared), other processes, and the whole machine busy, so
that a figure limited by the machine or by a neighbour shows as such.
Each round starts once the server has gone idle after the previous one (wrk
leaves requests in flight when it stops).

The table per backend puts each median beside Medplum 4.5.2's figures
(``../shared/PEERS.md``: PostgreSQL 15, 8 clients, fresh database) and the
issue's targets: at least twice Medplum on every write figure, transaction
Bundles at least 2,000 resources/s, reads at least 1,200 requests/s.

How to run (repository root, in the project's virtualenv; ``/usr/bin/wrk``
from the Debian package ``wrk``). With the defaults a run takes about 7-8
minutes for both backends: 36 rounds of 10 s, plus per backend some 20 s to
start the server (CLI calls) and the id searches; ``--seconds 7`` brings it to
about 6::

    SALUS_BENCH_DATABASE_URL=postgresql://salus:salus@127.0.0.1:5432/salus_bench \\
        python bench/fhir_load_bench.py [--backends sqlite,postgresql] [--seconds 10]
            [--rounds 3] [--workers N] [--json out.json]

PostgreSQL: create the database once with
``su postgres -c "createdb -O salus salus_bench"``. ``--workers N`` sets
``SALUS_HTTP_WORKERS`` for the server (left unset by
default: the server's own default). A quick check that everything works:
``--seconds 2 --rounds 1``. Without ``wrk`` on PATH the benchmark says so and
exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cpu import CpuSample, PhaseMeter, children_cpu  # noqa: E402 - a phase's CPU accounting
from _server import settle_tree, write_results  # noqa: E402 - how every benchmark starts and watches salus serve
from fhir_bench import (  # noqa: E402 - the shared benchmark helpers
    BUNDLE_TARGET,
    MEDPLUM,
    Data,
    Server,
    encode,
    environment,
    postgres_version,
    reset_postgres,
    sqlite_version,
    transaction,
)

READ_TARGET = 1200.0  # requests/s: Medplum's reads by id (low end of 1,200-1,300)
BUNDLE_SIZE = 100
MARK = "@@SALUS@@"  # placeholder in body templates, filled in by the Lua scripts


# -- CPU accounting ------------------------------------------------------------------------
@dataclass
class Cpu:
    """CPU use during a round, in cores (CPU seconds per wall second)."""

    wrk: float = 0.0
    server: float = 0.0
    postgres: float = 0.0
    others: float = 0.0  # busy cores not accounted to the three above
    machine_busy: float = 0.0  # fraction of all CPUs busy


class Meter(PhaseMeter):
    """:class:`_cpu.PhaseMeter` with wrk (this process's reaped children) as the load
    generator and the backends of the bench's PostgreSQL ``database`` (None for SQLite)."""

    def __init__(self, server_pid: int, database: str | None) -> None:
        super().__init__(server_pid, children_cpu, bool(database), database)

    @staticmethod
    def since(start: CpuSample, end: CpuSample) -> Cpu:
        use = PhaseMeter.use(start, end)
        return Cpu(
            wrk=use.client,
            server=use.server,
            postgres=use.postgres,
            others=use.others,
            machine_busy=use.machine_busy,
        )

    def settle(self) -> None:
        """Wait until the server has finished what wrk left in flight (under 5% of a core)."""
        settle_tree(self.server_pid, limit_s=10.0, interval=0.25, cores=0.05)


# -- Lua -------------------------------------------------------------------------------------
LUA_COMMON = r"""
wrk.headers["Authorization"] = "Bearer @TOKEN@"
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.headers["Accept"] = "application/fhir+json"
local threads = {}
local count = 0
function setup(thread)
  thread:set("index", count)
  count = count + 1
  table.insert(threads, thread)
end
bad = 0
first = ""
used = 0
wrapped = 0
function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
    if first == "" then
      first = (tostring(status) .. " " .. string.sub(body or "", 1, 300)):gsub("%c", " ")
    end
  end
end
local function lines(path)
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then table.insert(out, line) end
  end
  return out
end
local function split(templates)
  local out = {}
  for i, t in ipairs(templates) do
    local a, b = string.find(t, "@MARK@", 1, true)
    out[i] = {string.sub(t, 1, a - 1), string.sub(t, b + 1)}
  end
  return out
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK\tsummary\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("WRK\tlatency\t%d\t%d\t%d\t%d\n", latency:percentile(50),
    latency:percentile(95), latency:percentile(99), latency.max))
  for _, t in ipairs(threads) do
    io.write(string.format("WRK\tthread\t%d\t%d\t%d\t%d\t%s\n", t:get("index"), t:get("bad"),
      t:get("used"), t:get("wrapped"), t:get("first")))
  end
end
"""

LUA_PHASE = {
    # Templates: one body a line, MARK where the request's own value goes.
    "post_patient": r"""
local bodies, round, n
function init(args)
  bodies = split(lines(args[1])); round = args[2]; n = 0
end
function request()
  n = n + 1
  local b = bodies[n % #bodies + 1]
  return wrk.format("POST", "/fhir/Patient", nil,
                    b[1] .. round .. "-" .. index .. "-" .. n .. b[2])
end
""",
    "post_observation": r"""
local bodies, ids, n
function init(args)
  bodies = split(lines(args[1])); ids = lines(args[3]); n = 0
  math.randomseed(os.time() * 16 + index * 7919 + tonumber(args[2]))
end
function request()
  n = n + 1
  local b = bodies[n % #bodies + 1]
  return wrk.format("POST", "/fhir/Observation", nil, b[1] .. ids[math.random(#ids)] .. b[2])
end
""",
    # Whole request strings made once: the Bundles are large.
    "bundle": r"""
local reqs, n
function init(args)
  reqs = {}; n = index
  for i, body in ipairs(lines(args[1])) do reqs[i] = wrk.format("POST", "/fhir", nil, body) end
end
function request()
  n = n + 1
  return reqs[n % #reqs + 1]
end
""",
    "read": r"""
local ids
function init(args)
  ids = lines(args[3])
  math.randomseed(os.time() * 16 + index * 7919 + tonumber(args[2]))
end
function request()
  return wrk.format("GET", "/fhir/Patient/" .. ids[math.random(#ids)])
end
""",
    # Thread k of T walks ids[k*L/T+1 .. (k+1)*L/T]: distinct Patients, disjoint slices.
    "update": r"""
local bodies, ids, low, size
function init(args)
  bodies = split(lines(args[1])); ids = lines(args[3])
  local t = tonumber(args[4])
  low = math.floor(index * #ids / t); size = math.floor((index + 1) * #ids / t) - low
end
function request()
  if used >= size then wrapped = wrapped + 1 end
  local id = ids[low + used % size + 1]
  used = used + 1
  local b = bodies[used % #bodies + 1]
  return wrk.format("PUT", "/fhir/Patient/" .. id, nil, b[1] .. id .. b[2])
end
""",
}


# -- one phase ------------------------------------------------------------------------------
@dataclass
class Round:
    requests: int
    duration_s: float
    rate: float  # resources (or requests) per second
    errors: int
    first_error: str
    latency_ms: dict[str, float]
    cpu: Cpu
    wrapped: int = 0  # updates that had to reuse a Patient (the slice ran out)


@dataclass
class PhaseResult:
    key: str
    name: str
    unit: str
    rounds: list[Round] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    @property
    def median_round(self) -> Round:
        ordered = sorted(self.rounds, key=lambda r: r.rate)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def median(self) -> float:
        return statistics.median(r.rate for r in self.rounds)


_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


class Wrk:
    def __init__(
        self, binary: str, server: Server, meter: Meter, folder: Path, args: argparse.Namespace
    ) -> None:
        self.binary = binary
        self.server = server
        self.meter = meter
        self.folder = folder
        self.args = args
        self.round_no = 0

    def run(
        self,
        key: str,
        name: str,
        script: str,
        files: dict[str, list[str]],
        per_request: int = 1,
        rounds: int | None = None,
        into: PhaseResult | None = None,
    ) -> tuple[PhaseResult, list[list[int]]]:
        """``--rounds`` rounds of one phase (added to ``into`` when given); also returns,
        per round, ``used`` per wrk thread (the update script's count of ids taken)."""
        token = self.server.token()
        lua = LUA_COMMON.replace("@TOKEN@", token).replace("@MARK@", MARK) + LUA_PHASE[script]
        path = self.folder / f"{key}.lua"
        path.write_text(lua)
        paths = []
        for label in ("bodies", "ids"):
            target = self.folder / f"{key}-{label}.txt"
            target.write_text("\n".join(files.get(label, [])) + "\n")
            paths.append(str(target))
        unit = "res/s" if key.startswith(("post", "bundle")) else "req/s"
        result = into if into is not None else PhaseResult(key, name, unit)
        used: list[list[int]] = []
        for _ in range(rounds or self.args.rounds):
            self.round_no += 1
            self.meter.settle()
            command = [
                self.binary,
                f"-t{self.args.threads}",
                f"-c{self.args.connections}",
                f"-d{self.args.seconds}s",
                "--timeout",
                "60s",
                "-s",
                str(path),
                self.server.base,
                "--",
                paths[0],
                str(self.round_no),
                paths[1],
                str(self.args.threads),
            ]
            start = self.meter.sample()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            end = self.meter.sample()
            one, threads_used = self._parse(done, per_request, Meter.since(start, end))
            result.rounds.append(one)
            used.append(threads_used)
            print(
                f"  {name} round {len(result.rounds)}: {one.rate:,.0f} {result.unit} "
                f"({one.requests:,} requests in {one.duration_s:.1f} s), p50 "
                f"{one.latency_ms['p50']:.1f} ms p95 {one.latency_ms['p95']:.1f} ms; CPU "
                f"cores server {one.cpu.server:.2f} wrk {one.cpu.wrk:.2f} postgres "
                f"{one.cpu.postgres:.2f} others {one.cpu.others:.2f} machine "
                f"{one.cpu.machine_busy:.0%}; server CPU "
                f"{(1000 * one.cpu.server / one.rate if one.rate else 0.0):.2f} ms per "
                f"{'resource' if per_request > 1 or key.startswith('post') else 'request'}"
                + (f"; {one.errors} ERRORS: {one.first_error}" if one.errors else ""),
                flush=True,
            )
        if result.errors:
            print(f"  {name}: FAILED, {result.errors} errors", file=sys.stderr, flush=True)
        return result, used

    @staticmethod
    def _parse(
        done: subprocess.CompletedProcess[str], per_request: int, cpu: Cpu
    ) -> tuple[Round, list[int]]:
        rows = [line.split("\t") for line in done.stdout.splitlines() if line.startswith("WRK\t")]
        summary = next((r for r in rows if r[1] == "summary"), None)
        latency = next((r for r in rows if r[1] == "latency"), None)
        if done.returncode != 0 or summary is None or latency is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        requests, duration_us, *socket_errors = (int(v) for v in summary[2:])
        threads = [r for r in rows if r[1] == "thread"]
        non2xx_lua = sum(int(r[3]) for r in threads)
        match = _NON2XX.search(done.stdout)
        non2xx_wrk = int(match.group(1)) if match else 0
        # status (>399) is in both counts; connect, read, write and timeout are socket errors.
        errors = max(non2xx_lua, non2xx_wrk) + sum(socket_errors[:3]) + socket_errors[4]
        first = next((r[6] for r in threads if r[6].strip()), "")
        if not first and errors:
            first = (
                f"socket errors: connect {socket_errors[0]}, read {socket_errors[1]}, "
                f"write {socket_errors[2]}, timeout {socket_errors[4]}"
            )
        duration = duration_us / 1e6
        ok = max(0, requests - max(non2xx_lua, non2xx_wrk))
        return Round(
            requests=requests,
            duration_s=duration,
            rate=ok * per_request / duration if duration else 0.0,
            errors=errors,
            first_error=first,
            latency_ms={
                k: int(v) / 1000
                for k, v in zip(("p50", "p95", "p99", "max"), latency[2:], strict=True)
            },
            cpu=cpu,
            wrapped=sum(int(r[5]) for r in threads),
        ), [int(r[4]) for r in sorted(threads, key=lambda r: int(r[2]))]


# -- data ------------------------------------------------------------------------------------
def patient_ids(
    server: Server, limit: int, have: Sequence[str] = (), since: datetime | None = None
) -> list[str]:
    """``have`` and more Patient ids: ``GET /fhir/Patient?_count=500&_elements=id``, its
    ``next`` links (search.html#count), and ``_lastUpdated=ge`` ``since`` when given.

    Stops past ``limit`` ids in all (0: no limit): every page costs the server a read of
    500 Patients, and reads, references and updates need no more than a sample.
    """
    began = time.perf_counter()
    ids, known = list(have), set(have)
    headers = {"Authorization": f"Bearer {server.token()}", "Accept": "application/fhir+json"}
    url: str | None = f"{server.base}/fhir/Patient?_count=500&_elements=id"
    if since is not None:
        url += f"&_lastUpdated=ge{since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    with httpx.Client(headers=headers, timeout=120) as http:
        while url and (limit <= 0 or len(ids) < limit):
            response = http.get(url)
            response.raise_for_status()
            bundle = response.json()
            for entry in bundle.get("entry", []):
                if entry["resource"]["id"] not in known:
                    known.add(entry["resource"]["id"])
                    ids.append(entry["resource"]["id"])
            url = next(
                (link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"),
                None,
            )
    more = " (--max-ids reached)" if url else ""
    print(
        f"  {len(ids):,} Patient ids{more}, {len(ids) - len(have):,} new, in "
        f"{time.perf_counter() - began:.1f} s",
        flush=True,
    )
    if not ids:
        raise RuntimeError("no Patient found: the create phase stored nothing")
    return ids[:limit] if limit > 0 else ids


def patient_template(data: Data, with_id: bool) -> str:
    body = data.patient()
    if with_id:  # update: the id goes first, the identifier keeps its generated value
        return encode({"resourceType": "Patient", "id": MARK, **body}).decode()
    body["identifier"][0]["value"] = f"MRN-{MARK}"
    return encode(body).decode()


def observation_template(data: Data) -> str:
    return encode(data.observation(f"Patient/{MARK}")).decode()


# -- one backend ------------------------------------------------------------------------------
@dataclass
class BackendResult:
    backend: str
    version: str
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_backend(name: str, url: str | None, binary: str, args: argparse.Namespace) -> BackendResult:
    work = Path(tempfile.mkdtemp(prefix=f"salus-fhir-load-{name.lower()}-"))
    scripts = work / "wrk"
    scripts.mkdir()
    if url:
        reset_postgres(url)
    server = Server(name, work, url)
    if args.workers is not None:
        server.env["SALUS_HTTP_WORKERS"] = str(args.workers)
    for setting in args.setting:  # e.g. database_reads_on_loop=off, to compare
        key, _, value = setting.partition("=")
        server.env["SALUS_" + key.strip().upper()] = value.strip()
    print(f"\n== {name} ({work}) ==", flush=True)
    server.remove_data = not args.keep
    with server:
        server.start()
        version = postgres_version(url) if url else sqlite_version()
        result = BackendResult(name, version)
        wrk = Wrk(
            binary,
            server,
            Meter(server.pid, urlparse(url).path.lstrip("/") if url else None),
            scripts,
            args,
        )
        data = Data(args.seed)
        phases = result.phases

        selected = args.phase_set
        templates = [patient_template(data, False) for _ in range(40)]
        if "post_patient" in selected:
            phases["post_patient"], _ = wrk.run(
                "post_patient", "POST Patient", "post_patient", {"bodies": templates}
            )
        else:  # the later phases need Patients: one untimed round, not reported
            wrk.run(
                "post_patient",
                "POST Patient (seed, not reported)",
                "post_patient",
                {"bodies": templates},
                1,
                1,
            )
        ids = patient_ids(server, args.max_ids)
        since = datetime.now(UTC) - timedelta(seconds=2)  # ids of the Bundles: only the new
        templates = [observation_template(data) for _ in range(40)]
        if "post_observation" in selected:
            phases["post_observation"], _ = wrk.run(
                "post_observation",
                "POST Observation",
                "post_observation",
                {"bodies": templates, "ids": ids},
            )
        bundles = [
            encode(transaction([(data.patient(), None) for _ in range(BUNDLE_SIZE)])).decode()
            for _ in range(20)
        ]
        if "bundle_patient" in selected:
            phases["bundle_patient"], _ = wrk.run(
                "bundle_patient",
                f"transaction Bundles of {BUNDLE_SIZE} Patients",
                "bundle",
                {"bodies": bundles},
                BUNDLE_SIZE,
            )
            ids = patient_ids(server, args.max_ids, ids, since)
        bundles = [
            encode(
                transaction(
                    [
                        (data.observation(f"Patient/{data.rng.choice(ids)}"), None)
                        for _ in range(BUNDLE_SIZE)
                    ]
                )
            ).decode()
            for _ in range(20)
        ]
        if "bundle_observation" in selected:
            phases["bundle_observation"], _ = wrk.run(
                "bundle_observation",
                f"transaction Bundles of {BUNDLE_SIZE} Observations",
                "bundle",
                {"bodies": bundles},
                BUNDLE_SIZE,
            )
        if "read" in selected:
            phases["read"], _ = wrk.run("read", "read Patient by id", "read", {"ids": ids})
        if "update" not in selected:
            return result

        fresh = list(ids)
        data.rng.shuffle(fresh)
        templates = [patient_template(data, True) for _ in range(40)]
        update = PhaseResult("update", "update Patient by id (PUT)", "req/s")
        for _ in range(args.rounds):  # one round at a time: each gets Patients not yet updated
            _, used = wrk.run(
                "update", update.name, "update", {"bodies": templates, "ids": fresh}, 1, 1, update
            )
            fresh = drop_used(fresh, used[0], args.threads)
        phases["update"] = update
        wrapped = sum(r.wrapped for r in update.rounds)
        result.notes.append(
            f"Updates: {len(ids):,} Patients to update, {len(ids) - len(fresh):,} updated"
            + (
                f"; {wrapped:,} updates had to reuse a Patient (too few Patients)"
                if wrapped
                else ", each once"
            )
        )
        return result


def drop_used(ids: list[str], used: list[int], threads: int) -> list[str]:
    """The ids the update script did not reach (the same slices as its Lua)."""
    left: list[str] = []
    for index in range(threads):
        low, high = index * len(ids) // threads, (index + 1) * len(ids) // threads
        taken = min(used[index] if index < len(used) else 0, high - low)
        left += ids[low + taken : high]
    return left


# -- report ------------------------------------------------------------------------------------
ROWS: list[tuple[str, str, str | None]] = [
    # (key, label, Medplum key)
    ("post_patient", "POST Patient, one by one", "post_patient"),
    ("post_observation", "POST Observation, one by one", "post_observation"),
    ("bundle_patient", "transaction Bundles of 100 Patients", "bundle_patient"),
    ("bundle_observation", "transaction Bundles of 100 Observations", "bundle_observation"),
    ("read", "read Patient by id", "read"),
    ("update", "update Patient by id (PUT)", None),
]


PHASE_KEYS = tuple(key for key, _, _ in ROWS)


def target(key: str) -> float | None:
    if key == "read":
        return READ_TARGET
    if key in MEDPLUM and key != "read":
        return max(2 * MEDPLUM[key][1], BUNDLE_TARGET if key.startswith("bundle") else 0.0)
    return None


def render(result: BackendResult, args: argparse.Namespace) -> str:
    c = args.connections
    lines = [
        f"### {result.backend} {result.version}: wrk, {c} connections, {args.threads} threads, "
        f"{args.rounds} × {args.seconds} s per phase",
        "",
        "| measure | Salus, median (min-max) | Medplum | Salus ÷ Medplum | target | met? |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, label, medplum_key in ROWS:
        phase = result.phases.get(key)
        if phase is None or not phase.rounds:
            lines.append(f"| {label}, {c} connections | not run | | | | |")
            continue
        rates = [r.rate for r in phase.rounds]
        mp = MEDPLUM.get(medplum_key or "")
        goal = target(key)
        if phase.errors:
            verdict = f"**FAILED**: {phase.errors:,} errors"
        elif goal is None:
            verdict = "—"
        else:
            verdict = (
                "met" if phase.median >= goal else f"**not met** ({phase.median / goal:.0%} of it)"
            )
        lines.append(
            f"| {label}, {c} connections | {phase.median:,.0f} {phase.unit} "
            f"({min(rates):,.0f}-{max(rates):,.0f}) | "
            + (
                f"{mp[0]:,.0f}-{mp[1]:,.0f} | {phase.median / ((mp[0] + mp[1]) / 2):.2f}× | "
                if mp
                else "— | — | "
            )
            + (f"≥ {goal:,.0f} | " if goal else "— | ")
            + f"{verdict} |"
        )
    lines += [
        "",
        "Median round of each phase: latency and CPU (cores: CPU seconds per second).",
        "",
        "| phase | requests | p50 / p95 / p99 ms | server | server CPU ms per unit | wrk "
        "| PostgreSQL | other processes | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in result.phases.values():
        if not phase.rounds:
            continue
        r = phase.median_round
        lat, cpu = r.latency_ms, r.cpu
        lines.append(
            f"| {phase.name} | {r.requests:,} | {lat['p50']:.1f} / {lat['p95']:.1f} / "
            f"{lat['p99']:.1f} | {cpu.server:.2f} | "
            f"{(1000 * cpu.server / r.rate if r.rate else 0.0):.2f} | {cpu.wrk:.2f} | "
            f"{cpu.postgres:.2f} | "
            f"{cpu.others:.2f} | {cpu.machine_busy:.0%} |"
        )
    notes = list(result.notes)
    for phase in result.phases.values():
        if phase.errors:
            first = next(r.first_error for r in phase.rounds if r.errors)
            notes.append(f"{phase.name}: FAILED, {phase.errors:,} errors; first: {first[:300]}")
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def wrk_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).split("Copyright", 1)[0].strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument(
        "--backends",
        default="sqlite,postgresql",
        help="comma-separated; postgresql needs SALUS_BENCH_DATABASE_URL",
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of a round (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per phase (3)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument(
        "--workers", type=int, help="SALUS_HTTP_WORKERS for the server (default: not set)"
    )
    parser.add_argument(
        "--max-ids",
        type=int,
        default=20_000,
        help="Patient ids to fetch for reads, references and updates (default 20,000; 0: all)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASE_KEYS),
        help="comma-separated subset of " + ",".join(PHASE_KEYS) + " (default: all); "
        "without post_patient one untimed round of it still creates the Patients "
        "the other phases use",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting (SALUS_NAME=VALUE), repeatable; e.g. database_reads_on_loop=off",
    )
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folders")
    args = parser.parse_args(argv)
    args.phase_set = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = args.phase_set - set(PHASE_KEYS)
    if unknown or not args.phase_set:
        parser.error(f"--phases: unknown or empty ({', '.join(sorted(unknown))})")
    if args.seconds < 1 or args.rounds < 1 or args.threads < 1 or args.connections < args.threads:
        parser.error("--seconds, --rounds and --threads must be >= 1, --connections >= --threads")

    binary = shutil.which("wrk")
    if binary is None:
        print(
            "wrk not found on PATH: install the Debian package `wrk` "
            "(apt-get install wrk); nothing measured.",
            file=sys.stderr,
        )
        return 2
    env = environment()
    env["wrk"] = wrk_version(binary)
    env["http_workers"] = str(args.workers) if args.workers is not None else "server default"
    print(
        "Salus FHIR load benchmark (wrk): " + ", ".join(f"{k} {v}" for k, v in env.items()),
        flush=True,
    )
    results: list[BackendResult] = []
    pg_url = os.environ.get("SALUS_BENCH_DATABASE_URL")
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend == "sqlite":
            results.append(run_backend("SQLite", None, binary, args))
        elif backend == "postgresql":
            if not pg_url:
                print("\nPostgreSQL skipped: SALUS_BENCH_DATABASE_URL is not set.")
                continue
            results.append(run_backend("PostgreSQL", pg_url, binary, args))
        else:
            parser.error(f"unknown backend {backend!r}")
    print()
    for result in results:
        print(render(result, args))
        print()
    if args.json:
        write_results(args.json, env, args, [jsonable(r) for r in results])
    failed = [f"{r.backend} {p.name}" for r in results for p in r.phases.values() if p.errors]
    if failed:
        print(
            "FAILED phases (non-2xx responses or socket errors): " + "; ".join(failed),
            file=sys.stderr,
        )
        return 1
    return 0


def jsonable(result: BackendResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "backend": result.backend,
        "version": result.version,
        "notes": result.notes,
        "phases": {},
    }
    for key, phase in result.phases.items():
        rates = [r.rate for r in phase.rounds]
        out["phases"][key] = {
            "name": phase.name,
            "unit": phase.unit,
            "median": phase.median,
            "min": min(rates),
            "max": max(rates),
            "errors": phase.errors,
            "target": target(key),
            "medplum": MEDPLUM.get(key),
            "rounds": [asdict(r) for r in phase.rounds],
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
