"""GeoLoc construction tools (GeoBridge, CVPR 2026: the GeoLoc dataset), for real data.

The paper's pipeline, one function per step:

(a) footprint seeds: a sliding window over a geo-referenced UAV orthophoto (GeoTIFF) gives
    ground footprints whose centres are the seeds        -> :func:`read_orthophoto`, :func:`sliding_window_seeds`
(b) the orthophoto is reverse-cropped around each street-view location at several scales,
    80 m to 180 m, keeping only locations inside the UAV coverage        -> :func:`reverse_crops`
(c) footprints overlapping more than 50% are de-duplicated          -> :func:`deduplicate`
    and a three-level quality gate drops blurry (BH), weak-contrast (C) and uninformative
    (UN: sky, water) tiles                                                -> :class:`QualityGates`
(d) one unified description per location from all views: stable cues only
    (roads, intersections, buildings, landmarks, water), no transient or view-specific
    wording               -> :func:`geotextloc.data.geoloc_description.describe_location`

GeoTIFFs are read with ``tifffile``; the affine transform is built here from the GeoTIFF
tags (no GDAL). Supported: north-up or rotated affine rasters (ModelTransformationTag or one
tie point + pixel scale), PixelIsArea and PixelIsPoint, geographic CRS in degrees (lon, lat;
EPSG:4326 and other geographic datums, treated as WGS 84) and projected CRS in metres (any
EPSG code; converting to lon/lat uses ``pyproj``). Not supported: rasters georeferenced by
many tie points (GCPs; warp them first), non-metre projected units. JPEG/LZW-compressed
GeoTIFFs (common for OpenAerialMap) need the ``imagecodecs`` package to be decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image

from geotextloc.errors import ConfigError, DataError

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius
M_PER_DEG = math.pi * EARTH_RADIUS_M / 180.0  # ≈ 111 195 m per degree of latitude
PAPER_SCALES_M = (80, 100, 120, 140, 160, 180)  # "several scales (80 m to 180 m)"

# GeoTIFF tags and GeoKeys
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION = 33550, 33922, 34264
GDAL_NODATA, EXTRA_SAMPLES = 42113, 338
PIXEL_IS_POINT, METRE = 2, 9001


# ----------------------------------------------------------------------------- orthophoto


@dataclass(frozen=True)
class Affine:
    """Pixel → CRS: x = a·col + b·row + c,  y = d·col + e·row + f.

    (col, row) = (0, 0) is the outer corner of the top-left pixel; pixel centres are at +0.5.
    """

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float

    def xy(self, col, row):
        return self.a * col + self.b * row + self.c, self.d * col + self.e * row + self.f

    def colrow(self, x, y):
        """Inverse: (col, row) of CRS point (x, y)."""
        det = self.a * self.e - self.b * self.d
        dx, dy = x - self.c, y - self.f
        return (self.e * dx - self.b * dy) / det, (self.a * dy - self.d * dx) / det


def affine_from_geotiff_tags(tags: Mapping[int, Any], pixel_is_point: bool = False) -> Affine:
    """The affine of a GeoTIFF from its tags (by code), as GDAL reads it.

    ModelTransformationTag (34264), a row-major 4×4 M:  x = M0·col + M1·row + M3,
    y = M4·col + M5·row + M7. Otherwise ModelTiepointTag (33922) (i, j, k, X, Y, Z) and
    ModelPixelScaleTag (33550) (Sx, Sy, Sz):  x = X + (col − i)·Sx,  y = Y − (row − j)·Sy.
    PixelIsPoint rasters tie pixel *centres*: the corner grid is shifted by half a pixel.
    """
    if MODEL_TRANSFORMATION in tags:
        m = [float(v) for v in tags[MODEL_TRANSFORMATION]]
        t = Affine(m[0], m[1], m[3], m[4], m[5], m[7])
    elif MODEL_TIEPOINT in tags and MODEL_PIXEL_SCALE in tags:
        tie, scale = [float(v) for v in tags[MODEL_TIEPOINT]], [float(v) for v in tags[MODEL_PIXEL_SCALE]]
        if len(tie) > 6:
            raise ValueError("several tie points (a GCP raster): warp it to a grid first")
        i, j, _, x, y, _ = tie
        t = Affine(scale[0], 0.0, x - i * scale[0], 0.0, -scale[1], y + j * scale[1])
    else:
        raise ValueError("no ModelTransformationTag nor ModelTiepointTag + ModelPixelScaleTag")
    if pixel_is_point:
        t = Affine(t.a, t.b, t.c - 0.5 * (t.a + t.b), t.d, t.e, t.f - 0.5 * (t.d + t.e))
    return t


@dataclass
class Orthophoto:
    """A geo-referenced image: ``image`` (H, W, C), its ``transform`` and CRS.

    ``geographic``: coordinates are (lon, lat) degrees; otherwise metres in ``crs``.
    ``nodata``: the value of empty pixels (in every band); ``alpha``: the last band is alpha.
    """

    image: np.ndarray
    transform: Affine
    crs: str
    geographic: bool
    nodata: float | None = None
    alpha: bool = False
    name: str = "orthophoto"

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def valid(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """True where a pixel (of the window ``rows``, ``cols``) holds data."""
        px = self.image[rows, cols]
        bands = px[..., :-1] if self.alpha else px
        ok = px[..., -1] > 0 if self.alpha else np.ones(px.shape[:2], dtype=bool)
        if self.nodata is not None:
            empty = np.isnan(bands) if math.isnan(self.nodata) else bands == self.nodata
            ok &= ~np.all(empty, axis=-1)
        return ok

    def metres_per_pixel(self) -> tuple[float, float]:
        """Ground size of a pixel (along columns, along rows); for degrees, the local
        equirectangular scale at the raster's centre: 1° lat = πR/180, 1° lon = that · cos φ."""
        t = self.transform
        sx, sy = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
        if not self.geographic:
            return sx, sy
        lat = t.xy(self.shape[1] / 2, self.shape[0] / 2)[1]
        return sx * M_PER_DEG * math.cos(math.radians(lat)), sy * M_PER_DEG

    def to_crs(self, lon, lat):
        """(x, y) in the orthophoto's CRS of WGS 84 (lon, lat)."""
        return (lon, lat) if self.geographic else _transformer("EPSG:4326", self.crs).transform(lon, lat)

    def to_lonlat(self, x, y):
        return (x, y) if self.geographic else _transformer(self.crs, "EPSG:4326").transform(x, y)

    def rgb(self, rows: slice, cols: slice) -> Image.Image:
        """The RGB of a pixel window as a PIL image (non-uint8 data: 2–98 % of the window to 0–255)."""
        px = self.image[rows, cols, : 3 if self.image.shape[2] >= 3 else 1]
        if px.dtype != np.uint8:
            lo, hi = np.nanpercentile(px, [2, 98]) if px.size else (0, 1)
            px = np.clip((px - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
        return Image.fromarray(px[..., 0] if px.shape[2] == 1 else px).convert("RGB")


@lru_cache(maxsize=16)
def _transformer(src: str, dst: str):
    try:
        from pyproj import Transformer
    except ImportError:
        raise ConfigError(f"converting {src} to {dst} needs pyproj; pip install pyproj") from None
    return Transformer.from_crs(src, dst, always_xy=True)


def _is_geographic(crs: str) -> bool:
    try:
        from pyproj import CRS
    except ImportError:
        return crs.upper() in ("EPSG:4326", "OGC:CRS84")
    try:
        return CRS.from_user_input(crs).is_geographic
    except Exception as err:  # pyproj.exceptions.CRSError
        raise ConfigError(f"unknown CRS {crs!r} ({err}); use 'EPSG:<code>'") from None


def read_orthophoto(
    path: str | Path, crs: str | None = None, nodata: float | None = None, out: str | None = None
) -> Orthophoto:
    """Read a GeoTIFF orthophoto (first page, full resolution).

    ``crs`` overrides the GeoKeys (e.g. "EPSG:3067" for a raster with a user-defined CRS);
    ``nodata`` overrides the GDAL_NODATA tag. An alpha band (ExtraSamples) marks coverage too.
    ``out="memmap"`` decodes into a temporary memory-mapped file instead of RAM (large rasters).
    """
    try:
        import tifffile
    except ImportError:
        raise ConfigError("reading GeoTIFFs needs tifffile: pip install 'geotextloc[geoloc]'") from None

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            tags = {tag.code: tag.value for tag in page.tags.values()}
            keys = dict(tif.geotiff_metadata or {})
            image = page.asarray(out=out)
            separate = int(page.planarconfig) == 2
    except (ValueError, ImportError, NotImplementedError) as err:
        hint = " (pip install imagecodecs)" if "imagecodecs" in str(err) else ""
        raise DataError(f"{path}: cannot decode the GeoTIFF: {err}{hint}") from None
    except (OSError, tifffile.TiffFileError) as err:
        raise DataError(f"{path}: not a readable TIFF file ({err})") from None
    if image.ndim == 3 and separate:
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    try:
        transform = affine_from_geotiff_tags(tags, int(keys.get("GTRasterTypeGeoKey", 1)) == PIXEL_IS_POINT)
    except ValueError as err:
        raise DataError(f"{path}: not a usable GeoTIFF: {err}") from None
    geographic = int(keys.get("GTModelTypeGeoKey", 0)) == 2
    if crs is None:
        code = keys.get("GeographicTypeGeoKey") if geographic else keys.get("ProjectedCSTypeGeoKey")
        if code is None or int(code) == 32767:
            raise DataError(f"{path}: the GeoTIFF names no EPSG code; pass crs='EPSG:<code>'")
        crs = f"EPSG:{int(code)}"
    else:
        geographic = _is_geographic(crs)
    units = keys.get("ProjLinearUnitsGeoKey")
    if not geographic and units is not None and int(units) != METRE:
        raise DataError(f"{path}: projected units are not metres (GeoKey {int(units)}); reproject to a metric CRS")
    if nodata is None and GDAL_NODATA in tags:
        nodata = float(str(tags[GDAL_NODATA]).strip("\x00 "))
    extra = tags.get(EXTRA_SAMPLES, ())
    extra = (extra,) if isinstance(extra, int) else tuple(extra)
    alpha = bool(extra) and int(extra[-1]) in (1, 2) and image.shape[2] in (2, 4)
    return Orthophoto(image, transform, crs, geographic, nodata, alpha, path.stem)


# ----------------------------------------------------------------------------- footprints


@dataclass(frozen=True)
class Footprint:
    """A square ground footprint: centre (x, y) in the orthophoto CRS and (lon, lat),
    ``bounds`` (xmin, ymin, xmax, ymax) in the CRS (axis-aligned hull if the raster is
    rotated), the pixel ``window`` (row, col, height, width) and its side ``size_m``."""

    id: str
    x: float
    y: float
    lon: float
    lat: float
    bounds: tuple[float, float, float, float]
    window: tuple[int, int, int, int]
    size_m: float


class Crop(NamedTuple):
    image: Image.Image
    footprint: Footprint


def _footprints(ortho: Orthophoto, windows: list[tuple[int, int, int, int]], size_m: float, ids: list[str]):
    """Footprints of pixel windows (row, col, h, w): centres and bounds via the affine."""
    if not windows:
        return []
    w = np.array(windows, dtype=float)
    r, c, h, wd = w.T
    xs, ys = ortho.transform.xy(c + wd / 2, r + h / 2)
    lons, lats = ortho.to_lonlat(np.asarray(xs), np.asarray(ys))
    corners = [ortho.transform.xy(c + dc * wd, r + dr * h) for dc in (0, 1) for dr in (0, 1)]
    cx, cy = np.array([k[0] for k in corners]), np.array([k[1] for k in corners])
    bounds = np.stack([cx.min(0), cy.min(0), cx.max(0), cy.max(0)], axis=1)
    return [
        Footprint(ids[i], float(xs[i]), float(ys[i]), float(np.asarray(lons)[i]), float(np.asarray(lats)[i]),
                  tuple(map(float, bounds[i])), tuple(map(int, windows[i])), float(size_m))
        for i in range(len(windows))
    ]


def _window_px(ortho: Orthophoto, metres: float) -> tuple[int, int]:
    """(height, width) in pixels of a square of side ``metres``."""
    mx, my = ortho.metres_per_pixel()
    return max(1, round(metres / my)), max(1, round(metres / mx))


def sliding_window_seeds(
    ortho: Orthophoto, window_m: float = 120.0, stride_m: float = 60.0, max_nodata: float = 0.5
) -> list[Footprint]:
    """Step (a): footprints of a sliding window (side ``window_m``, step ``stride_m``, both in
    metres) over the orthophoto; their centres are the seeds. Windows whose share of nodata
    pixels exceeds ``max_nodata`` are skipped (outside the UAV coverage)."""
    h, w = _window_px(ortho, window_m)
    sh, sw = _window_px(ortho, stride_m)
    H, W = ortho.shape
    if h > H or w > W:
        return []
    cols = np.arange(0, W - w + 1, sw)
    invalid = ~ortho.valid()
    keep = []
    for r0 in range(0, H - h + 1, sh):  # nodata per window from column prefix sums of the band
        prefix = np.concatenate([[0], np.cumsum(invalid[r0:r0 + h].sum(axis=0))])
        share = (prefix[cols + w] - prefix[cols]) / (h * w)
        keep += [(r0, int(c0), h, w) for c0 in cols[share <= max_nodata]]
    ids = [f"{ortho.name}_r{r0}_c{c0}" for r0, c0, _, _ in keep]
    return _footprints(ortho, keep, window_m, ids)


def reverse_crops(
    ortho: Orthophoto, lon: float, lat: float, scales_m: Sequence[float] = PAPER_SCALES_M,
    max_nodata: float = 0.1, name: str | None = None,
) -> list[Crop]:
    """Step (b): square crops of the orthophoto centred on a street-view location (lon, lat),
    one per scale (side in metres, paper 80–180 m). A scale whose window leaves the raster or
    holds more than ``max_nodata`` empty pixels is skipped; [] = outside the UAV coverage."""
    col, row = ortho.transform.colrow(*ortho.to_crs(lon, lat))
    H, W = ortho.shape
    windows, sizes = [], []
    for size in scales_m:
        h, w = _window_px(ortho, size)
        r0, c0 = round(row - h / 2), round(col - w / 2)
        if r0 < 0 or c0 < 0 or r0 + h > H or c0 + w > W:
            continue
        if 1.0 - ortho.valid(slice(r0, r0 + h), slice(c0, c0 + w)).mean() > max_nodata:
            continue
        windows.append((r0, c0, h, w))
        sizes.append(size)
    stem = name or f"{lat:.6f},{lon:.6f}"
    crops = []
    for win, size in zip(windows, sizes):
        fp = _footprints(ortho, [win], size, [f"{stem}_{size:g}m"])[0]
        r0, c0, h, w = win
        crops.append(Crop(ortho.rgb(slice(r0, r0 + h), slice(c0, c0 + w)), fp))
    return crops


def overlap(a: Sequence[float], b: np.ndarray, measure: str = "share") -> np.ndarray:
    """Overlap of box ``a`` with boxes ``b`` (rows of xmin, ymin, xmax, ymax).

    ``share`` (default): |a ∩ b| / min(|a|, |b|), the part of the smaller footprint covered
    by the other — "overlapping more than 50%" read literally; ``iou``: |a ∩ b| / |a ∪ b|.
    Both are ratios of areas, so degrees work as well as metres (a local axis scaling
    cancels out).
    """
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if measure == "share":
        return inter / np.maximum(np.minimum(area_a, area_b), 1e-300)
    if measure == "iou":
        return inter / np.maximum(area_a + area_b - inter, 1e-300)
    raise ConfigError(f"unknown overlap measure {measure!r}; use 'share' or 'iou'")


def deduplicate(footprints: Sequence[Footprint], max_overlap: float = 0.5, measure: str = "share") -> list[Footprint]:
    """Step (c): drop every footprint overlapping a kept one by more than ``max_overlap``.

    Greedy in the given order (put the preferred ones first, e.g. by quality). Footprints
    are compared with those of the same size only: the nested multi-scale crops of one
    location are not duplicates of each other.
    """
    kept: list[Footprint] = []
    boxes: dict[float, list[tuple[float, ...]]] = {}
    for fp in footprints:
        same = boxes.setdefault(fp.size_m, [])
        if same and (overlap(fp.bounds, np.array(same), measure) > max_overlap).any():
            continue
        kept.append(fp)
        same.append(fp.bounds)
    return kept


# ----------------------------------------------------------------------------- quality gates

BH, C, UN = "BH", "C", "UN"


def _gray(image, work_size: int | None) -> np.ndarray:
    """Luma (ITU-R 601, 0–255) of a PIL image or array, shrunk so the short side ≤ work_size."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8))
    image = image.convert("L")
    if work_size and min(image.size) > work_size:
        s = work_size / min(image.size)
        image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.BICUBIC)
    return np.asarray(image, dtype=np.float64)


def gate_values(image, work_size: int | None = 224) -> dict[str, float]:
    """The three measures on the gray image g (shrunk to the model's input scale):

    BH = Var(∇²g) / Var(g): variance of the 4-neighbour Laplacian of g, of g scaled to unit
         contrast — blur lowers it, a global contrast change does not (a plain Var(∇²g)
         falls with the square of the contrast and would flag flat tiles as blurry);
    C  = std(g) / 255: RMS contrast;
    UN = −Σ_k p_k log2 p_k: Shannon entropy (bits) of the 256-bin gray histogram.
    """
    g = _gray(image, work_size)
    var = g.var()
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    p = np.bincount(g.astype(np.uint8).ravel(), minlength=256) / g.size
    p = p[p > 0]
    return {
        BH: float(lap.var() / var) if var > 1e-9 and lap.size else 0.0,
        C: float(np.sqrt(var) / 255.0),
        UN: float(-(p * np.log2(p)).sum()),
    }


@dataclass
class GateReport:
    """What each gate dropped: ``dropped[gate] = {id: value}`` (every item failing it: the
    gates are measured independently, so a tile can fail several), ``values[id]`` all three
    measures, ``kept`` the ids passing all gates, ``thresholds`` the minima used."""

    thresholds: dict[str, float]
    values: dict[Any, dict[str, float]] = field(default_factory=dict)
    dropped: dict[str, dict[Any, float]] = field(default_factory=lambda: {BH: {}, C: {}, UN: {}})
    kept: list = field(default_factory=list)

    def reasons(self, item_id) -> list[str]:
        return [gate for gate, ids in self.dropped.items() if item_id in ids]

    def counts(self) -> dict[str, int]:
        return {"input": len(self.values), "kept": len(self.kept), **{g: len(d) for g, d in self.dropped.items()}}

    def summary(self) -> str:
        n = self.counts()
        lines = [f"quality gates: kept {n['kept']} of {n['input']}"]
        for gate, ids in self.dropped.items():
            shown = ", ".join(f"{i} ({v:.3g})" for i, v in list(ids.items())[:10])
            lines.append(f"  {gate} < {self.thresholds[gate]:g}: dropped {len(ids)}" + (f": {shown}" if ids else ""))
        return "\n".join(lines)


@dataclass
class QualityGates:
    """Step (c), the three-level gate; an image is kept when all three pass.

    BH-gate (blur) drops BH < ``blur_min``; C-gate (weak contrast / edges) drops
    C < ``contrast_min``; UN-gate (sky, water, uninformative) drops UN < ``entropy_min``
    bits. See :func:`gate_values`. Defaults were set on scikit-image's sample photographs:
    sharp photos have BH 0.2–0.7, C 0.11–0.30, UN 6.6–7.7; a Gaussian blur of σ = 3 px gives
    BH ≤ 0.02, contrast flattened to 15 % gives C ≤ 0.045, a sky patch UN ≈ 4.3–4.6 and calm
    water UN ≈ 3.5. Entropy grows with log(contrast) (≈ log2 σ + 2 bits for a Gaussian
    histogram), so sky and water usually fail C as well, and very flat tiles UN as well.
    """

    blur_min: float = 0.05
    contrast_min: float = 0.06
    entropy_min: float = 5.0
    work_size: int | None = 224

    def measure(self, image) -> dict[str, float]:
        return gate_values(image, self.work_size)

    def filter(self, images: Mapping[Any, Any] | Sequence[Any]):
        """(kept, report): ``kept`` has the type of ``images`` (a dict id → image keeps its
        ids; a sequence is indexed 0..n−1 in the report)."""
        items = images.items() if isinstance(images, Mapping) else enumerate(images)
        minima = {BH: self.blur_min, C: self.contrast_min, UN: self.entropy_min}
        report = GateReport(thresholds=minima)
        kept = {}
        for item_id, image in items:
            values = report.values[item_id] = self.measure(image)
            failed = [gate for gate, low in minima.items() if values[gate] < low]
            for gate in failed:
                report.dropped[gate][item_id] = values[gate]
            if not failed:
                kept[item_id] = image
                report.kept.append(item_id)
        return (kept if isinstance(images, Mapping) else list(kept.values())), report
