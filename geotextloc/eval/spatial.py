"""Gallery tiles near a point: a KD-tree on the unit sphere, decided by the exact haversine.

A point (phi, lam) in degrees becomes the unit vector u = (cos phi cos lam, cos phi sin lam,
sin phi). The chord |u_p - u_q| = 2 sin(d / 2R) grows with the great-circle distance d, so a
KD-tree (``scipy.spatial.cKDTree``) over the gallery's vectors finds near tiles without looking
at the others. The tree only collects candidates; which of them are kept, and in what order, is
decided by the haversine of :mod:`geotextloc.eval.metrics`, so the results equal the all-pairs
rule (:func:`geotextloc.eval.metrics.nearest_in_scope`) exactly, ties included:

- :meth:`SpatialIndex.nearest` (the protocol's scope): the tree's m-th nearest chord c_m bounds
  the answer. Every tile with chord <= c_m + MARGIN is collected (the tree's m + SLACK nearest,
  asked again with 4x as many for a point whose last one is still inside that ball, as when many
  tiles share its coordinates); their haversine d_j is computed and the m smallest kept, sorted
  by (d_j, j): ties at equal distance in gallery order. Why nothing is missed: the m tiles with
  chord <= c_m have haversine <= 2R asin(c_m / 2), so the m-th smallest haversine is at most
  that, and every tile the exact rule keeps has chord <= c_m, up to rounding. The chord and the
  haversine are both within about 1e-15 of the truth on the unit sphere; MARGIN = 1e-9 (6 mm on
  the ground) covers that many times over.
- :meth:`SpatialIndex.within` (search's ``--radius``): every tile with chord <= 2 sin(r / 2R) +
  MARGIN, then those with haversine <= r, sorted by (distance, gallery index).

Memory: the tree is O(gallery); queries run in chunks of at most CANDIDATES_PER_CHUNK
candidates (rows x (m + SLACK)), never queries x gallery.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.spatial import cKDTree

from geotextloc.errors import ConfigError, DataError

EARTH_RADIUS_KM = 6371.0


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

MARGIN = 1e-9  # chord on the unit sphere added to each search radius (about 6 mm)
SLACK = 16  # neighbours asked beyond m, so ties at the m-th place rarely need a second query
CANDIDATES_PER_CHUNK = 1 << 14  # (query, candidate) pairs held at once


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(n, 3) points on the unit sphere: (cos phi cos lam, cos phi sin lam, sin phi), degrees in."""
    phi, lam = np.radians(lat), np.radians(lon)
    cos_phi = np.cos(phi)
    return np.stack([cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)], axis=-1)


def _degrees(lat, lon, what: str) -> tuple[np.ndarray, np.ndarray]:
    """lat, lon as 1-D float64 arrays of valid degrees; DataError naming ``what`` otherwise."""
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    if lat.ndim != 1 or lat.shape != lon.shape:
        raise DataError(f"{what}: lat and lon must be 1-D and of the same length, got shapes {lat.shape}, {lon.shape}")
    if not (np.abs(lat) <= 90.0).all() or not (np.abs(lon) <= 180.0).all():  # False for NaN too
        raise DataError(f"{what}: lat/lon must be degrees within -90..90 and -180..180 (no NaN)")
    return lat, lon


def _chunks(rows: np.ndarray, width: int) -> Iterator[np.ndarray]:
    step = max(1, CANDIDATES_PER_CHUNK // width)
    return (rows[start : start + step] for start in range(0, len(rows), step))


def spatial_order(lat, lon) -> np.ndarray:
    """A permutation of the points (degrees) that keeps near ones together: their order in a
    KD-tree over them (``cKDTree.indices``, where every node's points are contiguous)."""
    lat, lon = _degrees(lat, lon, "points")
    return cKDTree(unit_vectors(lat, lon)).indices if len(lat) else np.arange(0)


class SpatialIndex:
    """The gallery's coordinates (degrees), for nearest-``m`` and within-radius queries (module docstring)."""

    def __init__(self, lat, lon):
        self.lat, self.lon = _degrees(lat, lon, "gallery")
        self.trig = half_angles(self.lat, self.lon)
        self.tree = cKDTree(unit_vectors(self.lat, self.lon))

    def __len__(self) -> int:
        return len(self.lat)

    def _distance(self, trig: tuple[np.ndarray, ...], rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Haversine (km) from query ``rows`` to their candidates ``cand`` (rows, c), as the protocol computes it."""
        return haversine_from_half_angles(tuple(t[rows, None] for t in trig), tuple(t[cand] for t in self.trig))

    def nearest(self, lat, lon, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and haversine distances (km) of each point's ``m`` nearest tiles, shape
        (points, min(m, gallery)), sorted by (distance, gallery index): the first m of a
        stable sort of the point's distances to the whole gallery."""
        lat, lon = _degrees(lat, lon, "query points")
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise ConfigError(f"the number of nearest tiles must be a positive integer, got {m!r}")
        n = len(self)
        m = min(int(m), n)
        trig, xyz = half_angles(lat, lon), unit_vectors(lat, lon)
        indices = np.empty((len(lat), m), dtype=np.int64)
        distance = np.empty((len(lat), m), dtype=np.float64)
        pending = [(np.arange(len(lat)), min(n, m + SLACK))]
        while pending:
            rows_all, k = pending.pop()
            for rows in _chunks(rows_all, k):
                if k == n:  # the whole gallery
                    cand = np.broadcast_to(np.arange(n), (len(rows), n))
                    complete = np.ones(len(rows), dtype=bool)
                else:
                    chord, cand = self.tree.query(xyz[rows], k=k)
                    chord, cand = chord.reshape(len(rows), k), cand.reshape(len(rows), k)
                    complete = chord[:, -1] > chord[:, m - 1] + MARGIN  # the whole ball is among the k
                    if not complete.all():
                        pending.append((rows[~complete], min(n, 4 * k)))
                    rows, cand = rows[complete], cand[complete]
                dist = self._distance(trig, rows, cand)
                order = np.argsort(dist, axis=1, kind="stable")  # cheap: the tree gave them nearly in order
                ordered = np.take_along_axis(dist, order, axis=1)
                tied = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
                if tied.any():  # equal distances: gallery order
                    order[tied] = np.lexsort((cand[tied], dist[tied]), axis=-1)
                order = order[:, :m]
                indices[rows] = np.take_along_axis(cand, order, axis=1)
                distance[rows] = np.take_along_axis(dist, order, axis=1)
        return indices, distance

    def within(self, lat, lon, radius_km: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per point, the indices and haversine distances (km) of the tiles at most ``radius_km``
        away, sorted by (distance, gallery index); lists of 1-D arrays, one per point."""
        lat, lon = _degrees(lat, lon, "query points")
        if isinstance(radius_km, bool) or not isinstance(radius_km, (int, float, np.integer, np.floating)) \
                or not 0 < radius_km < np.inf:
            raise ConfigError(f"radius must be a positive number of km, got {radius_km!r}")
        half_angle = min(float(radius_km) / (2 * EARTH_RADIUS_KM), np.pi / 2)
        balls = self.tree.query_ball_point(unit_vectors(lat, lon), 2 * np.sin(half_angle) + MARGIN)
        trig = half_angles(lat, lon)
        indices, distance = [], []
        for i, ball in enumerate(balls):
            cand = np.asarray(ball, dtype=np.int64)
            dist = self._distance(trig, np.array([i]), cand[None, :])[0]
            keep = dist <= radius_km
            cand, dist = cand[keep], dist[keep]
            order = np.lexsort((cand, dist))
            indices.append(cand[order])
            distance.append(dist[order])
        return indices, distance
