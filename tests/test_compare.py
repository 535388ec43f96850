"""Paired comparison of two models on the same queries (geotextloc.eval.compare)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from geotextloc.errors import DataError
from geotextloc.eval import evaluate
from geotextloc.eval.compare import paired_hits, run_tables, sign_test, wilson_interval


def city(n=60, seed=0):
    rng = np.random.default_rng(seed)
    lat, lon = 60.17 + rng.uniform(-0.01, 0.01, n), 24.94 + rng.uniform(-0.01, 0.01, n)
    names = [f"{a:.7f},{b:.7f}_q{i:03d}{'' if i % 2 else '_x_y'}.jpg" for i, (a, b) in enumerate(zip(lat, lon))]
    return names, rng


def report(names, similarity):
    return evaluate(similarity, names, names, scope=None)


@pytest.mark.parametrize("a,b", [(0, 0), (0, 5), (5, 0), (3, 3), (7, 19), (40, 61), (1, 30), (600, 500), (2000, 2100)])
def test_sign_test_is_the_exact_two_sided_binomial_test(a, b):
    expected = 1.0 if a + b == 0 else binomtest(a, a + b, 0.5).pvalue
    assert sign_test(a, b) == pytest.approx(expected, rel=1e-9)


def test_a_model_that_finds_every_tile_beats_one_that_guesses():
    names, rng = city()
    n = len(names)
    perfect = report(names, np.eye(n) + rng.uniform(0, 0.1, (n, n))).table
    guesses = [report(names, rng.uniform(0, 1, (n, n))).table for _ in range(3)]
    result = paired_hits([perfect] * 3, guesses, k=1)
    hits = np.mean([(t["rank"] == 1).mean() for t in guesses])
    assert result.queries == n and result.hit_rate_a == 100.0
    assert result.hit_rate_b == pytest.approx(100 * hits)
    assert result.wins_b == 0 and result.wins_a == int((np.mean([t["rank"] == 1 for t in guesses], axis=0) < 1).sum())
    assert result.p_value < 1e-6 and result.difference > 80
    flipped = paired_hits(guesses, [perfect] * 3, k=1)
    assert (flipped.wins_a, flipped.wins_b, flipped.p_value) == (0, result.wins_a, result.p_value)


def test_hits_are_averaged_over_runs_per_query_before_counting():
    """A query found in 2 of 3 runs of A and 1 of 3 of B is one win for A, not three votes."""
    names, _ = city(n=4)
    eye = np.eye(4)

    def run(hit_queries):  # the true tile ranks first exactly for hit_queries
        sim = np.full((4, 4), 0.5) - 0.4 * eye
        for q in hit_queries:
            sim[q, q] = 1.0
        return report(names, sim).table

    a = [run([0, 1]), run([0]), run([1])]  # query 0: 2/3, query 1: 2/3
    b = [run([0]), run([1, 2]), run([])]  # query 0: 1/3, query 1: 1/3, query 2: 1/3
    result = paired_hits(a, b, k=1)
    assert (result.wins_a, result.wins_b) == (2, 1)
    assert result.hit_rate_a == pytest.approx(100 * 4 / 12) and result.hit_rate_b == pytest.approx(100 * 3 / 12)
    assert result.p_value == pytest.approx(1.0)
    assert "A better on 2, B better on 1" in str(result)
    # at k = 4 every run finds every tile: all ties
    assert paired_hits(a, b, k=4).p_value == 1.0 and paired_hits(a, b, k=4).wins_a == 0


def test_a_true_tile_outside_the_scope_is_a_miss():
    """ProtocolReport.table has an empty (Int64 <NA>) rank when the truth falls outside the scope:
    here two places share coordinates and the scope holds only the first."""
    names = ["60.1700000,24.9400000_a.jpg", "60.1700000,24.9400000_b.jpg", "60.1800000,24.9500000_c.jpg"]
    table = evaluate(np.eye(3), names, names, scope=1).table
    assert table["rank"].isna().tolist() == [False, True, False]
    result = paired_hits([table], [table], k=1)
    assert result.hit_rate_a == pytest.approx(200 / 3) and (result.wins_a, result.wins_b) == (0, 0)


def test_different_queries_are_an_error_that_names_the_model():
    names, rng = city()
    n = len(names)
    full = report(names, rng.uniform(0, 1, (n, n))).table
    with pytest.raises(DataError, match="models A and B were evaluated on different queries"):
        paired_hits([full], [full.iloc[1:]], k=1)
    with pytest.raises(DataError, match="runs of model B were evaluated on different queries .table 1 of model B lacks"):
        paired_hits([full, full], [full, full.iloc[1:]], k=1)
    with pytest.raises(DataError, match="no per-query tables for model A"):
        paired_hits([], [])
    with pytest.raises(DataError, match="query/rank columns"):
        paired_hits([full.drop(columns="rank")], [full])
    with pytest.raises(DataError, match="model A has 1 runs and model B 2"):
        paired_hits([full], [full, full])
    with pytest.raises(DataError, match="has no queries"):
        paired_hits([full.iloc[:0]], [full])


def test_run_tables_read_every_city_of_a_run_and_filter_by_query_view(tmp_path):
    names, rng = city()
    other, _ = city(seed=1)
    n = len(names)
    for run in ("a", "b"):
        report(names, rng.uniform(0, 1, (n, n))).to_csv(tmp_path / run / "eval" / "Helsinki-osm-queries.csv")
        report(other, rng.uniform(0, 1, (n, n))).to_csv(tmp_path / run / "eval" / "Kouvola-osm-queries.csv")
    # a satellite table of the same queries in run a: only view= keeps the runs comparable
    report(names, rng.uniform(0, 1, (n, n))).to_csv(tmp_path / "a" / "eval" / "Helsinki-sat-queries.csv")
    tables = run_tables([tmp_path / "a", tmp_path / "b"], view="osm")
    assert [len(t) for t in tables] == [2 * n, 2 * n]
    panoramas = run_tables([tmp_path / "a"], group="panorama", view="osm")[0]
    assert len(panoramas) == n and set(panoramas["view"]) == {"panorama"}
    assert len(run_tables([tmp_path / "a"], group="single_view", view="osm")[0]) == n
    assert paired_hits(tables[:1], tables[1:]).queries == 2 * n
    with pytest.raises(DataError, match="a/eval/\\*-queries.csv.* lists query"):
        paired_hits(run_tables([tmp_path / "a"]), run_tables([tmp_path / "b"]))
    with pytest.raises(DataError, match="no per-query tables"):
        run_tables([tmp_path / "missing"])
    with pytest.raises(DataError, match="query group 'singles'"):
        run_tables([tmp_path / "a"], group="singles")
    singles = names[1::2]
    report(singles, rng.uniform(0, 1, (n // 2, n // 2))).to_csv(tmp_path / "c" / "eval" / "Helsinki-osm-queries.csv")
    with pytest.raises(DataError, match="c/eval/.*: no panorama queries"):
        run_tables([tmp_path / "c"], group="panorama")


@pytest.mark.parametrize("hits,n", [(0, 235), (6, 235), (36, 591), (591, 591), (1, 1)])
def test_wilson_interval_covers_the_rate_like_the_binomial_test_it_inverts(hits, n):
    low, high = wilson_interval(100 * hits / n, n)
    assert 0 <= low <= 100 * hits / n <= high <= 100
    # the interval is the set of rates a two-sided score test at 5 % does not reject: at its ends
    # the score statistic (p̂ − p)/sqrt(p(1 − p)/n) is ±1.96
    for end in (low, high):
        if 0 < end < 100:
            p = end / 100
            assert abs(hits / n - p) / np.sqrt(p * (1 - p) / n) == pytest.approx(1.96, rel=1e-6)
    with pytest.raises(DataError, match="0 queries"):
        wilson_interval(5.0, 0)
    with pytest.raises(DataError, match="not a percentage"):
        wilson_interval(150.0, 10)
