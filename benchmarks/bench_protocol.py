"""Benchmark the CVG-Text protocol (geotextloc.eval.evaluate) against a plain per-query loop.

    .venv/bin/python benchmarks/bench_protocol.py            # 1,200 and 30,000; writes RESULTS.md
    .venv/bin/python benchmarks/bench_protocol.py --sizes 1200 --no-record

Random release names around Midtown Manhattan (half panoramas, half single-view photos),
queries = gallery (each query's true tile is the gallery item of the same name), random
float32 similarity, scope 100. The plain loop (every query-gallery pair in Python, as the
reference code does) runs at the smallest size only and must give the same report.
Time: best wall clock and CPU time of 3 runs (1 at 30,000). Memory: tracemalloc peak of a second run (what evaluate itself
allocates, the similarity matrix excluded) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import resource
import time
import tracemalloc
from importlib import metadata
from pathlib import Path

import numpy as np

from geotextloc.data.release import PANORAMA, parse_name
from geotextloc.eval import evaluate
from geotextloc.files import atomic_write_text

CENTER = (40.7549, -73.9840)
SPREAD_DEG = 0.03  # about 6.7 km x 5 km
RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- bench_protocol:begin -->", "<!-- bench_protocol:end -->"


def random_names(n: int, rng: np.random.Generator) -> list[str]:
    lat = CENTER[0] + rng.uniform(-SPREAD_DEG, SPREAD_DEG, n)
    lon = CENTER[1] + rng.uniform(-SPREAD_DEG, SPREAD_DEG, n)
    return [
        f"{a:.8f},{b:.8f}_2022-08_pano{i}_d62_z3.jpg" if i % 2 else f"{a:.8f},{b:.8f}_photo{i}.jpg"
        for i, (a, b) in enumerate(zip(lat, lon))
    ]


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
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("geotextloc", "numpy", "pandas", "faiss-cpu")
    )
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores (shared with other jobs; load average {os.getloadavg()[0]:.1f} at start)",
        "ram": f"{mem_kib / 2**20:.1f} GiB",
        "versions": f"Python {platform.python_version()}, {versions}",
    }


def record(lines: list[str]) -> None:
    """Replace this benchmark's section of RESULTS.md (other benchmarks' sections are kept)."""
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    section = "\n".join([BEGIN, *lines, END])
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + section + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(RESULTS, new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1200, 30000])
    parser.add_argument("--scope", type=int, default=100)
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    info = machine()
    rng = np.random.default_rng(0)
    rows, loop_line = [], ""
    for n in sorted(args.sizes):
        names = random_names(n, rng)
        similarity = rng.standard_normal((n, n), dtype=np.float32)
        repeat = 3 if n <= 5000 else 1
        report, seconds, cpu = timed(repeat, evaluate, similarity, names, names, scope=args.scope)
        peak = traced_peak_mib(evaluate, similarity, names, names, scope=args.scope)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        rows.append(
            f"| {n:,} x {n:,} | {seconds:.2f} | {cpu:.2f} | {repeat} | {peak:.0f} | {rss:.0f} | "
            f"{similarity.nbytes / 2**20:.0f} |"
        )
        print(f"evaluate {n} x {n}: {seconds:.2f} s wall, {cpu:.2f} s CPU, evaluate's peak {peak:.0f} MiB, "
              f"process peak RSS {rss:.0f} MiB")
        if n == min(args.sizes):
            want, loop_seconds, loop_cpu = timed(repeat, plain_loop, similarity, names, names, args.scope)
            got = report.to_dict()
            assert all(math.isclose(got[g][k], want[g][k], abs_tol=1e-9) for g in want for k in want[g]), (got, want)
            loop_line = (
                f"Plain per-query loop at {n:,} x {n:,}: {loop_seconds:.2f} s wall, {loop_cpu:.2f} s CPU "
                f"(best of {repeat}), same report; vectorised is {loop_seconds / seconds:.0f}x faster "
                f"in wall time, {loop_cpu / cpu:.0f}x in CPU time."
            )
            print(loop_line)
        del similarity
    lines = [
        "## bench_protocol.py: the CVG-Text protocol (`geotextloc.eval.evaluate`)",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}, {info['ram']} RAM",
        f"- versions: {info['versions']}",
        f"- setup: random names around Midtown Manhattan (half panoramas), queries = gallery, "
        f"random float32 similarity, scope {args.scope}; best of the given number of runs; "
        "one thread (evaluate uses no BLAS or threads).",
        "",
        "| queries x gallery | wall (s) | CPU (s) | runs | evaluate's peak (MiB, tracemalloc) "
        "| process peak RSS (MiB) | similarity matrix (MiB) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        loop_line,
        "The CPU is shared with other jobs, so times vary from run to run.",
    ]
    print("\n".join(lines))
    if not args.no_record:
        record(lines)
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
