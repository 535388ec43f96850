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

Vectorised over chunks of queries: per chunk, distances to the whole gallery, a partition
for the scope, a sort of the M candidates; memory is O(chunk x gallery), not O(queries x gallery).
``scope=None`` sorts whole gallery rows (O(G log G) per query): fine for small galleries only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geotextloc.data.release import PANORAMA, SINGLE, parse_name
from geotextloc.errors import ConfigError, DataError
from geotextloc.files import atomic_path

EARTH_RADIUS_KM = 6371.0
RECALL_AT = (1, 5, 10)
LOCALIZATION_KM = {"L@50": 0.05, "L@100": 0.10, "L@150": 0.15}
METRIC_KEYS = ("R@1", "R@5", "R@10", "L@50", "L@100", "L@150", "Deviation", "Count")
GROUPS = {"overall": None, "panorama": PANORAMA, "single_view": SINGLE}
TOP_SHOWN = 5
PAIRS_PER_CHUNK = 1 << 22  # query x gallery distances held at once (~32 MB of float64)


def half_angles(lat, lon) -> tuple[np.ndarray, ...]:
    """Per-point terms of the haversine: sin/cos of phi/2 and lam/2, and cos(phi) (degrees in)."""
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    lam = np.radians(np.asarray(lon, dtype=np.float64))
    return np.sin(phi / 2), np.cos(phi / 2), np.sin(lam / 2), np.cos(lam / 2), np.cos(phi)


def haversine_from_half_angles(p: tuple[np.ndarray, ...], q: tuple[np.ndarray, ...]) -> np.ndarray:
    """Haversine distance (km) between points prepared by :func:`half_angles` (broadcasting).

    sin(dphi/2) = sin(phi_q/2) cos(phi_p/2) - cos(phi_q/2) sin(phi_p/2) (same for lam), so the
    per-pair work is products only (no trigonometry); identical points give exactly 0, and the
    rounding error of the difference is about 1e-12 km.
    """
    sp, cp, sl, cl, cos_p = p
    sq, cq, sm, cm, cos_q = q
    a = np.asarray(sq * cp)  # 0-d array for scalar inputs, so the in-place steps work
    a -= cq * sp
    a *= a
    b = sm * cl
    b -= cm * sl
    b *= b
    b *= cos_p * cos_q
    a += b
    np.clip(a, 0.0, 1.0, out=a)
    np.sqrt(a, out=a)
    np.arcsin(a, out=a)
    a *= 2.0 * EARTH_RADIUS_KM
    return a


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (numpy broadcasting)."""
    return haversine_from_half_angles(half_angles(lat1, lon1), half_angles(lat2, lon2))


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


def _as_numpy(similarity: Any) -> np.ndarray:
    """numpy view of a numpy array or (any-device) torch tensor, without copying CPU data."""
    if hasattr(similarity, "detach"):  # torch.Tensor, without importing torch
        tensor = similarity.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()  # numpy has no bfloat16
        similarity = tensor.cpu().numpy()
    array = np.asarray(similarity)
    return array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float64)


def evaluate(
    similarity: Any,
    queries: Sequence[str],
    gallery: Sequence[str],
    scope: int | None = 100,
    texts: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> ProtocolReport:
    """Run the CVG-Text protocol (module docstring) on a (queries x gallery) similarity array."""
    sim = _as_numpy(similarity)
    queries, gallery = list(queries), list(gallery)
    if sim.ndim != 2 or sim.shape != (len(queries), len(gallery)):
        raise DataError(
            f"similarity has shape {sim.shape}, expected (queries, gallery) = ({len(queries)}, {len(gallery)})"
        )
    if scope is not None and (isinstance(scope, bool) or not isinstance(scope, (int, np.integer)) or scope < 1):
        raise ConfigError(f"scope must be a positive integer or None, got {scope!r}")
    if texts is not None and len(texts) != len(queries):
        raise DataError(f"texts has {len(texts)} entries for {len(queries)} queries; give one text per query")

    # Gallery: coordinates once (radians, cos), names -> integer ids for vectorised dedup.
    g_info = [parse_name(name) for name in gallery]
    g_trig = half_angles([g.lat for g in g_info], [g.lon for g in g_info])
    name_id: dict[str, int] = {}
    g_ids = np.array([name_id.setdefault(name, len(name_id)) for name in gallery], dtype=np.int64)
    g_names = np.array(gallery + [""], dtype=object)  # index -1 -> "" (fewer than 5 candidates)

    q_info = [parse_name(name) for name in queries]
    missing = [name for name in queries if name not in name_id]
    if missing:
        raise DataError(
            f"query {missing[0]!r} ({len(missing)} in all) has no gallery item of the same name; "
            "every query's true tile must be in the gallery"
        )
    true_ids = np.array([name_id[name] for name in queries], dtype=np.int64)
    q_trig = [t[:, None] for t in half_angles([q.lat for q in q_info], [q.lon for q in q_info])]

    n_q = len(queries)
    rank = np.full(n_q, -1, dtype=np.int64)
    deviation = np.zeros(n_q, dtype=np.float64)
    top = np.full((n_q, TOP_SHOWN), -1, dtype=np.int64)
    chunk = chunk_size or max(1, PAIRS_PER_CHUNK // max(1, len(gallery)))
    for start in range(0, n_q, chunk):
        rows = slice(start, min(start + chunk, n_q))
        block = sim[rows]
        bad = np.isnan(block).any(axis=1)
        if bad.any():
            name = queries[start + int(np.argmax(bad))]
            raise DataError(f"similarity row of query {name!r} contains NaN; check its embedding")
        dist = haversine_from_half_angles(tuple(t[rows] for t in q_trig), g_trig)
        ranked = scoped_ranking(block, dist, scope)
        ids = g_ids[ranked]
        kept_before = np.cumsum(first_occurrence(ids), axis=1)  # dedup rank + 1 at each position
        is_true = ids == true_ids[rows, None]
        found = is_true.any(axis=1)
        pos = is_true.argmax(axis=1)
        rank[rows] = np.where(found, kept_before[np.arange(len(ids)), pos], -1)
        deviation[rows] = np.where(ids[:, 0] == true_ids[rows], 0.0, dist[np.arange(len(ids)), ranked[:, 0]])
        for j in range(TOP_SHOWN):  # the (j+1)-th kept item: first position with j+1 kept so far
            at = (kept_before > j).argmax(axis=1)
            top[rows, j] = np.where(kept_before[:, -1] > j, ranked[np.arange(len(ids)), at], -1)

    table = pd.DataFrame(
        {
            "query": queries,
            "view": [q.view for q in q_info],
            "text": list(texts) if texts is not None else [""] * n_q,
            **{f"top{j + 1}": g_names[top[:, j]] for j in range(TOP_SHOWN)},
            "rank": pd.array(np.where(rank > 0, rank, None), dtype="Int64"),
            "hit": rank == 1,
            "deviation_km": deviation,
        }
    )
    return ProtocolReport(table=table, scope=scope)
