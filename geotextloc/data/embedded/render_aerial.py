"""Aerial views: the satellite tile (true orthophoto) and the drone (UAV) image.

Both are painted from the same geometry in the same layers (ground cover → pavements and
asphalt with markings → rails → cast shadows → roofs → tree canopies → sensor), with an
:class:`AerialStyle` that sets the sun, camera and colour grading. One sun per style gives
consistent shadows: a building of height ``h`` casts its footprint shifted by

    L = h / tan(sun elevation)   metres, along the bearing (sun azimuth + 180°).

Pitched roofs are hipped: each outline edge carries a facet sloping inwards to depth
``d = A / P`` (area over perimeter, half the wing width), lit by Lambert's law
``I ∝ max(0, n · s)`` with the facet normal ``n`` and the sun vector ``s``.
The drone camera is lower, so buildings lean away from the image centre (relief
displacement ``Δ = r · h / H`` for a point at ground distance ``r`` seen from height ``H``),
showing the facades that face the camera.

Everything random comes from generators seeded by building / tree / area ids (the same in
every view) or by the location id and ``seed`` (sensor noise), so images are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import shapely
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from geotextloc.data.embedded import raster
from geotextloc.data.embedded.render_map import WATER_KINDS
from geotextloc.data.embedded.scene import Location, Region


@dataclass(frozen=True)
class AerialStyle:
    name: str
    sun_azimuth: float  # bearing of the sun, degrees clockwise from north
    sun_elevation: float  # degrees above the horizon
    camera_height_m: float | None  # None: true orthophoto (no lean)
    shadow_strength: float  # 0..1 darkening in full shadow
    shadow_tint: tuple[int, int, int]  # multiplier colour for shadowed ground
    gain: tuple[float, float, float]  # colour grading per channel
    gamma: float
    saturation: float
    haze: float  # added bluish-grey veil, 0..1
    noise: float  # per-pixel sensor noise, std in grey levels
    sharpen: bool
    supersample: int  # draw at this multiple of the output size, then box-downsample


SATELLITE = AerialStyle("satellite", sun_azimuth=200.0, sun_elevation=52.0, camera_height_m=None,
                        shadow_strength=0.55, shadow_tint=(92, 100, 128), gain=(0.98, 1.0, 1.03),
                        gamma=1.05, saturation=0.85, haze=0.04, noise=5.0, sharpen=False, supersample=2)
DRONE = AerialStyle("drone", sun_azimuth=125.0, sun_elevation=34.0, camera_height_m=260.0,
                    shadow_strength=0.55, shadow_tint=(80, 84, 112), gain=(1.06, 1.0, 0.9),
                    gamma=0.95, saturation=1.12, haze=0.0, noise=2.0, sharpen=True, supersample=1)

# ground cover colours (RGB), roughly as seen from above in a Nordic summer
BASE = (121, 122, 104)
COVER = {
    "grass": (96, 128, 62), "meadow": (112, 134, 70), "village_green": (96, 128, 62),
    "garden": (92, 124, 60), "park": (92, 126, 60), "playground": (170, 150, 112),
    "pitch": (84, 130, 76), "scrub": (78, 98, 54), "heath": (112, 116, 70), "wetland": (86, 98, 66),
    "forest": (44, 66, 36), "wood": (44, 66, 36), "cemetery": (84, 108, 62),
    "farmland": (150, 140, 96), "allotments": (110, 120, 70),
    "residential": (108, 118, 84), "parking": (104, 104, 104), "pedestrian": (166, 160, 150), "railway": (112, 104, 94),
    "construction": (150, 136, 112), "brownfield": (142, 130, 108), "rock": (128, 124, 114),
    "bare_rock": (128, 124, 114), "sand": (196, 182, 150), "civic": (124, 122, 110),
    "commercial": (118, 116, 108), "industrial": (126, 122, 112),
}
WATER = (36, 58, 68)
PAVEMENT = (158, 155, 148)
URBAN_DENSITY = 0.2
ROOF_SLOPE_DEG = 32.0  # pitch of hipped roofs (aerial shading, street-level silhouettes)  # built-up share above which a street is a city street
ASPHALT = {"motorway": (70, 70, 72), "trunk": (70, 70, 72), "primary": (74, 74, 76),
           "secondary": (80, 80, 82), "tertiary": (86, 86, 87), "residential": (92, 92, 92),
           "unclassified": (92, 92, 92), "living_street": (120, 116, 110), "road": (92, 92, 92),
           "service": (98, 97, 95), "pedestrian": (150, 144, 134)}
PATHS = {"footway": (150, 146, 138), "path": (140, 128, 108), "steps": (150, 146, 138),
         "cycleway": (112, 108, 104), "track": (134, 120, 96), "trail": (124, 112, 92),
         "bridleway": (134, 120, 96), "corridor": (150, 146, 138)}
PATH_WIDTH = {"footway": 2.5, "cycleway": 2.5, "steps": 3.0, "path": 1.5, "track": 3.0,
              "trail": 1.2, "bridleway": 2.0, "corridor": 2.0}
ROOFS = [  # (colour, weight, flat?) from above: metal, bitumen, tiles, copper, concrete
    ((72, 74, 78), 3, False), ((52, 52, 55), 2, True), ((124, 66, 50), 2, False),
    ((146, 84, 62), 1, False), ((96, 138, 120), 1, False), ((150, 150, 146), 2, True),
    ((104, 88, 74), 1, False), ((166, 168, 170), 1, True), ((120, 118, 112), 2, True),
]
FACADES = [(196, 182, 160), (214, 204, 186), (176, 120, 96), (226, 214, 170), (168, 166, 160),
           (202, 170, 130), (150, 110, 90), (220, 220, 214)]
STREETS = set(ASPHALT)
SHARPEN = ImageFilter.Kernel((3, 3), [0, -1, 0, -1, 8, -1, 0, -1, 0], scale=4)


CAR_COLOURS = np.array([(226, 226, 224), (30, 32, 36), (160, 162, 166), (98, 100, 104),
                        (36, 52, 96), (140, 28, 30), (224, 224, 226), (60, 62, 66)], float)


@dataclass
class _Roof:
    """A building's roof, precomputed once per region (world metres)."""

    row: int
    height: float
    colour: np.ndarray
    facade: np.ndarray
    flat: bool
    rings: list[np.ndarray]  # oriented closed rings: exterior CCW, holes CW
    holes: list[bool]
    facets: np.ndarray  # (F, 4, 2) sloped facets of a hipped roof (outer edge, then ridge side)
    facet_normals: np.ndarray  # (F, 2) outward horizontal normals
    vents: np.ndarray  # (V, 3) x, y, half-size of rooftop boxes (flat roofs)
    centre: np.ndarray
    edge_p1: np.ndarray  # (E, 2) every outline edge (all rings), for walls
    edge_p2: np.ndarray
    edge_normals: np.ndarray  # (E, 2) outward unit normals
    palettes: dict = field(default_factory=dict)  # style name -> colours (see _palette)


@dataclass
class _Scene:
    """What the aerial renderers precompute per region (deterministic from the ids)."""

    roofs: list[_Roof | None]  # per building row (None: no usable outline)
    trees: np.ndarray  # (N, 4) x, y, crown radius, height
    blobs: np.ndarray  # (N, 4, 4) dx, dy (crown radii), radius factor, tone
    tree_colour: np.ndarray  # (N, 3)
    zebras: np.ndarray  # (Z, 4, 2) stripe quads
    cars: np.ndarray  # (C, 4, 2) car quads
    car_colour: np.ndarray  # (C, 3)
    density: dict[str, float]  # road id -> share of the ground within 40 m covered by buildings


def _scene(index: raster.RegionIndex) -> _Scene:
    cached = index.__dict__.get("_aerial_scene")
    if cached is None:
        density = _density(index)
        cached = _Scene(_roofs(index), *_trees(index), _zebras(index), *_cars(index, density), density)
        index.__dict__["_aerial_scene"] = cached
    return cached


def _density(index: raster.RegionIndex) -> dict[str, float]:
    """Built-up share around each street's middle: city streets get pavements and parked cars."""
    region = index.region
    out = {}
    for r in region.roads:
        if r.kind.removesuffix("_link") not in STREETS:
            continue
        disc = r.line.interpolate(0.5, normalized=True).buffer(40.0, quad_segs=4)
        rows = index.buildings.query(disc)
        area = sum(region.buildings[i].polygon.intersection(disc).area for i in rows) if len(rows) else 0.0
        out[r.id] = area / disc.area
    return out


def _roofs(index: raster.RegionIndex) -> list[_Roof | None]:
    out = []
    weights = np.array([w for _, w, _ in ROOFS], float)
    cum = np.cumsum(weights) / weights.sum()
    for row, b in enumerate(index.region.buildings):
        colour, _, flat = ROOFS[min(int(np.searchsorted(cum, raster.unit_hash("roof", b.id), "right")),
                                    len(ROOFS) - 1)]
        tone = 0.88 + 0.24 * raster.unit_hash("tone", b.id)
        area = b.polygon.area
        if area > 2500 and raster.unit_hash("flat", b.id) < 0.5:
            flat = True
        rings, holes, facets, normals, p1s, p2s = [], [], [], [], [], []
        for part in getattr(b.polygon, "geoms", [b.polygon]):
            if not isinstance(part, Polygon) or part.is_empty:
                continue
            part = orient(part.simplify(0.3, preserve_topology=True), sign=1.0)
            depth = min(max(part.area / max(part.length, 1e-6) * 1.1, 1.0), 14.0)
            for j, ring in enumerate([part.exterior, *part.interiors]):
                xy = shapely.get_coordinates(ring)
                rings.append(xy)
                holes.append(j > 0)
                p1, p2 = xy[:-1], xy[1:]
                e = p2 - p1
                ln = np.hypot(e[:, 0], e[:, 1])
                ok = ln > 0.05
                p1, p2, e, ln = p1[ok], p2[ok], e[ok] / ln[ok, None], ln[ok]
                n_out = np.stack([e[:, 1], -e[:, 0]], axis=1)  # right of travel = outside (CCW)
                d = np.minimum(depth, ln / 2)[:, None]
                facets.append(np.stack([p1, p2, p2 - n_out * d - e * d, p1 - n_out * d + e * d], axis=1))
                normals.append(n_out)
                p1s.append(p1)
                p2s.append(p2)
        if not rings:
            out.append(None)
            continue
        nv = int(min(area / 150.0, 14)) if flat else 0
        vents = np.zeros((0, 3))
        if nv:
            rng = raster.rng_for("vents", b.id)
            x0, y0, x1, y1 = b.polygon.bounds
            cand = np.column_stack([rng.uniform(x0, x1, nv * 3), rng.uniform(y0, y1, nv * 3),
                                    rng.uniform(0.4, 1.3, nv * 3)])
            inside = shapely.contains_xy(b.polygon.buffer(-2.0), cand[:, 0], cand[:, 1])
            vents = cand[inside][:nv]
        fac = FACADES[int(raster.unit_hash("facade", b.id) * len(FACADES))]
        out.append(_Roof(row, float(b.height_m), np.array(colour) * tone, np.array(fac, float), flat,
                         rings, holes, np.concatenate(facets), np.concatenate(normals), vents,
                         rings[0][:-1].mean(axis=0), np.concatenate(p1s), np.concatenate(p2s),
                         np.concatenate(normals)))
    return out


def _trees(index: raster.RegionIndex):
    xyr = index.tree_xy
    n = len(xyr)
    g = raster.rng_for("canopies", index.region.name, n)
    h = 7.0 + 8.0 * g.random(n)
    blobs = np.concatenate([g.normal(0, 0.35, (n, 4, 2)), g.uniform(0.35, 0.6, (n, 4, 1)),
                            g.uniform(0.85, 1.12, (n, 4, 1))], axis=2)
    u = g.random(n)[:, None]
    colour = np.array([46, 70, 34]) * (0.8 + 0.4 * u) + np.array([12, 6, 0]) * (u > 0.7)
    return np.column_stack([xyr, h]), blobs, colour


def _street_pieces(region: Region):
    return [r for r in region.roads if r.kind.removesuffix("_link") in STREETS
            and r.kind not in ("service", "pedestrian", "living_street")]


def _zebras(index: raster.RegionIndex) -> np.ndarray:
    """Zebra crossings (stripe quads, world metres) where a footway crosses a street."""
    region = index.region
    streets = _street_pieces(region)
    foot = [r for r in region.roads if r.kind in ("footway", "path", "cycleway")]
    quads = []
    if foot and streets:
        tree = shapely.STRtree([r.line for r in streets])
        for fi, si in zip(*tree.query([r.line for r in foot], predicate="intersects")):
            s = streets[si]
            pt = foot[fi].line.intersection(s.line)
            for p in getattr(pt, "geoms", [pt]):
                if p.geom_type != "Point":
                    continue
                d = s.line.project(p)
                a, b = s.line.interpolate(max(d - 1, 0)), s.line.interpolate(min(d + 1, s.line.length))
                e = np.array([b.x - a.x, b.y - a.y])
                if not np.any(e):
                    continue
                e /= np.hypot(*e)
                n = np.array([-e[1], e[0]])
                half = s.width_m / 2 - 0.3
                for off in np.arange(-half + 0.3, half, 1.0):
                    c = np.array([p.x, p.y]) + n * off
                    quads.append([c - e * 1.5 - n * 0.25, c + e * 1.5 - n * 0.25,
                                  c + e * 1.5 + n * 0.25, c - e * 1.5 + n * 0.25])
    return np.array(quads, float).reshape(-1, 4, 2)


def _cars(index: raster.RegionIndex, density: dict[str, float]):
    """Cars parked along the kerbs of city streets (fewer in the suburbs) and in parking areas."""
    region = index.region
    quads, colours = [], []
    streets = _street_pieces(region)
    all_streets = shapely.STRtree([r.line for r in streets]) if streets else None
    for r in streets:
        if r.kind not in ("residential", "unclassified", "tertiary", "secondary") or r.width_m < 6:
            continue
        g = raster.rng_for("cars", r.id)
        line = r.line
        share = 0.55 if density.get(r.id, 0.0) > URBAN_DENSITY else 0.08
        for side in (-1, 1):
            for d in np.arange(6.0, line.length - 6.0, 5.6):
                if g.random() > share:
                    continue
                a, b = line.interpolate(d - 1.0), line.interpolate(d + 1.0)
                e = np.array([b.x - a.x, b.y - a.y])
                if not np.any(e):
                    continue
                e /= np.hypot(*e)
                n = np.array([-e[1], e[0]]) * side
                c = np.array([line.interpolate(d).x, line.interpolate(d).y]) + n * (r.width_m / 2 - 1.2)
                quads.append(_car_quad(c, e, g))
                colours.append(CAR_COLOURS[g.integers(len(CAR_COLOURS))])
    for a in region.areas:
        if a.kind != "parking" or a.polygon.area < 60:
            continue
        g = raster.rng_for("parking", a.id)
        rect = a.polygon.minimum_rotated_rectangle
        xy = shapely.get_coordinates(rect)[:4]
        e = xy[1] - xy[0]
        if np.hypot(*e) < np.hypot(*(xy[2] - xy[1])):
            e = xy[2] - xy[1]
        e /= max(np.hypot(*e), 1e-9)
        n = np.array([-e[1], e[0]])
        c0 = xy.mean(axis=0)
        span = np.hypot(*(xy[2] - xy[0]))
        for i in np.arange(-span / 2, span / 2, 2.6):
            for j in np.arange(-span / 2, span / 2, 6.5):
                c = c0 + e * i + n * j
                if g.random() < 0.35 or not a.polygon.buffer(-2.5).contains(shapely.Point(*c)):
                    continue
                quads.append(_car_quad(c, n, g))
                colours.append(CAR_COLOURS[g.integers(len(CAR_COLOURS))])
    quads = np.array(quads, float).reshape(-1, 4, 2)
    colours = np.array(colours, float).reshape(-1, 3)
    if len(quads) and all_streets is not None:  # not in the middle of junctions
        pts = shapely.points(quads.mean(axis=1))
        near = all_streets.query(pts, predicate="dwithin", distance=2.0)
        counts = np.bincount(near[0], minlength=len(quads))
        keep = counts <= 1
        quads, colours = quads[keep], colours[keep]
    return quads, colours


def _car_quad(c: np.ndarray, e: np.ndarray, g: np.random.Generator) -> list:
    half_len, half_w = g.uniform(2.0, 2.4), 0.9
    n = np.array([-e[1], e[0]])
    return [c - e * half_len - n * half_w, c + e * half_len - n * half_w,
            c + e * half_len + n * half_w, c - e * half_len + n * half_w]


def _sun(style: AerialStyle) -> np.ndarray:
    a, e = math.radians(style.sun_azimuth), math.radians(style.sun_elevation)
    return np.array([math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), math.sin(e)])


def _shadow_vector(style: AerialStyle) -> np.ndarray:
    """Ground offset of a shadow per metre of height: away from the sun, 1 / tan(elevation)."""
    a = math.radians(style.sun_azimuth + 180.0)
    return np.array([math.sin(a), math.cos(a)]) / math.tan(math.radians(style.sun_elevation))


def _shade(normals_xy: np.ndarray, slope_deg: float, sun: np.ndarray) -> np.ndarray:
    """Lambert factor of sloped facets relative to a flat roof: max(0, n·s) / s_z."""
    s = math.radians(slope_deg)
    n = np.column_stack([normals_xy * math.sin(s), np.full(len(normals_xy), math.cos(s))])
    return np.clip(n @ sun, 0.0, None) / sun[2]


def _many_px(view: raster.View, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Transform many (…, 2) arrays with one call."""
    if not arrays:
        return []
    shapes = [a.shape for a in arrays]
    flat = view.to_px(np.concatenate([a.reshape(-1, 2) for a in arrays]))
    cuts = np.cumsum([int(np.prod(s[:-1])) for s in shapes])[:-1]
    return [p.reshape(s) for p, s in zip(np.split(flat, cuts), shapes)]


def _colours(base: np.ndarray, k: np.ndarray) -> list[tuple[int, int, int]]:
    c = np.clip(np.asarray(base, float) * np.asarray(k, float)[..., None], 0, 255).astype(int)
    return [tuple(v) for v in c.reshape(-1, 3).tolist()]


def _in_box(centres: np.ndarray, view: raster.View, margin: float) -> np.ndarray:
    r = view.radius_m + margin
    return np.flatnonzero((np.abs(centres[:, 0] - view.cx) < r) & (np.abs(centres[:, 1] - view.cy) < r))


def _draw_ground(img: Image.Image, region: Region, index: raster.RegionIndex,
                 scene: _Scene, view: raster.View, q, cars: bool = True) -> None:
    """Ground cover, water, paths, pavements, asphalt, markings, crossings, rails, cars."""
    draw = ImageDraw.Draw(img)
    k = view.px_per_m
    rows = sorted(index.near(index.areas, q), key=lambda i: -region.areas[i].polygon.area)
    water = []
    for i in rows:
        a = region.areas[i]
        if a.kind in WATER_KINDS:
            water.append(a)
        elif a.kind in COVER:
            raster.fill_polygon(img, draw, view, a.polygon, COVER[a.kind])
    for a in water:
        raster.fill_polygon(img, draw, view, a.polygon, WATER)

    road_rows = index.near(index.roads, q)
    roads = [region.roads[i] for i in road_rows]
    pieces = [(roads[j], arr) for j, arr in raster.lines_px(view, [r.line for r in roads], 10.0)]
    streets = [(r, a) for r, a in pieces if r.kind.removesuffix("_link") in STREETS]
    paths = [(r, a) for r, a in pieces if r.kind.removesuffix("_link") not in STREETS]
    for r, arr in paths:
        w = PATH_WIDTH.get(r.kind, 1.5) * k
        draw.line(arr.ravel().tolist(), fill=PATHS.get(r.kind, PATHS["path"]), width=max(1, round(w)),
                  joint="curve")
    # pavements either side of urban streets, then the asphalt
    for r, arr in streets:
        if r.kind not in ("service", "pedestrian", "living_street"):
            pavement = 5.0 if scene.density.get(r.id, 0.0) > URBAN_DENSITY else 2.4
            draw.line(arr.ravel().tolist(), fill=PAVEMENT, width=max(1, round((r.width_m + pavement) * k)),
                      joint="curve")
    for r, arr in sorted(streets, key=lambda s: s[0].width_m):
        w = r.width_m * k
        colour = ASPHALT[r.kind.removesuffix("_link")]
        draw.line(arr.ravel().tolist(), fill=colour, width=max(1, round(w)), joint="curve")
        if w > 6:
            for u, v in (arr[0], arr[-1]):
                draw.ellipse([u - w / 2, v - w / 2, u + w / 2, v + w / 2], fill=colour)
    # lane markings: dashed lane lines, solid edge lines on main roads
    paint = (222, 222, 214)
    lw = max(1, round(0.15 * k))
    for r, arr in streets:
        if r.kind in ("service", "pedestrian", "living_street") or r.width_m < 5.5:
            continue
        lanes = r.lanes or max(1 if r.oneway else 2, int(r.width_m // 3.3))
        w = r.width_m * k
        for j in range(1, lanes):
            for piece in raster.dashes(raster.offset_polyline(arr, w * (j / lanes - 0.5)),
                                       3.0 * k, 6.0 * k).tolist():
                draw.line(piece[0] + piece[1], fill=paint, width=lw)
        if r.kind in ("primary", "secondary", "trunk", "motorway"):
            for side in (-1, 1):
                draw.line(raster.offset_polyline(arr, side * (w / 2 - 0.5 * k)).ravel().tolist(),
                          fill=paint, width=lw)
    zi = _in_box(scene.zebras.mean(axis=1), view, 5.0) if len(scene.zebras) else []
    if len(zi):
        for quad in _many_px(view, [scene.zebras[zi]])[0].reshape(len(zi), 8).tolist():
            draw.polygon(quad, fill=(214, 214, 206))
    # rails: two steel lines per track (tram tracks lie in the asphalt, railways on ballast)
    rail_rows = index.near(index.rails, q)
    for j, arr in raster.lines_px(view, [region.rails[i].line for i in rail_rows], 10.0):
        rl = region.rails[rail_rows[j]]
        if rl.kind == "subway":
            continue
        if rl.kind == "rail":
            draw.line(arr.ravel().tolist(), fill=(98, 88, 80), width=max(1, round(3.2 * k)))
        for side in (-0.72, 0.72):
            draw.line(raster.offset_polyline(arr, side * k).ravel().tolist(), fill=(58, 56, 56),
                      width=max(1, round(0.18 * k)))
            draw.line(raster.offset_polyline(arr, (side + 0.1) * k).ravel().tolist(),
                      fill=(150, 150, 150), width=1)
    ci = _in_box(scene.cars.mean(axis=1), view, 5.0) if len(scene.cars) and cars else []
    if len(ci):
        quads = _many_px(view, [scene.cars[ci]])[0]
        cols = scene.car_colour[ci]
        for quad, col in zip(quads, cols):
            draw.polygon(quad.ravel().tolist(), fill=_colours(col, np.array(0.92))[0])
            # windscreen and roof: a darker band and a lighter top
            mid = quad.mean(axis=0)
            inner = mid + (quad - mid) * np.array([[0.55], [0.55], [0.55], [0.55]])
            draw.polygon(inner.ravel().tolist(), fill=_colours(col, np.array(1.08))[0])


def _draw_shadows(mask_draw, roofs, leans, trees, view, style) -> None:
    """Cast shadows: the footprint translated by L = h / tan(elevation), plus the swept edges."""
    along = _shadow_vector(style)
    arrays = []
    for roof in roofs:
        off = along * roof.height
        for ring in roof.rings:
            arrays.append(ring + off)
            p1, p2 = ring[:-1], ring[1:]
            arrays.append(np.stack([p1, p2, p2 + off, p1 + off], axis=1))
    for arr in _many_px(view, arrays):
        if arr.ndim == 2:
            mask_draw.polygon(arr.ravel().tolist(), fill=255)
        else:
            for quad in arr.reshape(len(arr), 8).tolist():
                mask_draw.polygon(quad, fill=255)
    if len(trees):
        k = view.px_per_m
        cs = view.to_px(trees[:, :2] + along * trees[:, 3:4] * 0.75)
        for (u, v), r in zip(cs.tolist(), (trees[:, 2] * k).tolist()):
            mask_draw.ellipse([u - r, v - r, u + r, v + r], fill=255)


def _palette(roof: _Roof, style: AerialStyle) -> dict:
    """A roof's colours under ``style``'s sun (cached on the roof)."""
    pal = roof.palettes.get(style.name)
    if pal is None:
        sun = _sun(style)
        sun_h = sun[:2] / np.linalg.norm(sun[:2])
        pal = {
            "base": _colours(roof.colour, np.array(0.92 if roof.flat else 0.8))[0],
            "rim": _colours(roof.colour, np.array(1.22))[0],
            "vent": _colours(roof.colour, np.array([1.3, 0.55])),
            "facets": _colours(roof.colour, 0.55 + 0.5 * _shade(roof.facet_normals, ROOF_SLOPE_DEG, sun)),
            "ridge": _colours(roof.colour, np.array(1.1))[0],
            "eaves": _colours(roof.colour, np.array(0.5))[0],
            "walls": _colours(roof.facade, 0.5 + 0.55 * np.clip(roof.edge_normals @ sun_h, 0, None)),
        }
        roof.palettes[style.name] = pal
    return pal


def _draw_roofs(draw, mask_draw, roofs, leans, view, style) -> None:
    """Walls facing the camera (drone only), then roofs from low to high."""
    k = view.px_per_m
    shadow_dir = np.array(view.direction_px(*_shadow_vector(style)))
    for i in sorted(range(len(roofs)), key=lambda i: (roofs[i].height, roofs[i].row)):
        roof, lean = roofs[i], leans[i]
        pal = _palette(roof, style)
        leaning = bool(np.any(lean))
        facing = np.flatnonzero(roof.edge_normals @ -lean > 0) if leaning else np.zeros(0, int)
        p1, p2 = roof.edge_p1[facing], roof.edge_p2[facing]
        arrays = [np.stack([p1, p2, p2 + lean, p1 + lean], axis=1)] + [r + lean for r in roof.rings]
        if roof.flat:
            arrays.append(roof.vents[:, :2] + lean)
        else:
            arrays.append(roof.facets + lean)
        px = _many_px(view, arrays)
        walls, rings_px, extra = px[0], px[1:-1], px[-1]
        for quad, j in zip(walls.reshape(len(walls), 8).tolist(), facing.tolist()):
            draw.polygon(quad, fill=pal["walls"][j])
            mask_draw.polygon(quad, fill=255)
        for pts, is_hole in zip(rings_px, roof.holes):
            flat_pts = pts.ravel().tolist()
            if is_hole:  # courtyards are cleared from the roof mask
                mask_draw.polygon(flat_pts, fill=0)
            else:
                draw.polygon(flat_pts, fill=pal["base"])
                mask_draw.polygon(flat_pts, fill=255)
        if roof.flat:
            for pts in rings_px:  # parapet: a lighter rim
                draw.line(pts.ravel().tolist(), fill=pal["rim"], width=max(1, round(0.5 * k)))
            light, dark = pal["vent"]
            for (u, v), h in zip(extra.tolist(), (roof.vents[:, 2] * k).tolist()):
                su, sv = u + shadow_dir[0] * h, v + shadow_dir[1] * h
                draw.rectangle([su - h, sv - h, su + h, sv + h], fill=dark)
                draw.rectangle([u - h, v - h, u + h, v + h], fill=light)
            continue
        quads = extra.reshape(len(extra), 8).tolist()
        for quad, col in zip(quads, pal["facets"]):
            draw.polygon(quad, fill=col)
        for quad in quads:  # the ridge / hip lines
            draw.line(quad[4:8], fill=pal["ridge"], width=1)
        for pts in rings_px:
            draw.line(pts.ravel().tolist(), fill=pal["eaves"], width=max(1, round(0.25 * k)))


def _draw_trees(draw, trees, blobs, colours, view, style) -> None:
    """Canopies: a dark crown, a few leafy blobs, and a highlight towards the sun."""
    if not len(trees):
        return
    k = view.px_per_m
    sun = _sun(style)
    to_sun = np.array(view.direction_px(sun[0], sun[1]))
    to_sun = to_sun / max(np.hypot(*to_sun), 1e-9)
    cs = view.to_px(trees[:, :2])
    rr = trees[:, 2] * k
    # in pixel space (rotation of a round blob pattern is irrelevant)
    bl_c = cs[:, None, :] + blobs[:, :, :2] * rr[:, None, None]
    bl_r = blobs[:, :, 2] * rr[:, None]
    base = _colours(colours, np.array(0.8))
    tones = np.clip(colours[:, None, :] * blobs[:, :, 3:4], 0, 255).astype(int).tolist()
    hl = cs + to_sun * rr[:, None] * 0.35
    hi = _colours(colours, np.array(1.35))
    for t in range(len(trees)):
        (u, v), r = cs[t], rr[t]
        draw.ellipse([u - r, v - r, u + r, v + r], fill=base[t])
        for (bu, bv), br, tone in zip(bl_c[t].tolist(), bl_r[t].tolist(), tones[t]):
            draw.ellipse([bu - br, bv - br, bu + br, bv + br], fill=tuple(tone))
        hu, hv = hl[t]
        hr = r * 0.45
        draw.ellipse([hu - hr, hv - hr, hu + hr, hv + hr], fill=hi[t])


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> tuple[np.ndarray, ...]:
    """Noise fields twice the tile size; each tile reads a seeded window of them."""
    g = np.random.default_rng(20240611)
    big = 2 * size
    tex = raster.value_noise(g, big, max(8, big // 6))
    fine = raster.value_noise(g, big, max(16, big // 2))
    low = raster.value_noise(g, big, 10)
    grain = g.normal(0.0, 1.0, (big, big, 3)).astype(np.float32)
    return tex, fine, low, grain


def _grade_lut(style: AerialStyle) -> list[int]:
    """Per-channel tone curve: out = 255 · ((x/255)^γ · gain · (1 − haze) + haze · veil)."""
    x = np.arange(256) / 255.0
    veil = (0.72, 0.76, 0.82)
    lut = []
    for c in range(3):
        y = (x ** style.gamma) * style.gain[c] * (1 - style.haze) + style.haze * veil[c]
        lut += np.clip(np.round(y * 255), 0, 255).astype(int).tolist()
    return lut


def _sensor(img: Image.Image, style: AerialStyle, rng: np.random.Generator) -> Image.Image:
    """Colour grading, ground texture and sensor grain, at output resolution."""
    img = ImageEnhance.Color(img).enhance(style.saturation).point(_grade_lut(style))
    size = img.width
    tex, fine, low, grain = _noise_bank(size)
    ox, oy, gx, gy = rng.integers(0, size, 4).tolist()
    a = np.asarray(img, dtype=np.float32)
    veg = np.clip((a[..., 1] - np.maximum(a[..., 0], a[..., 2])) * (1 / 20.0), 0, 1)
    mod = 1.0 + 0.05 * low[oy:oy + size, ox:ox + size] + 0.07 * fine[oy:oy + size, ox:ox + size] \
        + (0.05 + 0.17 * veg) * tex[oy:oy + size, ox:ox + size]
    a = a * mod[..., None] + style.noise * grain[gy:gy + size, gx:gx + size]
    out = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")
    if style.sharpen:
        out = out.filter(SHARPEN)
    return out


def _render(region: Region, loc: Location, size_px: int, footprint_m: float, rotation_deg: float,
            style: AerialStyle, seed: int) -> Image.Image:
    index = raster.prepare(region)
    scene = _scene(index)
    ss = style.supersample
    big = size_px * ss
    view = raster.View(loc.x, loc.y, footprint_m, big, rotation_deg)
    q = view.query_box(margin_m=12.0)
    rng = raster.rng_for(style.name, loc.region, loc.id, seed)

    ground = Image.new("RGB", (big, big), BASE)
    _draw_ground(ground, region, index, scene, view, q)

    # buildings outside the view still cast shadows (and lean, for the drone) into it
    rows = index.near(index.buildings, view.query_box(margin_m=45.0))
    roofs = [scene.roofs[i] for i in rows if scene.roofs[i] is not None]
    leans = [np.zeros(2) if not style.camera_height_m else
             (r.centre - np.array([loc.x, loc.y])) * r.height / style.camera_height_m for r in roofs]
    ti = _in_box(scene.trees[:, :2], view, 18.0)
    trees = scene.trees[ti]
    shadow = Image.new("L", (big, big), 0)
    _draw_shadows(ImageDraw.Draw(shadow), roofs, leans, trees, view, style)
    shadow = shadow.filter(ImageFilter.BoxBlur(0.6 * ss))
    tint = 255 - style.shadow_strength * (255 - np.array(style.shadow_tint, float))
    dark = ImageChops.multiply(ground, Image.new("RGB", ground.size, tuple(int(t) for t in tint)))
    ground = Image.composite(dark, ground, shadow)

    roof_img = Image.new("RGB", (big, big), BASE)
    roof_mask = Image.new("L", (big, big), 0)
    _draw_roofs(ImageDraw.Draw(roof_img), ImageDraw.Draw(roof_mask), roofs, leans, view, style)
    img = Image.composite(roof_img, ground, roof_mask)
    _draw_trees(ImageDraw.Draw(img), trees, scene.blobs[ti], scene.tree_colour[ti], view, style)
    img = img.reduce(ss) if ss > 1 else img
    return _sensor(img, style, rng)


def render_satellite(region: Region, loc: Location, size_px: int, footprint_m: float = 60.0,
                     seed: int = 0) -> Image.Image:
    """A north-up nadir aerial photo of the ``footprint_m`` square around ``loc`` (no labels)."""
    return _render(region, loc, size_px, footprint_m, 0.0, SATELLITE, seed)


def render_drone(region: Region, loc: Location, size_px: int, footprint_m: float,
                 rotation_deg: float, seed: int = 0) -> Image.Image:
    """A UAV orthophoto of ``footprint_m`` (80–180 m) around ``loc`` whose up points to bearing
    ``rotation_deg``: a lower camera (buildings lean outwards), morning sun, warm sharp grading."""
    return _render(region, loc, size_px, footprint_m, rotation_deg, DRONE, seed)


#: A UAV orthomosaic (OpenAerialMap-like): the drone's light and grading, orthorectified (no lean).
ORTHOMOSAIC = AerialStyle("orthomosaic", sun_azimuth=DRONE.sun_azimuth, sun_elevation=DRONE.sun_elevation,
                          camera_height_m=None, shadow_strength=DRONE.shadow_strength, shadow_tint=DRONE.shadow_tint,
                          gain=DRONE.gain, gamma=DRONE.gamma, saturation=DRONE.saturation, haze=DRONE.haze,
                          noise=DRONE.noise, sharpen=DRONE.sharpen, supersample=1)


def render_orthomosaic_tile(region: Region, loc: Location, size_px: int, footprint_m: float,
                            seed: int = 0) -> Image.Image:
    """One north-up tile (``footprint_m`` square around ``loc``) of a synthetic UAV orthomosaic;
    :mod:`~geotextloc.data.embedded.orthophoto` puts tiles side by side into a GeoTIFF."""
    return _render(region, loc, size_px, footprint_m, 0.0, ORTHOMOSAIC, seed)
