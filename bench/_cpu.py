"""CPU accounting of a benchmark phase, shared by the FHIR benches: the CPU of the
load generator, of the ``salus serve`` process tree, of PostgreSQL's processes and of
the whole machine, sampled at both ends of a phase and turned into cores (CPU seconds
per wall second). Each bench names the load generator's share in its own output
(``bench`` for :mod:`fhir_bench`'s threads, ``wrk`` for :mod:`fhir_load_bench`'s
child processes)."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from _server import machine, postgres_cpu, processes, tree_cpu


def own_cpu() -> float:
    """CPU seconds of this process (all its threads): a load generator run in it."""
    return time.process_time()


def children_cpu() -> float:
    """CPU seconds of this process's reaped children: a load generator run as a
    child process (``wrk``), counted once it has exited."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class CpuSample:
    wall: float
    client: float  # the load generator's CPU seconds (own_cpu or children_cpu)
    server: float
    postgres: dict[int, float]
    busy: float
    total: float


class CpuUse(NamedTuple):
    """CPU use between two samples, in cores."""

    client: float
    server: float
    postgres: float
    machine_busy: float  # fraction of all CPUs busy
    others: float  # busy cores not accounted to the three above (other processes)


class PhaseMeter:
    """Samples the CPU of a phase's processes: the load generator (``client``), the
    process tree of ``server_pid``, and with ``postgres`` PostgreSQL's processes (those
    of ``database`` only when it is named: the server is shared)."""

    def __init__(
        self,
        server_pid: int,
        client: Callable[[], float],
        postgres: bool,
        database: str | None = None,
    ) -> None:
        self.server_pid = server_pid
        self.client = client
        self.postgres = postgres
        self.database = database

    def sample(self) -> CpuSample:
        busy, total = machine()
        table = processes()
        return CpuSample(
            time.perf_counter(),
            self.client(),
            tree_cpu(table, self.server_pid),
            postgres_cpu(table, self.database) if self.postgres else {},
            busy,
            total,
        )

    @staticmethod
    def use(start: CpuSample, end: CpuSample) -> CpuUse:
        wall = max(end.wall - start.wall, 1e-9)
        # Per process, so that a connection closed during the phase cannot make it negative
        # (its CPU time is lost instead: PostgreSQL's figure is a floor).
        postgres = sum(
            max(0.0, t - start.postgres.get(pid, 0.0)) for pid, t in end.postgres.items()
        )
        client = (end.client - start.client) / wall
        server = (end.server - start.server) / wall
        postgres /= wall
        machine_busy = (end.busy - start.busy) / max(end.total - start.total, 1e-9)
        busy_cores = machine_busy * (os.cpu_count() or 1)
        others = max(0.0, busy_cores - client - server - postgres)
        return CpuUse(client, server, postgres, machine_busy, others)
