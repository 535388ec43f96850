"""The CVG-Text protocol (geotextloc.eval.evaluate) against a plain per-query loop."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geotextloc.data.release import PANORAMA, parse_name
from geotextloc.errors import ConfigError, DataError
from geotextloc.eval import evaluate, evaluate_embeddings
from geotextloc.eval.metrics import METRIC_KEYS
from geotextloc.eval.spatial import haversine_km

KM_PER_DEGREE = 6371.0 * math.pi / 180  # arc length of one degree on the R = 6371 km sphere


def single(lat: float, lon: float, tag: str) -> str:
    return f"{lat},{lon}_{tag}.jpg"


def panorama(lat: float, lon: float, tag: str) -> str:
    return f"{lat},{lon}_2022-08_{tag}_d62_z3.jpg"


def reference(similarity, queries, gallery, scope):
    """The protocol as a plain loop over queries and gallery items (the reference code's way)."""
    info = [parse_name(name) for name in gallery]
    ranks, deviations, tops = [], [], []
    for i, query in enumerate(queries):
        q = parse_name(query)
        dist = [float(haversine_km(q.lat, q.lon, g.lat, g.lon)) for g in info]
        by_distance = sorted(range(len(gallery)), key=lambda j: dist[j])  # stable: gallery order
        candidates = by_distance if scope is None else by_distance[:scope]
        ranked = sorted(candidates, key=lambda j: -float(similarity[i][j]))  # stable: candidate order
        names, first = [], []
        for j in ranked:
            if gallery[j] not in names:
                names.append(gallery[j])
                first.append(j)
        ranks.append(names.index(query) + 1 if query in names else None)
        deviations.append(0.0 if names[0] == query else dist[first[0]])
        tops.append((names + [""] * 5)[:5])

    def summary(keep):
        idx = [i for i, query in enumerate(queries) if keep(parse_name(query).view)]
        if not idx:
            return {key: math.nan for key in METRIC_KEYS[:-1]} | {"Count": 0}
        pct = lambda hits: 100.0 * sum(hits) / len(idx)  # noqa: E731
        out = {f"R@{k}": pct(ranks[i] is not None and ranks[i] <= k for i in idx) for k in (1, 5, 10)}
        for key, km in (("L@50", 0.05), ("L@100", 0.10), ("L@150", 0.15)):
            out[key] = pct(deviations[i] <= km for i in idx)
        return out | {"Deviation": sum(deviations[i] for i in idx) / len(idx), "Count": len(idx)}

    summaries = {
        "overall": summary(lambda view: True),
        "panorama": summary(lambda view: view == PANORAMA),
        "single_view": summary(lambda view: view != PANORAMA),
    }
    return summaries, ranks, deviations, tops


def assert_same_summary(got, want):
    assert list(got) == ["overall", "panorama", "single_view"]
    for group in want:
        assert list(got[group]) == list(METRIC_KEYS)
        for key in METRIC_KEYS:
            assert got[group][key] == pytest.approx(want[group][key], nan_ok=True, abs=1e-9), (group, key)


# Coordinates on a coarse grid, so that distances tie; some names share coordinates.
LATS = [40.75, 40.7501, 40.7499, 40.7505, 40.751, 40.76]  # 11, 55, 111 m, 1.1 km apart
LONS = [-73.98, -73.9801, -73.9799, -73.99]


@st.composite
def protocol_cases(draw):
    n_tiles = draw(st.integers(1, 9))
    tiles = []
    for t in range(n_tiles):
        lat, lon = draw(st.sampled_from(LATS)), draw(st.sampled_from(LONS))
        make = draw(st.sampled_from([single, panorama]))
        tiles.append(make(lat, lon, f"t{t}"))
    gallery = tiles + draw(st.lists(st.sampled_from(tiles), max_size=6))  # duplicate names
    order = draw(st.permutations(range(len(gallery))))
    gallery = [gallery[j] for j in order]
    queries = draw(st.lists(st.sampled_from(tiles), min_size=1, max_size=8))
    values = st.sampled_from([0.0, 0.5, 1.0]) | st.floats(-1, 1, allow_nan=False, width=32)
    similarity = np.array(
        draw(st.lists(st.lists(values, min_size=len(gallery), max_size=len(gallery)),
                      min_size=len(queries), max_size=len(queries))),
        dtype=np.float32,
    )
    scope = draw(st.none() | st.integers(1, len(gallery) + 2))
    chunk = draw(st.integers(1, len(queries) + 1))
    return similarity, queries, gallery, scope, chunk


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(protocol_cases())
def test_matches_per_query_loop(case):
    similarity, queries, gallery, scope, chunk = case
    report = evaluate(similarity, queries, gallery, scope=scope, chunk_size=chunk)
    summaries, ranks, deviations, tops = reference(similarity, queries, gallery, scope)
    assert_same_summary(report.to_dict(), summaries)
    table = report.table
    assert [None if pd.isna(r) else int(r) for r in table["rank"]] == ranks
    assert table["deviation_km"].to_numpy() == pytest.approx(deviations, abs=1e-12)
    assert table[[f"top{j}" for j in range(1, 6)]].values.tolist() == tops
    assert table["hit"].tolist() == [r == 1 for r in ranks]


def test_random_city_matches_loop_with_default_scope():
    rng = np.random.default_rng(7)
    n = 300
    lat = np.round(40.75 + rng.uniform(-0.02, 0.02, n), 4)  # rounded: some shared coordinates
    lon = np.round(-73.98 + rng.uniform(-0.02, 0.02, n), 4)
    gallery = [(panorama if i % 3 else single)(a, b, f"x{i}") for i, (a, b) in enumerate(zip(lat, lon))]
    queries = gallery[::2]
    similarity = rng.integers(0, 20, (len(queries), n)).astype(np.float32)  # many ties
    report = evaluate(similarity, queries, gallery, chunk_size=17)
    summaries, ranks, _, _ = reference(similarity, queries, gallery, 100)
    assert_same_summary(report.to_dict(), summaries)
    assert [None if pd.isna(r) else int(r) for r in report.table["rank"]] == ranks


def test_haversine_known_distances():
    assert float(haversine_km(0, 0, 0, 1)) == pytest.approx(KM_PER_DEGREE, rel=1e-12)
    assert float(haversine_km(10, 20, 11, 20)) == pytest.approx(KM_PER_DEGREE, rel=1e-12)
    assert float(haversine_km(0, 0, 0, 180)) == pytest.approx(math.pi * 6371.0, rel=1e-12)
    assert float(haversine_km(40.75, -73.98, 40.75, -73.98)) == 0.0
    # New York -> Brisbane, against the textbook formula evaluated with the math module.
    p1, p2, dl = math.radians(40.7529), math.radians(-27.4698), math.radians(153.0251 + 73.9796)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    assert float(haversine_km(40.7529, -73.9796, -27.4698, 153.0251)) == pytest.approx(
        2 * 6371.0 * math.asin(math.sqrt(a)), rel=1e-12
    )


def test_hand_computed_case():
    a, b = single(0.0, 0.0, "a"), panorama(0.0, 0.001, "b")  # 0.001 deg of longitude apart
    far = single(0.5, 0.5, "far")
    gallery = [a, b, far]
    similarity = np.array([[0.1, 0.9, 0.5], [0.2, 0.8, 0.1]])  # query a -> b first; query b -> b
    report = evaluate(similarity, [a, b], gallery, scope=2)  # 'far' is outside the scope
    assert report.table["rank"].tolist() == [2, 1]
    assert report.table["top1"].tolist() == [b, b]
    assert report.table["top3"].tolist() == ["", ""]  # only 2 candidates
    assert report.table["deviation_km"].tolist() == pytest.approx([0.001 * KM_PER_DEGREE, 0.0])
    got = report.to_dict()
    assert got["single_view"] == {
        "R@1": 0.0, "R@5": 100.0, "R@10": 100.0,
        "L@50": 0.0, "L@100": 0.0, "L@150": 100.0,  # 0.1112 km: beyond 100 m, within 150 m
        "Deviation": pytest.approx(0.001 * KM_PER_DEGREE), "Count": 1,
    }
    assert got["panorama"]["R@1"] == 100.0 and got["panorama"]["Deviation"] == 0.0
    assert got["overall"]["R@1"] == 50.0 and got["overall"]["Count"] == 2
    # With the whole gallery, 'far' (0.5) outranks a (0.1) for query a but not b (0.8).
    whole = evaluate(similarity, [a, b], gallery, scope=None)
    assert whole.table["top2"].tolist() == [far, a]
    assert whole.table["rank"].tolist() == [3, 1]


def test_duplicates_removed_keeping_first_and_ties_prefer_nearer():
    a, b, c = single(0.0, 0.0, "a"), single(0.0, 0.002, "b"), single(0.0, 0.001, "c")
    gallery = [b, b, c, a, c]
    # Query a: b twice on top, then a tie at 0.5 where a (distance 0) comes before both c's.
    similarity = np.array([[0.9, 0.9, 0.5, 0.5, 0.5]])
    report = evaluate(similarity, [a], gallery, scope=None)
    assert report.table.loc[0, ["top1", "top2", "top3", "top4"]].tolist() == [b, a, c, ""]
    assert report.table.loc[0, "rank"] == 2
    # Scope 3 from c: both c's, then a 3-way distance tie (b, b, a) cut in gallery order -> b.
    report = evaluate(np.array([[0.0, 0.0, 0.0, 1.0, 0.0]]), [c], gallery, scope=3)
    assert report.table.loc[0, ["top1", "top2", "top3"]].tolist() == [c, b, ""]


def test_scope_one_is_always_a_hit():
    names = [single(40.75 + i * 1e-3, -73.98, f"s{i}") for i in range(20)]
    similarity = np.random.default_rng(0).random((20, 20))
    assert evaluate(similarity, names, names, scope=1).to_dict()["overall"]["R@1"] == 100.0


def test_torch_and_numpy_inputs_agree():
    names = [panorama(40.75 + i * 1e-4, -73.98 - i * 1e-4, f"p{i}") for i in range(30)]
    similarity = torch.randn(10, 30, dtype=torch.bfloat16)
    got = evaluate(similarity, names[:10], names, scope=7)
    want = evaluate(similarity.float().numpy(), names[:10], names, scope=7)
    assert_same_summary(got.to_dict(), want.to_dict())
    pd.testing.assert_frame_equal(got.table, want.table)


def test_empty_group_is_nan_with_count_zero_and_csv_round_trip(tmp_path):
    names = [single(1.0, 1.0 + i * 1e-3, f"s{i}") for i in range(4)]
    report = evaluate(np.eye(4), names, names, texts=["w", "x", "y", "z"])
    panorama_row = report.to_dict()["panorama"]
    assert panorama_row["Count"] == 0
    assert all(math.isnan(panorama_row[key]) for key in METRIC_KEYS[:-1])
    path = report.to_csv(tmp_path / "cases" / "per_query.csv")
    back = pd.read_csv(path, keep_default_na=False)
    assert back["query"].tolist() == names and back["text"].tolist() == ["w", "x", "y", "z"]
    assert back["hit"].tolist() == [True] * 4
    assert [p.name for p in path.parent.iterdir()] == ["per_query.csv"]  # no temp file left
    assert "R@1" in str(report)


def test_empty_queries_give_nan_overall():
    report = evaluate(np.zeros((0, 1)), [], [single(1.0, 1.0, "a")])
    assert report.to_dict()["overall"]["Count"] == 0 and len(report.table) == 0


def test_bad_inputs_raise_one_line_errors():
    a, b = single(1.0, 1.0, "a"), single(1.0, 1.1, "b")
    with pytest.raises(DataError, match=r"'1\.0,1\.1_b\.jpg' .*gallery"):
        evaluate(np.zeros((2, 1)), [a, b], [a])
    with pytest.raises(DataError, match="shape"):
        evaluate(np.zeros((2, 2)), [a], [a, b])
    with pytest.raises(DataError, match="NaN"):
        evaluate(np.array([[0.0, np.nan]]), [a], [a, b])
    with pytest.raises(DataError, match="coordinates"):
        evaluate(np.zeros((1, 1)), ["not-a-name.jpg"], ["not-a-name.jpg"])
    for scope in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="scope"):
            evaluate(np.zeros((1, 1)), [a], [a], scope=scope)
    with pytest.raises(DataError, match="texts"):
        evaluate(np.zeros((1, 1)), [a], [a], texts=["x", "y"])


# ---------------------------------------------------------------- protocol at scale


def matrix_reference(similarity, queries, gallery, scope):
    """Per-query rank, deviation and top-5 from the full haversine matrix, a stable argsort by
    distance, a stable argsort by score among the candidates, and dedup in a Python loop."""
    q, g = [parse_name(n) for n in queries], [parse_name(n) for n in gallery]
    dist = haversine_km(np.array([x.lat for x in q])[:, None], np.array([x.lon for x in q])[:, None],
                        np.array([x.lat for x in g]), np.array([x.lon for x in g]))
    ranks, deviations, tops = [], [], []
    for i, query in enumerate(queries):
        candidates = np.argsort(dist[i], kind="stable")[:scope]  # [:None] is the whole gallery
        ranked = candidates[np.argsort(-np.asarray(similarity[i])[candidates], kind="stable")]
        names, first = [], []
        for j in ranked:
            if gallery[j] not in names:
                names.append(gallery[j])
                first.append(j)
        ranks.append(names.index(query) + 1 if query in names else None)
        deviations.append(0.0 if names[0] == query else float(dist[i, first[0]]))
        tops.append((names + [""] * 5)[:5])
    return ranks, deviations, tops


def assert_table_is(report, ranks, deviations, tops):
    table = report.table
    assert [None if pd.isna(r) else int(r) for r in table["rank"]] == ranks
    assert table["deviation_km"].tolist() == deviations  # the same haversine, bit for bit
    assert table[[f"top{j}" for j in range(1, 6)]].values.tolist() == tops
    assert table["hit"].tolist() == [r == 1 for r in ranks]


def city_case(rng, n_gallery, n_queries, dim=6, decimals=4, duplicates=0):
    """Names around Midtown on a grid (shared coordinates), some gallery names twice, and small
    integer embeddings: every dot product is exact, so scores tie often and both entry points
    see the same numbers."""
    lat = np.round(40.75 + rng.uniform(-0.02, 0.02, n_gallery), decimals)
    lon = np.round(-73.98 + rng.uniform(-0.02, 0.02, n_gallery), decimals)
    names = [(panorama if i % 3 else single)(a, b, f"x{i}") for i, (a, b) in enumerate(zip(lat, lon))]
    extra = rng.choice(n_gallery, duplicates, replace=False)
    gallery = names + [names[j] for j in extra]
    g_emb = rng.integers(-2, 3, (n_gallery, dim)).astype(np.float32)
    g_emb = np.concatenate([g_emb, rng.integers(-2, 3, (duplicates, dim)).astype(np.float32)])
    order = rng.permutation(len(gallery))
    gallery, g_emb = [gallery[j] for j in order], g_emb[order]
    pick = rng.choice(n_gallery, n_queries, replace=n_queries > n_gallery)
    queries = [names[j] for j in pick]
    q_emb = rng.integers(-2, 3, (n_queries, dim)).astype(np.float32)
    return q_emb, g_emb, queries, gallery


@pytest.mark.parametrize("scope", [1, 5, 100, None, 2000])
def test_both_entry_points_match_the_matrix_reference(scope):
    rng = np.random.default_rng(21)
    q_emb, g_emb, queries, gallery = city_case(rng, 900, 500, duplicates=60)
    similarity = q_emb @ g_emb.T
    want = matrix_reference(similarity, queries, gallery, scope)
    from_matrix = evaluate(similarity, queries, gallery, scope=scope)
    from_embeddings = evaluate_embeddings(q_emb, g_emb, queries, gallery, scope=scope)
    assert_table_is(from_matrix, *want)
    assert_table_is(from_embeddings, *want)
    pd.testing.assert_frame_equal(from_matrix.table, from_embeddings.table)
    assert str(from_matrix) == str(from_embeddings)


def test_entry_points_agree_in_any_chunks_with_torch_inputs():
    rng = np.random.default_rng(5)
    q_emb, g_emb, queries, gallery = city_case(rng, 300, 120, dim=4, decimals=3, duplicates=20)
    want = matrix_reference(q_emb @ g_emb.T, queries, gallery, 100)
    for chunk in (1, 7, 120, None):
        assert_table_is(evaluate_embeddings(q_emb, g_emb, queries, gallery, chunk_size=chunk), *want)
        assert_table_is(evaluate(q_emb @ g_emb.T, queries, gallery, chunk_size=chunk), *want)
    got = evaluate_embeddings(torch.from_numpy(q_emb), torch.from_numpy(g_emb).to(torch.bfloat16), queries, gallery)
    assert_table_is(got, *want)  # small integers are exact in bfloat16


def test_random_float_embeddings_match_the_reference():
    """Continuous scores: only rounding could tell the two dot products apart, and at this size it does not."""
    rng = np.random.default_rng(8)
    n = 2000
    names = [panorama(a, b, f"p{i}") for i, (a, b) in
             enumerate(zip(40.75 + rng.uniform(-0.03, 0.03, n), -73.98 + rng.uniform(-0.03, 0.03, n)))]
    g_emb = rng.standard_normal((n, 64)).astype(np.float32)
    q_emb = g_emb[:700] + 0.8 * rng.standard_normal((700, 64)).astype(np.float32)
    similarity = q_emb.astype(np.float64) @ g_emb.T.astype(np.float64)
    want = matrix_reference(similarity, names[:700], names, 100)
    assert_table_is(evaluate_embeddings(q_emb.astype(np.float64), g_emb.astype(np.float64), names[:700], names), *want)
    assert_table_is(evaluate(similarity, names[:700], names), *want)


def test_many_tiles_at_one_point_and_ties_at_the_scope_edge():
    """250 gallery tiles share one point (more than the scope), 40 more share a second point 50 m
    away whose group straddles the 100th place from queries between them; all scores are equal
    in one run (the answer is the tie-break) and few-valued in the other."""
    rng = np.random.default_rng(2)
    lat = np.concatenate([np.full(250, 40.75), np.full(40, 40.75045), 40.75 + rng.uniform(0.001, 0.01, 100)])
    lon = np.concatenate([np.full(290, -73.98), -73.98 + rng.uniform(0.001, 0.01, 100)])
    lat, lon = np.concatenate([lat, np.full(60, 40.7503)]), np.concatenate([lon, np.full(60, -73.98)])
    gallery = [single(a, b, f"s{i}") for i, (a, b) in enumerate(zip(lat, lon))]
    gallery = [gallery[j] for j in rng.permutation(len(gallery))]
    queries = gallery[::3]
    for g_emb in (np.ones((len(gallery), 3), np.float32), rng.integers(0, 2, (len(gallery), 3)).astype(np.float32)):
        q_emb = np.ones((len(queries), 3), np.float32)
        for scope in (100, 250, 251, 300, 310, 350):
            want = matrix_reference(q_emb @ g_emb.T, queries, gallery, scope)
            assert_table_is(evaluate_embeddings(q_emb, g_emb, queries, gallery, scope=scope), *want)
            assert_table_is(evaluate(q_emb @ g_emb.T, queries, gallery, scope=scope), *want)


def test_antimeridian_and_poles():
    rng = np.random.default_rng(4)
    n = 400
    lat = np.concatenate([rng.uniform(-1, 1, n // 2), rng.uniform(89.9, 90.0, n // 4),
                          rng.uniform(-90, -89.95, n // 4)])
    lon = np.concatenate([np.where(rng.random(n // 2) < 0.5, rng.uniform(179.9, 180, n // 2),
                                   rng.uniform(-180, -179.9, n // 2)), rng.uniform(-180, 180, n // 2)])
    lat[:5], lon[:5] = [90.0, -90.0, 0.0, 0.0, 89.99999], [0.0, 0.0, 180.0, -180.0, 10.0]
    gallery = [single(round(a, 6), round(b, 6), f"w{i}") for i, (a, b) in enumerate(zip(lat, lon))]
    g_emb = rng.integers(-1, 2, (n, 4)).astype(np.float32)
    q_emb = rng.integers(-1, 2, (150, 4)).astype(np.float32)
    queries = gallery[:150]
    for scope in (1, 10, 100):
        want = matrix_reference(q_emb @ g_emb.T, queries, gallery, scope)
        assert_table_is(evaluate_embeddings(q_emb, g_emb, queries, gallery, scope=scope), *want)
        assert_table_is(evaluate(q_emb @ g_emb.T, queries, gallery, scope=scope), *want)


def test_embeddings_entry_point_never_holds_queries_x_gallery():
    rng = np.random.default_rng(9)
    n = 4000
    names = [single(a, b, f"m{i}") for i, (a, b) in
             enumerate(zip(40.75 + rng.uniform(-0.03, 0.03, n), -73.98 + rng.uniform(-0.03, 0.03, n)))]
    emb = rng.standard_normal((n, 16)).astype(np.float32)
    evaluate_embeddings(emb, emb, names, names)  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        evaluate_embeddings(emb, emb, names, names)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 / 4  # a quarter of the float32 similarity matrix (64 MB)


def test_embeddings_bad_inputs_raise_one_line_errors():
    a, b = single(1.0, 1.0, "a"), single(1.0, 1.1, "b")
    emb = np.ones((2, 3), np.float32)
    with pytest.raises(DataError, match="shapes"):
        evaluate_embeddings(emb, np.ones((2, 4)), [a, b], [a, b])
    with pytest.raises(DataError, match="shapes"):
        evaluate_embeddings(emb, emb, [a], [a, b])
    with pytest.raises(DataError, match="shapes"):
        evaluate_embeddings(np.ones(3), emb, [a], [a, b])
    with pytest.raises(DataError, match=r"query '1\.0,1\.1_b\.jpg' is not finite"):
        evaluate_embeddings(np.array([[1.0, 0, 0], [np.nan, 0, 0]]), emb, [a, b], [a, b])
    with pytest.raises(DataError, match=r"gallery item '1\.0,1\.0_a\.jpg' is not finite"):
        evaluate_embeddings(emb, np.array([[np.inf, 0, 0], [1.0, 0, 0]]), [a, b], [a, b])
    with pytest.raises(DataError, match="no gallery item"):
        evaluate_embeddings(emb, emb[:1], [a, b], [a])
    with pytest.raises(ConfigError, match="scope"):
        evaluate_embeddings(emb, emb, [a, b], [a, b], scope=0)
    with pytest.raises(DataError, match="texts"):
        evaluate_embeddings(emb, emb, [a, b], [a, b], texts=["x"])
    empty = evaluate_embeddings(np.zeros((0, 3)), emb, [], [a, b])
    assert empty.to_dict()["overall"]["Count"] == 0
