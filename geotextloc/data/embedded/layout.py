"""Where an embedded dataset keeps each location's files, and how they are named.

Names follow the CVG-Text release: ``<lat>,<lon>_<date>_<id>_d<heading>_z3.jpg`` for a
panorama location, ``<lat>,<lon>_<id>s.jpg`` for a single-view one; ``<City>-mixed`` takes one
of the two per location. Images live in ``<out>/<version>-<folder>/``, facts in
``<out>/facts/<Region>/<id>.json``.
"""

from __future__ import annotations

from pathlib import Path

from geotextloc.data.embedded.osm import stable_unit
from geotextloc.data.embedded.scene import Location
from geotextloc.text import describe as dsc

CAPTURE_DATE = "2024-06"  # the date field of panorama names (the extracts' vintage)
DRONE_FOOTPRINT_M = (80.0, 180.0)  # GeoLoc's reverse-crop scales
IMAGE_EXT = {"satellite": ".jpg", "osm": ".png", "street": ".jpg", "drone": ".jpg"}  # OSM: sharp labels


def coord_prefix(loc: Location) -> str:
    return f"{loc.lat:.8f},{loc.lon:.8f}"


def panorama_name(loc: Location) -> str:
    return f"{coord_prefix(loc)}_{CAPTURE_DATE}_{loc.id}_d{int(round(loc.heading)) % 360}_z3.jpg"


def single_name(loc: Location) -> str:
    return f"{coord_prefix(loc)}_{loc.id}s.jpg"


def mixed_view(loc: Location, seed: int) -> str:
    """The text kind a location has in ``<City>-mixed``: panorama or single, half each.

    The public release's ``-mixed`` versions merge panorama and single-view locations, which
    lie at different places. Our locations carry both kinds, so ``-mixed`` takes one kind per
    location (fixed by its id): no two gallery tiles of ``-mixed`` share their coordinates.
    """
    return dsc.PANORAMA if stable_unit(f"mixed:{seed}:{loc.region}:{loc.id}") < 0.5 else dsc.SINGLE


def mixed_name(loc: Location, seed: int) -> str:
    return panorama_name(loc) if mixed_view(loc, seed) == dsc.PANORAMA else single_name(loc)


def drone_params(loc: Location, seed: int) -> tuple[float, float]:
    """(footprint m, rotation deg), fixed per location: 80-180 m as in GeoLoc's reverse crops."""
    lo, hi = DRONE_FOOTPRINT_M
    footprint = round(lo + (hi - lo) * stable_unit(f"drone-footprint:{seed}:{loc.region}:{loc.id}"))
    rotation = round(360.0 * stable_unit(f"drone-rotation:{seed}:{loc.region}:{loc.id}"), 1)
    return float(footprint), rotation


def location_id(name: str) -> str:
    """The location id in a panorama or single-view name (:func:`panorama_name`, :func:`single_name`)."""
    fields = Path(name).stem.split("_")
    return fields[2] if len(fields) > 2 else fields[-1].removesuffix("s")


def image_paths(out: Path, loc: Location, seed: int = 0, cities: tuple[str, ...] = ()) -> dict[str, Path]:
    """Every image file of ``loc`` under ``out``: ``<version>:<kind>`` -> path, for the versions
    of each release city in ``cities`` (default: the region's, ``<City>``). Files are named
    as the annotation key (``.jpg``) but for the OSM tiles (``.png``, same stem: the release
    reader accepts another image extension for a key)."""
    pano, single = panorama_name(loc), single_name(loc)
    paths = {}
    for city in cities or (loc.region,):
        for version, name in ((city, pano), (f"{city}-photos", single), (f"{city}-mixed", mixed_name(loc, seed))):
            for kind, folder in (("satellite", "satellite"), ("osm", "OSM"), ("street", "street"), ("drone", "drone")):
                paths[f"{version}:{kind}"] = (out / f"{version}-{folder}" / name).with_suffix(IMAGE_EXT[kind])
    return paths


def facts_path(out: Path, loc: Location) -> Path:
    return out / "facts" / loc.region / f"{loc.id}.json"
