"""GeoLoc construction tools on real inputs: GeoTIFFs written with their GeoTIFF tags,
scikit-image's sample photographs (and degraded copies) for the quality gates, and the
description filter (offline, and the LMM path against a real chat server on 127.0.0.1)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFilter
from skimage import data

from geotextloc.data.geoloc import (
    BH,
    C,
    UN,
    QualityGates,
    deduplicate,
    read_orthophoto,
    reverse_crops,
    sliding_window_seeds,
)
from geotextloc.data.geoloc_description import describe_location, lmm_client, unified_description_offline
from geotextloc.errors import DataError

X0, Y0 = 385_000.0, 6_672_000.0  # ETRS-TM35FIN (EPSG:3067), central Helsinki
LON0, LAT0 = 24.93, 60.17


def write_geotiff(path, image, *, epsg, geographic, tiepoint=None, scale=None, matrix=None,
                  nodata=None, pixel_is_point=False, alpha=False):
    """A GeoTIFF as GDAL writes it: GeoKeyDirectory + tie point/pixel scale or a 4×4 matrix."""
    keys = {1024: 2 if geographic else 1, 1025: 2 if pixel_is_point else 1, (2048 if geographic else 3072): epsg}
    if not geographic:
        keys[3076] = 9001  # metres
    directory = [1, 1, 0, len(keys)] + [v for k in sorted(keys) for v in (k, 0, 1, keys[k])]
    tags = [(34735, 3, len(directory), directory, True)]
    if matrix is not None:
        tags.append((34264, 12, 16, tuple(matrix), True))
    else:
        tags += [(33550, 12, 3, (*scale, 0.0), True), (33922, 12, 6, (0.0, 0.0, 0.0, *tiepoint, 0.0), True)]
    if nodata is not None:
        tags.append((42113, 2, None, str(nodata), True))
    tifffile.imwrite(path, image, photometric="rgb", extrasamples=["unassalpha"] if alpha else None,
                     extratags=tags)
    return path


def photo(h, w):
    """Real imagery for the orthophoto: scikit-image's astronaut, tiled."""
    a = data.astronaut()
    return np.tile(a, (h // 512 + 1, w // 512 + 1, 1))[:h, :w].copy()


@pytest.fixture
def metric_tif(tmp_path):
    """400 × 300 px at 0.5 m (200 m × 150 m) in EPSG:3067; the left 150 columns are nodata (0)."""
    image = photo(300, 400)
    image = np.clip(image, 1, 255).astype(np.uint8)
    image[:, :150] = 0
    return write_geotiff(tmp_path / "ortho.tif", image, epsg=3067, geographic=False,
                         tiepoint=(X0, Y0), scale=(0.5, 0.5), nodata=0)


# ----------------------------------------------------------------------------- GeoTIFF


def test_geotiff_tags_give_the_affine_crs_and_nodata(metric_tif):
    ortho = read_orthophoto(metric_tif)
    assert ortho.crs == "EPSG:3067" and not ortho.geographic and ortho.nodata == 0
    assert ortho.shape == (300, 400)
    assert ortho.metres_per_pixel() == pytest.approx((0.5, 0.5), rel=1e-3)  # TM35FIN's scale factor ≈ 1
    assert ortho.transform.xy(0, 0) == (X0, Y0)  # outer corner of the top-left pixel
    assert ortho.transform.xy(10.5, 20.5) == (X0 + 5.25, Y0 - 10.25)  # centre of pixel (col 10, row 20)
    assert ortho.transform.colrow(X0 + 5.25, Y0 - 10.25) == pytest.approx((10.5, 20.5))
    assert ortho.valid()[:, :150].sum() == 0 and ortho.valid()[:, 150:].all()
    lon, lat = ortho.to_lonlat(X0, Y0)  # pyproj: the corner lies in central Helsinki
    assert 24.9 < lon < 25.0 and 60.15 < lat < 60.2


def test_transformation_matrix_and_pixel_is_point(tmp_path):
    matrix = (0.4, 0.3, 0, X0, 0.3, -0.4, 0, Y0, 0, 0, 0, 0, 0, 0, 0, 1)  # rotated and scaled
    rotated = read_orthophoto(write_geotiff(tmp_path / "rot.tif", photo(20, 20), epsg=3067, geographic=False,
                                            matrix=matrix)).transform
    assert rotated.xy(2, 1) == pytest.approx((X0 + 0.8 + 0.3, Y0 + 0.6 - 0.4))
    assert rotated.colrow(*rotated.xy(7.25, 3.5)) == pytest.approx((7.25, 3.5))
    kw = dict(epsg=3067, geographic=False, tiepoint=(X0, Y0), scale=(2.0, 2.0))
    area = read_orthophoto(write_geotiff(tmp_path / "area.tif", photo(8, 8), **kw)).transform
    point = read_orthophoto(write_geotiff(tmp_path / "point.tif", photo(8, 8), pixel_is_point=True, **kw)).transform
    assert area.xy(0, 0) == (X0, Y0)
    assert point.xy(0.5, 0.5) == (X0, Y0)  # PixelIsPoint: the tie point is a pixel centre


def test_web_mercator_footprints_are_ground_metres(tmp_path):
    """EPSG:3857 (OpenAerialMap's tiles) stretches by 1/cos φ: at 60° N a 1.0-unit pixel is 0.5 m."""
    from geotextloc.data.geoloc import reproject_points

    x0, y0 = reproject_points("EPSG:4326", "EPSG:3857", 25.0, 60.0)
    ortho = read_orthophoto(write_geotiff(tmp_path / "merc.tif", photo(400, 400), epsg=3857, geographic=False,
                                          tiepoint=(x0, y0), scale=(1.0, 1.0)))
    mx, my = ortho.metres_per_pixel()
    assert mx == pytest.approx(0.5, rel=5e-3) and my == pytest.approx(0.5, rel=5e-3)  # sphere vs WGS 84: 0.3 %
    seed = sliding_window_seeds(ortho, window_m=100, stride_m=100)[0]
    assert seed.window[2:] == (round(100 / my), round(100 / mx)) == (200, 199)  # 100 m: 200 pixels, not 100


def test_resolution_reads_a_coarser_grid_of_the_same_ground(metric_tif):
    fine, coarse = read_orthophoto(metric_tif), read_orthophoto(metric_tif, resolution_m=1.0)
    assert coarse.shape == (150, 200)
    assert coarse.metres_per_pixel() == pytest.approx((1.0, 1.0), rel=1e-3)
    assert coarse.transform.xy(0, 0) == fine.transform.xy(0, 0)
    assert coarse.transform.xy(200, 150) == fine.transform.xy(400, 300)
    assert coarse.valid()[:, :75].sum() == 0 and coarse.valid()[:, 75:].all()  # the mask follows


def test_alpha_band_marks_the_coverage(tmp_path):
    rgba = np.dstack([photo(100, 200), np.full((100, 200), 255, np.uint8)])
    rgba[:, 120:, 3] = 0  # the UAV flight covered only the left 120 columns
    path = write_geotiff(tmp_path / "rgba.tif", rgba, epsg=3067, geographic=False,
                         tiepoint=(X0, Y0), scale=(1.0, 1.0), alpha=True)
    ortho = read_orthophoto(path)
    assert ortho.alpha and ortho.valid().sum() == 100 * 120
    seeds = sliding_window_seeds(ortho, window_m=40, stride_m=40)  # cols 0, 40, 80, 120, 160
    assert sorted({s.window[1] for s in seeds}) == [0, 40, 80]
    crop = reverse_crops(ortho, *ortho.to_lonlat(X0 + 50, Y0 - 50), scales_m=(80,))[0]
    assert crop.image.mode == "RGB" and crop.image.size == (80, 80)


def test_unusable_geotiffs_fail_with_one_line(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match="plain.tif: not a usable GeoTIFF: no geotransform"):
        read_orthophoto(plain)
    custom = write_geotiff(tmp_path / "custom.tif", np.zeros((8, 8, 3), np.uint8), epsg=32767,
                           geographic=False, tiepoint=(0, 0), scale=(1, 1))
    with pytest.raises(DataError, match="names no EPSG code.*pass crs="):
        read_orthophoto(custom)
    assert read_orthophoto(custom, crs="EPSG:3067").crs == "EPSG:3067"
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(DataError, match="text.tif: not a readable raster"):
        read_orthophoto(tmp_path / "text.tif")
    with pytest.raises(DataError, match="missing.tif: orthophoto not found"):
        read_orthophoto(tmp_path / "missing.tif")


# ----------------------------------------------------------------------------- seeds, crops, dedup


def test_sliding_window_seeds_skip_nodata_and_sit_at_window_centres(metric_tif):
    ortho = read_orthophoto(metric_tif)
    seeds = sliding_window_seeds(ortho, window_m=50, stride_m=25)  # 100 px windows, 50 px steps
    # rows 0..200 step 50 -> 5; cols 0..300 step 50 -> 7, of which c=0 and c=50 are > 50% nodata
    # (c=100 is exactly 50% nodata: kept)
    assert len(seeds) == 5 * 5
    assert sorted({s.window[1] for s in seeds}) == [100, 150, 200, 250, 300]
    first = seeds[0]
    assert first.window == (0, 100, 100, 100) and first.size_m == 50
    assert (first.x, first.y) == (X0 + 75.0, Y0 - 25.0)  # centre pixel (150, 50) at 0.5 m
    assert first.bounds == (X0 + 50.0, Y0 - 50.0, X0 + 100.0, Y0)
    assert (first.lon, first.lat) == pytest.approx(ortho.to_lonlat(first.x, first.y))
    assert first.id == "ortho_r0_c100"
    assert len(sliding_window_seeds(ortho, 50, 25, max_nodata=0.0)) == 5 * 4
    assert sliding_window_seeds(ortho, window_m=500) == []  # larger than the raster


def test_seeds_on_a_lon_lat_orthophoto_use_metres(tmp_path):
    deg = 1e-5  # ≈ 0.556 m east-west and 1.114 m north-south at 60.17° N (WGS 84 ellipsoid)
    path = write_geotiff(tmp_path / "wgs84.tif", photo(200, 400), epsg=4326, geographic=True,
                         tiepoint=(LON0, LAT0), scale=(deg, deg))
    ortho = read_orthophoto(path)
    assert ortho.crs == "EPSG:4326" and ortho.geographic
    mx, my = ortho.metres_per_pixel()
    phi = math.radians(LAT0 - 100 * deg)  # the raster's centre
    w = 1 - 6.69437999014e-3 * math.sin(phi) ** 2  # radii of curvature of WGS 84 there
    assert my == pytest.approx(6378137.0 * (1 - 6.69437999014e-3) / w**1.5 * math.radians(deg), rel=1e-6)
    assert mx == pytest.approx(6378137.0 / math.sqrt(w) * math.cos(phi) * math.radians(deg), rel=1e-6)
    assert my == pytest.approx(1.1141, abs=1e-4)  # 111.41 km per degree of latitude at 60° N
    seeds = sliding_window_seeds(ortho, window_m=50, stride_m=50)
    h, w = seeds[0].window[2:]
    assert (h, w) == (round(50 / my), round(50 / mx)) == (45, 90)
    assert len(seeds) == (200 // 45) * (400 // 90)
    s = seeds[0]
    assert (s.lon, s.lat) == pytest.approx((LON0 + 45 * deg, LAT0 - 22.5 * deg))
    width_m = (s.bounds[2] - s.bounds[0]) * mx / deg
    assert width_m == pytest.approx(50, abs=mx)


def test_reverse_crops_cover_the_paper_scales_in_metres(tmp_path):
    image = photo(400, 400)
    path = write_geotiff(tmp_path / "o.tif", image, epsg=3067, geographic=False,
                         tiepoint=(X0, Y0), scale=(0.5, 0.5))
    ortho = read_orthophoto(path)
    lon, lat = ortho.to_lonlat(X0 + 100.0, Y0 - 100.0)  # a street view at the raster centre
    crops = reverse_crops(ortho, lon, lat)
    assert [c.footprint.size_m for c in crops] == [80, 100, 120, 140, 160, 180]
    for crop in crops:
        side_px = round(crop.footprint.size_m / 0.5)
        assert crop.image.size == (side_px, side_px)
        xmin, ymin, xmax, ymax = crop.footprint.bounds
        assert (xmax - xmin, ymax - ymin) == (crop.footprint.size_m, crop.footprint.size_m)
        assert (crop.footprint.x, crop.footprint.y) == pytest.approx((X0 + 100, Y0 - 100), abs=0.5)
        r0, c0, _, _ = crop.footprint.window
        assert np.array_equal(np.asarray(crop.image)[0, 0], image[r0, c0])  # the right pixels
    # near the edge only the scales that fit remain; outside the coverage nothing
    lon, lat = ortho.to_lonlat(X0 + 50.0, Y0 - 100.0)
    assert [c.footprint.size_m for c in reverse_crops(ortho, lon, lat)] == [80, 100]
    assert reverse_crops(ortho, *ortho.to_lonlat(X0 - 300.0, Y0)) == []


def test_deduplicate_drops_footprints_overlapping_more_than_half(metric_tif):
    ortho = read_orthophoto(metric_tif)
    row = [s for s in sliding_window_seeds(ortho, window_m=50, stride_m=12.5, max_nodata=0.0) if s.window[0] == 0]
    assert [s.window[1] for s in row] == [150, 175, 200, 225, 250, 275, 300]  # neighbours overlap 75%
    kept = deduplicate(row)  # 75% dropped; 50% (two steps apart) is not "more than 50%"
    assert [s.window[1] for s in kept] == [150, 200, 250, 300]
    wider = [s for s in sliding_window_seeds(ortho, 50, 20, max_nodata=0.0) if s.window[0] == 0]
    assert [s.window[1] for s in wider] == [160, 200, 240, 280]  # neighbours overlap 60%
    assert [s.window[1] for s in deduplicate(wider)] == [160, 240]  # 60% of the area: duplicates
    assert deduplicate(wider, measure="iou") == wider  # IoU = 0.6 / 1.4 = 0.43: not
    # the nested multi-scale crops of one location are not duplicates of each other
    crops = reverse_crops(ortho, *ortho.to_lonlat(X0 + 137.5, Y0 - 75.0), scales_m=(40, 60, 80))
    assert len(deduplicate([c.footprint for c in crops])) == 3


# ----------------------------------------------------------------------------- quality gates

PHOTOS = {name: getattr(data, name)() for name in ("astronaut", "camera", "coffee", "chelsea", "rocket")}


def flattened(image: np.ndarray, keep: float = 0.15) -> np.ndarray:
    x = image.astype(float)
    return np.clip(x.mean() + (x - x.mean()) * keep, 0, 255).astype(np.uint8)


def calm_water(size: int = 256) -> np.ndarray:
    """Open water: a faint gradient, small ripples and sensor noise, blue-green."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    g = 90 + 10 * yy / size + 2 * np.sin(xx / 6) + rng.normal(0, 1.5, (size, size))
    return np.stack([g * 0.6, g * 0.9, g * 1.1], -1).clip(0, 255).astype(np.uint8)


def test_quality_gates_keep_photographs_and_drop_each_degradation_at_its_gate():
    images = {name: Image.fromarray(a) for name, a in PHOTOS.items()}
    for name, a in PHOTOS.items():
        images[f"{name}-blurred"] = Image.fromarray(a).filter(ImageFilter.GaussianBlur(4))
        images[f"{name}-flat"] = Image.fromarray(flattened(a))
    images["rocket-sky"] = Image.fromarray(PHOTOS["rocket"][0:100, 220:420])  # the sky above the rocket
    images["water"] = Image.fromarray(calm_water())

    kept, report = QualityGates().filter(images)

    assert sorted(kept) == sorted(PHOTOS) == sorted(report.kept)
    for name in PHOTOS:
        assert report.reasons(f"{name}-blurred") == [BH]  # blur only: contrast and entropy stay
        assert C in report.reasons(f"{name}-flat") and BH not in report.reasons(f"{name}-flat")
    assert UN in report.reasons("rocket-sky") and UN in report.reasons("water")
    counts = report.counts()
    assert counts["input"] == 17 and counts["kept"] == 5 and counts[BH] >= 5 and counts[C] >= 5 and counts[UN] >= 2
    # the report carries the measured values under the thresholds used
    assert report.dropped[BH]["camera-blurred"] == report.values["camera-blurred"][BH] < 0.05
    assert report.values["astronaut"][UN] > 7 and report.values["water"][UN] < 5
    assert "BH < 0.05: dropped 5: astronaut-blurred (" in report.summary()


def test_gate_thresholds_are_parameters_and_lists_stay_lists():
    images = [PHOTOS["camera"], flattened(PHOTOS["camera"]), calm_water()]
    kept, report = QualityGates(blur_min=0, contrast_min=0, entropy_min=0).filter(images)
    assert len(kept) == 3 and report.kept == [0, 1, 2]
    kept, report = QualityGates(entropy_min=7.5).filter(images)
    assert kept == [] and report.reasons(0) == [UN]


# ----------------------------------------------------------------------------- description

VIEWS = {
    "street": "In this photo, a red car is parked next to the old church, while pedestrians cross "
              "the road. On the left there is a tall brick building at the corner of Mannerheimintie "
              "and Kaivokatu.",
    "drone": ["From above, a river runs along the park", "several cars drive over the bridge",
              "a tall brick building stands at the corner of Mannerheimintie and Kaivokatu"],
    "satellite": "The satellite image shows a roundabout north of the railway station; "
                 "shadows of clouds cover the lake.",
}


def test_offline_description_keeps_stable_cues_and_drops_transient_and_view_words():
    text = unified_description_offline(VIEWS)
    lower = text.lower()
    for gone in ("car", "pedestrian", "in this photo", "from above", "on the left", "shadow",
                 "satellite image", "cloud"):
        assert gone not in lower, gone
    for cue in ("river runs along the park", "brick building", "Mannerheimintie", "roundabout",
                "railway station"):
        assert cue in text, cue
    assert text.count("Kaivokatu") == 1  # the same cue seen by two views is written once
    assert describe_location(VIEWS, client=None) == text


def test_offline_description_removes_whole_place_phrases_and_leaves_no_dangling_verb():
    text = unified_description_offline({"drone": ["Family houses line the street on the right-hand side",
                                                  "A park is on the left hand side", "The river runs to your left"]})
    assert text == "Family houses line the street. A park. The river."
    assert "-hand" not in text and " is." not in text


def test_lmm_description_goes_through_the_openai_client_and_is_cached(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_lmm import ChatServer

    answer = ("From above, a red car is parked beside the old church. The church stands at the "
              "intersection of two roads next to a river.")
    server = ChatServer([("ok", answer)])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.chdir(tmp_path)  # the default cache, .cache/lmm, lands here
    try:
        images = {v: Image.fromarray(PHOTOS["coffee"]).resize((32, 32)) for v in ("drone", "street", "satellite")}
        first = describe_location(VIEWS, images, client=lmm_client())
        again = describe_location(VIEWS, images)  # "auto": key set -> the LMM, here from the cache
    finally:
        server.close()
    assert first == again == "The church stands at the intersection of two roads next to a river."
    assert len(server.requests) == 1  # the second description came from the cache
    body = server.requests[0]["body"]
    assert "stable cues" in body["messages"][0]["content"]
    parts = body["messages"][1]["content"]
    assert sum(p["type"] == "image_url" for p in parts) == 3
    assert any("street notes: In this photo" in p.get("text", "") for p in parts)


def test_offline_geoloc_writer_says_a_fact_once_whatever_its_count_and_names_the_street():
    from geotextloc.data.geoloc_build import offline_writer

    text = offline_writer()({"drone": ["One residential street crosses the area", "Eight buildings stand here"],
                             "street": "The view is taken on Mäyränkatu, a residential street.",
                             "satellite": ["Two residential streets cross the area", "Two buildings stand here"]}, {})
    assert text == "One residential street crosses the area. This is Mäyränkatu. Eight buildings stand here. " \
                   "A residential street."
