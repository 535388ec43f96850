"""Locations along the street network, like street-view capture points.

Each street (``highway`` class in :data:`STREET_KINDS`) is walked from its first vertex and
a point is taken every ``spacing`` metres, starting half a spacing in (a street shorter than
``min_length`` gets none). The heading is the street direction at that point (degrees
clockwise from north, along the way's drawing direction). A point closer than
``0.45 * spacing`` to an already kept point (dual carriageways, intersections of several
ways) is dropped. Streets are visited in id order, so order and ids are deterministic:
``<prefix><6 digits>`` numbered from 0.

:func:`thin` picks a Poisson-disk subset of such places (no two closer than a minimum
separation); :mod:`~geotextloc.data.embedded.places` uses it for the released places.
"""

from __future__ import annotations

import math
import re

import numpy as np

from geotextloc.data.embedded.scene import Location, Region, Road

#: Street classes where street-view locations are sampled (no motorways, paths or footways).
STREET_KINDS = (
    "trunk", "primary", "secondary", "tertiary", "residential", "unclassified",
    "living_street", "pedestrian", "trunk_link", "primary_link", "secondary_link", "tertiary_link",
)
DEFAULT_SPACING_M = 25.0


CAMERA_LANE_OFFSET_M = 2.5  # at most this far right of the street axis


def camera_xy(loc: Location, road: Road | None) -> tuple[float, float]:
    """Where the capture car stands at ``loc``: in the right-hand lane of a two-way street at
    least 5.5 m wide, ``min(width / 4, 2.5)`` m right of the axis (right of the heading ``h``
    is the vector ``(cos h, -sin h)`` in (east, north)); else on the axis. The panorama is
    rendered from here and the scene facts measure directions and distances from here, so a
    sign the text puts on the left is on the left of the image."""
    if road is None or road.oneway or road.width_m < 5.5:
        return loc.x, loc.y
    h = math.radians(loc.heading)
    off = min(road.width_m / 4.0, CAMERA_LANE_OFFSET_M)
    return loc.x + off * math.cos(h), loc.y - off * math.sin(h)


def region_prefix(name: str) -> str:
    """Three lowercase letters for location ids: ``Helsinki`` -> ``hel``."""
    letters = re.sub(r"[^a-z]", "", name.lower())
    return (letters + "xxx")[:3]


def heading_deg(dx: float, dy: float) -> float:
    """Compass bearing of the vector (dx east, dy north): 0 = north, 90 = east."""
    return math.degrees(math.atan2(dx, dy)) % 360.0


def sample_locations(
    region: Region,
    spacing: float = DEFAULT_SPACING_M,
    kinds: tuple[str, ...] = STREET_KINDS,
    min_length: float = 10.0,
    margin: float = 0.0,
) -> list[Location]:
    """Locations every ``spacing`` m along the region's streets; see the module docstring.

    ``margin`` drops points closer than that to the edge of the region's street extent
    (where the extract is clipped and the views would be half empty).
    """
    if spacing <= 0:
        raise ValueError("spacing must be positive")
    streets = sorted((r for r in region.roads if r.kind in kinds), key=lambda r: r.id)
    if not streets:
        return []
    bounds = np.array([r.line.bounds for r in region.roads])
    minx, miny = bounds[:, 0].min() + margin, bounds[:, 1].min() + margin
    maxx, maxy = bounds[:, 2].max() - margin, bounds[:, 3].max() - margin
    min_sep = 0.45 * spacing
    cell = min_sep
    grid: dict[tuple[int, int], list[tuple[float, float]]] = {}
    prefix = region_prefix(region.name)
    out: list[Location] = []
    for road in streets:
        line = road.line
        if line.length < min_length:
            continue
        offsets = np.arange(spacing / 2.0, line.length, spacing) if line.length > spacing else [line.length / 2]
        for s in offsets:
            p = line.interpolate(s)
            x, y = p.x, p.y
            if not (minx <= x <= maxx and miny <= y <= maxy):
                continue
            gx, gy = int(math.floor(x / cell)), int(math.floor(y / cell))
            near = [q for i in (-1, 0, 1) for j in (-1, 0, 1) for q in grid.get((gx + i, gy + j), ())]
            if any((qx - x) ** 2 + (qy - y) ** 2 < min_sep**2 for qx, qy in near):
                continue
            a = line.interpolate(max(0.0, s - 2.0))
            b = line.interpolate(min(line.length, s + 2.0))
            heading = round(heading_deg(b.x - a.x, b.y - a.y), 1) % 360.0
            lat, lon = region.to_latlon(x, y)
            grid.setdefault((gx, gy), []).append((x, y))
            out.append(Location(
                id=f"{prefix}{len(out):06d}", region=region.name, x=round(x, 2), y=round(y, 2),
                lat=round(float(lat), 8), lon=round(float(lon), 8), heading=heading, road_id=road.id,
            ))
    return out


def subsample(locations: list[Location], n: int | None) -> list[Location]:
    """At most ``n`` locations, evenly strided through the list (so they spread over the region)."""
    if n is None or n >= len(locations):
        return list(locations)
    if n <= 0:
        return []
    idx = np.unique(np.round(np.linspace(0, len(locations) - 1, n)).astype(int))
    return [locations[i] for i in idx]


def thin(locations: list[Location], min_sep: float, fixed: list[Location] = ()) -> list[Location]:
    """The largest subset we find with no two places closer than ``min_sep`` metres (and none
    closer than that to a ``fixed`` place), in the order of ``locations``.

    A Poisson-disk subset of the street places: greedily keep the place with the fewest
    remaining neighbours within ``min_sep`` (ties: the first in ``locations``), then drop its
    neighbours. On the street networks of the built-in regions this keeps about a quarter more
    places than walking the streets in order and keeping a point when no kept point is near.
    """
    if min_sep <= 0:
        raise ValueError("min_sep must be positive")
    xy = np.array([(loc.x, loc.y) for loc in locations], dtype=float).reshape(-1, 2)
    grid: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(xy):
        grid.setdefault((math.floor(x / min_sep), math.floor(y / min_sep)), []).append(i)

    def near(x: float, y: float) -> list[int]:
        gx, gy = math.floor(x / min_sep), math.floor(y / min_sep)
        cand = np.array([j for i in (-1, 0, 1) for k in (-1, 0, 1) for j in grid.get((gx + i, gy + k), ())], int)
        return cand[np.hypot(xy[cand, 0] - x, xy[cand, 1] - y) < min_sep].tolist() if len(cand) else []

    neighbours = [near(x, y) for x, y in xy]  # each place is its own neighbour
    alive = np.ones(len(xy), bool)
    for loc in fixed:
        alive[near(loc.x, loc.y)] = False
    degree = np.array([int(alive[nb].sum()) for nb in neighbours])
    kept = []
    while alive.any():
        i = int(np.argmin(np.where(alive, degree, np.iinfo(np.int64).max)))
        kept.append(i)
        for j in neighbours[i]:
            if alive[j]:
                alive[j] = False
                degree[neighbours[j]] -= 1
    return [locations[i] for i in sorted(kept)]


def nearest_distances(xy: np.ndarray, to: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each row of ``xy`` (n, 2), the distance in metres to the nearest row of ``to`` (inf if none)."""
    xy, to = np.asarray(xy, float).reshape(-1, 2), np.asarray(to, float).reshape(-1, 2)
    out = np.full(len(xy), np.inf)
    if len(to):
        for s in range(0, len(xy), chunk):
            d = np.hypot(xy[s:s + chunk, None, 0] - to[None, :, 0], xy[s:s + chunk, None, 1] - to[None, :, 1])
            out[s:s + chunk] = d.min(axis=1)
    return out


TRAIN, TEST, EXCLUDED = "train", "test", "excluded"  # splits (places.plan_region); excluded: near the test area
