"""``salus demo``: generate a synthetic hospital network, start a fresh Salus on
it and feed every hospital's data through the real interfaces (docs/demo.md).

The demo is self-contained: it ignores ``SALUS_*`` variables and ``--config``
and runs on the embedded defaults (SQLite and an encrypted blob folder) in its
own folder, which it writes a ``salus.toml`` into, so that
``salus --config FOLDER/salus.toml serve`` serves the same data later.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Any

import click
import httpx
from rich import box
from rich.table import Table

from salus.cliutil import console, err_console, progress

__all__ = ["demo"]

MARKER = ".salus-demo"
_DEFAULT_PORTS = {"http": 8080, "dicom": 11112, "mllp": 2575}


class _Stop(Exception):
    """SIGTERM, turned into an exception so that ``finally`` blocks run."""


def _free(host: str, preferred: int | None, default: int) -> int:
    """``preferred`` as given; else the default port when it is free, else any free port."""
    if preferred:
        return preferred
    for port in (default, 0):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise click.ClickException("no free port")


def _fresh_folder(folder: Path) -> None:
    """Create the folder, or empty a previous demo's; refuse anything else."""
    if folder.exists():
        if (folder / MARKER).is_file():
            shutil.rmtree(folder)
        elif not folder.is_dir() or any(folder.iterdir()):
            raise click.ClickException(
                f"{folder} exists and is not a demo folder (no {MARKER} file): "
                "choose another --dir; the demo never overwrites other data"
            )
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (folder / MARKER).write_text("Created by `salus demo`; the next demo run replaces it.\n")


def _toml(values: dict[str, Any]) -> str:
    lines = ["# Written by `salus demo` (docs/demo.md)."]
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"


def _tree_cpu(root: int) -> float | None:
    """CPU seconds of a process and its descendants (Linux /proc; None elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[1] is ppid; utime, stime, cutime, cstime are fields 11-14 after ")".
        table[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / tick)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += table.get(pid, (0, 0.0))[1]
        stack += [p for p, (ppid, _) in table.items() if ppid == pid]
    return total


def _wait_ready(proc: subprocess.Popen[bytes], base: str, ports: list[int], host: str) -> None:
    deadline = time.monotonic() + 90
    pending: list[str | int] = ["http", *ports]
    while pending:
        if proc.poll() is not None:
            raise click.ClickException("the server stopped while starting: see server.log")
        if time.monotonic() > deadline:
            raise click.ClickException("the server did not become ready in 90 s: see server.log")
        item = pending[0]
        try:
            if item == "http":
                ok = httpx.get(f"{base}/ready", timeout=2).status_code == 200
            else:
                socket.create_connection((host, int(item)), timeout=1).close()
                ok = True
        except (OSError, httpx.HTTPError):
            ok = False
        if ok:
            pending.pop(0)
        else:
            time.sleep(0.2)


@contextmanager
def _server(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``salus serve`` as a child process, stopped with SIGTERM (then SIGKILL) on exit."""
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "salus", "serve"], env=env, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _compute_indicators(settings: Any) -> float:
    """What the server's indicator schedule does (the ``warehouse.indicators``
    job): materialize the views and store every indicator's snapshot, so that
    the dashboards open at once on the fresh data. Returns the seconds taken."""
    from salus.services import Services
    from salus.warehouse.indicators.definitions_index import indicators
    from salus.warehouse.indicators.engine import Indicators

    started = time.monotonic()
    services = Services.build(settings)
    try:
        engine = Indicators(services)
        engine.refresh()
        for ind in indicators():
            engine.snapshot(ind)
    finally:
        services.close()
    return time.monotonic() - started


def _logins_table(manifest: dict[str, Any], base: str) -> Table:
    """Users and passwords (the username starts with the hospital's id)."""
    table = Table(title=f"Console: {base}/", box=box.SIMPLE, padding=(0, 1))
    for column in ("username", "role", "password"):
        table.add_column(column, no_wrap=True)
    for login in manifest["logins"]:
        if login["kind"] == "user":
            table.add_row(login["name"], login["role"], login["password"])
    return table


def _summary(network: Any, rendered: Any) -> str:
    shared = len(rendered.manifest["cross_hospital"])
    encounters = sum(len(r.encounters) for r in network.registrations)
    images = sum(len(d.instances) for d in rendered.dicom)
    names = ", ".join(spec.name for spec in network.hospitals)
    return (
        f"Generated (seed {network.seed}, size {network.size_name}): {names}; "
        f"{len(network.people)} people ({shared} at two hospitals), {encounters} encounters, "
        f"{len(rendered.dicom)} imaging studies ({images} images), "
        f"{len(rendered.csv)} datasets for {network.period}."
    )


@click.command()
@click.option(
    "--size",
    type=click.Choice(["tiny", "small", "default"]),
    default="default",
    show_default=True,
    help="How much to generate (tiny: for tests).",
)
@click.option("--seed", type=int, default=2026, show_default=True, help="Same seed, same data.")
@click.option("--patients", type=click.IntRange(1, 5000), help="Patients per hospital.")
@click.option("--studies", type=click.IntRange(0, 500), help="Imaging studies per hospital.")
@click.option("--slices", type=click.IntRange(1, 200), help="Images per CT or MR series.")
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="The demo's 'today' (default: the first day of this month).",
)
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("salus-demo"),
    show_default=True,
    help="The demo's data folder (replaced when it holds an earlier demo; never other data).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, help="HTTP port (default: 8080 when free).")
@click.option("--dicom-port", type=int, help="DIMSE port (default: 11112 when free).")
@click.option("--mllp-port", type=int, help="MLLP port (default: 2575 when free).")
@click.option(
    "--exit-after-ingest", is_flag=True, help="Stop the server once everything is fed (tests)."
)
def demo(
    size: str,
    seed: int,
    patients: int | None,
    studies: int | None,
    slices: int | None,
    as_of: Any,
    folder: Path,
    host: str,
    port: int | None,
    dicom_port: int | None,
    mllp_port: int | None,
    exit_after_ingest: bool,
) -> None:
    """Generate a hospital network, serve it, and feed it through FHIR, HL7 v2 (MLLP),
    DICOM (C-STORE, STOW-RS) and CSV; then keep serving until Ctrl-C."""
    from salus.config import load_settings
    from salus.demo import generate, render, size_named, write
    from salus.demo.feed import Endpoints, feed, totals
    from salus.demo.setup import set_up_directory, write_profiles

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        today = date.today()
        reference = as_of.date() if as_of else today.replace(day=1)
        folder = folder.resolve()
        _fresh_folder(folder)
        network = generate(
            seed,
            size,
            as_of=reference,
            size=size_named(size, patients=patients, studies=studies, slices=slices),
        )
        with console.status("Generating the network"):
            rendered = render(network)
            write(rendered, folder / "generated")
        console.print(_summary(network, rendered))
        ports = {
            "http": _free(host, port, _DEFAULT_PORTS["http"]),
            "dicom": _free(host, dicom_port, _DEFAULT_PORTS["dicom"]),
            "mllp": _free(host, mllp_port, _DEFAULT_PORTS["mllp"]),
        }
        config = folder / "salus.toml"
        config.write_text(
            _toml(
                {
                    "data_dir": folder,
                    "http_host": host,
                    "http_port": ports["http"],
                    "dicom_enabled": True,
                    "dicom_host": host,
                    "dicom_port": ports["dicom"],
                    "mllp_enabled": True,
                    "mllp_host": host,
                    "mllp_port": ports["mllp"],
                    "hl7_profiles_file": write_profiles(network, folder),
                    "dicom_stable_seconds": 2.0,
                    "jobs_poll_interval": 0.2,
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
        env["SALUS_CONFIG"] = str(config)
        init = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "salus", "init"], env=env, capture_output=True, check=False
        )
        if init.returncode != 0:
            raise click.ClickException("salus init failed: " + init.stderr.decode()[-500:])
        settings = load_settings(config, {}, environ={})
        with console.status("Creating organizations, users and clients"):
            secrets = set_up_directory(settings, network, rendered)
        logins = folder / "logins.json"
        logins.touch(mode=0o600)
        logins.write_text(
            json.dumps(
                {"users": [x for x in rendered.manifest["logins"] if x["kind"] == "user"],
                 "clients": secrets},
                ensure_ascii=False,
                indent=1,
            )
        )  # fmt: skip
        base = f"http://{host}:{ports['http']}"
        with _server(env, folder / "server.log") as proc:
            with console.status(f"Starting the server on {base}"):
                _wait_ready(proc, base, [ports["dicom"], ports["mllp"]], host)
            endpoints = Endpoints(
                base, host, ports["mllp"], ports["dicom"], settings.dicom_ae_title
            )
            cpu_before = _tree_cpu(proc.pid)
            own_before = time.process_time()
            started = time.monotonic()
            with progress() as bars:
                tasks = {
                    name: bars.add_task(name, total=total)
                    for name, total in totals(rendered).items()
                }
                errors = feed(
                    network,
                    rendered,
                    endpoints,
                    secrets,
                    lambda name, n: bars.advance(tasks[name], n),
                )
            wall = time.monotonic() - started
            cpu_after = _tree_cpu(proc.pid)
            server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
            report = {
                "wall_seconds": round(wall, 2),
                "server_cpu_seconds": None if server_cpu is None else round(server_cpu, 2),
                "demo_cpu_seconds": round(time.process_time() - own_before, 2),
                "items": totals(rendered),
                "errors": errors,
                "ports": ports,
            }
            (folder / "ingest.json").write_text(json.dumps(report, indent=1) + "\n")
            for error in errors:
                err_console.print(f"[red]error:[/red] {error}", highlight=False)
            cpu_text = f", server CPU {server_cpu:.1f} s" if server_cpu is not None else ""
            console.print(
                f"Ingested in {wall:.1f} s (demo CPU {report['demo_cpu_seconds']} s{cpu_text})."
                f" Generated items and manifest: {folder / 'generated'}"
            )
            if errors:
                raise click.ClickException(f"{len(errors)} feed(s) failed; see server.log")
            with console.status("Computing the indicators for the dashboards"):
                took = _compute_indicators(settings)
            console.print(f"Indicators computed in {took:.1f} s.")
            console.print(_logins_table(rendered.manifest, base))
            console.print(
                f"Clients and their secrets: {logins}. DICOM: AE SALUS on {host}:"
                f"{ports['dicom']}; MLLP on {host}:{ports['mllp']}. Server log: "
                f"{folder / 'server.log'}"
            )
            if exit_after_ingest:
                return
            console.print("Serving until Ctrl-C.")
            while proc.poll() is None:
                time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        err_console.print("Stopping.")
    finally:
        signal.signal(signal.SIGTERM, previous)
