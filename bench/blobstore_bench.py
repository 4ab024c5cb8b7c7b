"""Blob store put/get throughput: plain files vs. the store vs. the encrypted store.

Three contenders run side by side in one process, round by round, in an order
rotated every round so that drift (disk writeback, thermal, noisy neighbours)
affects them all alike:

* ``plain files``: the floor. Each object is written the durable way the store
  writes (temporary file in the same filesystem, fsync, ``os.replace`` into a
  ``ab/cd/<name>`` shard, fsync of the folder) and read back with
  ``open().read()``. No hashing, no trailer.
* ``filesystem store``: ``BlobStore(FileObjectStore(root), None)``, ``put`` and
  ``get`` (SHA-256 addressing, metadata trailer).
* ``filesystem store + encryption``: the same with a ``FileKeyProvider``
  (AES-256-GCM, 64 KiB segments, per-blob data key).

Every object is distinct random bytes and every contender writes into a fresh
folder each round, so deduplication never short-circuits a put. Reads are
warm-cache (dropping the page cache needs root), so ``get`` measures CPU
work plus a memory copy, not the disk. Bytes read back are checked outside the
timed section.

Run from the repository root, in the project's virtualenv (well under a
minute with the defaults on a 2-core VM)::

    python bench/blobstore_bench.py [--objects 300] [--rounds 5] [--warmup 1]
                                    [--size-kib 512] [--dir /tmp] [--json out.json]

Reported: per contender, the median over rounds of put and get throughput
(objects/s, MB/s with MB = 10^6 bytes) with the min-max spread, and the cost
of encryption: ``(median time encrypted / median time unencrypted - 1) * 100``
(with the range of the same ratio taken round by round). Timing assertions
belong here, not in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cryptography
from cryptography.hazmat.backends.openssl import backend as openssl_backend

from salus.storage.blobstore import BlobStore
from salus.storage.keys import FileKeyProvider
from salus.storage.objects import FileObjectStore

PLAIN, STORE, SEALED = "plain files", "filesystem store", "filesystem store + encryption"
CONTENDERS = (PLAIN, STORE, SEALED)
TARGET_PCT = 15.0

Putter = Callable[[bytes, str], str]
Getter = Callable[[str], bytes]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_contender(root: Path) -> tuple[Putter, Getter]:
    """Durable writes with the store's recipe, minus hashing, trailer and encryption."""
    tmp_dir = root / ".tmp"
    tmp_dir.mkdir(parents=True)

    def path_for(name: str) -> Path:
        return root / name[0:2] / name[2:4] / name

    def put(data: bytes, name: str) -> str:
        tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        final = path_for(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return name

    def get(name: str) -> bytes:
        with open(path_for(name), "rb") as fh:
            return fh.read()

    return put, get


def store_contender(root: Path, keyfile: Path | None) -> tuple[Putter, Getter]:
    keys = FileKeyProvider.create(keyfile) if keyfile is not None else None
    store = BlobStore(FileObjectStore(root), keys)
    return (lambda data, _name: store.put(data).digest), store.get


def make_contender(name: str, work: Path) -> tuple[Putter, Getter]:
    if name == PLAIN:
        return plain_contender(work / "objects")
    return store_contender(work / "objects", work / "keys.json" if name == SEALED else None)


def run_round(name: str, work: Path, objects: list[bytes], names: list[str]) -> tuple[float, float]:
    """Put then get all objects into a fresh folder; returns (put seconds, get seconds)."""
    work.mkdir(parents=True)
    try:
        put, get = make_contender(name, work)
        os.sync()  # settle writeback and discards left by the previous contender
        start = time.perf_counter()
        ids = [put(data, obj_name) for data, obj_name in zip(objects, names, strict=True)]
        put_s = time.perf_counter() - start
        os.sync()
        start = time.perf_counter()
        for obj_id in ids:
            get(obj_id)  # results dropped, as a server streaming blobs out would
        get_s = time.perf_counter() - start
        if any(get(obj_id) != data for obj_id, data in zip(ids, objects, strict=True)):
            raise SystemExit(f"{name}: bytes read back differ from bytes written")
        return put_s, get_s
    finally:
        shutil.rmtree(work)


def machine_info(directory: Path) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "filesystem": filesystem_type(directory),
        "platform": platform.platform(),
    }


def filesystem_type(directory: Path) -> str:
    """The type of the mount holding ``directory`` (/proc/mounts, else ``stat -f``)."""
    target, best, fs = str(directory.resolve()), -1, "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            mount, kind = line.split()[1:3]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= best:  # the last mount on a path wins
                best, fs = len(mount), kind
    except (OSError, ValueError):
        try:
            fs = subprocess.run(
                ["stat", "-f", "-c", "%T", target], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return fs


def summarise(times: list[float], count: int, size: int) -> dict[str, float]:
    rates = sorted(count / t for t in times)
    out = {"median_s": statistics.median(times)}
    for key, rate in (("", statistics.median(rates)), ("_min", rates[0]), ("_max", rates[-1])):
        out[f"obj_per_s{key}"], out[f"mb_per_s{key}"] = rate, rate * size / 1e6
    return out


def markdown(results: dict[str, dict[str, dict[str, float]]], cost: dict[str, list[float]]) -> str:
    lines = [
        "| contender | put obj/s | put MB/s (min-max) | get obj/s | get MB/s (min-max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ops in results.items():
        cells = [name]
        for op in ("put", "get"):
            s = ops[op]
            cells.append(f"{s['obj_per_s']:.0f}")
            cells.append(f"{s['mb_per_s']:.0f} ({s['mb_per_s_min']:.0f}-{s['mb_per_s_max']:.0f})")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for op in ("put", "get"):
        median, *per_round = cost[op]
        verdict = "within" if median <= TARGET_PCT else "OVER"
        lines.append(
            f"- encryption cost on {op}: {median:+.1f}% ({verdict} the {TARGET_PCT:.0f}% target;"
            f" round by round {min(per_round):+.0f}% to {max(per_round):+.0f}%)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=300, help="objects per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--size-kib", type=int, default=512, help="object size in KiB")
    parser.add_argument(
        "--dir", type=Path, default=None, help="parent of the temporary root (default: /tmp)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if min(args.objects, args.rounds, args.size_kib) < 1 or args.warmup < 0:
        parser.error("--objects, --rounds, --size-kib must be positive; --warmup >= 0")

    size = args.size_kib * 1024
    root = Path(tempfile.mkdtemp(prefix="salus-bench-", dir=args.dir))
    try:
        info = machine_info(root)
        objects = [os.urandom(size) for _ in range(args.objects)]
        names = [os.urandom(32).hex() for _ in objects]  # plain files: shard like digests
        times: dict[str, dict[str, list[float]]] = {c: {"put": [], "get": []} for c in CONTENDERS}
        for rnd in range(-args.warmup, args.rounds):  # negative rounds: untimed warm-up
            order = CONTENDERS[rnd % 3 :] + CONTENDERS[: rnd % 3]
            for name in order:
                put_s, get_s = run_round(name, root / f"r{rnd}-{name[:5]}", objects, names)
                label = f"round {rnd + 1}/{args.rounds}" if rnd >= 0 else "warm-up"
                print(f"{label} {name}: put {put_s:.3f}s get {get_s:.3f}s", file=sys.stderr)
                if rnd >= 0:
                    times[name]["put"].append(put_s)
                    times[name]["get"].append(get_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    results = {
        c: {op: summarise(times[c][op], args.objects, size) for op in ("put", "get")}
        for c in CONTENDERS
    }
    cost = {  # [cost of the medians, then the cost round by round]
        op: [
            (sealed / store - 1) * 100
            for sealed, store in [
                (results[SEALED][op]["median_s"], results[STORE][op]["median_s"]),
                *zip(times[SEALED][op], times[STORE][op], strict=True),
            ]
        ]
        for op in ("put", "get")
    }
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['filesystem']} "
        f"({info['platform']}); Python {info['python']}, cryptography "
        f"{info['cryptography']}, {info['openssl']}; {info['date']}"
    )
    print(
        f"{args.objects} objects of {args.size_kib} KiB per round, {args.rounds} rounds, "
        "medians over rounds; reads are warm-cache.\n"
    )
    print(markdown(results, cost))
    if args.json is not None:
        params = {k: getattr(args, k) for k in ("objects", "rounds", "warmup", "size_kib")}
        doc = {"machine": info, "params": params, "times_s": times, "results": results}
        doc["encryption_cost_pct"] = {"median_and_rounds": cost, "target": TARGET_PCT}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
