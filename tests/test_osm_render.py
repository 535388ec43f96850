"""OpenStreetMap tiles rendered locally (mapnik + openstreetmap-carto): tile maths, the missing-stack
error, and (when `make osm-stack` installed the stack) a tiny extract rendered end to end."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geotextloc.cli import main
from geotextloc.data import osm_carto_worker, osm_render
from geotextloc.data.embedded import builder
from geotextloc.data.osm_render import BBox, Tile
from geotextloc.errors import ConfigError

MONACO = BBox(7.415, 43.728, 7.435, 43.745)


def _stack_or_none():
    try:
        return osm_render.find_stack()
    except osm_render.OSMStackMissing as err:
        return str(err)


STACK = _stack_or_none()
needs_stack = pytest.mark.skipif(
    isinstance(STACK, str),
    reason="the OSM rendering stack (osm2pgsql, PostgreSQL + PostGIS, python3-mapnik, openstreetmap-carto) "
    "is not installed; `make osm-stack` installs it")


# ----------------------------------------------------------------------------- tile maths


def test_tile_xy_matches_the_slippy_map_formula():
    assert osm_render.tile_xy(0.0, 0.0, 1) == pytest.approx((1.0, 1.0))
    assert osm_render.tile_xy(-180.0, osm_render.MAX_LAT, 3) == pytest.approx((0.0, 0.0), abs=1e-9)
    # the OSM wiki's form: y = (1 - ln(tan(lat) + sec(lat)) / pi) / 2 * 2^z
    lat = math.radians(43.7311)
    x, y = osm_render.tile_xy(7.4205, 43.7311, 16)
    assert x == pytest.approx((7.4205 + 180) / 360 * 2**16)
    assert y == pytest.approx((1 - math.log(math.tan(lat) + 1 / math.cos(lat)) / math.pi) / 2 * 2**16)
    assert (int(x), int(y)) == (34118, 23898)


def test_tile_bounds_tile_the_mercator_square():
    half = osm_render.WEB_MERCATOR_HALF
    assert osm_render.tile_bounds(Tile(0, 0, 0)) == pytest.approx((-half, -half, half, half))
    assert osm_render.tile_bounds(Tile(1, 0, 0)) == pytest.approx((-half, 0.0, 0.0, half))  # north-west
    assert osm_render.tile_bounds(Tile(1, 1, 1)) == pytest.approx((0.0, -half, half, 0.0))  # south-east
    # a tile's corner is the mercator point of the tile's corner longitude/latitude
    lon = 34118 / 2**16 * 360 - 180
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * 23898 / 2**16))))
    minx, _, _, maxy = osm_render.tile_bounds(Tile(16, 34118, 23898))
    assert (minx, maxy) == pytest.approx(osm_render.mercator(lon, lat), abs=1e-6)


def test_tiles_for_bbox_cover_the_bbox_and_nothing_more():
    tiles = osm_render.tiles_for_bbox(MONACO, [16])
    xs, ys = {t.x for t in tiles}, {t.y for t in tiles}
    assert len(tiles) == len(xs) * len(ys) and tiles == sorted(tiles)
    x0, y0 = osm_render.tile_xy(MONACO.west, MONACO.north, 16)
    x1, y1 = osm_render.tile_xy(MONACO.east, MONACO.south, 16)
    assert xs == set(range(int(x0), int(x1) + 1)) and ys == set(range(int(y0), int(y1) + 1))
    # the union of the tiles' bounds holds the bbox's mercator box
    minx, miny = osm_render.mercator(MONACO.west, MONACO.south)
    maxx, maxy = osm_render.mercator(MONACO.east, MONACO.north)
    bounds = np.array([osm_render.tile_bounds(t) for t in tiles])
    assert bounds[:, 0].min() <= minx and bounds[:, 1].min() <= miny
    assert bounds[:, 2].max() >= maxx and bounds[:, 3].max() >= maxy
    # a bbox ending exactly on a tile edge does not pull in the next tile; a tiny one is one tile
    w, _, e, n = osm_render.tile_bounds(Tile(16, 34118, 23898))
    lon_e = math.degrees(e / osm_render.EARTH_RADIUS_WGS84)
    edge = BBox(lon_e - 0.001, 43.73, lon_e, 43.7305)
    assert {t.x for t in osm_render.tiles_for_bbox(edge, [16])} == {34118}
    assert osm_render.tiles_for_bbox(BBox(7.4205, 43.7311, 7.42051, 43.73111), [16]) == [Tile(16, 34118, 23898)]
    assert len(osm_render.tiles_for_bbox(MONACO, [15, 16])) == len(osm_render.tiles_for_bbox(MONACO, [15])) + len(tiles)


def test_metatiles_group_eight_by_eight():
    tiles = [Tile(10, x, y) for x in range(6, 18) for y in range(7, 9)]
    groups = osm_render.metatiles(tiles, 8)
    assert sorted(groups) == [(10, 0, 0), (10, 0, 1), (10, 1, 0), (10, 1, 1), (10, 2, 0), (10, 2, 1)]
    assert sorted(t for g in groups.values() for t in g) == sorted(tiles)
    assert all(len({(t.x // 8, t.y // 8) for t in g}) == 1 for g in groups.values())


def test_view_box_spans_the_ground_footprint():
    minx, miny, maxx, maxy = osm_render.view_box(60.0, 25.0, 60.0)
    assert maxx - minx == pytest.approx(120.0) and maxy - miny == pytest.approx(120.0)  # 1 / cos 60° = 2
    assert ((minx + maxx) / 2, (miny + maxy) / 2) == pytest.approx(osm_render.mercator(25.0, 60.0))


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "3,2,1,4", "1,50,2,40", "1,2,3,89"])
def test_bad_bbox_is_one_line(text):
    with pytest.raises(ConfigError, match="--bbox"):
        osm_render.parse_bbox(text)


def test_zooms_parse():
    assert osm_render.parse_zooms("16") == [16]
    assert osm_render.parse_zooms("14-16,18") == [14, 15, 16, 18]
    for bad in ("", "x", "23", "5-30"):
        with pytest.raises(ConfigError, match="--zoom"):
            osm_render.parse_zooms(bad)


def test_worker_points_the_style_at_our_database_and_patterns():
    xml = ('<Datasource><Parameter name="type"><![CDATA[postgis]]></Parameter>'
           '<Parameter name="dbname"><![CDATA[gis]]></Parameter></Datasource>'
           '<PolygonPatternSymbolizer file="patterns/vineyard.svg" /><MarkersSymbolizer file="symbols/a.svg" />')
    out = osm_carto_worker.prepare_style(xml, {"dbname": "osm_1", "host": "/run/x", "user": "postgres"}, "/p/")
    assert '<Parameter name="dbname"><![CDATA[osm_1]]></Parameter>' in out and "[gis]" not in out
    assert '<Parameter name="host"><![CDATA[/run/x]]></Parameter>' in out
    assert 'file="/p/vineyard.svg"' in out and 'file="symbols/a.svg"' in out
    assert sorted(p.name for p in osm_render.PATTERNS_DIR.glob("*.svg"))  # shipped with the package


# ----------------------------------------------------------------------------- missing stack


@pytest.fixture
def no_stack(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no osm2pgsql, no runuser
    monkeypatch.setenv("GEOTEXTLOC_PG_BIN", str(tmp_path / "nope"))
    monkeypatch.setenv("GEOTEXTLOC_CARTO_DIR", str(tmp_path))
    monkeypatch.setenv("GEOTEXTLOC_MAPNIK_PYTHON", str(tmp_path / "no-python"))


def test_missing_stack_is_one_line_naming_make_osm_stack(no_stack, tmp_path, capsys):
    code = main(["data", "render-osm", "--pbf", str(tmp_path / "x.osm.pbf"), "--bbox", "7.41,43.72,7.44,43.75",
                 "--zoom", "16", "--out", str(tmp_path / "tiles")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "make osm-stack" in err and "osm2pgsql" in err and "mapnik" in err
    assert not (tmp_path / "tiles").exists()


def test_carto_build_without_the_stack_stops_before_writing(no_stack, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "build-embedded", "--out", str(out), "--regions", "kouvola", "--osm-renderer", "carto"]) == 2
    assert "make osm-stack" in capsys.readouterr().err
    assert not out.exists()


def test_default_build_settings_record_no_renderer():
    """The default build's build.json/stats.json keep the keys they had before the option (the committed
    reports' data fingerprint depends on them); a carto build names its renderer."""
    assert "osm_renderer" not in builder.settings_record(builder.BuildSettings())
    assert builder.settings_record(builder.BuildSettings(osm_renderer="carto"))["osm_renderer"] == "carto"


# ----------------------------------------------------------------------------- end to end


def tiny_extract(path: Path) -> Path:
    """An .osm file: a coastline running west to east at 60.003° N (land north, sea south), a
    residential street 'Testikatu' north of it, a building, and a ferry line over the sea."""
    nodes = {1: (24.000, 60.003), 2: (24.006, 60.0031), 3: (24.012, 60.003),
             4: (24.001, 60.0045), 5: (24.011, 60.0045),
             6: (24.005, 60.0050), 7: (24.006, 60.0050), 8: (24.006, 60.0055), 9: (24.005, 60.0055),
             10: (24.002, 60.0025), 11: (24.010, 60.0005)}
    ways = {100: ([1, 2, 3], {"natural": "coastline"}),
            101: ([4, 5], {"highway": "residential", "name": "Testikatu"}),
            102: ([6, 7, 8, 9, 6], {"building": "yes"}),
            103: ([10, 11], {"route": "ferry"})}
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="geotextloc-test">']
    lines += [f'<node id="{i}" version="1" lat="{lat}" lon="{lon}"/>' for i, (lon, lat) in nodes.items()]
    for i, (refs, tags) in ways.items():
        lines.append(f'<way id="{i}" version="1">' + "".join(f'<nd ref="{r}"/>' for r in refs)
                     + "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items()) + "</way>")
    path.write_text("\n".join(lines + ["</osm>"]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pg_dir():
    """A cluster folder the postgres user can enter when the tests run as root (pytest's own
    temp folders are private to their owner)."""
    root = Path(tempfile.mkdtemp(prefix="gtl-osm-test-"))
    root.chmod(0o755)
    yield root / "pg"
    shutil.rmtree(root, ignore_errors=True)


def _pixel(out: Path, lon: float, lat: float, zoom: int) -> tuple[int, ...]:
    x, y = osm_render.tile_xy(lon, lat, zoom)
    with Image.open(osm_render.tile_path(out, Tile(zoom, int(x), int(y)))) as im:
        return im.convert("RGB").getpixel((int((x % 1) * 256), int((y % 1) * 256)))


@needs_stack
def test_render_tiles_end_to_end(tmp_path, pg_dir, capsys):
    pbf = tiny_extract(tmp_path / "tiny.osm")
    out = tmp_path / "tiles"
    args = ["data", "render-osm", "--pbf", str(pbf), "--bbox", "24.001,60.001,24.011,60.0055", "--zoom", "16",
            "--out", str(out), "--pg-dir", str(pg_dir)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    tiles = osm_render.tiles_for_bbox(BBox(24.001, 60.001, 24.011, 60.0055), [16])
    assert 2 <= len(tiles) <= 12 and f"rendered {len(tiles)} tile(s), 0 already there" in printed
    assert "coastline: sea rebuilt from the extract's 1 natural=coastline way(s)" in printed
    for t in tiles:
        with Image.open(osm_render.tile_path(out, t)) as im:
            assert im.size == (256, 256)
    water = (170, 211, 223)  # openstreetmap-carto's @water-color
    assert _pixel(out, 24.004, 60.0015, 16) == water  # south of the coastline
    assert _pixel(out, 24.008, 60.0040, 16) != water  # north of it: land
    dark = sum(int((np.asarray(Image.open(osm_render.tile_path(out, t)).convert("RGB")) < 90).all(-1).sum())
               for t in tiles)
    assert dark > 20  # the street's name, in dark grey letters
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["renderer"] == "mapnik + openstreetmap-carto" and meta["zooms"] == [16]
    assert meta["sea_polygons"] >= 1 and "osmdata.openstreetmap.de" in meta["coastline"]
    assert "OpenStreetMap contributors" in meta["attribution"]
    assert not list(out.rglob("*.tmp"))

    # resumed: nothing rendered again, the loaded database reused
    stamp = {t: osm_render.tile_path(out, t).stat().st_mtime_ns for t in tiles}
    assert main(args) == 0
    assert f"rendered 0 tile(s), {len(tiles)} already there" in capsys.readouterr().out
    assert stamp == {t: osm_render.tile_path(out, t).stat().st_mtime_ns for t in tiles}

    # a view of a ground footprint (the embedded builder's OSM view): 60 m around a point of the street
    view = osm_render.MapView(60.0045, 24.006, 60.0, 96, tmp_path / "views" / "v.png")
    report = osm_render.render_views(pbf, [view], pg_dir=pg_dir, progress=False)
    assert report.rendered == 1 and report.metadata["sea_polygons"] >= 1
    with Image.open(view.path) as im:
        assert im.size == (96, 96)
    assert "database system is shut down" in (pg_dir / "postgres.log").read_text(encoding="utf-8").splitlines()[-1]


@needs_stack
def test_embedded_build_with_carto_osm_views(tmp_path, pg_dir, monkeypatch):
    monkeypatch.setattr(osm_render, "default_pg_dir", lambda: pg_dir)
    out = tmp_path / "data"
    settings = builder.BuildSettings(size=64, pano_width=128, osm_renderer="carto")
    report = builder.build(out, regions=("kouvola",), max_locations=4, settings=settings, hf=False, progress=False)
    assert report.rendered >= 2
    manifest = json.loads((out / "build.json").read_text(encoding="utf-8"))
    assert manifest["settings"]["osm_renderer"] == "carto"
    assert manifest["osm_renderer"]["renderer"] == "mapnik + openstreetmap-carto"
    assert "no natural=coastline" in manifest["osm_renderer"]["regions"]["Kouvola"]["coastline"]
    assert json.loads((out / "stats.json").read_text(encoding="utf-8"))["settings"]["osm_renderer"] == "carto"
    facts = sorted((out / "facts" / "Kouvola").glob("*.json"))
    assert facts and all(json.loads(f.read_text(encoding="utf-8"))["views"]["osm_renderer"] == "carto" for f in facts)
    tiles = sorted((out / "Kouvola-OSM").glob("*.png"))
    assert tiles and all(Image.open(t).size == (64, 64) for t in tiles)
    assert not (out / builder.CARTO_CACHE).exists()  # the views ahead of their places are gone
    with pytest.raises(ConfigError, match="osm_renderer carto -> builtin"):
        builder.build(out, regions=("kouvola",), max_locations=4, settings=builder.BuildSettings(size=64, pano_width=128),
                      hf=False, progress=False)
