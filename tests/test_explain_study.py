"""The ERM study's bookkeeping (geotextloc.explain.study) on real protocol reports: which queries
are sampled and re-ranked, R@1 before/after per query group, and how the true tile moved."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from geotextloc.eval import evaluate
from geotextloc.explain import study

N = 12  # places on a line of latitudes ~11 m apart; each has a panorama and a single-view name


def names(version_suffix: str) -> list[str]:
    return [f"{60.0 + 1e-4 * i:.6f},24.900000_{'pano' if version_suffix == '' else 'photo'}{i:02d}.jpg"
            for i in range(N)]


def records(version: str, suffix: str) -> list:
    return [SimpleNamespace(name=n, version=version, text=f"text of {n}") for n in names(suffix)]


def report_with_ranks(ranks: list[int], suffix: str = ""):
    """A protocol report over ``names(suffix)`` whose query i finds its true tile at ranks[i]."""
    gallery = names(suffix)
    sim = np.tile(np.linspace(1.0, 0.0, N, dtype=np.float32), (N, 1))  # gallery order = score order
    for i, rank in enumerate(ranks):
        others = [j for j in range(N) if j != i]
        order = others[: rank - 1] + [i] + others[rank - 1:]
        sim[i, order] = np.linspace(1.0, 0.0, N)
    return evaluate(sim, gallery, gallery, scope=None)


def test_sample_places_keeps_both_texts_of_a_place_and_follows_the_seed():
    queries = {"C": records("C", ""), "C-photos": records("C-photos", "p")}
    first = study.sample_places(queries, 6, np.random.default_rng(1))
    assert [len(v) for v in first.values()] == [3, 3]
    places = [{study.place_of(r.name) for r in part} for part in first.values()]
    assert places[0] == places[1]  # the panorama and single-view text of each chosen place
    again = study.sample_places(queries, 6, np.random.default_rng(1))
    assert {v: [r.name for r in p] for v, p in again.items()} == {v: [r.name for r in p] for v, p in first.items()}
    assert sum(len(p) for p in study.sample_places(queries, 100, np.random.default_rng(0)).values()) == 2 * N


def test_in_top_picks_the_queries_whose_truth_is_in_the_top_k_of_the_merged_report():
    ranks_a = [1, 2, 6, 5, 9, 1, 3, 12, 4, 7, 1, 2]
    ranks_b = [6] * N
    queries = {"C": records("C", ""), "C-photos": records("C-photos", "p")}
    merged = study.merge_reports([report_with_ranks(ranks_a), report_with_ranks(ranks_b, "p")])
    assert list(study.ranks(merged)) == ranks_a + ranks_b
    picked = study.in_top(merged, queries, k=5)
    assert [r.name for r in picked["C"]] == [names("")[i] for i, r in enumerate(ranks_a) if r <= 5]
    assert picked["C-photos"] == []
    with pytest.raises(ValueError, match="rows"):
        study.in_top(merged, {"C": queries["C"]})


def run_of(before, after) -> study.RerankRun:
    return study.RerankRun({}, len(before.table), 0.0, before, after, 0.0, 0)


def test_rerank_table_and_moves_count_each_query_once():
    before_ranks = [1, 1, 2, 3, 5, 2, 4, 1, 3, 2, 5, 4]
    after_ranks = [1, 2, 1, 1, 5, 3, 4, 1, 2, 1, 5, 5]
    before, after = report_with_ranks(before_ranks), report_with_ranks(after_ranks)
    population = report_with_ranks(before_ranks)  # every query was explained
    table = study.rerank_table({("C", "osm"): run_of(before, after)}, {("C", "osm"): population})
    overall = table[table.queries == "overall"].iloc[0]
    assert overall["n"] == N and overall["explained"] == N
    assert overall["R@1 before"] == pytest.approx(100 * 3 / N)
    assert overall["R@1 after"] == pytest.approx(100 * 5 / N)
    assert overall["change"] == pytest.approx(100 * 2 / N)
    moves = study.rank_moves({("C", "osm"): run_of(before, after)}).loc[("C", "osm")]
    b, a = np.array(before_ranks), np.array(after_ranks)
    assert moves["truth lifted to #1"] == ((a == 1) & (b != 1)).sum() == 3
    assert moves["truth lifted, not to #1"] == ((a < b) & (a != 1)).sum() == 1
    assert moves["truth pushed down"] == (a > b).sum() == 3
    assert moves["hits lost"] == 1


def test_rerank_table_refuses_a_population_with_hits_that_were_not_explained():
    before = report_with_ranks([2] * N)
    population = report_with_ranks([1] + [2] * (N - 1))
    with pytest.raises(ValueError, match="every hit"):
        study.rerank_table({("C", "osm"): run_of(before, before)}, {("C", "osm"): population})
