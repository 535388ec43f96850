"""The embedded region's street views, satellite tiles and aerial facts, for the GeoLoc builder offline.

``geotextloc data build-geoloc`` asks a *street source* for the panorama nearest to each seed
and a *satellite source* for the tile at each kept location
(:mod:`geotextloc.data.geoloc_sources`). Offline, on a synthetic orthophoto of an embedded
region (:mod:`~geotextloc.data.embedded.orthophoto`), these two answer from the region itself:

- :class:`EmbeddedStreets`: the capture points are street places every ``spacing_m`` (10 m)
  along the region's streets (:func:`~geotextloc.data.embedded.sampling.sample_locations`, the
  heading along the street), like a street-view car's; a lookup returns the nearest within the
  search radius (the Street View API's ``radius``, 50 m), its image is the street renderer's
  panorama (:func:`~geotextloc.data.embedded.render_street.render_panorama`) and its notes the
  offline describer's text of its scene facts (the signs the panorama shows);
- :class:`EmbeddedSatellite`: the satellite renderer's north-up tile around the location, its
  notes :func:`aerial_facts` over the tile.

:func:`aerial_facts` says what a view from above shows of a square footprint: the kinds of
roads crossing it and where they meet, rails, buildings (count, the largest footprint, tall
ones), water, parks, woods, fields and parking. No names: they are not visible from above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from shapely.geometry import box

from geotextloc.data.embedded.layout import CAPTURE_DATE
from geotextloc.data.embedded.sampling import STREET_KINDS, sample_locations
from geotextloc.data.embedded.scene import Location, Region

STREET_SPACING_M = 10.0  # capture points along the streets (Street View: roughly every 10 m)
ROAD_WORDS = {"motorway": "motorway", "trunk": "main road", "primary": "main road", "secondary": "road",
              "tertiary": "road", "residential": "residential street", "unclassified": "road",
              "living_street": "residential street", "pedestrian": "pedestrian street", "service": "service road"}
AREA_WORDS = {"water": "water", "park": "park", "garden": "garden", "forest": "forest", "wood": "forest",
              "grass": "open field", "meadow": "open field", "farmland": "open field", "parking": "parking area",
              "cemetery": "cemetery", "pitch": "sports field", "playground": "playground",
              "construction": "construction site", "industrial": "industrial area", "railway": "railway yard"}
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Panorama:
    """A street-view capture: ``id`` (the provider's panorama id), where it was taken (WGS 84),
    the heading of its centre column, the capture month and what served it."""

    id: str
    lat: float
    lon: float
    heading: float
    date: str
    provider: str


def _count(n: int, word: str) -> str:
    return f"{NUMBERS[n] if n < len(NUMBERS) else n} {word}{'' if n == 1 else 's'}"


def aerial_facts(region: Region, x: float, y: float, size_m: float) -> list[str]:
    """Sentences about what the ``size_m`` square around local (x, y) shows from above (module docstring)."""
    square = box(x - size_m / 2, y - size_m / 2, x + size_m / 2, y + size_m / 2)
    facts: list[str] = []
    kinds: dict[str, int] = {}
    lines = []
    for road in region.roads:
        if road.kind in ROAD_WORDS and road.line.intersects(square):
            word = ROAD_WORDS[road.kind]
            kinds[word] = kinds.get(word, 0) + 1
            lines.append(road.line.intersection(square))
    if kinds:
        parts = [_count(n, w) for w, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
        facts.append(f"{(', '.join(parts[:-1]) + ' and ' + parts[-1]) if len(parts) > 1 else parts[0]} "
                     f"cross{'es' if len(parts) == 1 and parts[0].startswith('one ') else ''} the area".capitalize())
        meets = sum(1 for i, a in enumerate(lines) for b in lines[i + 1:] if a.intersects(b))
        if meets:
            facts.append("The roads meet at an intersection" if meets == 1 else "The roads form several intersections")
    if any(rail.line.intersects(square) for rail in region.rails):
        facts.append("A railway line runs through the area")
    inside = [b for b in region.buildings if b.polygon.intersects(square)]
    if inside:
        largest = max(inside, key=lambda b: b.polygon.area)
        text = f"{_count(len(inside), 'building')} stand here".capitalize()
        if largest.polygon.area >= 800:
            text += f", the largest a block of about {round(largest.polygon.area, -2):.0f} square metres"
        facts.append(text)
        tall = sum(1 for b in inside if b.height_m >= 15)
        if tall:
            facts.append(f"{_count(tall, 'building')} of four or more floors".capitalize())
    else:
        facts.append("There are no buildings in this area")
    covered: dict[str, float] = {}
    for area in region.areas:
        word = AREA_WORDS.get(area.kind)
        if word and area.polygon.intersects(square):
            covered[word] = covered.get(word, 0.0) + area.polygon.intersection(square).area / square.area
    for word, share in sorted(covered.items(), key=lambda kv: -kv[1]):
        if share >= 0.05:
            facts.append(f"{'Most of the area is' if share >= 0.5 else 'Part of the area is'} "
                         f"{'' if word == 'water' else 'an ' if word[0] in 'aeiou' else 'a '}{word}")
    return facts


class EmbeddedStreets:
    """Street views of an embedded region (module docstring); the offline street source."""

    name = "embedded"
    attribution = "rendered by geotextloc's street renderer from OpenStreetMap data (ODbL)"

    def __init__(self, region: Region, size: tuple[int, int] = (512, 256), spacing_m: float = STREET_SPACING_M,
                 seed: int = 0):
        from scipy.spatial import cKDTree

        self.region, self.size, self.seed = region, size, seed
        self.places = {loc.id: loc for loc in sample_locations(region, spacing_m, STREET_KINDS)}
        self._ids = list(self.places)
        xy = np.array([(loc.x, loc.y) for loc in self.places.values()], float).reshape(-1, 2)
        self._tree = cKDTree(xy) if len(xy) else None

    def lookup(self, lon: float, lat: float, radius_m: float) -> Panorama | None:
        """The capture point nearest to (lon, lat) within ``radius_m``, or None."""
        if self._tree is None:
            return None
        dist, i = self._tree.query(self.region.to_xy(lat, lon))
        if not math.isfinite(dist) or dist > radius_m:
            return None
        loc = self.places[self._ids[int(i)]]
        return Panorama(loc.id, loc.lat, loc.lon, loc.heading, CAPTURE_DATE, self.name)

    def view(self, pano: Panorama) -> tuple[Image.Image, str]:
        """(panorama image, notes): the rendered panorama and the offline describer's text of
        its scene facts (what its signs, street and surroundings show)."""
        from geotextloc.data.embedded.facts import scene_facts
        from geotextloc.data.embedded.render_street import render_panorama
        from geotextloc.text import describe as dsc

        loc = self.places[pano.id]
        image = render_panorama(self.region, loc, self.size[0], self.size[1], self.seed)
        facts = scene_facts(self.region, loc, signs=image.info.get("signs"))
        return image, dsc.describe(facts, dsc.PANORAMA, dsc.FULL, self.seed).text


class EmbeddedSatellite:
    """North-up satellite tiles of an embedded region; the offline satellite source."""

    name = "embedded"
    attribution = "rendered by geotextloc's satellite renderer from OpenStreetMap data (ODbL)"

    def __init__(self, region: Region, side_m: float = 120.0, size_px: int = 256, seed: int = 0):
        self.region, self.side_m, self.size_px, self.seed = region, side_m, size_px, seed

    def footprint_m(self, lat: float) -> float:
        return self.side_m

    def view(self, pano: Panorama) -> tuple[Image.Image, list[str]]:
        from geotextloc.data.embedded.render_aerial import render_satellite

        x, y = self.region.to_xy(pano.lat, pano.lon)
        loc = Location(pano.id, self.region.name, x, y, pano.lat, pano.lon, pano.heading, "")
        image = render_satellite(self.region, loc, self.size_px, self.side_m, self.seed)
        return image, aerial_facts(self.region, x, y, self.side_m)
