"""GalleryIndex with real FAISS, the hashing-bow encoder, and `geotextloc search` end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest

from geotextloc.errors import ConfigError, DataError, GeotextlocError
from geotextloc.eval.index import GalleryIndex, encode_texts, hashing_bow
from geotextloc.eval.spatial import haversine_km

RNG = np.random.default_rng(1234)


def city_names(n: int, rng=RNG) -> list[str]:
    lat = 40.75 + rng.uniform(-0.02, 0.02, n)
    lon = -73.98 + rng.uniform(-0.02, 0.02, n)
    return [f"{a:.7f},{b:.7f}_tile{i}.png" for i, (a, b) in enumerate(zip(lat, lon))]


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def random_gallery():
    vectors = RNG.standard_normal((2000, 32)).astype(np.float32)
    queries = RNG.standard_normal((100, 32)).astype(np.float32)
    return vectors, city_names(len(vectors)), queries


def test_exact_search_equals_numpy_dot_products(random_gallery):
    vectors, names, queries = random_gallery
    index = GalleryIndex(vectors, names)
    result = index.search(queries, k=5)
    dots = unit(queries) @ unit(vectors).T
    assert (result.indices[:, 0] == dots.argmax(axis=1)).all()
    assert (result.indices == np.argsort(-dots, axis=1)[:, :5]).all()
    assert result.scores == pytest.approx(np.sort(dots, axis=1)[:, ::-1][:, :5], abs=1e-5)
    assert result.names[3][0] == names[dots[3].argmax()]
    assert result.lat[3, 0] == pytest.approx(float(names[dots[3].argmax()].split(",")[0]))


def recall_at_10(approx, exact):
    return np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.indices, exact.indices)])


def test_approximate_indexes_recall(random_gallery):
    vectors, names, queries = random_gallery
    exact = GalleryIndex(vectors, names).search(queries, k=10)
    hnsw = GalleryIndex(vectors, names, kind="hnsw", params={"ef_construction": 80, "ef_search": 64})
    assert recall_at_10(hnsw.search(queries, k=10), exact) >= 0.9
    ivf = GalleryIndex(vectors, names, kind="ivf", params={"nlist": 8, "nprobe": 8})  # all lists: exact
    assert recall_at_10(ivf.search(queries, k=10), exact) == 1.0


def test_scoped_search_ranks_only_the_nearest_tiles():
    rng = np.random.default_rng(5)
    names = city_names(400, rng)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    index = GalleryIndex(vectors, names)
    near = [(40.755, -73.985), (40.74, -73.97)]
    queries = rng.standard_normal((2, 16)).astype(np.float32)
    result = index.search(queries, k=10, near=near, scope=30)
    lat = np.array([float(n.split(",")[0]) for n in names])
    lon = np.array([float(n.split(",")[1].split("_")[0]) for n in names])
    for i, (qlat, qlon) in enumerate(near):
        dist = haversine_km(qlat, qlon, lat, lon)
        in_scope = set(np.argsort(dist, kind="stable")[:30].tolist())
        assert set(result.indices[i].tolist()) <= in_scope
        dots = unit(vectors) @ unit(queries)[i]
        want = sorted(in_scope, key=lambda j: -dots[j])[:10]
        assert result.indices[i].tolist() == want
        assert result.distance_km[i] == pytest.approx(dist[want])
    # k larger than the scope gives the whole scope; scope=None ranks the whole gallery.
    assert index.search(queries[:1], k=50, near=near[0], scope=30).indices.shape == (1, 30)
    whole = index.search(queries, k=5, near=near, scope=None)
    assert (whole.indices == index.search(queries, k=5).indices).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, random_gallery, kind):
    vectors, names, queries = random_gallery
    records = [{"name": name, "city": "NewYork", "row": i} for i, name in enumerate(names)]
    encoder = {"kind": "hashing-bow", "dim": 32, "ngram": 1}
    index = GalleryIndex(vectors, records, encoder=encoder, kind=kind)
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "embeddings.npy", "index.faiss", "meta.json", "records.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary folder left
    back = GalleryIndex.load(tmp_path / "idx")
    assert back.kind == kind and back.params == index.params and back.encoder == encoder
    assert back.records[7] == {"name": names[7], "city": "NewYork", "row": 7,
                               "lat": index.lat[7], "lon": index.lon[7]}
    np.testing.assert_array_equal(back.embeddings, index.embeddings)
    for near in (None, (40.75, -73.98)):
        a, b = index.search(queries, k=10, near=near), back.search(queries, k=10, near=near)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.scores, b.scores)


def test_save_replaces_an_index_but_not_other_folders(tmp_path):
    names = city_names(20)
    GalleryIndex(np.eye(20), names).save(tmp_path / "idx")
    GalleryIndex(np.eye(10), names[:10]).save(tmp_path / "idx")
    assert len(GalleryIndex.load(tmp_path / "idx")) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(GeotextlocError, match="not a gallery index"):
        GalleryIndex(np.eye(10), names[:10]).save(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="no meta.json"):
        GalleryIndex.load(tmp_path)
    GalleryIndex(np.eye(5), city_names(5)).save(tmp_path / "idx")
    lines = (tmp_path / "idx" / "records.jsonl").read_text().splitlines()
    (tmp_path / "idx" / "records.jsonl").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(DataError, match=r"idx: broken gallery index \(3 records, 5 embeddings"):
        GalleryIndex.load(tmp_path / "idx")


def test_bad_galleries_are_refused():
    names = city_names(3)
    with pytest.raises(DataError, match="appears more than once"):
        GalleryIndex(np.eye(3), [names[0], names[1], names[0]])
    with pytest.raises(DataError, match="not finite"):
        GalleryIndex(np.array([[1.0, 0], [np.nan, 1], [0, 1]]), names)
    with pytest.raises(DataError, match="one embedding row per record"):
        GalleryIndex(np.eye(2), names)
    with pytest.raises(DataError, match="coordinates"):
        GalleryIndex(np.eye(1), ["no-coordinates.png"])
    with pytest.raises(DataError, match="lat/lon"):
        GalleryIndex(np.eye(1), [{"name": "tile.png", "lat": 95.0, "lon": 0.0}])
    with pytest.raises(ConfigError, match="nlist"):
        GalleryIndex(np.eye(3), names, kind="ivf", params={"nlist": 4})
    with pytest.raises(ConfigError, match="unknown index kind"):
        GalleryIndex(np.eye(3), names, kind="lsh")
    with pytest.raises(ConfigError, match="no parameter"):
        GalleryIndex(np.eye(3), names, kind="hnsw", params={"nprobe": 3})
    index = GalleryIndex(np.eye(3), names)
    with pytest.raises(DataError, match="dim 2"):
        index.search(np.ones((1, 2)))
    with pytest.raises(ConfigError, match="no encoder"):
        index.search_text(["a church"])


def test_hashing_bow_is_deterministic_and_normalised():
    texts = ["A red brick Church, with a bell tower.", "a red brick church with a bell tower", "", "bus stop"]
    x = hashing_bow(texts, dim=64, ngram=2)
    assert x.dtype == np.float32 and x.shape == (4, 64)
    assert np.linalg.norm(x, axis=1) == pytest.approx([1, 1, 0, 1], abs=1e-6)  # empty text: zero
    assert x[0] @ x[1] == pytest.approx(1.0)  # case and punctuation do not matter
    code = "from geotextloc.eval.index import hashing_bow; print(hashing_bow(['bus stop'], dim=64)[0].tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "99"})
    np.testing.assert_array_equal(np.array(json.loads(other.stdout), dtype=np.float32),
                                  hashing_bow(["bus stop"], dim=64)[0])
    with pytest.raises(ConfigError, match="unknown option"):
        encode_texts({"kind": "hashing-bow", "dims": 3}, ["x"])
    with pytest.raises(ConfigError, match="unknown encoder kind"):
        encode_texts({"kind": "word2vec"}, ["x"])


def test_open_clip_encoder_embeds_with_a_checkpoint(tmp_path):
    import torch

    from geotextloc.models.factory import create

    torch.manual_seed(0)
    model, _, _, tokenizer = create("geotextloc-tiny", None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    spec = {"kind": "open_clip", "checkpoint": str(tmp_path / "tiny.pt"), "model": "geotextloc-tiny"}
    texts = ["a church with a bell tower", "a bus stop by the park"]
    got = encode_texts(spec, texts)
    with torch.no_grad():
        want = model.eval().encode_text(tokenizer(texts), normalize=True).numpy()
    assert got.shape == (2, 128) and got == pytest.approx(want, abs=1e-5)


def test_open_clip_encoder_errors(monkeypatch):
    with pytest.raises(ConfigError, match="'checkpoint'"):
        encode_texts({"kind": "open_clip"}, ["x"])
    import geotextloc.models

    monkeypatch.delattr(geotextloc.models, "factory", raising=False)  # as if never imported,
    monkeypatch.setitem(sys.modules, "geotextloc.models.factory", None)  # and not importable
    with pytest.raises(GeotextlocError, match="geotextloc.models.factory"):
        encode_texts({"kind": "open_clip", "checkpoint": "ckpt.pt"}, ["x"])


TILES = {
    "40.7527000,-73.9772000_church.png": "red brick church with a tall bell tower next to a small park",
    "40.7580000,-73.9855000_square.png": "busy square with giant billboards, theatres and yellow taxis",
    "40.7484000,-73.9857000_tower.png": "art deco skyscraper with an observation deck above fifth avenue",
    "40.7536000,-73.9832000_library.png": "public library with stone lions, wide steps and a park behind",
    "40.7061000,-74.0086000_exchange.png": "stock exchange with columns and flags on a narrow street",
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geotextloc", *args], capture_output=True, text=True)


def test_search_command_end_to_end(tmp_path):
    GalleryIndex.from_texts(list(TILES), list(TILES.values())).save(tmp_path / "idx")
    done = run_cli("search", "--index", str(tmp_path / "idx"), "a church with a bell tower", "--k", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "lat", "lon", "name"]
    assert len(lines) == 4
    assert lines[1].split()[0] == "1" and lines[1].split()[-1] == "40.7527000,-73.9772000_church.png"
    assert lines[1].split()[2:4] == ["40.752700", "-73.977200"]
    # Near Wall Street with scope 2, the church is out of scope; 'columns and flags' wins.
    done = run_cli("search", "--index", str(tmp_path / "idx"), "columns and flags, church",
                   "--near", "40.706,-74.008", "--scope", "2")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [row[-1] for row in rows] == ["40.7061000,-74.0086000_exchange.png", "40.7484000,-73.9857000_tower.png"]
    assert float(rows[0][4]) == pytest.approx(float(haversine_km(40.706, -74.008, 40.7061, -74.0086)), abs=1e-3)


def test_search_command_errors_are_one_line(tmp_path):
    for args, message in [
        (["--index", str(tmp_path / "missing"), "x"], "no meta.json"),
        (["--index", str(tmp_path), "x", "--scope", "3"], "--scope needs --near"),
    ]:
        done = run_cli("search", *args)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("geotextloc: error:")
        assert message in done.stderr
    done = run_cli("search", "--index", str(tmp_path), "x", "--near", "north")
    assert done.returncode == 2 and "LAT,LON" in done.stderr


def test_index_command_builds_a_searchable_gallery_from_a_checkpoint(tmp_path, make_release):
    """`geotextloc index` embeds a version's tiles with a checkpoint; `search` then embeds the
    query with the same checkpoint, so a tile's own embedding direction ranks it first."""
    import torch

    from geotextloc.models.factory import create

    root = make_release(tmp_path / "release", versions=("NewYork",), n=(4, 2), kinds=("satellite", "osm"))
    torch.manual_seed(0)
    model, _, _, _ = create("geotextloc-tiny", None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    done = run_cli("index", "--checkpoint", str(tmp_path / "tiny.pt"), "--model", "geotextloc-tiny", "--data", str(root),
                   "--version", "NewYork", "--view", "osm", "--split", "test", "--out", str(tmp_path / "idx"))
    assert done.returncode == 0, done.stderr
    assert "flat index (exact), compress none" in done.stdout  # auto: a small gallery is searched exactly
    assert "recall@10 1.000 against exact search on 2 held-out queries" in done.stdout
    index = GalleryIndex.load(tmp_path / "idx")
    assert index.kind == "flat" and index.recall_at_10 == 1.0
    test_names = sorted(json.loads((root / "CVG-text" / "NewYork" / "test.json").read_text()))
    assert [r["name"] for r in index.records] == test_names
    assert index.encoder["kind"] == "open_clip" and Path(index.encoder["checkpoint"]).is_file()
    # the query is embedded with the checkpoint's text tower: scores are real cosines
    result = index.search_text(["a bus stop by a park"], k=2)
    assert set(result.names[0]) == set(test_names)
    assert np.all(np.abs(result.scores) <= 1.0 + 1e-5)
    done = run_cli("search", "--index", str(tmp_path / "idx"), "a bus stop by a park", "--k", "1")
    assert done.returncode == 0 and done.stdout.splitlines()[1].split()[-1] == result.names[0][0]


# ---------------------------------------------------------------- scale: auto, recall, compression


def clustered_gallery(n: int, dim: int, seed: int):
    """n unit vectors: 50 random centres, each row a centre plus Gaussian noise of twice its norm
    (overlapping clusters: IVF needs more than FAISS's usual 16 lists probed)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, n)] + 2 * rng.standard_normal((n, dim)).astype(np.float32)
    return unit(vectors), city_names(n, rng)


def recomputed_recall(index: GalleryIndex, vectors: np.ndarray) -> float:
    """recall@10 as the module documents it: 500 gallery rows (default_rng(0).choice, sorted),
    each plus N(0, I/dim) noise drawn next, re-normalised; exact top 10 by NumPy dot products."""
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(vectors), 500, replace=False))
    noise = rng.standard_normal((500, vectors.shape[1]), dtype=np.float32) / np.float32(np.sqrt(vectors.shape[1]))
    queries = unit(vectors[rows] + noise)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    return recall_at_10(index.search(queries, k=10), type("Exact", (), {"indices": exact}))


def test_auto_builds_flat_up_to_flat_max_and_ivf_above_with_measured_recall(tmp_path):
    vectors, names = clustered_gallery(5000, 64, seed=7)
    small = GalleryIndex(vectors, names, kind="auto", flat_max=5000)
    assert small.kind == "flat" and small.recall_at_10 == 1.0 and small.recall_sample == 500
    large = GalleryIndex(vectors, names, kind="auto", flat_max=4999)
    assert large.kind == "ivf" and large.params["nlist"] == 128
    large.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["kind"] == "ivf" and meta["compress"] == "none" and meta["recall_sample"] == 500
    assert meta["recall_at_10"] >= 0.95 and meta["params"] == large.params
    back = GalleryIndex.load(tmp_path / "idx")
    assert back.recall_at_10 == meta["recall_at_10"] == pytest.approx(recomputed_recall(back, vectors), abs=1e-12)
    # The build widened the search: at FAISS's nprobe 16 the same index falls short of 0.95.
    assert meta["params"]["nprobe"] > 16
    back.params["nprobe"] = 16
    assert recomputed_recall(back, vectors) < 0.95


@pytest.mark.parametrize("kind, compress", [("flat", "float16"), ("ivf", "float16"), ("hnsw", "float16"),
                                            ("ivf", "pq")])
def test_compressed_indexes_save_load_search_and_report_recall(tmp_path, kind, compress):
    vectors, names = clustered_gallery(3000, 32, seed=3)
    GalleryIndex(vectors, names, kind=kind).save(tmp_path / "plain")
    index = GalleryIndex(vectors, names, kind=kind, compress=compress)
    index.save(tmp_path / "idx")
    stored = np.load(tmp_path / "idx" / "embeddings.npy")
    assert stored.dtype == np.float16 and stored.shape == (3000, 32)
    back = GalleryIndex.load(tmp_path / "idx")
    assert back.kind == kind and back.compress == compress and back.params == index.params
    np.testing.assert_array_equal(back.embeddings, stored.astype(np.float32))
    np.testing.assert_array_equal(back.embeddings, index.embeddings)
    assert back.recall_at_10 == index.recall_at_10 >= 0.95
    assert back.recall_at_10 == pytest.approx(recomputed_recall(back, vectors), abs=1e-12)
    queries = vectors[:50] + 0.1
    a, b = index.search(queries, k=10), back.search(queries, k=10)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.scores, b.scores)
    # within 1e-3 of the float32 cosine (pq: the shortlist is re-scored with the stored rows)
    exact = np.take_along_axis(unit(queries) @ vectors.T, b.indices, axis=1)
    np.testing.assert_allclose(b.scores, exact, atol=1e-3)
    size = {folder: {f: (tmp_path / folder / f).stat().st_size for f in ("embeddings.npy", "index.faiss")}
            for folder in ("plain", "idx")}
    assert size["idx"]["embeddings.npy"] - 128 < size["plain"]["embeddings.npy"] / 2
    assert size["idx"]["index.faiss"] < size["plain"]["index.faiss"] * (0.2 if compress == "pq" else 0.9)


def test_an_index_saved_before_compression_and_recall_still_loads(tmp_path):
    vectors, names = clustered_gallery(300, 16, seed=1)
    GalleryIndex(vectors, names).save(tmp_path / "idx")
    meta_file = tmp_path / "idx" / "meta.json"
    meta = json.loads(meta_file.read_text())
    for key in ("compress", "recall_at_10", "recall_sample"):
        meta.pop(key)
    meta_file.write_text(json.dumps(meta))
    back = GalleryIndex.load(tmp_path / "idx")
    assert back.compress == "none" and back.recall_at_10 is None and back.recall_sample is None
    back.save(tmp_path / "again")
    assert "recall_at_10" not in json.loads((tmp_path / "again" / "meta.json").read_text())
    assert GalleryIndex.load(tmp_path / "again").search(vectors[:3], k=1).indices.ravel().tolist() == [0, 1, 2]


def test_auto_and_compression_refuse_bad_choices():
    vectors, names = clustered_gallery(300, 16, seed=2)
    with pytest.raises(ConfigError, match="chooses its own parameters"):
        GalleryIndex(vectors, names, kind="auto", params={"nprobe": 4})
    with pytest.raises(ConfigError, match="unknown compress 'zip'"):
        GalleryIndex(vectors, names, compress="zip")
    with pytest.raises(ConfigError, match="use kind 'ivf' or 'auto'"):
        GalleryIndex(vectors, names, kind="hnsw", compress="pq")
    with pytest.raises(ConfigError, match="at least 256 tiles"):
        GalleryIndex(vectors[:200], names[:200], kind="ivf", compress="pq")
    with pytest.raises(ConfigError, match="subvectors dividing dim 16"):
        GalleryIndex(vectors, names, kind="ivf", compress="pq", params={"subvectors": 3})
    with pytest.raises(ConfigError, match="flat_max"):
        GalleryIndex(vectors, names, kind="auto", flat_max=-1)


# ---------------------------------------------------------------- search near a point, at scale


def exact_vectors(n: int, rng) -> np.ndarray:
    """Rows with four entries of +-1 (norm 2): once normalised every dot product is a sum of
    +-0.25, exact in any order, so equal scores are equal and both searches see the same numbers."""
    out = np.zeros((n, 8), dtype=np.float32)
    for row in out:
        row[rng.choice(8, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return out


def old_search_near(index, queries, k, near, scope):
    """The all-pairs geo-scoped search that SpatialIndex replaced: distances to the whole gallery,
    the protocol's scoped_ranking, the top k."""
    from geotextloc.eval.metrics import scoped_ranking

    q = unit(queries)
    dist = haversine_km(near[:, :1], near[:, 1:], index.lat, index.lon)
    sim = q @ index.embeddings.T
    ranked = scoped_ranking(sim, dist, scope)[:, :k]
    return ranked, np.take_along_axis(sim, ranked, axis=1), np.take_along_axis(dist, ranked, axis=1)


def shared_point_gallery(rng):
    """600 tiles, many sharing coordinates (rounded to ~11 m), in gallery order shuffled."""
    lat = np.round(40.75 + rng.uniform(-0.003, 0.003, 600), 4)
    lon = np.round(-73.98 + rng.uniform(-0.003, 0.003, 600), 4)
    lat[:80], lon[:80] = 40.75, -73.98  # 80 tiles at one point: more than a scope of 30
    names = [f"{a:.4f},{b:.4f}_t{i}.png" for i, (a, b) in enumerate(zip(lat, lon))]
    return GalleryIndex(exact_vectors(600, rng), names)


def test_search_near_equals_the_all_pairs_search():
    rng = np.random.default_rng(17)
    index = shared_point_gallery(rng)
    queries = exact_vectors(12, rng)
    near = np.column_stack([np.round(40.75 + rng.uniform(-0.003, 0.003, 12), 4),
                            np.round(-73.98 + rng.uniform(-0.003, 0.003, 12), 4)])
    near[:3] = [40.75, -73.98]
    for k, scope in [(10, 30), (30, 30), (50, 30), (5, 100), (10, 1), (10, None), (700, 1000)]:
        got = index.search(queries, k=k, near=near, scope=scope)
        indices, scores, distance = old_search_near(index, queries, k, near, scope)
        np.testing.assert_array_equal(got.indices, indices)
        np.testing.assert_array_equal(got.scores, scores)
        np.testing.assert_array_equal(got.distance_km, distance)


def test_search_within_a_radius():
    rng = np.random.default_rng(23)
    index = shared_point_gallery(rng)
    queries = exact_vectors(4, rng)
    near = np.array([[40.75, -73.98], [40.7512, -73.9788], [40.7530, -73.9770], [40.80, -73.90]])
    dist = haversine_km(near[:, :1], near[:, 1:], index.lat, index.lon)
    sim = unit(queries) @ index.embeddings.T
    for radius in (0.05, 0.2, 0.5):
        got = index.search(queries, k=40, near=near, radius_km=radius)
        for i in range(len(queries)):
            inside = np.flatnonzero(dist[i] <= radius)
            want = sorted(inside, key=lambda j: (-sim[i, j], dist[i, j], j))[:40]
            assert got.indices[i, : len(want)].tolist() == want
            assert (got.indices[i, len(want):] == -1).all() and np.isnan(got.scores[i, len(want):]).all()
            assert got.names[i][len(want):] == [""] * (40 - len(want))
            np.testing.assert_array_equal(got.distance_km[i, : len(want)], dist[i, want])
    assert (got.indices[3] == -1).all()  # nothing within 0.5 km of the last point
    assert (index.search(queries, k=5, near=near, radius_km=1.0).indices[:3] >= 0).all()
    with pytest.raises(ConfigError, match="radius"):
        index.search(queries, k=5, near=near, radius_km=0)
    with pytest.raises(ConfigError, match="radius_km needs near"):
        index.search(queries, k=5, radius_km=1.0)


def test_search_command_with_a_radius(tmp_path):
    GalleryIndex.from_texts(list(TILES), list(TILES.values())).save(tmp_path / "idx")
    # Within 0.9 km of the church: the church, the library (0.52 km), the tower (0.86 km); not
    # the square (0.91 km) nor the exchange (5.8 km).
    done = run_cli("search", "--index", str(tmp_path / "idx"), "stone lions and wide steps",
                   "--near", "40.7527,-73.9772", "--radius", "0.9")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "lat", "lon", "km", "name"]
    rows = [line.split() for line in lines[1:]]
    assert rows[0][-1] == "40.7536000,-73.9832000_library.png"
    assert sorted(row[-1].split("_")[1] for row in rows) == ["church.png", "library.png", "tower.png"]
    assert all(float(row[4]) <= 0.9 for row in rows)
    done = run_cli("search", "--index", str(tmp_path / "idx"), "x", "--near", "10,10", "--radius", "5")
    assert done.returncode == 0 and done.stdout.strip() == "no tile within 5 km of 10.0,10.0"
    for args, message in [
        (["--radius", "1"], "--radius needs --near"),
        (["--near", "40.75,-73.98", "--radius", "1", "--scope", "3"], "not both"),
        (["--near", "40.75,-73.98", "--radius", "0"], "--radius must be a positive number"),
        (["--near", "40.75,-73.98", "--radius", "nan"], "--radius must be a positive number"),
    ]:
        done = run_cli("search", "--index", str(tmp_path / "idx"), "x", *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr
