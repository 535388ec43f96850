"""The GeoLoc builder end to end: a synthetic orthophoto of Kouvola -> build-geoloc -> a manifest
GeoBridge's smoke profile trains on; every step's rejects with scores; resume; bad orthophotos."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from geotextloc.cli import main
from geotextloc.data.embedded.geoloc_views import EmbeddedSatellite, EmbeddedStreets
from geotextloc.data.embedded.orthophoto import REGION_TAG, synth_orthophoto
from geotextloc.data.embedded.regions import builtin_source, load_source
from geotextloc.data.embedded.sampling import sample_locations
from geotextloc.data.geoloc import read_orthophoto
from geotextloc.data.geoloc_build import GeoLocSettings, build_geoloc, offline_writer
from geotextloc.data.geoloc_manifest import read_geoloc
from geotextloc.errors import ConfigError

torch.set_num_threads(1)
SMOKE = Path(__file__).parents[1] / "geotextloc" / "configs" / "smoke" / "geobridge.yaml"
BUILD = ["--window-m", "60", "--stride-m", "30", "--no-progress"]  # a 500 m orthophoto: ~200 seeds


@pytest.fixture(scope="module")
def kouvola():
    return load_source(builtin_source("kouvola"), require_pois=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 500 m synthetic orthophoto of Kouvola at 0.5 m (with a defocused and a washed-out
    patch) and its GeoLoc build through the command line."""
    root = tmp_path_factory.mktemp("geoloc")
    ortho = root / "kouvola-uav.tif"
    assert main(["data", "synth-orthophoto", "--region", "kouvola", "--size-m", "500", "--resolution-m", "0.5",
                 "--defects", "--out", str(ortho)]) == 0
    out = root / "build"
    assert main(["data", "build-geoloc", "--orthophoto", str(ortho), "--out", str(out), *BUILD]) == 0
    return ortho, out


def test_synthetic_orthophoto_is_georeferenced_in_utm(built, kouvola):
    ortho = read_orthophoto(built[0])
    assert ortho.crs == "EPSG:32635" and ortho.alpha and ortho.tags[REGION_TAG] == "Kouvola"
    assert ortho.metres_per_pixel() == pytest.approx((0.5, 0.5), rel=0.01)
    assert 0.8 < ortho.valid().mean() < 0.95  # the octagonal flight, alpha 0 outside
    # the street places of the region land on grey asphalt, the rest of the ground is coloured
    rgb = ortho.image[..., :3].astype(int)
    spread = rgb.max(-1) - rgb.min(-1)
    on_street = []
    for loc in sample_locations(kouvola, 10.0):
        col, row = (int(v) for v in ortho.transform.colrow(*ortho.to_crs(loc.lon, loc.lat)))
        if 2 <= row < ortho.shape[0] - 2 and 2 <= col < ortho.shape[1] - 2 and ortho.valid()[row, col]:
            on_street.append(np.median(spread[row - 1:row + 2, col - 1:col + 2]))
    assert len(on_street) > 50
    assert np.median(on_street) < 10 < np.median(spread[ortho.valid()])


def test_the_manifest_trains_a_geobridge_smoke_step(built):
    _, out = built
    records = read_geoloc(out)
    splits = {sp: [r for r in records if r.split == sp] for sp in ("train", "test")}
    assert len(splits["train"]) >= 8 and len(splits["test"]) >= 2  # the smoke profile's batch is 8
    for r in records:
        assert set(r.images) == {"drone", "street", "satellite"} and r.text and r.region == "KouvolaUav"
        with Image.open(r.images["drone"]) as drone:
            assert drone.size == (256, 256)
        assert r.meta["drone_footprint_m"] in (80, 120, 180)
        assert r.images["drone"].relative_to(out).as_posix() in r.meta["drone_scales"].values()
    run = out.parent / "run"
    assert main(["train", "--config", str(SMOKE), f"data_root={out}", f"out_dir={run}",
                 f"feature_cache={out.parent / 'features'}"]) == 0
    assert (run / "best.pt").is_file()


def test_every_step_keeps_its_rejects_with_scores(built):
    _, out = built
    report = json.loads((out / "build" / "report.json").read_text())
    rejects = [json.loads(line) for line in (out / "build" / "rejects.jsonl").read_text().splitlines()]
    th = report["thresholds"]
    assert th == {"dedup": 0.5, "BH": 0.05, "C": 0.06, "UN": 5.0, "search_radius_m": 50.0, "max_nodata_crop": 0.1}
    for step in ("street", "coverage", "dedup", "BH", "C", "UN"):
        mine = [r for r in rejects if r["step"] == step]
        assert mine and len(mine) == report["counts"][step], step
    for r in rejects:
        if r["step"] in ("BH", "C", "UN"):
            assert r["score"] < th[r["step"]] and (out / r["thumbnail"]).is_file()
        elif r["step"] == "dedup":
            assert r["score"] > 0.5 and (out / r["thumbnail"]).is_file()
    for step in ("dedup", "BH", "C", "UN"):
        with Image.open(out / "build" / f"rejects_{step}.png") as sheet:
            assert sheet.width == 6 * 128
    counts = report["counts"]
    assert counts["kept"] == counts["train"] + counts["test"] + counts["excluded"]
    assert counts["crops"] == counts["dedup"] + counts["crops_gated"]


def test_a_second_run_writes_nothing(built, capsys):
    ortho, out = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(["data", "build-geoloc", "--orthophoto", str(ortho), "--out", str(out), *BUILD]) == 0
    assert "0 location(s) built" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


class Counting:
    """A source that counts what it is asked."""

    def __init__(self, source):
        self.source, self.name, self.attribution = source, source.name, source.attribution
        self.lookups, self.views = 0, []

    def lookup(self, *args):
        self.lookups += 1
        return self.source.lookup(*args)

    def view(self, pano):
        self.views.append(pano.id)
        return self.source.view(pano)

    def footprint_m(self, lat):
        return self.source.footprint_m(lat)


@pytest.fixture(scope="module")
def small(tmp_path_factory, kouvola):
    """A 300 m orthophoto of Kouvola: about ten locations."""
    ortho = tmp_path_factory.mktemp("small") / "small.tif"
    synth_orthophoto(kouvola, ortho, size_m=300, resolution_m=0.5, defects=True)
    return ortho


def test_resume_after_an_interruption_writes_nothing_twice(tmp_path, kouvola, small):
    ortho = small
    settings = GeoLocSettings(window_m=60, stride_m=30)
    calls = []

    def interrupted(notes, images):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C while the LMM writes the third description
        return offline_writer()(notes, images)

    out = tmp_path / "out"
    street, satellite = Counting(EmbeddedStreets(kouvola)), Counting(EmbeddedSatellite(kouvola))
    with pytest.raises(KeyboardInterrupt):
        build_geoloc(ortho, out, street, satellite, settings, writer=interrupted, progress=False)
    first = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*") if p.is_file()}
    assert len(list((out / "build" / "locations").glob("*.json"))) >= 2
    assert not (out / "geoloc").exists()  # nothing assembled from half a build

    assert street.lookups > 0 and len(street.views) == 3 == len(satellite.views)
    street2, satellite2 = Counting(EmbeddedStreets(kouvola)), Counting(EmbeddedSatellite(kouvola))
    report = build_geoloc(ortho, out, street2, satellite2, settings, progress=False)
    assert street2.lookups == 0  # every lookup came from build/lookups.jsonl
    assert not set(street2.views) & set(street.views)  # nor was any view fetched again, the third's included
    assert sorted(street2.views) == sorted(satellite2.views)
    assert report.resumed >= 2 and report.counts["kept"] > 0
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*") if p.is_file()}
    assert {p: after[p] for p in first} == first  # every file of the first run untouched
    fresh = tmp_path / "fresh"
    build_geoloc(ortho, fresh, EmbeddedStreets(kouvola), EmbeddedSatellite(kouvola), settings, progress=False)
    for path in (fresh / "geoloc").rglob("*.jsonl"):  # the same dataset as an uninterrupted build
        assert (out / path.relative_to(fresh)).read_text() == path.read_text()
    with pytest.raises(ConfigError, match="other window_m"):
        build_geoloc(ortho, out, street2, satellite2, GeoLocSettings(window_m=80, stride_m=30), progress=False)


def _write(path: Path, *, crs="EPSG:32635", transform=True, alpha=255, tags=None) -> Path:
    profile = dict(driver="GTiff", width=64, height=64, count=4, dtype="uint8", photometric="RGB", alpha="YES")
    if crs:
        profile["crs"] = crs
    if transform:
        profile["transform"] = rasterio.Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 6_710_000.0)
    data = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    data[3] = alpha
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            if tags:
                ds.update_tags(**tags)
    return path


@pytest.mark.parametrize("case, expected", [
    ("plain", "not a usable GeoTIFF: no geotransform"),
    ("crs-without-transform", "not a usable GeoTIFF: no geotransform"),
    ("transform-without-crs", "has a geotransform but no CRS; pass crs="),
    ("empty", "empty valid area"),
    ("text", "not a readable raster"),
    ("missing", "orthophoto not found"),
])
def test_bad_orthophotos_are_refused_in_one_line(tmp_path, capsys, case, expected):
    path = tmp_path / f"{case}.tif"
    if case == "plain":
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    elif case == "crs-without-transform":
        _write(path, transform=False)
    elif case == "transform-without-crs":
        _write(path, crs=None)
    elif case == "empty":  # georeferenced, but the alpha band says nothing was flown
        _write(path, alpha=0, tags={REGION_TAG: "Kouvola"})
    elif case == "text":
        path.write_text("not a raster\n")
    assert main(["data", "build-geoloc", "--orthophoto", str(path), "--out", str(tmp_path / "out"), *BUILD]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and expected in err[0], err
    assert not (tmp_path / "out" / "geoloc").exists()


def test_google_providers_through_the_imagery_stand_in(built, tmp_path, monkeypatch, capsys):
    """``--street-provider google-streetview --satellite-provider google-satellite``: Street View
    metadata for each seed, then panoramas and Static-API tiles, from the local stand-in serving
    the offline build's street views and tiles; each request once, a re-run asks nothing, no key
    written anywhere."""
    from geotextloc.testing.imagery import FakeImagery

    ortho, offline = built
    source = tmp_path / "source"  # the offline build's views as a release the stand-in serves
    annotations = {}
    for r in read_geoloc(offline):
        annotations[r.name] = r.text
        for view in ("street", "satellite"):
            target = source / f"Src-{view}" / r.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(r.images[view], target)
    (source / "CVG-text" / "Src").mkdir(parents=True)
    for split in ("train", "test"):
        (source / "CVG-text" / "Src" / f"{split}.json").write_text(json.dumps(annotations if split == "train" else {}))
    key = "stand-in-secret-key"
    monkeypatch.setenv("GEOTEXTLOC_TEST_KEY", key)
    out = tmp_path / "google"
    with FakeImagery(source, key, footprint_m=120.0) as imagery:
        argv = ["data", "build-geoloc", "--orthophoto", str(ortho), "--out", str(out), *BUILD,
                "--street-provider", "google-streetview", "--satellite-provider", "google-satellite",
                "--endpoint", imagery.url, "--key-env", "GEOTEXTLOC_TEST_KEY", "--rate", "1000",
                "--pano-views", "4", "--street-size", "128x128", "--satellite-size", "256x256", "--zoom", "19",
                "--user-agent", "geotextloc-tests/1.0 (tests@example.org)"]
        assert main(argv) == 0
        summary = imagery.summary()
        seeds = json.loads((out / "build" / "report.json").read_text())["counts"]["footprints"]
        assert summary["metadata"]["requests"] == seeds  # one lookup per seed
        records = read_geoloc(out)
        assert records and {r.meta["id"] for r in records} <= {r.meta["id"] for r in read_geoloc(offline)}
        assert summary["streetview"]["images"] == 4 * len(records) and summary["staticmap"]["images"] == len(records)
        with Image.open(records[0].images["street"]) as pano:
            assert pano.size == (4 * 128, 128)  # four views side by side
        assert main(argv) == 0  # resumed: nothing asked again
        assert imagery.summary() == summary
    for path in out.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert key not in capsys.readouterr().out


def test_the_lmm_writer_sends_the_papers_prompt_with_three_images_and_stops_at_its_budget(
        small, tmp_path, monkeypatch, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_lmm import ChatServer

    answer = ("In this aerial view a white van is parked on the road. A residential street runs past "
              "detached houses with gardens and meets a road at an intersection.")
    server = ChatServer([("ok", answer)])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-geoloc")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    out = tmp_path / "lmm"
    argv = ["data", "build-geoloc", "--orthophoto", str(small), "--out", str(out), *BUILD, "--writer", "openai",
            "--lmm-cache", str(tmp_path / "cache")]
    try:
        assert main([*argv, "--budget", "2"]) == 2  # the request budget runs out: one line, the rest kept
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "LMM description failed" in err[0]
        assert len(server.requests) == 2 and len(list((out / "build" / "locations").glob("*.json"))) >= 2
        assert main([*argv, "--budget", "100"]) == 0  # resumed: only the rest are asked
    finally:
        server.close()
    records = read_geoloc(out)
    kept = json.loads((out / "build" / "report.json").read_text())["counts"]["kept"]
    assert len(server.requests) == kept  # one per kept location: the budget stop asked nothing
    body = server.requests[0]["body"]
    assert "stable cues" in body["messages"][0]["content"]  # the paper's instructions
    assert sum(p["type"] == "image_url" for p in body["messages"][1]["content"]) == 3  # drone, street, satellite
    for r in records:  # the answer, without its transient clause and view wording
        assert r.text == ("A residential street runs past detached houses with gardens and meets a road at an "
                          "intersection.")
    assert not any(b"sk-test-geoloc" in p.read_bytes() for p in out.rglob("*") if p.is_file())
