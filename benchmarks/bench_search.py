"""Benchmark whole-gallery search (geotextloc.eval.index.GalleryIndex): build time, latency,
recall@10 against exact search and bytes per tile, for each index a user can ask for.

    .venv/bin/python benchmarks/bench_search.py                      # 10k, 30k, 100k, 1M; writes RESULTS.md
    .venv/bin/python benchmarks/bench_search.py --sizes 10000 --no-record --json out.json

Gallery: synthetic unit vectors of dim 512 from one fixed mixture of Gaussians (the same
distribution at every size, so a larger gallery is a denser sample, as more tiles of the same
world would be): 1,000 components with centres c ~ N(0, I_64) in a random 64-dimensional subspace,
each row c + SPREAD * N(0, I_64) in that subspace plus isotropic noise of norm about NOISE in the
full 512 dimensions, then L2-normalised. Uniform random vectors would be harder for IVF than any
real embedding and a few well-separated clusters far easier; this sits between (nearest
neighbours at cosine about 0.65, random pairs about 0).

Indexes: flat (exact), auto (flat up to FLAT_MAX tiles, IVF above; its nprobe is what the
build-time recall check settled on), auto with --compress float16, and pq (IVF-PQ, 64 bytes a
tile, exact re-ranking of the shortlist).

Measured per index: build seconds (embedding check, FAISS training and adding, and the recall
check); recall@10 of the build-time check (500 perturbed gallery rows, what meta.json records)
and on QUERIES fresh draws from the mixture (not gallery rows) against exact search over the
float32 gallery; per-query latency in a batch of QUERIES queries (best of 3 below 1M, else 1) and
one query at a time (mean over up to 200 queries or 10 s, through GalleryIndex.search); bytes per
tile of embeddings.npy and index.faiss as saved. Threads: FAISS's OpenMP threads as set by
OMP_NUM_THREADS (reported).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from geotextloc.eval.index import FLAT_MAX, GalleryIndex, recall_at_k
from geotextloc.files import atomic_write_text
from results import RESULTS, machine, record  # benchmarks/results.py

DIM, RANK, COMPONENTS, SPREAD, NOISE = 512, 64, 1000, 1.0, 0.3
QUERIES = 1000
CONFIGS = {  # label -> GalleryIndex keyword arguments
    "flat": {"kind": "flat"},
    "auto": {"kind": "auto"},
    "auto float16": {"kind": "auto", "compress": "float16"},
    "pq": {"kind": "auto", "compress": "pq"},
}


class Mixture:
    """The fixed mixture of Gaussians described above (seeded: the same at every size)."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.basis = np.linalg.qr(rng.standard_normal((DIM, RANK)))[0].astype(np.float32)
        self.centres = rng.standard_normal((COMPONENTS, RANK), dtype=np.float32)

    def sample(self, n: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
        out = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = self.centres[rng.integers(0, COMPONENTS, m)] + SPREAD * rng.standard_normal((m, RANK), dtype=np.float32)
            x = z @ self.basis.T / np.float32(np.sqrt(RANK))
            x += np.float32(NOISE / np.sqrt(DIM)) * rng.standard_normal((m, DIM), dtype=np.float32)
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def grid_records(n: int) -> list[dict]:
    """Records on a grid around Midtown Manhattan (whole-gallery search ignores them)."""
    side = int(np.ceil(np.sqrt(n)))
    return [{"name": f"tile{i}", "lat": 40.70 + 1e-4 * (i // side), "lon": -74.02 + 1e-4 * (i % side)}
            for i in range(n)]


def latency(index: GalleryIndex, queries: np.ndarray, batch_runs: int) -> tuple[float, float]:
    """(ms per query in one batch, best of ``batch_runs``; mean ms of single-query searches)."""
    best = min(_seconds(index.search, queries, 10) for _ in range(batch_runs))
    singles, start = [], time.perf_counter()
    for q in queries[:200]:
        singles.append(_seconds(index.search, q[None], 10))
        if time.perf_counter() - start > 10:
            break
    return 1e3 * best / len(queries), 1e3 * float(np.mean(singles))


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_size(n: int, mixture: Mixture, labels: list[str]) -> list[dict]:
    rng = np.random.default_rng(n)
    gallery, queries = mixture.sample(n, rng), mixture.sample(QUERIES, rng)
    records = grid_records(n)
    truth = faiss.knn(queries, gallery, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    rows = []
    for label in labels:
        start = time.perf_counter()
        index = GalleryIndex(gallery, records, progress=True, **CONFIGS[label])
        build = time.perf_counter() - start
        fresh = recall_at_k(index.search(queries, k=10).indices, truth)
        batch_ms, single_ms = latency(index, queries, 3 if n < 1_000_000 else 1)
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "index")
            size = {f: (Path(tmp) / "index" / f).stat().st_size / n for f in ("embeddings.npy", "index.faiss")}
        row = {"size": n, "index": label, "kind": index.kind, "compress": index.compress, "params": index.params,
               "build_s": build, "recall_build_check": index.recall_at_10, "recall_fresh": fresh,
               "batch_ms_per_query": batch_ms, "single_ms_per_query": single_ms,
               "bytes_embeddings": size["embeddings.npy"], "bytes_faiss": size["index.faiss"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del index
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| tiles | index | built as | build (s) | recall@10, build check | recall@10, fresh queries "
             "| batch (ms/query) | single (ms/query) | bytes/tile: embeddings.npy + index.faiss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        built = r["kind"] + (f" {r['compress']}" if r["compress"] != "none" else "")
        built += f" ({params})" if params else ""
        lines.append(f"| {r['size']:,} | {r['index']} | {built} | {r['build_s']:.1f} | {r['recall_build_check']:.3f} "
                     f"| {r['recall_fresh']:.3f} | {r['batch_ms_per_query']:.3f} | {r['single_ms_per_query']:.2f} "
                     f"| {r['bytes_embeddings']:,.0f} + {r['bytes_faiss']:,.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 1_000_000])
    parser.add_argument("--indexes", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the machine and rows as JSON")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    info, mixture, rows = machine(("geotextloc", "numpy", "faiss-cpu")), Mixture(), []
    start = time.perf_counter()
    for n in sorted(args.sizes):
        rows += bench_size(n, mixture, args.indexes)
    info["wall"] = f"{time.perf_counter() - start:.0f} s"
    info["load_end"] = f"{os.getloadavg()[0]:.1f}"
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    lines = [
        "## bench_search.py: whole-gallery search (`GalleryIndex`, `geotextloc index`)",
        "",
        f"- date: {info['date']}; whole run {info['wall']}",
        f"- machine: {info['cpu']}, {faiss.omp_get_max_threads()} FAISS thread(s), {info['ram']} RAM; load average {info['load']} at start, "
        f"{info['load_end']} at the end",
        f"- versions: {info['versions']}",
        f"- gallery: dim {DIM}, one fixed mixture of {COMPONENTS:,} Gaussians in a {RANK}-d subspace "
        f"(spread {SPREAD}) plus isotropic noise {NOISE}, L2-normalised; {QUERIES:,} fresh queries from the "
        f"same mixture; auto = flat up to {FLAT_MAX:,} tiles, else IVF (nprobe from the build-time recall check).",
        "- recall@10 is against exact search over the float32 gallery; the build check is what "
        "`meta.json` records (500 gallery rows plus noise), the fresh one is measured here.",
        "",
        *table(rows),
        "",
        "The CPU is shared with other jobs, so times vary from run to run.",
    ]
    print("\n".join(lines))
    if not args.no_record:
        record("bench_search", lines)
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
