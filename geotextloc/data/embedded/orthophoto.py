"""A synthetic UAV orthophoto of an embedded region: a GeoTIFF standing in for OpenAerialMap.

GeoLoc starts from geo-referenced UAV orthophotos (OpenAerialMap). For the embedded regions,
:func:`synth_orthophoto` paints one with the aerial renderer and georeferences it for real:

1. the region's geometry lives in local metres of an equirectangular projection around
   (lat0, lon0) (:class:`~geotextloc.data.embedded.scene.Region`):
   ``x = R·(λ − λ0)·cos φ0``, ``y = R·(φ − φ0)``, R = 6 371 000 m — exactly PROJ's
   ``+proj=eqc +lat_ts=φ0 +lat_0=φ0 +lon_0=λ0 +R=6371000`` (:func:`region_crs`);
2. the bounding box is painted in that CRS, north up, in tiles of at most ``tile_px`` pixels
   (:func:`~geotextloc.data.embedded.render_aerial.render_orthomosaic_tile`: the drone's light
   and grading, orthorectified; each tile has its own sensor grain, like the flight strips of a
   real mosaic);
3. the mosaic is warped (``rasterio.warp.reproject``, bilinear) to the output CRS — the
   region's UTM zone by default (``EPSG:326zz``/``327zz``), or any EPSG code such as 3857 —
   at the same ground resolution;
4. only the flight's coverage holds data: an octagon inside the box (corners cut by a quarter
   of the short side), and the warp's own empty corners, are alpha 0 (RGB 0 there);
5. ``defects=True`` adds two faults real UAV mosaics have, so that the quality gates have
   something to drop (:func:`add_defects`): a defocused patch (Gaussian blur of σ = 1.5 m: a
   frame flown out of focus or with motion blur) and a washed-out patch (contrast cut to 15 %
   and lifted towards white: an over-exposed or glare-hit frame), squares of 35 % of the short
   side centred on the street places nearest to 30 % and 70 % of the box's width on its middle
   row (so that street views fall inside them). They are named in the ``GEOTEXTLOC_SOURCE`` tag.

The GeoTIFF is RGBA (alpha = coverage), deflate-compressed, tiled 256 × 256, and carries the
tags ``GEOTEXTLOC_REGION`` and ``GEOTEXTLOC_SOURCE`` (what made it), so that ``geotextloc data
build-geoloc`` knows which region's street renderer belongs to it. Written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from geotextloc.data.embedded.scene import EARTH_RADIUS_M, Location, Region
from geotextloc.errors import ConfigError
from geotextloc.files import atomic_path

REGION_TAG, SOURCE_TAG = "GEOTEXTLOC_REGION", "GEOTEXTLOC_SOURCE"
COVERAGES = ("octagon", "full")


@dataclass(frozen=True)
class OrthophotoInfo:
    path: Path
    crs: str
    shape: tuple[int, int]  # rows, columns
    resolution_m: float
    bbox: tuple[float, float, float, float]  # west, south, east, north (degrees)
    coverage_share: float  # pixels holding data


def region_crs(region: Region) -> str:
    """The PROJ string of the region's local metres (module docstring, step 1)."""
    lat0, lon0 = float(region.lat0), float(region.lon0)
    return (f"+proj=eqc +lat_ts={lat0!r} +lat_0={lat0!r} +lon_0={lon0!r} "
            f"+x_0=0 +y_0=0 +R={EARTH_RADIUS_M:.0f} +units=m +no_defs")


def utm_crs(lon: float, lat: float) -> str:
    """The WGS 84 UTM zone of a point: ``EPSG:326zz`` north of the equator, ``327zz`` south."""
    zone = min(60, int((lon + 180.0) // 6.0) + 1)
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


def default_bbox(region: Region, size_m: float) -> tuple[float, float, float, float]:
    """A ``size_m`` square (west, south, east, north) centred on the region's centre."""
    lat_s, lon_w = region.to_latlon(-size_m / 2, -size_m / 2)
    lat_n, lon_e = region.to_latlon(size_m / 2, size_m / 2)
    return lon_w, lat_s, lon_e, lat_n


def _coverage(width: int, height: int, kind: str) -> np.ndarray:
    """Where the flight has data, on the source grid (True = covered)."""
    if kind == "full":
        return np.ones((height, width), bool)
    cut = 0.25 * min(width, height)
    poly = [(cut, 0), (width - cut, 0), (width, cut), (width, height - cut), (width - cut, height),
            (cut, height), (0, height - cut), (0, cut)]
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    return np.asarray(mask) > 0


def add_defects(rgb: np.ndarray, centres_px: list[tuple[int, int]], side_px: int, resolution_m: float) -> np.ndarray:
    """The defocused and washed-out patches of the module docstring (step 5), on a copy:
    ``centres_px`` (row, col) of the two squares of side ``side_px``."""
    from PIL import ImageFilter

    out = rgb.copy()
    h, w = rgb.shape[:2]
    boxes = [(max(0, r - side_px // 2), min(h, r + side_px // 2), max(0, c - side_px // 2), min(w, c + side_px // 2))
             for r, c in centres_px]
    (r0, r1, c0, c1), (r2, r3, c2, c3) = boxes
    out[r0:r1, c0:c1] = np.asarray(Image.fromarray(out[r0:r1, c0:c1]).filter(ImageFilter.GaussianBlur(1.5 / resolution_m)))
    patch = out[r2:r3, c2:c3].astype(np.float32)
    out[r2:r3, c2:c3] = np.clip(205.0 + (patch - patch.mean()) * 0.15, 0, 255).astype(np.uint8)
    return out


def _defect_centres(region: Region, x0: float, y0: float, x1: float, y1: float, resolution_m: float):
    """(row, col) of the street places nearest to 30 % and 70 % of the box's width, middle row."""
    from geotextloc.data.embedded.sampling import sample_locations

    places = np.array([(p.x, p.y) for p in sample_locations(region, 10.0)]).reshape(-1, 2)
    centres = []
    for t in (0.3, 0.7):
        x, y = x0 + t * (x1 - x0), (y0 + y1) / 2
        if len(places):
            x, y = places[int(np.argmin(np.hypot(places[:, 0] - x, places[:, 1] - y)))]
        centres.append((int((y1 - y) / resolution_m), int((x - x0) / resolution_m)))
    return centres


def render_mosaic(region: Region, x0: float, y0: float, x1: float, y1: float, resolution_m: float,
                  tile_px: int = 1024, seed: int = 0) -> np.ndarray:
    """RGB (H, W, 3) of the local box [x0, x1] × [y0, y1] (metres), north up, row 0 at y1."""
    width, height = math.ceil((x1 - x0) / resolution_m), math.ceil((y1 - y0) / resolution_m)
    from geotextloc.data.embedded.render_aerial import render_orthomosaic_tile

    out = np.zeros((height, width, 3), np.uint8)
    tile_m = tile_px * resolution_m
    for r in range(0, height, tile_px):
        for c in range(0, width, tile_px):
            cx, cy = x0 + (c + tile_px / 2) * resolution_m, y1 - (r + tile_px / 2) * resolution_m
            lat, lon = region.to_latlon(cx, cy)
            loc = Location(f"ortho-r{r}-c{c}", region.name, cx, cy, lat, lon, 0.0, "")
            tile = np.asarray(render_orthomosaic_tile(region, loc, tile_px, tile_m, seed))
            h, w = min(tile_px, height - r), min(tile_px, width - c)
            out[r:r + h, c:c + w] = tile[:h, :w]
    return out


def synth_orthophoto(
    region: Region, out: str | Path, bbox: tuple[float, float, float, float] | None = None, size_m: float = 400.0,
    resolution_m: float = 0.3, crs: str = "utm", coverage: str = "octagon", defects: bool = False, seed: int = 0,
    tile_px: int = 1024,
) -> OrthophotoInfo:
    """Write a GeoTIFF orthophoto of ``region`` over ``bbox`` (west, south, east, north in
    degrees; default a ``size_m`` square at the region's centre) at ``resolution_m`` ground
    metres per pixel, in ``crs`` ("utm": the region's UTM zone; or "EPSG:<code>").

    See the module docstring for how it is made and georeferenced.
    """
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.warp import calculate_default_transform, reproject

    if coverage not in COVERAGES:
        raise ConfigError(f"unknown coverage {coverage!r}; use {' or '.join(COVERAGES)}")
    if not 0.02 <= resolution_m <= 5.0:
        raise ConfigError(f"--resolution-m {resolution_m:g}: use 0.02 to 5 metres per pixel (UAV mosaics: 0.03-0.5)")
    west, south, east, north = bbox or default_bbox(region, size_m)
    if not (west < east and south < north):
        raise ConfigError(f"--bbox {west},{south},{east},{north}: give WEST,SOUTH,EAST,NORTH with west < east, "
                          "south < north")
    x0, y0 = region.to_xy(south, west)
    x1, y1 = region.to_xy(north, east)
    if (x1 - x0) * (y1 - y0) > 4e6 or (x1 - x0) / resolution_m * (y1 - y0) / resolution_m > 6e7:
        raise ConfigError(f"--bbox covers {(x1 - x0) / 1000:.2f} x {(y1 - y0) / 1000:.2f} km at {resolution_m:g} m: "
                          "keep it under 4 km² and 60 megapixels")
    rgb = render_mosaic(region, x0, y0, x1, y1, resolution_m, tile_px, seed)
    if defects:
        side = int(0.35 * min(rgb.shape[:2]))
        rgb = add_defects(rgb, _defect_centres(region, x0, y0, x1, y1, resolution_m), side, resolution_m)
    height, width = rgb.shape[:2]
    covered = _coverage(width, height, coverage)
    src_crs = region_crs(region)
    src_transform = rasterio.Affine(resolution_m, 0.0, x0, 0.0, -resolution_m, y1)  # north up, row 0 at y1
    centre_lat, centre_lon = region.to_latlon((x0 + x1) / 2, (y0 + y1) / 2)
    dst_crs = utm_crs(centre_lon, centre_lat) if crs.lower() == "utm" else crs
    try:
        dst_transform, dst_w, dst_h = calculate_default_transform(src_crs, dst_crs, width, height,
                                                                  left=x0, bottom=y0, right=x1, top=y1)
    except Exception as err:  # rasterio.errors.CRSError and PROJ errors
        raise ConfigError(f"--crs {crs!r}: {err}; use 'utm' or 'EPSG:<code>'") from None
    src = np.concatenate([np.moveaxis(rgb, -1, 0), (covered * 255).astype(np.uint8)[None]], axis=0)
    dst = np.zeros((4, dst_h, dst_w), np.uint8)
    for band in range(4):  # colour bilinear; coverage nearest (0 outside the source too)
        reproject(src[band], dst[band], src_transform=src_transform, src_crs=src_crs, dst_transform=dst_transform,
                  dst_crs=dst_crs, resampling=Resampling.nearest if band == 3 else Resampling.bilinear,
                  src_nodata=None, dst_nodata=0)
    dst[:3, dst[3] == 0] = 0
    out = Path(out)
    profile = dict(driver="GTiff", width=dst_w, height=dst_h, count=4, dtype="uint8", crs=dst_crs,
                   transform=dst_transform, photometric="RGB", alpha="YES", compress="deflate", tiled=True,
                   blockxsize=256, blockysize=256)
    with atomic_path(out) as tmp:
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.write(dst)
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            ds.update_tags(**{REGION_TAG: region.name, SOURCE_TAG: (
                f"synthetic UAV orthophoto of the embedded region {region.name} (geotextloc aerial renderer, "
                f"OSM geometry; seed {seed}), {resolution_m:g} m/px, painted in {src_crs}"
                + ("; defects: a defocused patch and a washed-out patch, squares of 35% of the side on street "
                   "places at 30% and 70% of the width" if defects else ""))})
    return OrthophotoInfo(out, dst_crs, (dst_h, dst_w), resolution_m, tuple(map(float, (west, south, east, north))),
                          float((dst[3] > 0).mean()))
