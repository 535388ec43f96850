"""Benchmark the CVG-Text protocol's two entry points against a plain per-query loop.

    .venv/bin/python benchmarks/bench_protocol.py            # 1k, 30k, 100k; writes RESULTS.md
    .venv/bin/python benchmarks/bench_protocol.py --sizes 1000 --no-record

Queries = gallery: random release names around Midtown Manhattan (half panoramas, half
single-view photos), each query's true tile the gallery item of the same name, scope 100.
Embeddings of dim 512 with small integer entries (gallery g in -8..8, query = its tile's
row + noise in -50..50), so every dot product is exact: both entry points see the same scores
and must give the same per-query table (checked by a digest of it).

- ``evaluate`` (the matrix given): the float32 similarity q @ g.T, made before timing;
- ``evaluate_embeddings``: the embeddings only.

Each (size, entry point) runs in its own process, so its peak RSS is that run's: inputs, the
imports, and what the protocol adds. Time: best wall clock and CPU time of 3 runs, after a
warm-up on 100 queries (imports). Memory: the RSS just before the timed runs and the process's
peak RSS after them; the tracemalloc peak of one more run (what the protocol allocates in
Python and numpy, the inputs excluded). The plain loop (every query-gallery pair in Python,
as the reference code does) runs at 1,200 x 1,200 and must give the same report as both entry
points there. BLAS runs on one thread (OMP_NUM_THREADS=1 in the workers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from geotextloc.data.release import PANORAMA, parse_name
from geotextloc.eval import evaluate, evaluate_embeddings
from results import RESULTS, machine, record  # benchmarks/results.py

CENTER = (40.7549, -73.9840)
SPREAD_DEG = 0.03  # about 6.7 km x 5 km
DIM = 512  # the target dimension; |dot| <= 512 * 8 * 58 < 2**24, so float32 is exact
LOOP_SIZE = 1200
ENTRIES = {"matrix": "`evaluate` (matrix given)", "embeddings": "`evaluate_embeddings`"}
MIB = 2**20


def random_names(n: int, rng: np.random.Generator) -> list[str]:
    lat = CENTER[0] + rng.uniform(-SPREAD_DEG, SPREAD_DEG, n)
    lon = CENTER[1] + rng.uniform(-SPREAD_DEG, SPREAD_DEG, n)
    return [
        f"{a:.8f},{b:.8f}_2022-08_pano{i}_d62_z3.jpg" if i % 2 else f"{a:.8f},{b:.8f}_photo{i}.jpg"
        for i, (a, b) in enumerate(zip(lat, lon))
    ]


def random_embeddings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(queries, gallery) float32 (n, DIM) with integer entries, made in slices (no int64 copy)."""
    gallery, queries = np.empty((n, DIM), np.float32), np.empty((n, DIM), np.float32)
    for start in range(0, n, 8192):
        rows = slice(start, min(start + 8192, n))
        gallery[rows] = rng.integers(-8, 9, (rows.stop - start, DIM), dtype=np.int8)
        queries[rows] = gallery[rows] + rng.integers(-50, 51, (rows.stop - start, DIM), dtype=np.int8)
    return queries, gallery


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(min(1.0, a)))


def plain_loop(similarity: np.ndarray, queries: list[str], gallery: list[str], scope: int) -> dict:
    """The protocol one query and one gallery item at a time (the reference code's way)."""
    coords = [(info.lat, info.lon) for info in map(parse_name, gallery)]
    rows = []
    for i, query in enumerate(queries):
        q = parse_name(query)
        dist = [haversine(q.lat, q.lon, lat, lon) for lat, lon in coords]
        candidates = sorted(range(len(gallery)), key=dist.__getitem__)[:scope]
        row = similarity[i].tolist()
        names, first = [], []
        for j in sorted(candidates, key=lambda j: -row[j]):
            if gallery[j] not in names:
                names.append(gallery[j])
                first.append(j)
        rank = names.index(query) + 1 if query in names else math.inf
        rows.append((q.view, rank, 0.0 if names[0] == query else dist[first[0]]))

    def summary(view):
        sel = [r for r in rows if view is None or r[0] == view]
        pct = lambda hits: 100.0 * sum(hits) / len(sel)  # noqa: E731
        out = {f"R@{k}": pct(r[1] <= k for r in sel) for k in (1, 5, 10)}
        out |= {f"L@{m}": pct(r[2] <= m / 1000 for r in sel) for m in (50, 100, 150)}
        return out | {"Deviation": sum(r[2] for r in sel) / len(sel), "Count": len(sel)}

    return {"overall": summary(None), "panorama": summary(PANORAMA), "single_view": summary("single")}


def same_summary(got: dict, want: dict) -> bool:
    return all(math.isclose(got[g][k], want[g][k], abs_tol=1e-9) for g in want for k in want[g])


def timed(repeat: int, fn, *args, **kwargs):
    """Result, best wall seconds and best CPU seconds over ``repeat`` runs (min: least disturbed)."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return out, min(walls), min(cpus)


def traced_peak_mib(fn, *args, **kwargs) -> float:
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


def rss_mib() -> float:
    """The process's resident set now (VmRSS)."""
    line = next(line for line in open("/proc/self/status") if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def digest(report) -> str:
    columns = ["query", *(f"top{j}" for j in range(1, 6)), "rank", "hit", "deviation_km"]
    return hashlib.sha256(report.table[columns].to_csv(index=False).encode()).hexdigest()[:16]


def worker(n: int, entry: str, scope: int) -> dict:
    """One (size, entry point) in this process: inputs, warm-up, timed runs, memory."""
    rng = np.random.default_rng(n)
    names = random_names(n, rng)
    q, g = random_embeddings(n, rng)
    if entry == "matrix":
        similarity = q @ g.T  # exact: integer entries, |sum| < 2**24
        del q, g
        run, inputs = (lambda: evaluate(similarity, names, names, scope=scope)), similarity.nbytes
        evaluate(similarity[:100], names[:100], names, scope=scope)  # warm-up: imports
    else:
        run, inputs = (lambda: evaluate_embeddings(q, g, names, names, scope=scope)), q.nbytes + g.nbytes
        evaluate_embeddings(q[:100], g, names[:100], names, scope=scope)
    before = rss_mib()
    report, wall, cpu = timed(3, run)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before tracemalloc's own overhead
    traced = traced_peak_mib(run)
    return {"wall": wall, "cpu": cpu, "traced_mib": traced, "rss_before_mib": before,
            "peak_rss_mib": peak_rss, "inputs_mib": inputs / MIB, "digest": digest(report),
            "summary": report.to_dict()}


def loop_worker(n: int, scope: int) -> dict:
    """The plain loop and both entry points at one small size, with their reports compared."""
    rng = np.random.default_rng(n)
    names = random_names(n, rng)
    q, g = random_embeddings(n, rng)
    similarity = q @ g.T
    evaluate_embeddings(q[:100], g, names[:100], names, scope=scope)  # warm-up: imports
    want, loop_wall, loop_cpu = timed(3, plain_loop, similarity, names, names, scope)
    matrix, matrix_wall, matrix_cpu = timed(3, evaluate, similarity, names, names, scope=scope)
    embedded, embedded_wall, embedded_cpu = timed(3, evaluate_embeddings, q, g, names, names, scope=scope)
    return {"loop": (loop_wall, loop_cpu), "matrix": (matrix_wall, matrix_cpu),
            "embeddings": (embedded_wall, embedded_cpu),
            "same": same_summary(matrix.to_dict(), want) and same_summary(embedded.to_dict(), want)
            and digest(matrix) == digest(embedded)}


def in_subprocess(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"worker {args} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def matrix_fits(n: int) -> bool:
    """Whether an n x n float32 matrix takes less than half this machine's RAM."""
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return 4 * n * n < mem_kib * 1024 / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 30_000, 100_000])
    parser.add_argument("--scope", type=int, default=100)
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # N ENTRY | loop N
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        result = loop_worker(int(rest[0]), args.scope) if kind == "loop" else worker(int(kind), rest[0], args.scope)
        print(json.dumps(result))
        return

    info, load_start, started = machine(("geotextloc", "numpy", "scipy", "pandas")), os.getloadavg()[0], time.perf_counter()
    loop = in_subprocess("loop", str(LOOP_SIZE), "--scope", str(args.scope))
    if not loop["same"]:
        raise SystemExit(f"the plain loop and the entry points gave different reports at {LOOP_SIZE:,}")
    loop_line = (
        f"Plain per-query loop at {LOOP_SIZE:,} x {LOOP_SIZE:,}: {loop['loop'][0]:.2f} s wall, {loop['loop'][1]:.2f} s "
        f"CPU (best of 3), the same report as both entry points; "
        f"there `evaluate` took {loop['matrix'][0]:.3f} s ({loop['loop'][0] / loop['matrix'][0]:.0f}x faster in wall "
        f"time) and `evaluate_embeddings` {loop['embeddings'][0]:.3f} s "
        f"({loop['loop'][0] / loop['embeddings'][0]:.0f}x)."
    )
    print(loop_line)
    rows = []
    for n in sorted(args.sizes):
        digests = {}
        for entry, label in ENTRIES.items():
            if entry == "matrix" and not matrix_fits(n):
                rows.append(f"| {n:,} x {n:,} | {label} | skipped: the similarity matrix alone is "
                            f"{4 * n * n / 1e9:.0f} GB of float32, more than half this machine's RAM; "
                            "`evaluate_embeddings` is the entry point for this size |" + " |" * 6)
                continue
            r = in_subprocess(str(n), entry, "--scope", str(args.scope))
            digests[entry] = r["digest"]
            rows.append(f"| {n:,} x {n:,} | {label} | {r['wall']:.2f} | {r['cpu']:.2f} | "
                        f"{r['inputs_mib']:,.0f} | {r['traced_mib']:.0f} | {r['rss_before_mib']:,.0f} | "
                        f"{r['peak_rss_mib']:,.0f} | {r['summary']['overall']['R@1']:.2f} |")
            print(rows[-1])
        if len(digests) == 2 and len(set(digests.values())) != 1:
            raise SystemExit(f"the two entry points gave different per-query tables at {n:,}: {digests}")
    lines = [
        "## bench_protocol.py: the CVG-Text protocol (`geotextloc.eval.evaluate`, `evaluate_embeddings`)",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}, {info['ram']} RAM; load average {load_start:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at the end ({time.perf_counter() - started:.0f} s in all)",
        f"- versions: {info['versions']}",
        f"- setup: queries = gallery, random names around Midtown Manhattan (half panoramas), scope "
        f"{args.scope}; integer-valued float32 embeddings of dim {DIM} (exact dot products), the matrix "
        "entry point given q @ g.T; each row in its own process; OMP_NUM_THREADS=1; best of 3 runs after "
        "a warm-up. Where both entry points ran, their per-query tables are identical.",
        "- memory columns: inputs (the similarity matrix, or both embedding arrays); the protocol's own "
        "allocations (tracemalloc peak, inputs excluded); the process's RSS before the timed runs (inputs, "
        "names, imports) and its peak RSS.",
        "",
        "| queries x gallery | entry point | wall (s) | CPU (s) | inputs (MiB) | protocol's peak "
        "(MiB, tracemalloc) | RSS before (MiB) | peak RSS (MiB) | R@1 (%) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        loop_line,
        "The CPU is shared with other jobs, so times vary from run to run.",
    ]
    print("\n".join(lines))
    if not args.no_record:
        record("bench_protocol", lines)
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
