"""Blob store put/get throughput: plain files vs. the store vs. the encrypted store.

Three contenders run side by side in one process, round by round, in an order
rotated every round so that drift (disk writeback, thermal, noisy neighbours)
affects them all alike:

* ``plain files``: the floor. Each object is written the durable way the store
  writes (temporary file in the same filesystem, fsync, ``os.replace`` into a
  ``ab/cd/<name>`` shard, fsync of the folder; a new shard folder is fsynced in
  its parent) and read back with ``open().read()``. No hashing, no trailer.
* ``filesystem store``: ``BlobStore(FileObjectStore(root), None)``, ``put`` and
  ``get`` (SHA-256 addressing, metadata trailer).
* ``filesystem store + encryption``: the same with a ``FileKeyProvider``
  (AES-256-GCM, 64 KiB segments, per-blob data key).

Objects are distinct random bytes and each contender writes into a fresh folder
each round, so deduplication never short-circuits a put. Each object is read
twice: warm (``get``, straight after the put, from the page cache: CPU and
memory work, not the disk), then cold (``cold``: after ``os.sync()``, every file
under the contender's folder is dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs no root; file metadata stays
cached, and a VM's host may still cache its disk). Bytes read back are checked
outside the timed sections.

Run from the repository root in the project's virtualenv (under a minute with
the defaults on a 2-core VM)::

    python bench/blobstore_bench.py [--objects 300] [--rounds 5] [--warmup 1]
                                    [--size-kib 512] [--dir /tmp] [--json out.json]

Reported per contender and operation (put, warm get, cold get): the median over
rounds of throughput (objects/s; MB/s with MB = 10^6 bytes, with the min-max
spread), of wall time per object and of process CPU time (user + system) per
object, which leaves out waiting for the disk and so is steadier than wall time
on a shared VM. Encryption cost is ``(median time encrypted / median time
unencrypted - 1) * 100``, for wall and CPU time, plus the wall-time ratio round
by round (median, min, max) and the difference in ms per object. Timing
assertions belong here, not in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import cryptography
from cryptography.hazmat.backends.openssl import backend as openssl_backend

from salus.storage.blobstore import BlobStore
from salus.storage.keys import FileKeyProvider
from salus.storage.objects import FileObjectStore

PLAIN, STORE, SEALED = "plain files", "filesystem store", "filesystem store + encryption"
CONTENDERS = (PLAIN, STORE, SEALED)
TARGET_PCT = 15.0
OPS = {"put": "put", "get": "warm get", "cold": "cold get"}

Putter = Callable[[bytes, str], str]
Getter = Callable[[str], bytes | bytearray]


class Cost(TypedDict):
    """Encryption cost, %: of median wall times, of median CPU times, round by round;
    and the extra median wall time per object, ms."""

    wall: float
    cpu: float
    rounds: list[float]
    ms_per_obj: float


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
        if not final.parent.is_dir():  # new shard folders are made durable, as the store does
            for level in (final.parent.parent, final.parent):
                if not level.is_dir():
                    level.mkdir(exist_ok=True, mode=0o700)
                    _fsync_dir(level.parent)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return name

    def get(name: str) -> bytes:
        with open(path_for(name), "rb") as fh:
            return fh.read()

    return put, get


def make_contender(name: str, work: Path) -> tuple[Putter, Getter]:
    if name == PLAIN:
        return plain_contender(work / "objects")
    keys = FileKeyProvider.create(work / "keys.json") if name == SEALED else None
    store = BlobStore(FileObjectStore(work / "objects"), keys)
    return (lambda data, _name: store.put(data).digest), store.get


def evict(folder: Path) -> int:
    """Write back, then drop from the page cache, every file under ``folder``."""
    os.sync()  # DONTNEED leaves dirty pages in place
    count = 0
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            count += 1
    return count


def _timed(action: Callable[[], object]) -> tuple[float, float]:
    """Run ``action``; returns (wall seconds, CPU seconds of this process, user + system)."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_round(name: str, work: Path, objects: list[bytes], names: list[str]) -> dict[str, float]:
    """Put, get warm, then get cold all objects in a fresh folder; returns wall and CPU
    seconds of each phase."""
    work.mkdir(parents=True)
    ids: list[str] = []
    try:
        put, get = make_contender(name, work)
        os.sync()  # settle writeback and discards left by the previous contender
        put_s, put_cpu = _timed(lambda: ids.extend(map(put, objects, names)))
        os.sync()

        def get_all() -> None:  # results dropped, as a server streaming blobs out would
            for obj_id in ids:
                get(obj_id)

        get_s, get_cpu = _timed(get_all)
        if evict(work / "objects") < len(ids):
            raise SystemExit(f"{name}: fewer files than objects to evict")
        cold_s, cold_cpu = _timed(get_all)
        if any(get(obj_id) != data for obj_id, data in zip(ids, objects, strict=True)):
            raise SystemExit(f"{name}: bytes read back differ from bytes written")
        return {
            "put": put_s, "get": get_s, "cold": cold_s,
            "put_cpu": put_cpu, "get_cpu": get_cpu, "cold_cpu": cold_cpu,
        }  # fmt: skip
    finally:
        shutil.rmtree(work)


def machine_info(directory: Path) -> dict[str, str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    models = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    cpu = next(models, "unknown")
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
    """The type of the mount holding ``directory``, from /proc/mounts (``stat -f`` says
    "ext2/ext3" for ext4)."""
    target, best, fs = str(directory.resolve()), -1, "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            mount, kind = line.split()[1:3]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= best:  # the last mount on a path wins
                best, fs = len(mount), kind
    except (OSError, ValueError):
        pass
    return fs


def summarise(times: dict[str, list[float]], count: int, size: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for op in OPS:
        rates = sorted(count / t for t in times[op])
        out[f"{op}_median_s"] = statistics.median(times[op])
        out[f"{op}_ms_per_obj"] = out[f"{op}_median_s"] * 1000 / count
        out[f"{op}_cpu_ms_per_obj"] = statistics.median(times[f"{op}_cpu"]) * 1000 / count
        for key, rate in (("", statistics.median(rates)), ("_min", rates[0]), ("_max", rates[-1])):
            out[f"{op}_obj_per_s{key}"], out[f"{op}_mb_per_s{key}"] = rate, rate * size / 1e6
    return out


def markdown(results: dict[str, dict[str, float]], cost: dict[str, Cost]) -> str:
    lines = [
        "| operation | contender | obj/s | MB/s (min-max) | wall ms/obj | CPU ms/obj |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for op, label in OPS.items():
        for name, r in results.items():
            mb = [r[f"{op}_mb_per_s{key}"] for key in ("", "_min", "_max")]
            lines.append(
                f"| {label} | {name} | {r[f'{op}_obj_per_s']:.0f} | {mb[0]:.0f} ({mb[1]:.0f}-"
                f"{mb[2]:.0f}) | {r[f'{op}_ms_per_obj']:.3f} | {r[f'{op}_cpu_ms_per_obj']:.3f} |"
            )
    lines.append("")
    for op, label in OPS.items():
        c, rounds = cost[op], cost[op]["rounds"]
        verdict = "within" if c["wall"] <= TARGET_PCT else "OVER"
        lines.append(
            f"- encryption cost on {label}: {c['wall']:+.1f}% wall time ({verdict} the "
            f"{TARGET_PCT:.0f}% target; round by round median {statistics.median(rounds):+.0f}%, "
            f"{min(rounds):+.0f}% to {max(rounds):+.0f}%), {c['ms_per_obj']:+.3f} ms/object, "
            f"{c['cpu']:+.1f}% CPU time"
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
        times: dict[str, dict[str, list[float]]] = {c: {} for c in CONTENDERS}
        for rnd in range(-args.warmup, args.rounds):  # negative rounds: untimed warm-up
            order = CONTENDERS[rnd % 3 :] + CONTENDERS[: rnd % 3]
            for name in order:
                got = run_round(name, root / f"r{rnd}-{name[:5]}", objects, names)
                label = f"round {rnd + 1}/{args.rounds}" if rnd >= 0 else "warm-up"
                phases = " ".join(f"{op} {got[op]:.3f}s" for op in OPS)
                print(f"{label} {name}: {phases}", file=sys.stderr)
                if rnd >= 0:
                    for metric, value in got.items():
                        times[name].setdefault(metric, []).append(value)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    results = {c: summarise(times[c], args.objects, size) for c in CONTENDERS}
    sealed, store = results[SEALED], results[STORE]
    cost = {
        op: Cost(
            wall=(sealed[f"{op}_median_s"] / store[f"{op}_median_s"] - 1) * 100,
            cpu=(sealed[f"{op}_cpu_ms_per_obj"] / store[f"{op}_cpu_ms_per_obj"] - 1) * 100,
            rounds=[
                (a / b - 1) * 100 for a, b in zip(times[SEALED][op], times[STORE][op], strict=True)
            ],
            ms_per_obj=sealed[f"{op}_ms_per_obj"] - store[f"{op}_ms_per_obj"],
        )
        for op in OPS
    }
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['filesystem']} "
        f"({info['platform']}); Python {info['python']}, cryptography "
        f"{info['cryptography']}, {info['openssl']}; {info['date']}"
    )
    print(
        f"{args.objects} objects of {args.size_kib} KiB per round, {args.rounds} rounds, "
        "medians over rounds; warm gets from the page cache, cold gets after "
        "posix_fadvise(DONTNEED).\n"
    )
    print(markdown(results, cost))
    if args.json is not None:
        params = {k: getattr(args, k) for k in ("objects", "rounds", "warmup", "size_kib")}
        doc = {"machine": info, "params": params, "times_s": times, "results": results}
        doc["encryption_cost_pct"] = {**cost, "target": TARGET_PCT}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
