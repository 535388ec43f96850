"""SpatialIndex (KD-tree on the unit sphere) against the all-pairs haversine rule it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geotextloc.errors import ConfigError, DataError
from geotextloc.eval.metrics import nearest_in_scope
from geotextloc.eval.spatial import haversine_km
from geotextloc.eval.spatial import SpatialIndex, spatial_order


def all_pairs(q_lat, q_lon, g_lat, g_lon) -> np.ndarray:
    """(queries, gallery) haversine km, the matrix the protocol used to build."""
    return haversine_km(np.asarray(q_lat)[:, None], np.asarray(q_lon)[:, None], np.asarray(g_lat), np.asarray(g_lon))


def assert_nearest_exact(index: SpatialIndex, q_lat, q_lon, g_lat, g_lon, m: int) -> None:
    """nearest() equals a stable argsort of the full distance rows, indices and distances bit for bit,
    and holds the same set as the protocol's nearest_in_scope."""
    got, km = index.nearest(q_lat, q_lon, m)
    dist = all_pairs(q_lat, q_lon, g_lat, g_lon)
    want = np.argsort(dist, axis=1, kind="stable")[:, :m]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(km, np.take_along_axis(dist, want, axis=1))
    np.testing.assert_array_equal(np.sort(got, axis=1), nearest_in_scope(dist, min(m, len(g_lat))))


# A small pool of coordinates, so that many points share them: around a city, across the
# antimeridian and next to both poles.
POOL = [(40.75, -73.98), (40.7501, -73.98), (40.75, -73.9799), (40.76, -73.99), (0.0, 179.9999),
        (0.0, -179.9999), (0.0, 180.0), (0.0, -180.0), (89.9999, 0.0), (89.9999, 90.0), (90.0, 0.0),
        (-89.9995, -120.0), (-90.0, 45.0), (10.0, 20.0)]


@st.composite
def point_sets(draw):
    def points(min_size):
        pick = st.sampled_from(POOL) | st.tuples(st.floats(-90, 90), st.floats(-180, 180))
        return np.array(draw(st.lists(pick, min_size=min_size, max_size=40)), dtype=np.float64).reshape(-1, 2)

    gallery, queries = points(1), points(0)
    return gallery, queries, draw(st.integers(1, len(gallery) + 3))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(point_sets())
def test_nearest_equals_the_all_pairs_rule(case):
    gallery, queries, m = case
    index = SpatialIndex(gallery[:, 0], gallery[:, 1])
    assert_nearest_exact(index, queries[:, 0], queries[:, 1], gallery[:, 0], gallery[:, 1], m)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(point_sets(), st.sampled_from([1e-6, 0.011, 0.5, 30.0, 5000.0, 20015.0, 1e6]))
def test_within_equals_the_all_pairs_rule(case, radius):
    gallery, queries, _ = case
    index = SpatialIndex(gallery[:, 0], gallery[:, 1])
    got, km = index.within(queries[:, 0], queries[:, 1], radius)
    dist = all_pairs(queries[:, 0], queries[:, 1], gallery[:, 0], gallery[:, 1])
    assert len(got) == len(queries)
    for row, (indices, distances) in enumerate(zip(got, km)):
        order = np.argsort(dist[row], kind="stable")
        want = order[dist[row][order] <= radius]
        np.testing.assert_array_equal(indices, want)
        np.testing.assert_array_equal(distances, dist[row][want])


def test_many_tiles_at_one_point_and_a_tie_across_the_mth_place():
    rng = np.random.default_rng(3)
    # 300 tiles at one point P (more than the tree's first m + SLACK neighbours), 40 single tiles
    # 1.1..44 m north of P, a group of 10 at one point Q 106 m north of P, 200 further away.
    # From P the group holds places 341..350; from Q the pile at P holds places 51..350: m = 100,
    # 345 and others cut a tie, which must be cut in gallery order.
    lat = np.concatenate([np.full(300, 1.0), 1.0 + np.arange(1, 41) * 1e-5, np.full(10, 1.0 + 95e-5),
                          1.0 + rng.uniform(0.01, 0.02, 200)])
    lon = np.concatenate([np.full(350, 2.0), 2.0 + rng.uniform(0.01, 0.02, 200)])
    perm = rng.permutation(len(lat))
    lat, lon = lat[perm], lon[perm]
    index = SpatialIndex(lat, lon)
    q_lat, q_lon = np.array([1.0, 1.0 + 2e-5, 1.0 + 95e-5, 1.0]), np.array([2.0, 2.0, 2.0, 2.0 + 1e-9])
    for m in (1, 99, 100, 101, 300, 305, 340, 345, 350, 351, 549, 550, 10_000):
        assert_nearest_exact(index, q_lat, q_lon, lat, lon, m)


def test_nearest_in_chunks_and_orders(monkeypatch):
    import geotextloc.eval.spatial as spatial

    rng = np.random.default_rng(11)
    lat, lon = np.round(rng.uniform(-60, 60, 3000), 1), np.round(rng.uniform(-180, 180, 3000), 1)
    q_lat, q_lon = np.round(rng.uniform(-60, 60, 500), 1), np.round(rng.uniform(-180, 180, 500), 1)
    monkeypatch.setattr(spatial, "CANDIDATES_PER_CHUNK", 1000)  # several chunks per call
    assert_nearest_exact(SpatialIndex(lat, lon), q_lat, q_lon, lat, lon, 100)
    order = spatial_order(q_lat, q_lon)
    assert sorted(order.tolist()) == list(range(500))


def test_bad_inputs_are_one_line_errors():
    index = SpatialIndex([1.0, 2.0], [3.0, 4.0])
    with pytest.raises(DataError, match="gallery: lat/lon"):
        SpatialIndex([91.0], [0.0])
    with pytest.raises(DataError, match="same length"):
        SpatialIndex([1.0, 2.0], [3.0])
    with pytest.raises(DataError, match="query points: lat/lon"):
        index.nearest([np.nan], [0.0], 1)
    for m in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="positive integer"):
            index.nearest([1.0], [3.0], m)
    for radius in (0, -1.0, float("nan"), float("inf"), "5"):
        with pytest.raises(ConfigError, match="radius"):
            index.within([1.0], [3.0], radius)
