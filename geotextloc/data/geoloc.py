"""GeoLoc construction tools (GeoBridge, CVPR 2026: the GeoLoc dataset), for real data.

The paper's pipeline, one function per step (:mod:`geotextloc.data.geoloc_build` runs them
end to end, from an orthophoto file to a manifest):

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

Rasters are read with ``rasterio`` (GDAL, bundled in its wheels: GeoTIFF in any compression
OpenAerialMap uses, COG overviews, GDAL's nodata / alpha / internal masks, any CRS PROJ
knows). Supported: north-up or rotated affine rasters, geographic (lon, lat) and projected
CRSs in any unit; ground metres per pixel are measured on the WGS 84 ellipsoid between
neighbouring pixels' lon/lat, so Web-Mercator rasters (EPSG:3857, stretched by 1/cos φ) get
footprints of the right size. Coordinates are converted to and from WGS 84 with
``rasterio.warp.transform`` (PROJ inside GDAL; no pyproj needed). Not supported: rasters
georeferenced by ground control points or RPCs (warp them to a grid first with ``gdalwarp``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image

from geotextloc.errors import ConfigError, DataError

PAPER_SCALES_M = (80, 100, 120, 140, 160, 180)  # "several scales (80 m to 180 m)"
WGS84 = "EPSG:4326"
WGS84_A, WGS84_E2 = 6_378_137.0, 6.69437999014e-3  # semi-major axis (m), first eccentricity squared


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


def ground_distance_m(lon1, lat1, lon2, lat2):
    """Distance in metres between nearby WGS 84 points (a few pixels apart), on the ellipsoid:
    √((M·Δφ)² + (N·cos φ·Δλ)²) with the meridional and prime-vertical radii of curvature
    M = a(1−e²)/(1−e² sin²φ)^{3/2}, N = a/√(1−e² sin²φ) at the mean latitude φ."""
    phi = np.radians((np.asarray(lat1) + np.asarray(lat2)) / 2)
    w = 1.0 - WGS84_E2 * np.sin(phi) ** 2
    m, n = WGS84_A * (1.0 - WGS84_E2) / w**1.5, WGS84_A / np.sqrt(w)
    return np.hypot(m * np.radians(np.subtract(lat2, lat1)), n * np.cos(phi) * np.radians(np.subtract(lon2, lon1)))


def reproject_points(src: str, dst: str, xs, ys):
    """Points (xs, ys) from CRS ``src`` to ``dst`` (x = lon, y = lat for geographic CRSs);
    scalars in, scalars out; arrays in, arrays out."""
    if src == dst:
        return xs, ys
    from rasterio.warp import transform

    scalar = np.ndim(xs) == 0
    out_x, out_y = transform(src, dst, np.atleast_1d(xs).astype(float).ravel().tolist(),
                             np.atleast_1d(ys).astype(float).ravel().tolist())
    if scalar:
        return float(out_x[0]), float(out_y[0])
    return np.asarray(out_x).reshape(np.shape(xs)), np.asarray(out_y).reshape(np.shape(ys))


@dataclass
class Orthophoto:
    """A geo-referenced image: ``image`` (H, W, C), its ``transform`` and CRS.

    ``geographic``: coordinates are (lon, lat) degrees; otherwise the projected CRS's units.
    ``nodata``: the value of empty pixels (in every band); ``alpha``: the last band is alpha;
    ``mask`` (H, W) bool, when given, says which pixels hold data (GDAL's mask: nodata, alpha
    or an internal mask) and replaces the two.
    """

    image: np.ndarray
    transform: Affine
    crs: str
    geographic: bool
    nodata: float | None = None
    alpha: bool = False
    name: str = "orthophoto"
    mask: np.ndarray | None = None
    tags: dict[str, str] = field(default_factory=dict)  # the file's metadata (GDAL tags)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def valid(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """True where a pixel (of the window ``rows``, ``cols``) holds data."""
        if self.mask is not None:
            return self.mask[rows, cols]
        px = self.image[rows, cols]
        bands = px[..., :-1] if self.alpha else px
        ok = px[..., -1] > 0 if self.alpha else np.ones(px.shape[:2], dtype=bool)
        if self.nodata is not None:
            empty = np.isnan(bands) if math.isnan(self.nodata) else bands == self.nodata
            ok &= ~np.all(empty, axis=-1)
        return ok

    def metres_per_pixel(self) -> tuple[float, float]:
        """Ground size of a pixel (along columns, along rows) at the raster's centre: the
        distance on the WGS 84 ellipsoid between neighbouring pixels' lon/lat
        (:func:`ground_distance_m`), so the CRS's scale is included (×cos φ in Web Mercator,
        ≈ 1/0.9996 in UTM)."""
        col, row = self.shape[1] / 2, self.shape[0] / 2
        xs, ys = self.transform.xy(np.array([col, col + 1, col]), np.array([row, row, row + 1]))
        lon, lat = self.to_lonlat(xs, ys)
        return (float(ground_distance_m(lon[0], lat[0], lon[1], lat[1])),
                float(ground_distance_m(lon[0], lat[0], lon[2], lat[2])))

    def to_crs(self, lon, lat):
        """(x, y) in the orthophoto's CRS of WGS 84 (lon, lat)."""
        return (lon, lat) if self.geographic else reproject_points(WGS84, self.crs, lon, lat)

    def to_lonlat(self, x, y):
        return (x, y) if self.geographic else reproject_points(self.crs, WGS84, x, y)

    def rgb(self, rows: slice, cols: slice) -> Image.Image:
        """The RGB of a pixel window as a PIL image (non-uint8 data: 2–98 % of the window to 0–255)."""
        px = self.image[rows, cols, : 3 if self.image.shape[2] >= 3 else 1]
        if px.dtype != np.uint8:
            lo, hi = np.nanpercentile(px, [2, 98]) if px.size else (0, 1)
            px = np.clip((px - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
        return Image.fromarray(px[..., 0] if px.shape[2] == 1 else px).convert("RGB")


def _rasterio():
    try:
        import rasterio
    except ImportError:
        raise ConfigError("reading orthophotos needs rasterio: pip install 'geotextloc[geoloc]'") from None
    return rasterio


def _check_crs(path: Path, crs, given: str | None):
    """The CRS to use (a rasterio CRS), or a one-line DataError naming ``path`` and the fix."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    if given is not None:
        try:
            crs = CRS.from_user_input(given)
        except CRSError as err:
            raise ConfigError(f"unknown CRS {given!r} ({err}); use 'EPSG:<code>'") from None
    if crs is None:
        raise DataError(f"{path}: not georeferenced: it has a geotransform but no CRS; "
                        "pass crs='EPSG:<code>' (--crs) or assign one with gdal_edit.py -a_srs EPSG:<code>")
    if not (crs.is_geographic or crs.is_projected):
        raise DataError(f"{path}: the GeoTIFF names no EPSG code (its CRS is a local, user-defined one); "
                        "pass crs='EPSG:<code>' (--crs) with the CRS it was made in")
    return crs


def _open_checked(path: str | Path, crs: str | None = None):
    """(open rasterio dataset, its CRS) after the header checks; one-line DataError naming
    ``path`` and the fix for a missing, unreadable or not georeferenced file."""
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: orthophoto not found; pass the path of a GeoTIFF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioError as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a readable raster ({reason}); pass a GeoTIFF") from None
    try:
        if ds.gcps[0] or ds.rpcs:
            raise DataError(f"{path}: georeferenced by ground control points / RPCs, not a grid; "
                            f"warp it first: gdalwarp -r bilinear {path.name} {path.stem}-warped.tif")
        if ds.transform.is_identity:
            raise DataError(f"{path}: not a usable GeoTIFF: no geotransform (not georeferenced); "
                            "give an orthophoto exported with its georeferencing (a GeoTIFF with tie point + "
                            "pixel scale or a transformation matrix)")
        return ds, _check_crs(path, ds.crs, crs)
    except BaseException:
        ds.close()
        raise


def orthophoto_tags(path: str | Path, crs: str | None = None) -> dict[str, str]:
    """The metadata tags of an orthophoto, after the header checks of :func:`read_orthophoto`
    (no pixel is read)."""
    ds, _ = _open_checked(path, crs)
    with ds:
        return {str(k): str(v) for k, v in ds.tags().items()}


def read_orthophoto(
    path: str | Path, crs: str | None = None, nodata: float | None = None, resolution_m: float | None = None,
) -> Orthophoto:
    """Read a geo-referenced orthophoto (GeoTIFF or any raster GDAL reads), first band set.

    ``crs`` overrides the file's CRS (e.g. "EPSG:3067" for a raster with a user-defined CRS);
    ``nodata`` overrides its nodata value (then the mask is computed from it); otherwise the
    coverage is GDAL's mask (nodata, alpha band or internal mask). ``resolution_m``: read at
    about this many ground metres per pixel (block-averaged, from the file's overviews where it
    has them) instead of full resolution — UAV mosaics come at 2–10 cm, the views at 0.3–0.8 m.
    Errors are one line naming the file and the fix.
    """
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.errors import RasterioError

    path = Path(path)
    ds, crs_obj = _open_checked(path, crs)
    with ds:
        scale = 1.0
        if resolution_m:
            probe = Orthophoto(np.zeros((ds.height, ds.width, 1), np.uint8), Affine(*tuple(ds.transform)[:6]),
                               _crs_name(crs_obj), bool(crs_obj.is_geographic))
            scale = max(1.0, resolution_m / min(probe.metres_per_pixel()))
        height, width = max(1, round(ds.height / scale)), max(1, round(ds.width / scale))
        try:
            image = ds.read(out_shape=(ds.count, height, width), resampling=Resampling.average)
            mask = None if nodata is not None else ds.dataset_mask(out_shape=(height, width)) > 0
        except RasterioError as err:
            raise DataError(f"{path}: cannot decode the raster ({str(err).splitlines()[0][:160]})") from None
        t = ds.transform @ ds.transform.scale(ds.width / width, ds.height / height)
        alpha = ds.count in (2, 4) and ds.colorinterp[-1] == ColorInterp.alpha
        tags = {str(k): str(v) for k, v in ds.tags().items()}
        file_nodata = ds.nodata
    return Orthophoto(np.moveaxis(image, 0, -1), Affine(t.a, t.b, t.c, t.d, t.e, t.f), _crs_name(crs_obj),
                      bool(crs_obj.is_geographic), file_nodata if nodata is None else nodata, alpha, path.stem,
                      mask, tags)


def _crs_name(crs) -> str:
    """``EPSG:<code>`` when the CRS has one, else its WKT."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


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
