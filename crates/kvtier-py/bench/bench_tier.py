#!/usr/bin/env python3
"""Benchmark of kvtier's vLLM tier from Python: per-call overhead, and store/load GB/s against
fio and against a reference that does what vLLM's file-system tier does.

    python crates/kvtier-py/bench/bench_tier.py --dir /path/on/the/ssd [--gib 1] [--quick]

Needs numpy and the kvtier package (``pip install ./crates/kvtier-py``); fio is optional
(``apt-get install fio``). Every number comes from this one run, side by side on the same
directory, so ratios are meaningful on a shared machine where absolute numbers are not.

What is measured:
1. Per-call overhead on the scheduler thread (median of repeats, microseconds): ``lookup`` of
   128 keys through ``KvtierTier.lookup`` (vLLM calls it per key; hits pin) and through
   ``SlotStore.lookup_many``; ``submit_store`` of a 16-block job (the call only, the IO runs
   after; submitted 2 ms after the last job finished, as between scheduler steps, so the IO
   workers are parked: its cost includes waking one); ``get_finished_jobs`` with nothing
   finished and with one job finished.
2. Throughput, for 2 MiB and 64 KiB blocks, of ``--gib`` GiB in jobs of 16 blocks, timed from
   the first submission until every job is reported finished:
   - store into the empty tier (every job submitted at once), the tier's first fill;
   - load it all back (SSD -> primary, every page verified; every 16th job byte-checked) into
     a 512 MiB primary buffer: a load takes 16 free slots and gives them back when reported
     finished (polling as vLLM's get_finished_jobs does, once per 1 ms "step" while it waits
     for slots), so the loads in flight never share a slot;
   - store as many new blocks into the now full tier: each evicts a stored block and its write
     lands on a slot written before, which is how a serving tier runs nearly all its life.
   Against:
   - vLLM-fs-like: one file per block under hashed subdirectories, written to a temp file with
     O_DIRECT and renamed into place, read back with O_DIRECT ``readv``; one task per job on a
     pool of 16 threads (vLLM's file-system tier defaults). Written from its documented
     behaviour, not its code. It has no capacity bound, so no "full" store.
   - fio: io_uring, O_DIRECT, same block size, queue depth 32, the same bytes on a new file in
     the same directory: one sequential pass writing it (fio preallocates the file, so these
     are first writes into reserved extents, as the empty tier's are: compare with the empty
     store), a second pass over it (compare with the full store), then one pass of random
     reads (compare with the load). Its buffers are the same kind of memory as the primary
     buffer (on this VM, O_DIRECT from 4 KiB pages runs at 0.55-0.65 of what it does from huge
     pages, in fio as in kvtier); a second fio row uses huge pages, as
     ``/work/shared/tools/limits.sh`` runs it: the machine's ceiling.
   Each size runs ``--rounds`` interleaved rounds (kvtier, fs-like, fio); the table shows
   medians, and each ratio is the median of the ratios taken within a round.
   The primary buffer (``--buffer``) is by default a /dev/shm file mapped shared, as vLLM's
   CPU tier is; it is page-aligned, so both Python paths may use O_DIRECT from it.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

import kvtier
from kvtier.vllm import KvtierTier

JOB_BLOCKS = 16
O_DIRECT = getattr(os, "O_DIRECT", 0)


# The primary buffer: "shm" (default) is a file in /dev/shm mapped shared, as vLLM 0.33's
# SharedOffloadRegion allocates its CPU tier (so scheduler and workers see it); "huge" and
# "small" are private anonymous memory with and without transparent huge pages. fio runs from
# the same kind of memory (FIO_MEMORY), and once more from huge pages, its fastest here.
BUFFER = "shm"


def aligned_buffer(nbytes: int) -> tuple[mmap.mmap, np.ndarray]:
    """Page-aligned memory of the kind chosen by --buffer, as a flat uint8 array (kept alive
    by the mmap)."""
    if BUFFER == "shm" and os.path.isdir("/dev/shm"):
        path = f"/dev/shm/kvtier_bench_{os.getpid()}_{time.monotonic_ns()}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, nbytes)
            m = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
            os.unlink(path)  # the mapping keeps the memory until it is closed
        return m, np.frombuffer(m, dtype=np.uint8)
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if BUFFER == "huge" and hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    return m, np.frombuffer(m, dtype=np.uint8)


@dataclass
class Ctx:
    req_id: str


@dataclass
class Job:
    job_id: int
    keys: list
    chunk_ids: np.ndarray
    is_promotion: bool
    req_context: Ctx
    submit_time: float = field(default_factory=time.monotonic)


def median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


# -- per-call overhead ------------------------------------------------------------------------


def overhead(root: str, repeats: int) -> dict:
    block = 64 * 1024
    _m, flat = aligned_buffer(64 * block)
    primary = flat.reshape(64, block)
    primary[:] = 7
    spec = SimpleNamespace(config=None)
    tier = KvtierTier(spec, memoryview(primary), directory=os.path.join(root, "overhead"), capacity_gb=1.0)
    keys = [os.urandom(32) + (0).to_bytes(4, "big") for _ in range(128)]
    for j in range(0, 128, JOB_BLOCKS):
        tier.submit_store(Job(j, keys[j : j + JOB_BLOCKS], np.arange(JOB_BLOCKS), False, Ctx("warm")))
    tier.drain_jobs()
    list(tier.get_finished_jobs())
    out = {}
    ctx = Ctx("r")

    def lookup_128():
        for k in keys:
            tier.lookup(k, ctx)

    def timed_lookups():
        t = median_us(lookup_128, 1)
        tier.on_request_finished(ctx)
        return t

    out["tier.lookup x128 (hits, pinned)"] = statistics.median(timed_lookups() for _ in range(repeats))
    out["SlotStore.lookup_many(128)"] = median_us(lambda: tier.store.lookup_many(keys), repeats)
    miss_keys = [os.urandom(36) for _ in range(128)]
    out["tier.lookup x128 (misses)"] = median_us(lambda: [tier.lookup(k, ctx) for k in miss_keys], repeats)

    submit_times = []
    job_id = 1000
    for _ in range(repeats):
        fresh = [os.urandom(36) for _ in range(JOB_BLOCKS)]
        job = Job(job_id, fresh, np.arange(JOB_BLOCKS), False, ctx)
        time.sleep(0.002)  # workers parked, as between scheduler steps
        t0 = time.perf_counter()
        tier.submit_store(job)
        submit_times.append(time.perf_counter() - t0)
        job_id += 1
        tier.drain_jobs()
        list(tier.get_finished_jobs())
    out["tier.submit_store(16 blocks)"] = statistics.median(submit_times) * 1e6
    out["tier.get_finished_jobs() (none)"] = median_us(lambda: list(tier.get_finished_jobs()), repeats)
    poll_times = []
    for _ in range(repeats):
        tier.submit_store(Job(job_id, [os.urandom(36)], np.arange(1), False, ctx))
        job_id += 1
        tier.drain_jobs()
        t0 = time.perf_counter()
        list(tier.get_finished_jobs())
        poll_times.append(time.perf_counter() - t0)
    out["tier.get_finished_jobs() (1 job)"] = statistics.median(poll_times) * 1e6
    tier.shutdown()
    return out


# -- throughput -------------------------------------------------------------------------------


def fs_path(root: str, key: bytes) -> str:
    h = key.hex()
    return os.path.join(root, h[:3], h[3:5], h + ".bin")


def fs_store_job(root: str, primary: np.ndarray, keys: list, slots: list) -> None:
    suffix = f"_{os.getpid()}_{time.monotonic_ns()}.tmp"
    for key, slot in zip(keys, slots):
        dest = fs_path(root, key)
        if os.path.exists(dest):
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = dest + suffix
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | O_DIRECT, 0o644)
        try:
            if os.write(fd, memoryview(primary[slot])) != primary.shape[1]:
                raise OSError("short write")
        finally:
            os.close(fd)
        os.replace(tmp, dest)


def fs_load_job(root: str, primary: np.ndarray, keys: list, slots: list) -> None:
    for key, slot in zip(keys, slots):
        fd = os.open(fs_path(root, key), os.O_RDONLY | O_DIRECT)
        try:
            if os.readv(fd, [memoryview(primary[slot])]) != primary.shape[1]:
                raise OSError("short read")
        finally:
            os.close(fd)


def jobs_for(n_blocks: int, slots: int) -> list[tuple[list[bytes], list[int]]]:
    """Store jobs of 16 blocks: keys, and the primary slots holding their data (cycling)."""
    keys = [i.to_bytes(8, "little") + os.urandom(24) + (0).to_bytes(4, "big") for i in range(n_blocks)]
    jobs = []
    for j in range(0, n_blocks, JOB_BLOCKS):
        ks = keys[j : j + JOB_BLOCKS]
        jobs.append((ks, [(j + i) % slots for i in range(len(ks))]))
    return jobs


class Window:
    """Destination slots for loads: a job takes 16 free slots and gives them back when it is
    reported finished, as vLLM's primary tier allocates a block per pending load. Checks the
    bytes of the first key of every 16th job against the slot it was stored from."""

    def __init__(self, primary: np.ndarray, original: np.ndarray):
        self.free = list(range(primary.shape[0]))
        self.primary, self.original = primary, original
        self.pending: dict[int, tuple[list[int], list[int]]] = {}
        self.bad = 0

    def take(self, job_id: int, src: list[int]) -> list[int] | None:
        if len(self.free) < len(src):
            return None
        dst = [self.free.pop() for _ in src]
        self.pending[job_id] = (src, dst)
        return dst

    def done(self, job_id: int, success: bool) -> None:
        src, dst = self.pending.pop(job_id)
        if not success or (job_id % 16 == 0 and not (self.primary[dst[0]] == self.original[src[0]]).all()):
            self.bad += 1
        self.free.extend(dst)


def store_all(store, jobs: list, first_id: int) -> float:
    """Submits every store job at once and waits for all of them: seconds taken."""
    t0 = time.perf_counter()
    for i, (keys, slots) in enumerate(jobs):
        store.submit_store(first_id + i, keys, slots)
    store.drain()
    elapsed = time.perf_counter() - t0
    results = store.take_finished()
    assert all(r.success for r in results), "a store job failed"
    return elapsed


def run_kvtier(root: str, primary: np.ndarray, jobs: list, n_blocks: int, backend: str) -> tuple[float, float, float]:
    """GB/s of: storing into the empty tier, loading it all back (verified, byte-checked), and
    storing as many new blocks into the now full tier (each evicts a stored block and its
    write lands on a slot written before), as a serving tier runs nearly all its life."""
    block = primary.shape[1]
    store = kvtier.SlotStore(primary, os.path.join(root, "kvtier"), n_blocks, model_id="bench", io_backend=backend)
    t_fill = store_all(store, jobs, 0)
    window = Window(primary, primary.copy())
    t0 = time.perf_counter()
    for i, (keys, src) in enumerate(jobs):
        while (dst := window.take(i, src)) is None:
            # what vLLM's get_finished_jobs poll sees, once per "step" (1 ms): a busy loop
            # here would take a core from the IO threads on a 2-core machine
            finished = store.take_finished()
            for r in finished:
                window.done(r.job_id, r.success)
            if not finished:
                time.sleep(0.001)
        store.submit_load(i, keys, dst)
    store.drain()
    for r in store.take_finished():
        window.done(r.job_id, r.success)
    t_load = time.perf_counter() - t0
    assert window.bad == 0 and not window.pending, f"{window.bad} load jobs failed or not byte-exact"
    t_full = store_all(store, jobs_for(n_blocks, primary.shape[0]), len(jobs))
    m = store.metrics()
    assert m["keys_stored"] == 2 * n_blocks, f"stored {m['keys_stored']} of {2 * n_blocks} keys"
    store.shutdown()
    total = n_blocks * block
    return total / t_fill / 1e9, total / t_full / 1e9, total / t_load / 1e9


def run_fs(root: str, primary: np.ndarray, jobs: list, n_blocks: int, threads: int) -> tuple[float, float]:
    block = primary.shape[1]
    base = os.path.join(root, "fs")
    window = Window(primary, primary.copy())
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        for f in [pool.submit(fs_store_job, base, primary, k, s) for k, s in jobs]:
            f.result()
        t_store = time.perf_counter() - t0
        t0 = time.perf_counter()
        running: dict = {}
        for i, (keys, src) in enumerate(jobs):
            while (dst := window.take(i, src)) is None:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    window.done(running.pop(f), f.exception() is None)
            running[pool.submit(fs_load_job, base, primary, keys, dst)] = i
        for f in list(running):
            f.exception()
            window.done(running.pop(f), f.exception() is None)
        t_load = time.perf_counter() - t0
    assert window.bad == 0, f"{window.bad} fs load jobs failed or not byte-exact"
    total = n_blocks * block
    return total / t_store / 1e9, total / t_load / 1e9


# fio's IO memory for each --buffer kind: the same kind of pages as the primary buffer.
FIO_MEMORY = {"shm": "mmapshared", "small": "mmap", "huge": "malloc"}


def fio_gbs(path: str, block: int, mib: int, rw: str, memory: str) -> float | None:
    cmd = [
        "fio", "--name=kvtier-bench", f"--filename={path}", f"--size={mib}M", f"--bs={block}",
        "--iodepth=32", "--ioengine=io_uring", "--direct=1", f"--rw={rw}", "--iomem_align=2097152",
        f"--iomem={FIO_MEMORY[memory]}", "--output-format=json",
    ]
    env = dict(os.environ)
    if memory == "huge":
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"  # THP-advised malloc, as limits.sh runs it
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        return None
    job = json.loads(r.stdout)["jobs"][0]
    return job["write" if "write" in rw else "read"]["bw_bytes"] / 1e9


def run_fio(root: str, block: int, gib: float, memory: str) -> tuple[float, float, float] | None:
    """fio moving the same bytes as kvtier, on a new file in the same directory: one sequential
    pass writing it (fio preallocates the file, so these are first writes into reserved
    extents, as the empty tier's are), a second pass over it (blocks written before, as the
    full tier's are), then one pass of random reads over it."""
    if shutil.which("fio") is None:
        return None
    path = os.path.join(root, "fio.dat")
    mib = max(1, int(gib * 1024))
    try:
        out = tuple(fio_gbs(path, block, mib, rw, memory) for rw in ("write", "write", "randread"))
    finally:
        if os.path.exists(path):
            os.remove(path)
    return None if None in out else out


def drop_caches() -> None:
    """Best effort (root only): the buffered parts of the fs reference (directories, inodes)
    start cold for each phase too."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="directory on the SSD to measure (default: a temp dir)")
    ap.add_argument("--gib", type=float, default=1.0, help="data per throughput run (default 1 GiB)")
    ap.add_argument("--threads", type=int, default=16, help="thread pool of the fs reference (vLLM: 16)")
    ap.add_argument("--backend", default="auto", help="kvtier IO backend: auto, uring, psync")
    ap.add_argument("--repeats", type=int, default=200, help="repeats of each overhead measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each throughput run (median shown)")
    ap.add_argument("--quick", action="store_true", help="64 MiB, 1 round and 20 repeats (a smoke run)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--buffer",
        choices=("shm", "huge", "small"),
        default="shm",
        help="primary buffer: /dev/shm shared mapping as vLLM's (default), or private memory with huge or 4 KiB pages",
    )
    args = ap.parse_args()
    global BUFFER
    BUFFER = args.buffer
    if args.quick:
        args.gib, args.repeats, args.rounds = 1 / 16, 20, 1
    root = tempfile.mkdtemp(prefix="kvtier-bench-", dir=args.dir)
    results: dict = {"overhead_us": {}, "throughput_gbs": {}}
    try:
        print(f"kvtier {kvtier.__version__}, directory {root}, {args.gib:g} GiB per run")
        print("\nper-call overhead (median, µs):")
        for name, us in overhead(root, args.repeats).items():
            results["overhead_us"][name] = round(us, 2)
            print(f"  {name:<36} {us:9.1f}")
        print(f"\nthroughput (GB/s; primary buffer: {BUFFER}; fio: the same kind of memory, and huge pages)")
        print(f"(median of {args.rounds} interleaved rounds; each ratio is taken within its round)")
        print("                        store    store     load  |  ratio to fio (same memory)")
        print("                        (empty)  (full)          |  empty   full   load")
        for block in (2 << 20, 64 << 10):
            n_blocks = max(JOB_BLOCKS, int(args.gib * (1 << 30)) // block)
            slots = max(4 * JOB_BLOCKS, min(n_blocks, (512 << 20) // block))
            _m, flat = aligned_buffer(slots * block)
            primary = flat.reshape(slots, block)
            primary[:] = np.random.default_rng(1).integers(0, 256, size=primary.shape, dtype=np.uint8)
            jobs = jobs_for(n_blocks, slots)
            label = f"{block >> 20} MiB" if block >= 1 << 20 else f"{block >> 10} KiB"
            # Interleaved rounds: on a shared VM the disk's speed moves by 2x from one minute to
            # the next, so each ratio is taken within a round and the median over rounds is shown.
            runs: dict[str, list] = {"kvtier": [], "vLLM-fs-like": [], "fio": [], "fio huge pg": []}
            for _ in range(args.rounds):
                drop_caches()
                runs["kvtier"].append(run_kvtier(root, primary, jobs, n_blocks, args.backend))
                drop_caches()
                fs = run_fs(root, primary, jobs, n_blocks, args.threads)
                # the fs-like reference has no capacity bound (vLLM's tier evicts nothing): no "full"
                runs["vLLM-fs-like"].append((fs[0], None, fs[1]))
                for sub in ("kvtier", "fs"):
                    shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
                fio = run_fio(root, block, args.gib, BUFFER)
                if fio:
                    runs["fio"].append(fio)
                    # the machine's ceiling: huge-page buffers
                    runs["fio huge pg"].append(fio if BUFFER == "huge" else run_fio(root, block, args.gib, "huge"))
            results["throughput_gbs"][label] = runs
            have_fio = len(runs["fio"]) == args.rounds and None not in runs["fio huge pg"]
            for name, per_round in runs.items():
                if not per_round or (name == "fio huge pg" and BUFFER == "huge"):
                    continue
                row = [None if None in col else statistics.median(col) for col in zip(*per_round)]
                cells = " ".join("     n/a" if v is None else f"{v:8.2f}" for v in row)
                ratios = []
                for c, col in enumerate(zip(*per_round)):
                    if None in col or not have_fio:
                        ratios.append("  n/a ")
                    else:
                        ratios.append(f"{statistics.median(v / f[c] for v, f in zip(col, runs['fio'])):5.2f} ")
                print(f"  {label:<7} {name:<13}{cells}  |  {'  '.join(ratios)}")
            if have_fio and BUFFER != "huge":
                ceiling = [
                    f"{statistics.median(k[c] / f[c] for k, f in zip(runs['kvtier'], runs['fio huge pg'])):.2f}"
                    for c in range(3)
                ]
                print(f"  {label:<7} kvtier / fio huge pg (empty, full, load): {', '.join(ceiling)}")
            kv_fs = [(k[0] / f[0], k[2] / f[2]) for k, f in zip(runs["kvtier"], runs["vLLM-fs-like"])]
            store_x = statistics.median(x[0] for x in kv_fs)
            load_x = statistics.median(x[1] for x in kv_fs)
            print(f"  {label:<7} kvtier / vLLM-fs-like: store {store_x:.2f}x, load {load_x:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
