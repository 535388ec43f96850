"""Load an OpenStreetMap extract (``.osm.pbf``) into a :class:`~geotextloc.data.embedded.scene.Region`.

Everything the renderers and the describer need is read once with ``pyrosm`` and projected
to local metres (``Region.to_xy``, x east, y north, around the centre of the street network):

- buildings with ``building:levels`` / ``height`` where tagged, else a deterministic height
  drawn from the building id and its kind (:func:`building_height`);
- roads (``highway=*``) with class, name, lanes, width and one-way flag;
- rail / tram / subway lines;
- areas: land use, parks and other leisure grounds, natural areas (water, wood -> forest, ...),
  and the sea, rebuilt from ``natural=coastline`` (water lies to the right of a coastline way);
- named POIs with a category (``amenity`` > ``shop`` > ``tourism`` > ``leisure`` > stops);
- single trees (``natural=tree``, and points every 8 m along ``natural=tree_row``).

Lists are sorted by id, so the same PBF always gives the same region.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, MultiPolygon, Polygon, box
from shapely.ops import polygonize, unary_union

from geotextloc.data.embedded.scene import POI, Area, Building, Rail, Region, Road
from geotextloc.errors import DataError

LEVEL_HEIGHT_M = 3.2  # storey height used for building:levels -> metres
RAIL_KINDS = ("tram", "rail", "light_rail", "subway", "narrow_gauge")
POI_KEYS = ("amenity", "shop", "tourism", "leisure", "railway", "public_transport", "highway")
#: Categories never shown as landmarks: street furniture and infrastructure without a sign.
POI_SKIP = {
    "bench", "waste_basket", "bicycle_parking", "post_box", "vending_machine", "recycling",
    "drinking_water", "parking_entrance", "toilets", "clock", "telephone", "loading_dock",
    "parking_space", "motorcycle_parking", "grit_bin", "bbq", "shelter", "picnic_table",
}
#: Default carriageway width (m) per highway class when neither width nor lanes are tagged.
ROAD_WIDTH_M = {
    "motorway": 11.0, "trunk": 10.0, "primary": 9.0, "secondary": 8.0, "tertiary": 7.0,
    "residential": 6.0, "unclassified": 6.0, "living_street": 5.0, "service": 4.0,
    "pedestrian": 6.0, "footway": 2.0, "cycleway": 2.0, "path": 1.5, "steps": 2.0, "track": 3.0,
}
LANE_WIDTH_M = 3.25
#: Typical number of storeys (low, high) per building=* value, for untagged buildings.
LEVELS_BY_KIND = {
    "house": (1, 2), "detached": (1, 2), "semidetached_house": (1, 2), "residential": (1, 2),
    "terrace": (2, 3), "bungalow": (1, 1), "garage": (1, 1), "garages": (1, 1), "shed": (1, 1),
    "roof": (1, 1), "hut": (1, 1), "carport": (1, 1), "kiosk": (1, 1), "greenhouse": (1, 1),
    "industrial": (1, 3), "warehouse": (1, 2), "retail": (2, 4), "commercial": (3, 6),
    "office": (4, 8), "apartments": (4, 8), "block": (4, 7), "hotel": (5, 8),
    "church": (3, 6), "cathedral": (5, 8), "public": (3, 6), "university": (3, 6),
    "school": (2, 4), "kindergarten": (1, 2), "train_station": (2, 4),
}
DEFAULT_LEVELS = (3, 7)


def stable_unit(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (SHA-256), independent of Python's hash seed."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def _float(value) -> float | None:
    """First number in a tag value (``"12 m"``, ``"3;4"``, ``"3,5"``), or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    match = re.search(r"\d+(?:[.,]\d+)?", str(value))
    return float(match.group().replace(",", ".")) if match else None


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _levels_by_footprint(area_m2: float) -> tuple[int, int]:
    """Storey range of an untyped building (``building=yes``) from its footprint."""
    if area_m2 < 60:
        return 1, 1
    if area_m2 < 250:
        return 1, 2
    if area_m2 < 800:
        return 2, 4
    return DEFAULT_LEVELS


def building_height(building_id: str, kind: str, levels: int | None, height: float | None,
                    footprint_m2: float = 1000.0) -> float:
    """Height in metres: the ``height`` tag, else ``levels * 3.2 + 1``, else a deterministic
    number of storeys in the kind's typical range (or the footprint's, for ``building=yes``),
    drawn from the id."""
    if height is not None and 2.0 <= height <= 400.0:
        return round(height, 1)
    if levels is None:
        low, high = LEVELS_BY_KIND.get(kind) or _levels_by_footprint(footprint_m2)
        levels = low + int(stable_unit(f"levels:{building_id}") * (high - low + 1))
    return round(levels * LEVEL_HEIGHT_M + 1.0, 1)


def road_width(kind: str, lanes: int | None, width: float | None) -> float:
    """Carriageway width: the ``width`` tag, else lanes x 3.25 m, else the class default."""
    if width is not None and 1.0 <= width <= 60.0:
        return round(width, 1)
    if lanes is not None and kind not in ("footway", "cycleway", "path", "steps"):
        return round(lanes * LANE_WIDTH_M, 1)
    return ROAD_WIDTH_M.get(kind.removesuffix("_link"), 5.0)


def poi_category(row) -> str | None:
    """``amenity`` value, ``shop:<value>``, ``tourism`` / ``leisure`` value, or a stop kind."""
    for key in POI_KEYS:
        value = _text(row.get(key))
        if value is None or (value in ("no", "yes") and key not in ("shop", "tourism")):
            continue
        if key == "shop":
            return f"shop:{value}" if value != "yes" else "shop"
        if key == "railway":
            if value in ("tram_stop", "station", "halt", "subway_entrance"):
                return value
            continue
        if key == "public_transport":
            if value in ("platform", "stop_position", "station"):
                return "tram_stop" if "tram" in str(row.get("tags") or "") else "bus_stop"
            continue
        if key == "highway":
            if value == "bus_stop":
                return "bus_stop"
            continue
        return value
    return None


def _polygons(geom) -> list[Polygon]:
    if isinstance(geom, Polygon):
        if geom.area <= 0:
            return []
        if geom.is_valid:
            return [geom]
        fixed = geom.buffer(0)  # self-intersecting rings: repaired, maybe into several parts
        return [p for p in getattr(fixed, "geoms", [fixed]) if isinstance(p, Polygon) and p.is_valid and p.area > 0]
    if isinstance(geom, MultiPolygon):
        return [p for part in geom.geoms for p in _polygons(part)]
    return []


def _lines(geom) -> list[LineString]:
    if isinstance(geom, LineString):
        return [geom] if geom.length > 0 else []
    if isinstance(geom, MultiLineString):
        return [part for part in geom.geoms if part.length > 0]
    return []


def _split_ids(base: str, items: list) -> list[tuple[str, object]]:
    return [(base if len(items) == 1 else f"{base}-{k}", item) for k, item in enumerate(items)]


class _Loader:
    """One PBF file -> projected geometry lists (internal; see :func:`load_region`)."""

    def __init__(self, path: Path):
        import pyrosm  # heavy: imported when a region is actually loaded

        try:
            self.osm = pyrosm.OSM(str(path))
        except Exception as err:  # pyrosm raises its own or ValueError
            raise DataError(f"{path}: cannot read the OSM extract ({err}); give a valid .osm.pbf file") from None
        self.path = path

    def frame(self, what: str, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if what == "network":
                    df = self.osm.get_network(network_type="all")
                elif what == "buildings":
                    df = self.osm.get_buildings()
                elif what == "landuse":
                    df = self.osm.get_landuse()
                elif what == "natural":
                    df = self.osm.get_natural()
                elif what == "pois":
                    df = self.osm.get_pois(custom_filter=kwargs["custom_filter"])
                else:
                    df = self.osm.get_data_by_custom_criteria(filter_type="keep", **kwargs)
            except Exception as err:
                raise DataError(f"{self.path}: cannot parse {what} from the OSM extract ({err}); "
                                "give a valid .osm.pbf file") from None
        if df is None or len(df) == 0:
            return []
        records = df.to_dict("records")
        return sorted(records, key=lambda r: (str(r.get("osm_type", "")), int(r["id"])))


def _rid(row) -> str:
    return f"{str(row.get('osm_type') or 'way')[0]}{int(row['id'])}"


def _extend(line: LineString, by: float = 150.0) -> LineString:
    """``line`` with both open ends prolonged ``by`` metres, to reach the extract border."""
    coords = np.asarray(line.coords)
    if line.is_closed or len(coords) < 2:
        return line
    def ahead(a, b):
        d = b - a
        return b + d / max(np.hypot(*d), 1e-9) * by
    return LineString([ahead(coords[1], coords[0]), *coords, ahead(coords[-2], coords[-1])])


def sea_polygons(coastlines: list[LineString], frame: Polygon) -> list[Polygon]:
    """Sea polygons: faces of (coastlines + frame) where water probes outnumber land probes.

    OSM draws coastlines with the land on the left and the water on the right; a probe
    0.5 m right (left) of each segment marks water (land). Extract clipping leaves coastline
    ends on the extract border, which is why ``frame`` is the bounding box of all data, and
    the open ends are prolonged to reach it. A vote, not a veto: where two coastline pieces
    run closer than a metre (a pier, a breakwater), or a prolonged end cuts across a bay, a
    few probes land in the wrong face, and one stray land probe must not turn a sea of
    thousands of water probes into land (Monaco's extract).
    """
    if not coastlines:
        return []
    faces = list(polygonize(unary_union([*map(_extend, coastlines), frame.exterior]).intersection(frame)))
    mids, offsets = [], []
    for line in coastlines:
        c = np.asarray(line.coords)
        d = c[1:] - c[:-1]
        norm = np.hypot(d[:, 0], d[:, 1])
        ok = norm > 1.0
        mids.append((c[1:] + c[:-1])[ok] / 2)
        offsets.append(np.column_stack([d[ok, 1], -d[ok, 0]]) / norm[ok, None] * 0.5)
    mid, off = np.concatenate(mids), np.concatenate(offsets)
    water, land = mid + off, mid - off
    return [f for f in faces
            if np.count_nonzero(shapely.contains_xy(f, water[:, 0], water[:, 1]))
            > np.count_nonzero(shapely.contains_xy(f, land[:, 0], land[:, 1]))]


def load_region(path: str | Path, name: str, require_pois: bool = True) -> Region:
    """Read ``path`` (an ``.osm.pbf``) into a :class:`Region` named ``name``, in local metres.

    Raises :class:`DataError` for a missing/unreadable file, an extract without usable
    streets, and (unless ``require_pois=False``) an extract without named POIs.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: OSM extract not found; give the path of an existing .osm.pbf file")
    loader = _Loader(path)

    network = [r for r in loader.frame("network") if _text(r.get("highway"))]
    lines = [(r, ln) for r in network for ln in _lines(r.get("geometry"))]
    if not lines:
        raise DataError(f"{path}: the extract has no streets (highway=* ways); give an extract of a built-up area")
    minx, miny, maxx, maxy = shapely.total_bounds([ln for _, ln in lines])
    region = Region(name=name, lat0=round((miny + maxy) / 2, 7), lon0=round((minx + maxx) / 2, 7))
    k = math.pi / 180.0 * 6_371_000.0
    kx = k * math.cos(math.radians(region.lat0))

    def project(geom):
        return shapely.transform(
            geom, lambda c: np.column_stack([(c[:, 0] - region.lon0) * kx, (c[:, 1] - region.lat0) * k])
        )

    for row, line in lines:
        for rid, part in _split_ids(_rid(row), _lines(project(line))):
            kind = str(row["highway"])
            lanes_f = _float(row.get("lanes"))
            lanes = int(lanes_f) if lanes_f and 1 <= lanes_f <= 12 else None
            oneway = str(row.get("oneway") or "").lower() in ("yes", "true", "1", "-1")
            if str(row.get("oneway") or "") == "-1":
                part = part.reverse()
            width = road_width(kind, lanes, _float(row.get("width")) or _float(row.get("est_width")))
            region.roads.append(Road(rid, part, kind, _text(row.get("name")), lanes, width, oneway))
    if not any(road.kind in DRIVABLE for road in region.roads):
        raise DataError(f"{path}: the extract has no usable streets (only paths/footways); "
                        "give an extract of a built-up area")

    for row in loader.frame("buildings"):
        levels_f = _float(row.get("building:levels"))
        levels = int(round(levels_f)) if levels_f and 1 <= levels_f <= 100 else None
        kind = _text(row.get("building")) or "yes"
        for bid, poly in _split_ids(_rid(row), _polygons(project(row["geometry"]))):
            height = building_height(bid, kind, levels, _float(row.get("height")), poly.area)
            region.buildings.append(Building(bid, poly, height, levels, kind, _text(row.get("name"))))

    rails = loader.frame("rail", custom_filter={"railway": list(RAIL_KINDS)}, keep_nodes=False,
                         keep_relations=False)
    for row in rails:
        kind = _text(row.get("railway"))
        if kind in RAIL_KINDS:
            for rid, part in _split_ids(_rid(row), _lines(project(row["geometry"]))):
                region.rails.append(Rail(rid, part, kind))

    _load_areas(loader, region, project)
    coast = [ln for r in loader.frame("coastline", custom_filter={"natural": ["coastline"]},
                                      keep_nodes=False, keep_relations=False)
             for ln in _lines(project(r["geometry"]))]
    frame = box(*shapely.total_bounds([r.line for r in region.roads] + coast))
    for k_sea, poly in enumerate(sea_polygons(coast, frame)):
        region.areas.append(Area(f"sea-{k_sea}", poly, "water", None))

    _load_pois(loader, region, project)
    if require_pois and not region.pois:
        raise DataError(f"{path}: the extract has no named POIs (shops, amenities, stops); "
                        "give a denser extract or pass --allow-no-pois")
    return region


DRIVABLE = {
    "motorway", "trunk", "primary", "secondary", "tertiary", "residential", "unclassified",
    "living_street", "pedestrian", "service", "motorway_link", "trunk_link", "primary_link",
    "secondary_link", "tertiary_link",
}
#: land use / natural / leisure value -> Area.kind
AREA_KINDS = {
    "grass": "grass", "meadow": "grass", "village_green": "grass", "recreation_ground": "park",
    "park": "park", "garden": "park", "playground": "playground", "pitch": "pitch",
    "forest": "forest", "wood": "forest", "scrub": "scrub", "heath": "scrub", "wetland": "scrub",
    "water": "water", "basin": "water", "reservoir": "water", "pond": "water", "bay": "water",
    "riverbank": "water", "residential": "residential", "commercial": "commercial",
    "retail": "commercial", "industrial": "industrial", "construction": "construction",
    "railway": "railway", "cemetery": "cemetery", "farmland": "farmland", "farmyard": "farmland",
    "greenhouse_horticulture": "farmland", "bare_rock": "rock", "civil": "civic", "military": "civic",
    "parking": "parking", "pedestrian": "pedestrian", "allotments": "park", "dog_park": "park",
}


def _load_areas(loader: _Loader, region: Region, project) -> None:
    sources = [("landuse", loader.frame("landuse")), ("natural", loader.frame("natural")),
               ("leisure", loader.frame("leisure", custom_filter={"leisure": True}, keep_nodes=False)),
               ("waterway", loader.frame("waterway", custom_filter={"waterway": ["riverbank"]}, keep_nodes=False)),
               ("amenity", loader.frame("parking", custom_filter={"amenity": ["parking"]}, keep_nodes=False)),
               ("highway", loader.frame("squares", custom_filter={"highway": ["pedestrian"]}, keep_nodes=False))]
    seen: set[str] = set()
    for key, rows in sources:
        for row in rows:
            kind = AREA_KINDS.get(str(row.get(key)))
            if kind is None:
                continue
            for aid, poly in _split_ids(_rid(row), _polygons(project(row["geometry"]))):
                if aid in seen or poly.area < 20.0:
                    continue
                seen.add(aid)
                region.areas.append(Area(aid, poly, kind, _text(row.get("name"))))
    for row in loader.frame("natural"):
        if row.get("natural") == "tree":
            region.trees.append(project(row["geometry"]).representative_point())
        elif row.get("natural") == "tree_row":
            for line in _lines(project(row["geometry"])):
                n = max(1, int(line.length // 8.0))
                region.trees.extend(line.interpolate(i / n, normalized=True) for i in range(n + 1))
    region.areas.sort(key=lambda a: a.id)


def _load_pois(loader: _Loader, region: Region, project) -> None:
    flt = {"amenity": True, "shop": True, "tourism": True, "leisure": True,
           "public_transport": ["platform", "stop_position", "station"], "highway": ["bus_stop"],
           "railway": ["tram_stop", "station", "halt"]}
    tree = shapely.STRtree([b.polygon for b in region.buildings]) if region.buildings else None
    kept: list[POI] = []
    for row in loader.frame("pois", custom_filter=flt):
        name, category = _text(row.get("name")), poi_category(row)
        if name is None or category is None or category in POI_SKIP:
            continue
        point = project(row["geometry"]).representative_point()
        if any(p.name == name and p.category == category and p.point.distance(point) < 40 for p in kept):
            continue  # the same stop/shop mapped twice (node + platform way)
        building_id = None
        if tree is not None and not category.endswith("_stop"):
            idx = tree.query_nearest(point, max_distance=12.0)
            if len(idx):
                building_id = region.buildings[int(idx[0])].id
        kept.append(POI(_rid(row), point, name, category, building_id))
    region.pois = sorted(kept, key=lambda p: p.id)
