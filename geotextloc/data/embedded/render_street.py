"""The street view: an equirectangular panorama ray-cast from a location, and its single-view crop.

Column ``c`` of a ``W × H`` panorama looks along the bearing (degrees clockwise from north)

    az(c) = heading + 360 · ((c + ½) / W − ½)        (the centre column faces the heading,
                                                      columns right of it look to the right)

and row ``r`` at the elevation ``el(r) = 180 · (½ − (r + ½) / H)`` degrees. A camera at
``CAMERA_HEIGHT_M`` casts one ray per column against every building edge within
``MAX_RANGE_M`` (vectorised ray–segment intersection: with ray ``o + t·d`` and edge
``p + s·e``, ``t = (w × e) / (d × e)``, ``s = (w × d) / (d × e)``, ``w = p − o``, a hit when
``t > 0`` and ``0 ≤ s ≤ 1``). A facade hit at distance ``t`` on a building of height ``h``
spans the elevations ``atan(−cam / t) … atan((h − cam) / t)``; the nearest ``LAYERS`` hits
per column are kept so taller buildings show above nearer low ones. A facade pixel lies at
height ``z = cam + t · tan(el)``, which with the distance along the wall gives the window
grid. Below the horizon, a ground pixel sees the point at distance ``cam / tan(−el)``,
coloured from a top-down ground map (the satellite renderer's asphalt, pavements, markings,
grass). Shop signs with the POI names hang on the facade at the POI's bearing (stacked up a
floor where they would overlap); POIs without a building (stops, city bikes, kiosks) get a sign
on a pole. The camera stands in the right-hand lane (:func:`sampling.camera_xy`), and the
signs drawn are reported in ``info["signs"]`` so that the scene facts, and so the texts, put
each named POI where the image shows it.

Label map (``render_panorama(..., labels=True)``): the renderer also says, per pixel, what it
drew there (:data:`LABEL_CLASSES`: sky, building, road, sidewalk, vegetation, ground, water,
tree, sign, pole, vehicle), in ``info["labels"]`` (uint8, ``H × W``). It is ground truth from
the scene, not a segmenter's guess: ground pixels are classed by the OSM geometry their ray
meets (asphalt, pavements and paths, green cover, water, as the ground map paints them), the
capture car's roof at the nadir is ``vehicle``. It is computed alongside and never changes a
pixel of the image; :func:`crop_labels` cuts the single view's map as :func:`crop_single_view`
cuts the photo.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from PIL import Image, ImageDraw
from shapely.geometry import Point, box

from geotextloc.data.embedded import raster
from geotextloc.data.embedded.render_aerial import (COVER, FACADES, PATH_WIDTH, ROOF_SLOPE_DEG, STREETS,
                                                    URBAN_DENSITY, _draw_ground, _scene)
from geotextloc.data.embedded.render_map import WATER_KINDS
from geotextloc.data.embedded.sampling import camera_xy
from geotextloc.data.embedded.scene import Location, Region

CAMERA_HEIGHT_M = 2.5
MAX_RANGE_M = 160.0
LAYERS = 3
GROUND_TILE_M = 96.0  # the ground map is drawn in tiles of this size, cached per region
GROUND_M_PER_PX = 0.3
GROUND_REACH_M = 48.0  # ground farther than this fades into FAR_GROUND
BASE_GROUND = (122, 120, 106)
FAR_GROUND = np.array([118, 118, 110], np.float32)
NADIR = np.array([58, 60, 64], np.float32)
SIGN_RANGE_M = 45.0
SIGN_HEIGHT_M = 3.7  # centre of a shop sign above the street
MAX_SIGNS = 16  # nearest POIs considered for signs
SIGN_TIERS = 3  # signs stack up to this many floors where they would overlap
POLE_SIGN_M = 3.0  # centre of a stop / pole sign plate above the ground
STOP_COLOURS = ((24, 84, 170), (255, 255, 255))  # bus and tram stop plates
POLE_COLOURS = ((245, 245, 240), (30, 30, 30))
SUN = (200.0, 40.0)  # azimuth, elevation (degrees) of the street scenes' sun
SKY_ZENITH = np.array([78, 128, 196], np.float32)
SKY_HORIZON = np.array([206, 220, 232], np.float32)
SIGN_COLOURS = [((24, 70, 48), (255, 255, 255)), ((150, 24, 30), (255, 255, 255)),
                ((22, 36, 80), (255, 255, 255)), ((20, 20, 22), (255, 236, 160)),
                ((240, 238, 230), (20, 20, 20)), ((230, 190, 40), (20, 20, 20)),
                ((90, 40, 90), (255, 255, 255))]
#: Classes of the label map (``info["labels"]`` holds their indices).
LABEL_CLASSES = ("sky", "building", "road", "sidewalk", "vegetation", "ground", "water", "tree", "sign",
                 "pole", "vehicle")
LABEL = {name: i for i, name in enumerate(LABEL_CLASSES)}
GREEN_COVER = {"grass", "meadow", "village_green", "garden", "park", "scrub", "heath", "wetland", "forest",
               "wood", "cemetery", "allotments", "pitch"}


@dataclass
class _Street:
    """Per-region data for the street renderer (per edge and per building)."""

    normals: np.ndarray  # (E, 2) outward unit normals of the building edges
    lengths: np.ndarray  # (E,)
    height: np.ndarray  # (B + 1,) per building, then a "no building" row
    colour: np.ndarray  # (B + 1, 3)
    window_period: np.ndarray  # (B,) metres between window centres
    shopfront: np.ndarray  # (B,) bool: has a POI, so glazed ground floor
    glass: np.ndarray  # (B, 3) window glass tint
    roof_rise: np.ndarray  # (B,) ridge height above the eaves (0: flat roof)
    roof_depth: np.ndarray  # (B,) horizontal eaves-to-ridge distance
    roof_colour: np.ndarray  # (B, 3) as in the aerial views


def _street(index: raster.RegionIndex) -> _Street:
    cached = index.__dict__.get("_street")
    if cached is not None:
        return cached
    region = index.region
    e = index.edges
    d = np.stack([e[:, 2] - e[:, 0], e[:, 3] - e[:, 1]], axis=1)
    ln = np.hypot(d[:, 0], d[:, 1])
    d = d / np.maximum(ln, 1e-9)[:, None]
    normals = np.stack([d[:, 1], -d[:, 0]], axis=1)
    # orient every normal away from its polygon: probe a point just outside along it
    mid = (e[:, :2] + e[:, 2:]) / 2
    probe = mid + normals * 0.05
    inside = np.zeros(len(e), bool)
    for row, b in enumerate(region.buildings):
        a, z = index.edge_start[row], index.edge_stop[row]
        if z > a:
            inside[a:z] = shapely.contains_xy(b.polygon, probe[a:z, 0], probe[a:z, 1])
    normals[inside] *= -1
    # per-building arrays have one extra row, n, standing for "no building" (columns seeing sky)
    n = len(region.buildings)
    has_poi = np.zeros(n + 1, bool)
    for p in region.pois:
        row = index.building_row.get(p.building_id) if p.building_id else None
        if row is not None:
            has_poi[row] = True
    u = np.array([[raster.unit_hash(k, b.id) for k in ("facade", "windows", "glass")]
                  for b in region.buildings] + [[0.0, 0.0, 0.0]], np.float32)
    colour = np.array(FACADES, np.float32)[(u[:, 0] * len(FACADES)).astype(int)]
    glass = np.array([[60, 74, 88], [40, 48, 58], [86, 100, 112]], np.float32)[(u[:, 2] * 3).astype(int)]
    height = np.array([b.height_m for b in region.buildings] + [0.0], np.float32)
    # roofs as the aerial views draw them: hipped at ROOF_SLOPE_DEG up to depth d = 1.1 A / P
    rise, depth = np.zeros(n + 1, np.float32), np.ones(n + 1, np.float32)
    roof_colour = np.full((n + 1, 3), 90.0, np.float32)
    for roof in _scene(index).roofs:
        if roof is None:
            continue
        b = region.buildings[roof.row].polygon
        depth[roof.row] = min(max(b.area / max(b.length, 1e-6) * 1.1, 1.0), 14.0)
        rise[roof.row] = 0.0 if roof.flat else depth[roof.row] * math.tan(math.radians(ROOF_SLOPE_DEG))
        roof_colour[roof.row] = roof.colour
    out = _Street(normals, ln.astype(np.float32), height, colour, 2.6 + 1.2 * u[:, 1], has_poi, glass,
                  rise, depth, roof_colour)
    index.__dict__["_street"] = out
    return out


def _angles(width: int, height: int, heading: float) -> tuple[np.ndarray, np.ndarray]:
    az = heading + 360.0 * ((np.arange(width) + 0.5) / width - 0.5)
    el = 180.0 * (0.5 - (np.arange(height) + 0.5) / height)
    return np.radians(az), np.radians(el)


def _cast(index: raster.RegionIndex, st: _Street, x: float, y: float, az: np.ndarray):
    """Nearest ``LAYERS`` hits per column: distance, edge row, fraction along the edge."""
    rows = index.near(index.buildings, box(x - MAX_RANGE_M, y - MAX_RANGE_M, x + MAX_RANGE_M, y + MAX_RANGE_M))
    w = len(az)
    t_out = np.full((LAYERS, w), np.inf, np.float32)
    e_out = np.zeros((LAYERS, w), np.int64)
    s_out = np.zeros((LAYERS, w), np.float32)
    if len(rows) == 0:
        return t_out, e_out, s_out
    ids = np.concatenate([np.arange(index.edge_start[r], index.edge_stop[r]) for r in rows])
    seg = index.edges[ids]
    # back faces (walls facing away from the camera) are never the first hit of a building
    front = np.einsum("ij,ij->i", st.normals[ids], np.stack([x - seg[:, 0], y - seg[:, 1]], axis=1)) > 0
    ids, seg = ids[front], seg[front]
    if len(ids) == 0:
        return t_out, e_out, s_out
    px, py = (seg[:, 0] - x).astype(np.float32), (seg[:, 1] - y).astype(np.float32)
    ex, ey = (seg[:, 2] - seg[:, 0]).astype(np.float32), (seg[:, 3] - seg[:, 1]).astype(np.float32)
    dx, dy = np.sin(az).astype(np.float32)[:, None], np.cos(az).astype(np.float32)[:, None]
    denom = dx * ey - dy * ex  # d × e
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / denom
        t = (px * ey - py * ex) * inv  # (w × e) / (d × e)
        s = (px * dy - py * dx) * inv  # (w × d) / (d × e)
    t[~((s >= 0) & (s <= 1) & (t > 0.3) & (t < MAX_RANGE_M))] = np.inf
    k = min(LAYERS, t.shape[1])
    near = np.argpartition(t, k - 1, axis=1)[:, :k] if t.shape[1] > k else np.argsort(t, axis=1)
    tn = np.take_along_axis(t, near, axis=1)
    order = np.argsort(tn, axis=1)
    near = np.take_along_axis(near, order, axis=1)
    t_out[:k] = np.take_along_axis(tn, order, axis=1).T
    e_out[:k] = ids[near].T
    s_out[:k] = np.take_along_axis(s, near, axis=1).T
    return t_out, e_out, s_out


@lru_cache(maxsize=4)
def _sky_bank(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A sky (gradient + flat cumulus) twice the panorama's width, and sensor grain."""
    g = np.random.default_rng(7)
    el = np.radians(180.0 * (0.5 - (np.arange(height) + 0.5) / height))
    up = np.clip(el / (np.pi / 2), 0, 1) ** 0.6
    sky = SKY_HORIZON * (1 - up[:, None]) + SKY_ZENITH * up[:, None]  # (H, 3)

    def octave(nx, ny):
        cells = g.random((ny + 1, nx + 1), dtype=np.float32)
        return np.asarray(Image.fromarray(cells, "F").resize((2 * width, height), Image.BICUBIC))

    n = 0.55 * octave(16, 5) + 0.3 * octave(48, 14) + 0.15 * octave(120, 40)
    cover = np.clip((n - 0.52) * 4.0, 0, 1) * np.clip(el / 0.08, 0, 1)[:, None]
    shade = 1.0 - 0.18 * np.clip((0.62 - n) * 4, 0, 1)  # cloud bases a little grey
    bank = sky[:, None, :] * (1 - cover[..., None]) + (246.0 * shade)[..., None] * cover[..., None]
    grain = g.normal(0, 1, (2 * height, 2 * width, 3)).astype(np.float32)
    return bank.astype(np.float32), grain


def _ground_tile(index: raster.RegionIndex, tx: int, ty: int) -> np.ndarray:
    """The top-down ground (satellite palette, no cars) of one ``GROUND_TILE_M`` square, cached."""
    cache = index.__dict__.setdefault("_ground_tiles", OrderedDict())
    key = (tx, ty)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    n = int(round(GROUND_TILE_M / GROUND_M_PER_PX))
    view = raster.View((tx + 0.5) * GROUND_TILE_M, (ty + 0.5) * GROUND_TILE_M, GROUND_TILE_M, 2 * n)
    img = Image.new("RGB", (2 * n, 2 * n), BASE_GROUND)
    _draw_ground(img, index.region, index, _scene(index), view,
                 view.query_box(margin_m=10.0), cars=False)
    cache[key] = np.asarray(img.reduce(2))  # drawn at twice the size: antialiased edges
    if len(cache) > 64:
        cache.popitem(last=False)
    return cache[key]


def _ground(index: raster.RegionIndex, x: float, y: float, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Bilinear samples of the ground at world points (gx, gy) from the 2×2 tiles around (x, y)."""
    T = GROUND_TILE_M
    tx0, ty0 = math.floor(x / T - 0.5), math.floor(y / T - 0.5)
    last = index.__dict__.get("_ground_mosaic")
    if last is None or last[0] != (tx0, ty0):
        mosaic = np.concatenate([
            np.concatenate([_ground_tile(index, tx0, ty0 + 1), _ground_tile(index, tx0 + 1, ty0 + 1)], axis=1),
            np.concatenate([_ground_tile(index, tx0, ty0), _ground_tile(index, tx0 + 1, ty0)], axis=1)])
        last = index.__dict__["_ground_mosaic"] = ((tx0, ty0), mosaic.reshape(-1, 3), mosaic.shape[0])
    _, flat, n = last
    k = 1.0 / GROUND_M_PER_PX
    u = np.clip((gx - tx0 * T) * k - 0.5, 0, n - 1.001)
    v = np.clip(((ty0 + 2) * T - gy) * k - 0.5, 0, n - 1.001)
    u0, v0 = u.astype(np.int64), v.astype(np.int64)
    wu, wv = (u - u0).astype(np.float32)[..., None], (v - v0).astype(np.float32)[..., None]
    i = v0 * n + u0
    top = flat[i].astype(np.float32) * (1 - wu) + flat[i + 1].astype(np.float32) * wu
    bottom = flat[i + n].astype(np.float32) * (1 - wu) + flat[i + n + 1].astype(np.float32) * wu
    return top * (1 - wv) + bottom * wv


def camera_position(index: raster.RegionIndex, loc: Location) -> tuple[float, float]:
    """Where the capture car is (:func:`sampling.camera_xy`, shared with the scene facts)."""
    road = index.__dict__.get("_roads_by_id")
    if road is None:
        road = index.__dict__["_roads_by_id"] = {r.id: r for r in index.region.roads}
    return camera_xy(loc, road.get(loc.road_id))


def render_panorama(region: Region, loc: Location, width: int = 512, height: int = 256,
                    seed: int = 0, labels: bool = False) -> Image.Image:
    """An equirectangular street-level panorama at ``loc``; its centre column faces ``loc.heading``.

    The image's ``info["heading_deg"]`` records that bearing (used by :func:`crop_single_view`)
    and ``info["signs"]`` the signs drawn (POI id -> relative bearing and angular half width in
    degrees; the scene facts place the POIs there). With ``labels=True``, ``info["labels"]``
    is the label map of the module docstring (the image is the same either way).
    """
    index = raster.prepare(region)
    st = _street(index)
    rng = raster.rng_for("panorama", loc.region, loc.id, seed)
    az, el = _angles(width, height, loc.heading)
    x, y = camera_position(index, loc)
    t, e, s = _cast(index, st, x, y, az)
    finite = np.isfinite(t)
    none = len(st.height) - 1  # the "no building" row
    b = np.where(finite, index.edge_building[e], none) if len(index.edge_building) else np.full(e.shape, none)
    cam = CAMERA_HEIGHT_M
    tt = np.where(finite, t, 1.0)
    wall_top = np.where(finite, np.arctan2(st.height[b] - cam, tt), -np.pi)  # (L, W)
    # a pitched roof shows above the eaves when its ridge (d farther, rise higher) subtends more
    ridge_top = np.where(finite, np.arctan2(st.height[b] + st.roof_rise[b] - cam, tt + st.roof_depth[b]), -np.pi)
    top = np.maximum(wall_top, ridge_top)
    bottom = np.where(finite[0], np.arctan2(-cam, np.where(finite[0], t[0], 1.0)), 0.0)
    elg = el.astype(np.float32)[:, None]
    # visible layer: the nearest whose top is above the pixel (and above the nearest wall's foot)
    above = elg[None] < top[:, None, :].astype(np.float32)  # (L, H, W)
    layer = np.argmax(above, axis=0)
    facade = above.any(axis=0) & (elg > bottom[None, :])

    # sky: a slice of the cloud bank
    bank, grain = _sky_bank(height, width)
    ox = int(rng.integers(0, width))
    out = bank[:, ox:ox + width].copy()

    # ground: each pixel below the horizon sees the ground at distance cam / tan(-el)
    rows_g = np.flatnonzero(el < -1e-3)
    dist = (cam / np.tan(-el[rows_g])).astype(np.float32)  # (Hg,)
    near = dist < GROUND_REACH_M
    rn = rows_g[near]
    gx = x + dist[near, None] * np.sin(az)[None, :]
    gy = y + dist[near, None] * np.cos(az)[None, :]
    ground = _ground(index, x, y, gx, gy)
    far = np.clip((dist[near] - 0.6 * GROUND_REACH_M) / (0.4 * GROUND_REACH_M), 0, 1)[:, None, None]
    haze = (1 - np.exp(-dist[near] / 220.0))[:, None, None]
    out[rn] = (ground * (1 - far) + FAR_GROUND * far) * (1 - haze) + SKY_HORIZON * haze
    out[rows_g[~near]] = FAR_GROUND * 0.7 + SKY_HORIZON * 0.3
    lab = None
    if labels:
        lab = np.full((height, width), LABEL["sky"], np.uint8)
        lab[rows_g] = LABEL["ground"]
        lab[rn] = _ground_labels(index, x, y, gx, gy)

    # facades
    r_idx, c_idx = np.nonzero(facade)
    lay = layer[r_idx, c_idx]
    tf = t[lay, c_idx]
    ef = e[lay, c_idx]
    bf = b[lay, c_idx]
    z = cam + tf * np.tan(el[r_idx]).astype(np.float32)
    along = (index.edge_along[ef] + s[lay, c_idx] * st.lengths[ef]).astype(np.float32)
    hgt = st.height[bf]
    sun_a, sun_e = math.radians(SUN[0]), math.radians(SUN[1])
    sun_h = np.array([math.sin(sun_a), math.cos(sun_a)]) * math.cos(sun_e)
    light = (0.62 + 0.5 * np.clip(st.normals[ef] @ sun_h, 0, None)).astype(np.float32)
    col = st.colour[bf] * light[:, None]
    # window grid: upper floors every 3.2 m, columns every window_period metres
    period = st.window_period[bf]
    cell_x, cell_z = along / period, (z - 0.8) / 3.2
    fx, fz = cell_x - np.floor(cell_x), cell_z - np.floor(cell_z)
    win = (fx > 0.28) & (fx < 0.72) & (fz > 0.2) & (fz < 0.62) & (z > 0.8) & (z < hgt - 1.0) \
        & ~(st.shopfront[bf] & (z < 3.4))
    fade = np.clip((110.0 - tf) / 60.0, 0, 1)[win, None]
    flicker = np.mod(np.floor(cell_x[win]) * 0.37 + np.floor(cell_z[win]) * 0.61, 1.0)  # lit / dark panes
    wcol = st.glass[bf[win]] * (0.8 + 0.5 * flicker)[:, None]
    col[win] = col[win] * (1 - fade) + wcol * fade
    # ground floor: shop windows where a POI is; a plinth and a string course
    shop = st.shopfront[bf] & (z > 0.5) & (z < 3.0) & (np.mod(along / 4.0, 1.0) > 0.12)
    col[shop] = st.glass[bf[shop]] * 0.75 + 20.0
    col[(z < 0.6) | ((z > 3.4) & (z < 3.7))] *= 0.72
    col[z > hgt - 0.45] *= 0.6  # cornice
    roof = el[r_idx] >= wall_top[lay, c_idx]
    col[roof] = st.roof_colour[bf[roof]] * 0.72
    fog = (1 - np.exp(-tf / 260.0))[:, None]
    out[r_idx, c_idx] = col * (1 - fog) + SKY_HORIZON * fog
    # the nadir: the capture car's roof, blurred as in street-view imagery
    nadir = np.clip((-np.degrees(el) - 68.0) / 14.0, 0, 1).astype(np.float32)[:, None, None]
    out = out * (1 - 0.85 * nadir) + NADIR * 0.85 * nadir
    if lab is not None:
        lab[r_idx, c_idx] = LABEL["building"]
        lab[nadir[:, 0, 0] >= 0.5] = LABEL["vehicle"]

    depth = np.full((height, width), np.inf, np.float32)
    depth[rows_g] = dist[:, None]
    depth[r_idx, c_idx] = tf
    _trees(out, depth, index, x, y, loc.heading, width, height, lab)

    gy0, gx0 = rng.integers(0, height), rng.integers(0, width)
    out += 3.0 * grain[gy0:gy0 + height, gx0:gx0 + width]
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    img.info["signs"] = _signs(img, index, x, y, loc.heading, width, height, b[0], t[0], depth, lab)
    img.info["heading_deg"] = float(loc.heading)
    if lab is not None:
        img.info["labels"] = lab
    return img


def _ground_labels(index: raster.RegionIndex, x: float, y: float, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Label-map classes of the ground points (gx, gy), painted in the order the ground map
    (:func:`render_aerial._draw_ground`) paints its colours: cover, water, paths, pavements, asphalt."""
    region, scene = index.region, _scene(index)
    lab = np.full(gx.size, LABEL["ground"], np.uint8)
    px, py = gx.ravel(), gy.ravel()
    q = box(x - GROUND_REACH_M - 20.0, y - GROUND_REACH_M - 20.0, x + GROUND_REACH_M + 20.0, y + GROUND_REACH_M + 20.0)

    def paint(geom, cls: str) -> None:
        geom = geom.intersection(q)
        if not geom.is_empty:
            shapely.prepare(geom)
            lab[shapely.contains_xy(geom, px, py)] = LABEL[cls]

    rows = sorted(index.near(index.areas, q), key=lambda i: -region.areas[i].polygon.area)
    areas = [region.areas[i] for i in rows]
    for a in areas:
        if a.kind not in WATER_KINDS and a.kind in COVER:
            paint(a.polygon, "vegetation" if a.kind in GREEN_COVER else
                  "sidewalk" if a.kind == "pedestrian" else "ground")
    for a in areas:
        if a.kind in WATER_KINDS:
            paint(a.polygon, "water")
    roads = [region.roads[i] for i in index.near(index.roads, q)]
    streets = [r for r in roads if r.kind.removesuffix("_link") in STREETS]
    paths = [r for r in roads if r.kind.removesuffix("_link") not in STREETS]
    if paths:
        paint(shapely.union_all([r.line.buffer(PATH_WIDTH.get(r.kind, 1.5) / 2) for r in paths]), "sidewalk")
    walks = [r.line.buffer((r.width_m + (5.0 if scene.density.get(r.id, 0.0) > URBAN_DENSITY else 2.4)) / 2)
             for r in streets if r.kind not in ("service", "pedestrian", "living_street")]
    if walks:
        paint(shapely.union_all(walks), "sidewalk")
    if streets:
        paint(shapely.union_all([r.line.buffer(r.width_m / 2) for r in streets]), "road")
    return lab.reshape(gx.shape)


def _column(cx: float, cy: float, heading_deg: float, width: int, px: np.ndarray | float, py):
    """Panorama column (float, pixel-centre units) of the bearing from the camera to (px, py)."""
    rel = np.mod(np.arctan2(px - cx, py - cy) - math.radians(heading_deg) + math.pi, 2 * math.pi) - math.pi
    return width / 2 + rel * width / (2 * math.pi) - 0.5


def _trees(out, depth, index, cx, cy, heading_deg, width, height, labels=None) -> None:
    """Tree billboards (trunk and crown) drawn far to near, hidden behind nearer things (and
    marked ``tree`` in ``labels`` when given)."""
    tr = _scene(index).trees
    if not len(tr):
        return
    d = np.hypot(tr[:, 0] - cx, tr[:, 1] - cy)
    pick = np.flatnonzero((d > 3.0) & (d < 55.0))
    pick = pick[np.argsort(-d[pick], kind="stable")][-40:]
    cam = CAMERA_HEIGHT_M
    kx, ky = width / (2 * math.pi), height / math.pi
    cols_c = _column(cx, cy, heading_deg, width, tr[pick, 0], tr[pick, 1])
    for i, col_c in zip(pick.tolist(), np.atleast_1d(cols_c).tolist()):
        _, _, r, h = tr[i]
        dist = float(d[i])
        rx = math.atan2(r, dist) * kx
        ry = math.atan2(r, dist) * ky * 1.1
        cy_px = height / 2 - math.atan2(h - r - cam, dist) * ky
        foot = height / 2 - math.atan2(-cam, dist) * ky
        c0, c1 = int(math.floor(col_c - rx)), int(math.ceil(col_c + rx)) + 1
        r0, r1 = max(int(cy_px - ry), 0), min(int(foot) + 1, height)
        if r1 <= r0:
            continue
        cols = np.arange(c0, c1) % width
        uu = (np.arange(c0, c1) - col_c)[None, :] / max(rx, 0.5)
        vv = (np.arange(r0, r1)[:, None] - cy_px) / max(ry, 0.5)
        wobble = 0.12 * np.sin(7 * np.arctan2(vv, uu) + i)
        crown = (uu ** 2 + vv ** 2) < (1 + wobble) ** 2
        trunk = (np.abs(uu) < 0.09) & (np.arange(r0, r1)[:, None] > cy_px)
        vis = (crown | trunk) & (depth[r0:r1][:, cols] > dist)
        if not vis.any():
            continue
        shade = 0.75 + 0.35 * np.clip(-uu * 0.6 - vv * 0.6, -1, 1)
        green = np.array([58, 88, 40], np.float32) * (0.8 + 0.4 * raster.unit_hash("street-tree", i))
        colour = np.where((trunk & ~crown)[..., None], np.array([70, 56, 44], np.float32),
                          green * shade[..., None])
        fog = 1 - math.exp(-dist / 260.0)
        colour = colour * (1 - fog) + SKY_HORIZON * fog
        block = out[r0:r1][:, cols]
        block[vis] = colour[vis]
        out[r0:r1, cols] = block
        dblock = depth[r0:r1][:, cols]
        dblock[vis] = dist
        depth[r0:r1, cols] = dblock
        if labels is not None:
            lblock = labels[r0:r1][:, cols]
            lblock[vis] = LABEL["tree"]
            labels[r0:r1, cols] = lblock


def _signs(img, index, cx, cy, heading_deg, width, height, b0, t0, depth,
           labels=None) -> dict[str, tuple[float, float]]:
    """Signs carrying POI names, nearest POI first, within ``SIGN_RANGE_M`` of the camera: a
    shop sign on the facade of the POI's building at the POI's bearing, or a sign on a pole at
    the POI itself for a POI without a building (bus and tram stops, city bikes, kiosks,
    artworks), drawn when nothing nearer hides it. A sign that would overlap one already drawn
    moves up a floor (at most ``SIGN_TIERS`` tiers), else it is left out. Returns POI id ->
    (relative bearing, angular half width) in degrees of each sign drawn: the scene facts
    take the POIs' directions from it. ``labels``, when given, gets the plates (``sign``) and
    poles (``pole``)."""
    region = index.region
    rows = index.near(index.pois, box(cx - SIGN_RANGE_M, cy - SIGN_RANGE_M, cx + SIGN_RANGE_M, cy + SIGN_RANGE_M))
    drawn: dict[str, tuple[float, float]] = {}
    if len(rows) == 0:
        return drawn
    draw = ImageDraw.Draw(img)
    here = Point(cx, cy)
    taken: list[tuple[int, int, int, int]] = []  # (x0, x1, y0, y1) of the signs drawn, seam copies too
    near = [i for i in rows.tolist() if region.pois[i].point.distance(here) <= SIGN_RANGE_M]
    order = sorted(near, key=lambda i: (region.pois[i].point.distance(here), region.pois[i].id))
    ky = height / math.pi
    for i in order[:MAX_SIGNS]:
        p = region.pois[i]
        pole = p.building_id is None or p.building_id not in index.building_row
        hit = pole_column(p, cx, cy, heading_deg, width, height, depth) if pole else \
            sign_column(p, index, cx, cy, heading_deg, width, b0, t0)
        if hit is None:
            continue
        c, dist = hit
        fpx = max(6, 2 * int(np.clip(0.75 / dist * ky, 0.02 * height, 0.0375 * height)))
        f = raster.font(fpx, bold=True)
        name = p.name if len(p.name) <= 22 else p.name[:21] + "…"
        l, tt, r, bb = draw.textbbox((0, 0), name, font=f)
        pad = max(2, fpx // 4)
        w, h = r - l + 2 * pad, bb - tt + 2 * pad
        lift = POLE_SIGN_M if pole else SIGN_HEIGHT_M
        v = height / 2 - math.atan2(lift - CAMERA_HEIGHT_M, dist) * ky
        left = int(round(c - w / 2)) % width  # a sign across the seam is drawn on both ends
        roof = v - 2.5 * h if pole else \
            height / 2 - math.atan2(region.buildings[index.building_row[p.building_id]].height_m
                                    - CAMERA_HEIGHT_M, dist) * ky  # a sign stays on its wall
        for tier in range(SIGN_TIERS):  # a sign over one already drawn moves up a floor
            top = int(v - h / 2) - tier * (h + 3)
            boxes = [(x - 2, x + w + 2, top - 1, top + h + 1) for x in (left, left - width)]
            if top >= 0 and (tier == 0 or top >= roof) and not any(a0 < z1 and a1 > z0 and b0_ < y1 and b1_ > y0
                                    for a0, a1, b0_, b1_ in boxes for z0, z1, y0, y1 in taken):
                break
        else:
            continue
        if pole:
            bg, fg = STOP_COLOURS if p.category in ("bus_stop", "tram_stop") else POLE_COLOURS
            foot = int(min(height / 2 - math.atan2(-CAMERA_HEIGHT_M, dist) * ky, height - 1))
            pw = max(1, int(round(0.08 / dist * width / (2 * math.pi))))
            for x in (int(round(c)) % width, int(round(c)) % width - width):
                if foot > top + h:  # far away the plate covers the whole pole
                    draw.rectangle([x - pw // 2, top + h, x - pw // 2 + pw - 1, foot], fill=(70, 72, 76))
                    _mark(labels, x - pw // 2, x - pw // 2 + pw - 1, top + h, foot, "pole")
        else:
            bg, fg = SIGN_COLOURS[int(raster.unit_hash("sign", p.id) * len(SIGN_COLOURS))]
        for x in (left, left - width):
            draw.rectangle([x, top, x + w - 1, top + h - 1], fill=bg, outline=(30, 30, 30))
            draw.text((x + pad - l, top + pad - tt), name, font=f, fill=fg)
            _mark(labels, x, x + w - 1, top, top + h - 1, "sign")
        taken += boxes
        centre = (left + w / 2) * 360.0 / width - 180.0  # relative bearing of the sign's centre
        drawn[p.id] = (round((centre + 180.0) % 360.0 - 180.0, 2), round(w / 2 * 360.0 / width, 2))
    return drawn


def _mark(labels, x0: int, x1: int, y0: int, y1: int, cls: str) -> None:
    """Class ``cls`` on the rectangle [x0, x1] × [y0, y1] (inclusive, as PIL draws it) of ``labels``."""
    if labels is not None and x1 >= 0 and y1 >= 0:  # off the left edge: a seam copy
        h, w = labels.shape
        labels[max(y0, 0):min(y1 + 1, h), max(x0, 0):min(x1 + 1, w)] = LABEL[cls]


def pole_column(p, cx, cy, heading_deg, width, height, depth) -> tuple[float, float] | None:
    """(column, distance) of a pole sign at the POI itself, or None when it stands closer than
    3 m (overhead) or something nearer (a building, a tree) hides the sign plate."""
    dist = float(math.hypot(p.point.x - cx, p.point.y - cy))
    if dist < 3.0:
        return None
    c = float(_column(cx, cy, heading_deg, width, p.point.x, p.point.y))
    row = int(np.clip(height / 2 - math.atan2(POLE_SIGN_M - CAMERA_HEIGHT_M, dist) * height / math.pi, 0, height - 1))
    if depth[row, int(round(c)) % width] < dist - 0.5:
        return None
    return c, dist


def sign_column(p, index, cx, cy, heading_deg, width, b0, t0) -> tuple[float, float] | None:
    """(column, distance) of the POI's shop sign: its building's wall seen at the POI's
    bearing, else the visible wall of that building nearest that bearing (within 45°), else None."""
    row = index.building_row.get(p.building_id)
    c = float(_column(cx, cy, heading_deg, width, p.point.x, p.point.y))
    ci = int(round(c)) % width
    if b0[ci] == row and np.isfinite(t0[ci]):
        return c, float(t0[ci])
    vis = np.flatnonzero((b0 == row) & np.isfinite(t0))
    if len(vis) == 0:
        return None
    gap = np.abs((vis - c + width / 2) % width - width / 2)
    if gap.min() > width / 8:
        return None
    j = int(vis[np.argmin(gap)])
    return float(j), float(t0[j])


def crop_single_view(panorama: Image.Image, heading_deg: float | None = None, fov_deg: float = 90.0,
                     out_size: tuple[int, int] | None = None) -> Image.Image:
    """The single-view photo: ``fov_deg`` of the panorama around bearing ``heading_deg``.

    ``heading_deg`` is a compass bearing (degrees clockwise from north); the panorama's own
    centre bearing is read from ``panorama.info["heading_deg"]`` (set by :func:`render_panorama`).
    Without either, the crop is centred on the panorama's centre column. The crop keeps the
    panorama's pixel aspect (``fov/360`` of its width, ``fov/180`` of its height, centred on the
    horizon: square for a 2:1 panorama) and is resized to ``out_size`` (width, height) when given.
    """
    w, h = panorama.size
    rows, cols = _crop_window(w, h, panorama.info.get("heading_deg"), heading_deg, fov_deg)
    arr = np.asarray(panorama.convert("RGB"))[rows][:, cols]
    crop = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if out_size is not None:
        crop = crop.resize(tuple(out_size), Image.LANCZOS)
    return crop


def _crop_window(w: int, h: int, centre: float | None, heading_deg: float | None,
                 fov_deg: float) -> tuple[slice, np.ndarray]:
    """Rows and columns of a ``w × h`` panorama (centre bearing ``centre``) that the single
    view towards ``heading_deg`` keeps (see :func:`crop_single_view`)."""
    offset = 0.0 if heading_deg is None or centre is None else \
        ((heading_deg - centre + 180.0) % 360.0) - 180.0
    cw = max(1, round(w * fov_deg / 360.0))
    ch = max(1, min(h, round(h * fov_deg / 180.0)))  # as many degrees tall as wide
    x0 = round(w / 2 + offset / 360.0 * w - cw / 2)
    y0 = (h - ch) // 2
    return slice(y0, y0 + ch), np.arange(x0, x0 + cw) % w


def crop_labels(labels: np.ndarray, centre_deg: float | None = None, heading_deg: float | None = None,
                fov_deg: float = 90.0, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """The label map of the single view that :func:`crop_single_view` cuts from the panorama
    whose label map is ``labels`` and whose centre faces ``centre_deg`` (nearest-neighbour
    resize to ``out_size`` = (width, height) when given)."""
    h, w = labels.shape
    rows, cols = _crop_window(w, h, centre_deg, heading_deg, fov_deg)
    crop = np.ascontiguousarray(labels[rows][:, cols])
    if out_size is not None:
        crop = np.asarray(Image.fromarray(crop).resize(tuple(out_size), Image.NEAREST))
    return crop
