"""The CVG-Text evaluation protocol: geo-scoped text -> tile retrieval.

For query i (a release file name; its true tile is the gallery item of the same name) with
true coordinates p_i and similarity row s_i over the gallery:

1. Candidates C_i: the ``scope`` (M = 100) gallery items nearest to p_i by haversine distance

       d(p, q) = 2R asin( sqrt( sin^2((phi_q - phi_p)/2)
                                + cos(phi_p) cos(phi_q) sin^2((lam_q - lam_p)/2) ) ),  R = 6371 km

   ties keep gallery order (a stable sort by distance). ``scope=None``: the whole gallery.
2. Rank C_i by s_ij, descending. Ties in similarity keep candidate order, i.e. the nearer
   item first, then gallery order (a stable sort of the distance-sorted candidates), as
   in the reference code. Caution: the true tile is the nearest (distance 0), so a method
   whose scores tie (bag of words, quantised scores) gets the answer from the tie-break;
   add a tiny random jitter to such scores before evaluating.
3. Remove duplicate names, keeping the first.
4. R@k = 1[true name among the first k];  dev_i = 0 if the top-1 is the true name, else
   d(p_i, top-1) in km;  L@m = 1[dev_i <= m metres] for m = 50, 100, 150.

Reported in percent (Deviation: mean dev_i in km) for ``overall``, ``panorama`` and
``single_view`` queries with their ``Count``; a group without queries gives NaN, Count 0.
A query whose name is not in the gallery is an error (DataError), not a miss.

Three entry points, one rule: :func:`evaluate` reads a given (queries x gallery) similarity
array; :func:`evaluate_ranking` lets a caller order each query's candidates (step 2) itself, for
models that score (query, candidate) pairs jointly (:mod:`geotextloc.eval.pairs`: ViLT, BLIP's
re-ranking); :func:`evaluate_embeddings` scores only the candidates, s_ij = <q_i, g_j> (the given
embeddings' dot products, in their dtype, at least float32), so nothing of size queries x
gallery is ever held. The candidates come from a KD-tree on the unit sphere
(:class:`geotextloc.eval.spatial.SpatialIndex`), decided by the haversine above, so they equal
the all-pairs rule. Queries run in chunks of nearby ones; memory beyond the inputs is
O(gallery + chunk x M). :func:`evaluate_embeddings` scores each block of SCORED_TOGETHER nearby
queries with one matrix product against the gallery rows of their candidates' union (nearby
queries share most candidates). ``scope=None`` ranks whole gallery rows (distances to every
tile, O(G log G) per query): fine for small galleries only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geotextloc.data.release import PANORAMA, SINGLE, parse_name
from geotextloc.errors import ConfigError, DataError
from geotextloc.eval.spatial import SpatialIndex, half_angles, haversine_from_half_angles, spatial_order
from geotextloc.files import atomic_path

RECALL_AT = (1, 5, 10)
LOCALIZATION_KM = {"L@50": 0.05, "L@100": 0.10, "L@150": 0.15}
METRIC_KEYS = ("R@1", "R@5", "R@10", "L@50", "L@100", "L@150", "Deviation", "Count")
GROUPS = {"overall": None, "panorama": PANORAMA, "single_view": SINGLE}
TOP_SHOWN = 5
PAIRS_PER_CHUNK = 1 << 22  # query x gallery distances held at once (~32 MB of float64)
CANDIDATES_PER_CHUNK = 1 << 14  # query x candidate pairs held at once
SCORED_TOGETHER = 32  # nearby queries scored by one product with the union of their candidates


def nearest_in_scope(distance: np.ndarray, m: int) -> np.ndarray:
    """Column indices of each row's ``m`` smallest distances, ties in column order.

    Returned in column (gallery) order, shape (rows, m). Equal to a stable argsort's first m.
    """
    rows, n = distance.shape
    if m >= n:
        return np.broadcast_to(np.arange(n), (rows, n))
    kth = np.partition(distance, m - 1, axis=1)[:, m - 1 : m]
    closer = distance < kth
    tied = distance == kth
    need = m - closer.sum(axis=1)
    over = tied.sum(axis=1) > need  # rows where the boundary tie must be cut in gallery order
    if over.any():
        tied[over] &= np.cumsum(tied[over], axis=1) <= need[over, None]
    _, cols = np.nonzero(closer | tied)
    return cols.reshape(rows, m)


def scoped_ranking(similarity: np.ndarray, distance: np.ndarray, scope: int | None) -> np.ndarray:
    """Gallery indices of each row's candidates, best first: shape (rows, min(scope, n)).

    Candidates are the ``scope`` nearest (stable by distance); they are ordered by similarity
    descending, then distance ascending, then gallery index (the candidate order).
    """
    m = distance.shape[1] if scope is None else min(scope, distance.shape[1])
    cand = nearest_in_scope(distance, m)
    sim = np.take_along_axis(similarity, cand, axis=1)
    dist = np.take_along_axis(distance, cand, axis=1)
    order = np.lexsort((dist, -sim), axis=-1)  # last key is primary; lexsort is stable
    return np.take_along_axis(cand, order, axis=1)


def rank_by_score(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``candidates`` (rows, m), nearest first with ties in gallery order (as
    :meth:`~geotextloc.eval.spatial.SpatialIndex.nearest` gives them), reordered by ``scores``
    descending; equal scores keep that order (nearer, then gallery order), as :func:`scoped_ranking`."""
    return np.take_along_axis(candidates, np.argsort(-scores, axis=1, kind="stable"), axis=1)


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """Boolean mask, True where ``ids[r, j]`` does not appear earlier in row r."""
    order = np.argsort(ids, axis=1, kind="stable")
    ordered = np.take_along_axis(ids, order, axis=1)
    first = np.ones(ids.shape, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    keep = np.empty_like(first)
    np.put_along_axis(keep, order, first, axis=1)
    return keep


@dataclass
class ProtocolReport:
    """Result of :func:`evaluate`: the per-query ``table`` and its summary (:meth:`to_dict`).

    ``table`` columns: query, view, text, top1..top5 (deduplicated names, "" when fewer),
    rank (1-based rank of the true name after dedup; <NA> when outside the scope),
    hit (top-1 is the true name), deviation_km.
    """

    table: pd.DataFrame
    scope: int | None

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {group: _summarise(self.table, view) for group, view in GROUPS.items()}

    def to_csv(self, path: str | Path) -> Path:
        """Write the per-query table (atomically) for case studies; returns the path."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self.table.to_csv(tmp, index=False)
        return path

    def __str__(self) -> str:
        frame = pd.DataFrame.from_dict(self.to_dict(), orient="index")[list(METRIC_KEYS)]
        return frame.to_string(float_format=lambda v: f"{v:.2f}")


def _summarise(table: pd.DataFrame, view: str | None) -> dict[str, float]:
    rows = table if view is None else table[table["view"] == view]
    if len(rows) == 0:
        return {**{key: float("nan") for key in METRIC_KEYS[:-1]}, "Count": 0}
    rank = rows["rank"].fillna(np.iinfo(np.int64).max).to_numpy(dtype=np.int64)
    deviation = rows["deviation_km"].to_numpy(dtype=np.float64)
    out = {f"R@{k}": 100.0 * float(np.mean(rank <= k)) for k in RECALL_AT}
    out |= {key: 100.0 * float(np.mean(deviation <= km)) for key, km in LOCALIZATION_KM.items()}
    return out | {"Deviation": float(deviation.mean()), "Count": len(rows)}


def _as_numpy(array: Any) -> np.ndarray:
    """numpy view of a numpy array or (any-device) torch tensor, without copying CPU data."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch
        tensor = array.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()  # numpy has no bfloat16
        array = tensor.cpu().numpy()
    array = np.asarray(array)
    return array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float64)


@dataclass
class _Names:
    """What both entry points know from the names: coordinates (degrees, and their
    :func:`half_angles`), views, and integer ids of the names for the vectorised dedup."""

    queries: list[str]
    gallery: list[str]
    views: list[str]
    q_lat: np.ndarray
    q_lon: np.ndarray
    g_lat: np.ndarray
    g_lon: np.ndarray
    q_trig: tuple[np.ndarray, ...]
    g_trig: tuple[np.ndarray, ...]
    g_ids: np.ndarray  # gallery position -> id of its name (duplicate names share one)
    true_ids: np.ndarray  # query -> id of its name


def _coordinates(names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Latitudes, longitudes (degrees) and views parsed from release names (DataError if malformed)."""
    lat, lon, views = np.empty(len(names)), np.empty(len(names)), []
    for i, name in enumerate(names):
        info = parse_name(name)
        lat[i], lon[i] = info.lat, info.lon
        views.append(info.view)
    return lat, lon, views


def _names(queries: list[str], gallery: list[str], scope: Any, texts: Sequence[str] | None) -> _Names:
    """Check the options and names (ConfigError, DataError) and parse the names once."""
    if scope is not None and (isinstance(scope, bool) or not isinstance(scope, (int, np.integer)) or scope < 1):
        raise ConfigError(f"scope must be a positive integer or None, got {scope!r}")
    if texts is not None and len(texts) != len(queries):
        raise DataError(f"texts has {len(texts)} entries for {len(queries)} queries; give one text per query")
    name_id: dict[str, int] = {}
    g_ids = np.array([name_id.setdefault(name, len(name_id)) for name in gallery], dtype=np.int64)
    g_lat, g_lon, _ = _coordinates(gallery)
    q_lat, q_lon, views = _coordinates(queries)
    missing = [name for name in queries if name not in name_id]
    if missing:
        raise DataError(
            f"query {missing[0]!r} ({len(missing)} in all) has no gallery item of the same name; "
            "every query's true tile must be in the gallery"
        )
    true_ids = np.array([name_id[name] for name in queries], dtype=np.int64)
    return _Names(queries, gallery, views, q_lat, q_lon, g_lat, g_lon, half_angles(q_lat, q_lon),
                  half_angles(g_lat, g_lon), g_ids, true_ids)


Rows = slice | np.ndarray  # query rows: a slice, or positions in spatial order
Scores = Callable[[Rows, np.ndarray | None], np.ndarray]


def _ranked(names: _Names, scope: int | None, chunk: int, scores: Scores) -> Iterator[tuple[Rows, np.ndarray]]:
    """Steps 1-2 per chunk of queries: (rows, their candidates' gallery indices, best first).

    ``scores(rows, candidates)``: the similarities of those query rows to their candidates
    (rows, M), or to the whole gallery (rows, G) when ``candidates`` is None. With a scope,
    chunks are made of nearby queries (their candidates overlap, which :func:`evaluate_embeddings`
    uses and which keeps the tree's walks in cache).
    """
    n_q = len(names.queries)
    if n_q == 0:
        return
    if scope is None:
        for start in range(0, n_q, chunk):
            rows = slice(start, min(start + chunk, n_q))
            dist = haversine_from_half_angles(tuple(t[rows, None] for t in names.q_trig), names.g_trig)
            yield rows, scoped_ranking(scores(rows, None), dist, None)
        return
    for rows, candidates in _in_scope(names, scope, chunk):
        yield rows, rank_by_score(candidates, scores(rows, candidates))


def _in_scope(names: _Names, scope: int, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Step 1 per chunk of nearby queries: (rows, their ``scope`` nearest gallery indices,
    nearest first, ties in gallery order)."""

    spatial = SpatialIndex(names.g_lat, names.g_lon)
    order = spatial_order(names.q_lat, names.q_lon)
    for start in range(0, len(names.queries), chunk):
        rows = order[start : start + chunk]
        candidates, _ = spatial.nearest(names.q_lat[rows], names.q_lon[rows], scope)
        yield rows, candidates


def _report(names: _Names, ranked: Iterator[tuple[Rows, np.ndarray]], scope: int | None,
            texts: Sequence[str] | None) -> ProtocolReport:
    """Steps 3-4 on each chunk's ranked candidates: dedup of names, rank of the true name,
    deviation of the top-1, the top-5 names; then the per-query table."""
    n_q = len(names.queries)
    rank = np.full(n_q, -1, dtype=np.int64)
    deviation = np.zeros(n_q, dtype=np.float64)
    top = np.full((n_q, TOP_SHOWN), -1, dtype=np.int64)
    for rows, best_first in ranked:
        ids = names.g_ids[best_first]
        true_ids = names.true_ids[rows]
        at = np.arange(len(ids))
        kept_before = np.cumsum(first_occurrence(ids), axis=1)  # dedup rank + 1 at each position
        is_true = ids == true_ids[:, None]
        found = is_true.any(axis=1)
        rank[rows] = np.where(found, kept_before[at, is_true.argmax(axis=1)], -1)
        top1 = best_first[:, 0]
        top1_km = haversine_from_half_angles(tuple(t[rows] for t in names.q_trig),
                                             tuple(t[top1] for t in names.g_trig))
        deviation[rows] = np.where(ids[:, 0] == true_ids, 0.0, top1_km)
        for j in range(TOP_SHOWN):  # the (j+1)-th kept item: first position with j+1 kept so far
            first = (kept_before > j).argmax(axis=1)
            top[rows, j] = np.where(kept_before[:, -1] > j, best_first[at, first], -1)

    g_names = np.array(names.gallery + [""], dtype=object)  # index -1 -> "" (fewer than 5 candidates)
    table = pd.DataFrame(
        {
            "query": names.queries,
            "view": names.views,
            "text": list(texts) if texts is not None else [""] * n_q,
            **{f"top{j + 1}": g_names[top[:, j]] for j in range(TOP_SHOWN)},
            "rank": pd.array(np.where(rank > 0, rank, None), dtype="Int64"),
            "hit": rank == 1,
            "deviation_km": deviation,
        }
    )
    return ProtocolReport(table=table, scope=scope)


def _chunk(n_gallery: int, scope: int | None) -> int:
    """Queries per chunk: at most PAIRS_PER_CHUNK pairs with the whole gallery (``scope=None``),
    else at most CANDIDATES_PER_CHUNK (query, candidate) pairs."""
    if scope is None:
        return max(1, PAIRS_PER_CHUNK // max(1, n_gallery))
    return max(1, CANDIDATES_PER_CHUNK // min(scope, max(1, n_gallery)))


def evaluate(
    similarity: Any,
    queries: Sequence[str],
    gallery: Sequence[str],
    scope: int | None = 100,
    texts: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> ProtocolReport:
    """Run the CVG-Text protocol (module docstring) on a (queries x gallery) similarity array
    (numpy or torch). Besides a NaN check of each row, only the candidates' entries are read."""
    sim = _as_numpy(similarity)
    queries, gallery = list(queries), list(gallery)
    if sim.ndim != 2 or sim.shape != (len(queries), len(gallery)):
        raise DataError(
            f"similarity has shape {sim.shape}, expected (queries, gallery) = ({len(queries)}, {len(gallery)})"
        )
    names = _names(queries, gallery, scope, texts)
    bad = np.isnan(sim.min(axis=1)) if sim.size else np.zeros(0, dtype=bool)  # min propagates NaN
    if bad.any():
        raise DataError(f"similarity row of query {queries[int(np.argmax(bad))]!r} contains NaN; check its embedding")

    def scores(rows: Rows, candidates: np.ndarray | None) -> np.ndarray:
        return sim[rows] if candidates is None else sim[rows[:, None], candidates]

    chunk = chunk_size or _chunk(len(gallery), scope)
    return _report(names, _ranked(names, scope, chunk, scores), scope, texts)


def evaluate_embeddings(
    query_embeddings: Any,
    gallery_embeddings: Any,
    queries: Sequence[str],
    gallery: Sequence[str],
    scope: int | None = 100,
    texts: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> ProtocolReport:
    """Run the CVG-Text protocol (module docstring) from (queries x D) and (gallery x D)
    embeddings (numpy or torch), scoring each query's candidates only: s_ij = <q_i, g_j>, the
    rows as given (L2-normalise them for cosine). The (queries x gallery) matrix is never made
    (with ``scope=None``, one chunk of its rows at a time). Equals ``evaluate(q @ g.T, ...)``
    wherever the dot products round alike (exactly, for scores exact in floating point)."""
    q, g = _as_numpy(query_embeddings), _as_numpy(gallery_embeddings)
    queries, gallery = list(queries), list(gallery)
    if q.ndim != 2 or g.ndim != 2 or q.shape[0] != len(queries) or g.shape[0] != len(gallery) \
            or q.shape[1] != g.shape[1] or q.shape[1] == 0:
        raise DataError(
            f"embeddings have shapes {q.shape} (queries) and {g.shape} (gallery); expected "
            f"({len(queries)}, D) and ({len(gallery)}, D) with the same D >= 1"
        )
    names = _names(queries, gallery, scope, texts)
    dtype = np.promote_types(np.result_type(q, g), np.float32)  # no float16 sums
    q, g = q.astype(dtype, copy=False), g.astype(dtype, copy=False)
    for what, array, labels in (("query", q, queries), ("gallery item", g, gallery)):
        bad = ~(np.isfinite(array.min(axis=1)) & np.isfinite(array.max(axis=1)))  # NaN or inf in the row
        if bad.any():
            raise DataError(f"embedding of {what} {labels[int(np.argmax(bad))]!r} is not finite (NaN or inf); check it")

    def scores(rows: Rows, candidates: np.ndarray | None) -> np.ndarray:
        if candidates is None:
            return q[rows] @ g.T
        out = np.empty(candidates.shape, dtype=dtype)
        for start in range(0, len(rows), SCORED_TOGETHER):  # nearby queries: shared candidates
            block = slice(start, start + SCORED_TOGETHER)
            tiles, where = np.unique(candidates[block], return_inverse=True)
            union = q[rows[block]] @ g[tiles].T  # (block, union of its candidates)
            out[block] = np.take_along_axis(union, where.reshape(candidates[block].shape), axis=1)
        return out

    chunk = chunk_size or _chunk(len(gallery), scope)
    return _report(names, _ranked(names, scope, chunk, scores), scope, texts)


Ranking = Callable[[np.ndarray, np.ndarray], np.ndarray]


def evaluate_ranking(
    rank: Ranking,
    queries: Sequence[str],
    gallery: Sequence[str],
    scope: int | None = 100,
    texts: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> ProtocolReport:
    """Run the CVG-Text protocol (module docstring) with step 2 done by the caller.

    ``rank(rows, candidates)`` gets query positions ``rows`` (n,) and their candidates (n, M) as
    gallery indices, nearest first with ties in gallery order (``scope=None``: the whole gallery
    in that order), and returns the same candidates best first (a permutation of each row). To
    rank by scores with the protocol's tie rule, return ``rank_by_score(candidates, scores)``.
    Steps 3-4 and the report are :func:`evaluate`'s.
    """
    queries, gallery = list(queries), list(gallery)
    names = _names(queries, gallery, scope, texts)
    chunk = chunk_size or _chunk(len(gallery), scope)

    def whole_gallery() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(queries), chunk):
            rows = np.arange(start, min(start + chunk, len(queries)))
            dist = haversine_from_half_angles(tuple(t[rows, None] for t in names.q_trig), names.g_trig)
            yield rows, np.argsort(dist, axis=1, kind="stable")

    def ranked() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not queries:
            return
        for rows, candidates in whole_gallery() if scope is None else _in_scope(names, scope, chunk):
            best_first = np.asarray(rank(rows, candidates))
            if best_first.shape != candidates.shape or not (np.sort(best_first, axis=1)
                                                            == np.sort(candidates, axis=1)).all():
                raise DataError(f"the ranking of {len(rows)} queries is not a reordering of their candidates "
                                f"(shape {best_first.shape}, expected {candidates.shape})")
            yield rows, best_first

    return _report(names, ranked(), scope, texts)
