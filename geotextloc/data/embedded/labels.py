"""The names an OSM tile of a built embedded place prints, read from the place's scene facts.

A rendered OSM tile labels its street and the named places (shops, stops, parks, water) that
fall inside it. The map-label baseline (:mod:`geotextloc.eval.baselines`) pretends it could
read them perfectly: the street name, and every named POI or area of the place's facts whose
position (distance and compass bearing from the camera) lies within half the tile footprint
east-west and north-south.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from geotextloc.data.embedded import builder, places
from geotextloc.errors import DataError


def facts_record(out: str | Path, city: str, name: str) -> dict:
    """The facts record of the place named ``name`` in release city ``city`` (``Helsinki``,
    ``Helsinki-25m``, ``Helsinki-dense``...) of the built dataset ``out``."""
    region = places.region_of(city)
    folder = Path(out) / "facts" / (city if city.endswith("-dense") else region)
    path = folder / f"{builder.location_id(name)}.json"
    if not path.is_file():
        raise DataError(f"{path}: facts of {name!r} not found; the map-label baseline needs an embedded dataset "
                        "built by geotextloc data build-embedded")
    return json.loads(path.read_text(encoding="utf-8"))


def tile_labels(facts: dict, footprint_m: float) -> list[str]:
    """The names printed on the tile: the street, then named POIs and areas inside the footprint."""
    half = footprint_m / 2.0
    labels = [facts["street"]["name"]] if facts["street"].get("name") else []
    for item in facts["pois"] + facts["areas"]:
        east = item["distance_m"] * math.sin(math.radians(item["bearing"]))
        north = item["distance_m"] * math.cos(math.radians(item["bearing"]))
        if item.get("name") and abs(east) <= half and abs(north) <= half:
            labels.append(item["name"])
    return labels


def place_labels(out: str | Path, city: str, name: str) -> str:
    """The labels of the place ``name``'s tile as one string (see :func:`tile_labels`)."""
    rec = facts_record(out, city, name)
    return " ".join(tile_labels(rec["facts"], rec.get("views", {}).get("tile_footprint_m", builder.TILE_FOOTPRINT_M)))
