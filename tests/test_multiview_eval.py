"""GeoBridge evaluation: directions, R@k and AP (= mean 1/rank) over the whole gallery through
the FAISS index, the scoped CVG-Text protocol where coordinates exist, missing views."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geotextloc.data.geoloc_manifest import drop_view, read_geoloc
from geotextloc.errors import DataError
from geotextloc.eval import evaluate
from geotextloc.eval.multiview import (
    DIRECTIONS,
    IMAGE_DIRECTIONS,
    TEXT_DIRECTIONS,
    Embedded,
    evaluate_embeddings,
    evaluate_multiview,
)

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_geoloc import make_geoloc  # noqa: E402

torch.set_num_threads(1)


def named(k: int) -> list[str]:
    return [f"{60.17 + 0.001 * i:.8f},{24.94 + 0.002 * (i % 3):.8f}_2024-06_loc{i:03d}_d0_z3.jpg" for i in range(k)]


def test_directions_are_the_papers_six_and_text_to_each_view():
    assert IMAGE_DIRECTIONS == ("D2S", "S2D", "P2S", "S2P", "D2P", "P2D")
    assert DIRECTIONS["P2D"] == ("street", "drone") and DIRECTIONS["S2P"] == ("satellite", "street")
    assert {d: DIRECTIONS[d] for d in TEXT_DIRECTIONS} == {
        "T2D": ("text", "drone"), "T2P": ("text", "street"), "T2S": ("text", "satellite")}


@pytest.mark.parametrize("k", [10, 2])  # k=2: the rank-4 query is counted outside FAISS's top k
def test_recall_and_ap_on_known_ranks(k):
    names = named(4)
    # satellite gallery = one-hot vectors, so s_ij is the drone query's j-th entry (up to scale)
    satellite = np.eye(4, dtype=np.float32)
    drone = np.array([[4, 3, 2, 1], [4, 3.5, 2, 1], [1, 2, 3, 4], [4, 3, 2.5, 1]], dtype=np.float32)
    report = evaluate_embeddings({"drone": Embedded(names, drone), "satellite": Embedded(names, satellite)},
                                 directions=["D2S", "S2D"], k=k)
    d2s = report.whole.loc["D2S"]
    # ranks of the own location: 1, 2, 2, 4
    assert d2s["R@1"] == 25.0 and d2s["R@5"] == 100.0 and d2s["Count"] == 4
    assert d2s["AP"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 2 + 1 / 4) / 4)  # mean 1/rank
    assert list(report.per_query[report.per_query.direction == "D2S"]["rank"]) == [1, 2, 2, 4]
    # S2D: satellite j queries the drone gallery; its scores are column j of the matrix above
    # (after each drone row is L2-normalised)
    columns = (drone / np.linalg.norm(drone, axis=1, keepdims=True)).T
    expected = [1 + int((col > col[j]).sum()) for j, col in enumerate(columns)]
    assert list(report.per_query[report.per_query.direction == "S2D"]["rank"]) == expected
    assert report.whole.loc["S2D", "AP"] == pytest.approx(100 * np.mean(1 / np.array(expected)))
    assert report.per_query.iloc[0]["top1"] == names[0]


def brute_force(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Rank of item i in row i, by sorting every row (ties in the query's favour)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = q @ g.T
    return np.array([1 + int((row > row[i]).sum()) for i, row in enumerate(sims)])


def test_every_direction_matches_a_brute_force_ranking_and_the_scoped_protocol():
    rng = np.random.default_rng(0)
    n, dim = 60, 16
    names = named(n)
    anchor = rng.normal(size=(n, dim))
    kinds = {kind: anchor + rng.normal(scale=s, size=(n, dim)) for kind, s in
             (("drone", 0.8), ("street", 1.5), ("satellite", 0.8), ("text", 1.2))}
    embeddings = {kind: Embedded(names, x.astype(np.float32)) for kind, x in kinds.items()}
    coordinates = {name: tuple(float(v) for v in name.split("_")[0].split(",")) for name in names}
    report = evaluate_embeddings(embeddings, coordinates, scope=20)
    assert list(report.whole.index) == list(DIRECTIONS)
    for direction, (u, v) in DIRECTIONS.items():
        rank = brute_force(kinds[u], kinds[v])
        row = report.whole.loc[direction]
        for k in (1, 5, 10):
            assert row[f"R@{k}"] == pytest.approx(100 * np.mean(rank <= k)), (direction, k)
        assert row["AP"] == pytest.approx(100 * np.mean(1 / rank)), direction
        # scoped: the CVG-Text protocol on the same similarities (names carry the coordinates)
        q = kinds[u] / np.linalg.norm(kinds[u], axis=1, keepdims=True)
        g = kinds[v] / np.linalg.norm(kinds[v], axis=1, keepdims=True)
        protocol = evaluate(q @ g.T, names, names, scope=20).to_dict()["overall"]
        for key in ("R@1", "R@5", "R@10", "L@50", "Deviation"):
            assert report.scoped.loc[direction, key] == pytest.approx(protocol[key]), (direction, key)
    # a good direction scores above a noisy one, and the summary is the mean R@1 of the six
    assert report.whole.loc["D2S", "AP"] > report.whole.loc["P2S", "AP"]
    assert report.score == pytest.approx(report.whole.loc[list(IMAGE_DIRECTIONS), "R@1"].mean())
    assert report.to_dict()["whole"]["D2S"]["Count"] == n


def test_missing_views_shrink_queries_and_gallery_and_no_coordinates_means_no_scoped_part():
    rng = np.random.default_rng(1)
    names = named(10)
    drone = Embedded(names, rng.normal(size=(10, 8)).astype(np.float32))
    satellite = Embedded(names[:7], rng.normal(size=(7, 8)).astype(np.float32))  # 3 without a tile
    report = evaluate_embeddings({"drone": drone, "satellite": satellite}, coordinates=None)
    assert list(report.whole.index) == ["D2S", "S2D"] and report.scoped is None
    assert report.whole.loc["D2S", "Count"] == 7 and report.whole.loc["S2D", "Count"] == 7
    assert set(report.per_query[report.per_query.direction == "S2D"]["top1"]) <= set(names)
    partial = {n: (60.0, 24.0) for n in names[:5]}  # coordinates for only some: no scoped part
    assert evaluate_embeddings({"drone": drone, "satellite": satellite}, partial).scoped is None
    with pytest.raises(DataError, match="unknown direction 'X2Y'"):
        evaluate_embeddings({"drone": drone, "satellite": satellite}, directions=["X2Y"])
    with pytest.raises(DataError, match="P2S needs street and satellite"):
        evaluate_embeddings({"drone": drone, "satellite": satellite}, directions=["P2S"])


def test_evaluate_multiview_embeds_each_view_with_its_encoder(tmp_path):
    from geotextloc.models import factory
    from geotextloc.models.geobridge import GeoBridge
    from geotextloc.models.geobridge import view_transforms

    make_geoloc(tmp_path, n_train=0, n_test=12, size=32)
    records = read_geoloc(tmp_path, splits=["test"])
    records = drop_view(records, "satellite", 0.25, seed=0)  # 3 locations without a tile
    torch.manual_seed(0)
    clip, _, preprocess, tokenizer = factory.create("geotextloc-tiny", context_length=64, image_size=32)
    model = GeoBridge(clip).eval()
    report = evaluate_multiview(model, records, view_transforms(preprocess, 32), tokenizer, scope=5,
                                progress=False)
    assert list(report.whole.index) == list(DIRECTIONS)
    counts = report.whole["Count"].to_dict()
    assert counts["D2P"] == counts["T2D"] == 12 and counts["D2S"] == counts["S2P"] == counts["T2S"] == 9
    assert report.scoped is not None and report.scoped.loc["D2P", "Count"] == 12
    # each view goes through its own encoder: changing E_p changes P2D, not D2S
    def ranked(r, direction):
        rows = r.per_query[r.per_query.direction == direction]
        return rows[["rank", "top1", "top2", "top3"]].values.tolist()

    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.encoders["street"].parameters():
            p.add_(0.5 * torch.randn_like(p))
    changed = evaluate_multiview(model, records, view_transforms(preprocess, 32), tokenizer, scope=5, progress=False)
    assert ranked(changed, "D2S") == ranked(report, "D2S")
    assert ranked(changed, "P2D") != ranked(report, "P2D")
    csv = report.to_csv(tmp_path / "queries.csv")
    assert csv.read_text().startswith("direction,query,rank,top1")
