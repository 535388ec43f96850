"""Scene facts, sampling, split and OSM loading of the embedded dataset."""

from __future__ import annotations

import math

import pyrosm
import pytest
from shapely.geometry import LineString, Point, box

from geotextloc.data.embedded import facts as F
from geotextloc.data.embedded import places, sampling
from geotextloc.data.embedded.builder import BuildSettings
from geotextloc.data.embedded.osm import building_height, load_region
from geotextloc.data.embedded.scene import POI, Area, Building, Location, Region, Road
from geotextloc.errors import DataError


@pytest.mark.parametrize("bearing,heading,expected", [
    (90, 0, "right"),     # a POI east of a location heading north is on the right
    (270, 0, "left"),
    (0, 0, "front"),
    (180, 0, "back"),
    (0, 90, "left"),      # heading east, north is on the left
    (180, 90, "right"),
    (350, 10, "front"),   # wraps around north
    (100, 350, "right"),
    (45, 0, "front"),     # boundaries: |r| = 45 is front, r = 135 is right, r = -135 is left
    (135, 0, "right"),
    (225, 0, "left"),
])
def test_relative_direction(bearing, heading, expected):
    assert F.relative_direction(bearing, heading) == expected


def _toy_region() -> tuple[Region, Location]:
    """A north-south street at x = 0 with a cafe 20 m east, a shop 30 m ahead, a kiosk hidden
    behind a building to the west, and a park to the west."""
    region = Region("Toy", 60.0, 25.0)
    region.roads = [  # OSM ways share the junction node
        Road("w1", LineString([(0, -200), (0, 60), (0, 200)]), "residential", "Testikatu", 2, 6.5),
        Road("w2", LineString([(-100, 60), (0, 60), (100, 60)]), "residential", "Poikkikatu"),
    ]
    region.buildings = [
        Building("w10", box(15, -10, 30, 10), 13.8, 4),          # east: carries the cafe
        Building("w11", box(-30, -10, -15, 10), 7.4, None),      # west: hides the kiosk
    ]
    region.pois = [
        POI("n1", Point(20, 0), "Kahvila Aurinko", "cafe", "w10"),
        POI("n2", Point(5, 30), "Kirjakauppa", "shop:books", None),
        POI("n3", Point(-40, 0), "Piilokioski", "shop:kiosk", None),
    ]
    region.areas = [Area("w20", box(-80, 20, -50, 50), "park", "Testipuisto")]
    x, y = 0.0, 0.0
    lat, lon = region.to_latlon(x, y)
    return region, Location("toy000000", "Toy", x, y, lat, lon, 0.0, "w1")


def test_scene_facts_directions_visibility_and_single_view():
    region, loc = _toy_region()
    facts = F.scene_facts(region, loc)
    pois = {p["name"]: p for p in facts["pois"]}
    assert pois["Kahvila Aurinko"]["direction"] == "right"
    assert pois["Kahvila Aurinko"]["bearing"] == 90
    assert pois["Kahvila Aurinko"]["visible"]  # its own building does not hide it
    assert pois["Kirjakauppa"]["direction"] == "front" and pois["Kirjakauppa"]["in_view"]
    assert pois["Piilokioski"]["direction"] == "left" and not pois["Piilokioski"]["visible"]
    assert facts["single_view"]["pois"] == ["n2"]  # only what the 90° crop towards north shows
    assert facts["street"] == {"name": "Testikatu", "kind": "residential", "lanes": 2, "width_m": 6.5,
                               "oneway": False}
    inter = facts["intersections"][0]
    assert inter["streets"] == ["Poikkikatu"] and inter["direction"] == "front"
    assert math.isclose(inter["distance_m"], 60.0)
    assert facts["buildings"]["by_side"]["right"] == 1 and facts["buildings"]["by_side"]["left"] == 1
    park = [a for a in facts["areas"] if a["kind"] == "park"][0]
    assert park["name"] == "Testipuisto" and park["direction"] == "left"


def test_heading_turns_directions():
    region, loc = _toy_region()
    south = Location(loc.id, loc.region, loc.x, loc.y, loc.lat, loc.lon, 180.0, loc.road_id)
    pois = {p["name"]: p for p in F.scene_facts(region, south)["pois"]}
    assert pois["Kahvila Aurinko"]["direction"] == "left"
    assert pois["Kirjakauppa"]["direction"] == "back"


def test_sampling_spacing_heading_and_ids():
    region = Region("Testberg", 60.0, 25.0)
    region.roads = [Road("w2", LineString([(0, 0), (200, 0)]), "primary", "Itäkatu"),
                    Road("w1", LineString([(0, 5), (200, 5)]), "primary", "Itäkatu"),  # other carriageway
                    Road("w3", LineString([(0, 50), (0, 250)]), "footway")]           # not a street
    locs = sampling.sample_locations(region, spacing=25.0)
    assert [loc.id for loc in locs] == [f"tes{i:06d}" for i in range(len(locs))]
    assert all(loc.road_id == "w1" for loc in locs)  # w1 first (id order); w2's twins dropped
    assert len(locs) == 8
    xs = [loc.x for loc in locs]
    assert xs == pytest.approx([12.5 + 25 * i for i in range(8)])
    assert all(loc.heading == 90.0 for loc in locs)  # drawn west -> east: heading east
    assert locs == sampling.sample_locations(region, spacing=25.0)


def test_split_has_a_quarter_in_test_and_a_buffer():
    region = Region("Grid", 60.0, 25.0)
    region.roads = [Road(f"w{i:03d}", LineString([(i * 50, 0), (i * 50, 1500)]), "residential") for i in range(31)]
    settings = BuildSettings(seed=3, min_test_places=0)
    plan = places.plan_region(region, settings)
    assert plan.splits == places.plan_region(region, settings).splits
    paper = plan.splits["Grid"]
    test = [plan.places[i] for i, s in paper.items() if s == "test"]
    train = [plan.places[i] for i, s in paper.items() if s == "train"]
    assert 0.2 <= len(test) / (len(test) + len(train)) <= 0.35
    street_test = plan.locations("Grid-25m")
    nearest = min(math.hypot(a.x - b.x, a.y - b.y) for a in train for b in test + street_test)
    assert nearest >= 60.0  # no train tile overlaps a test tile of either benchmark
    floor = places.plan_region(region, BuildSettings(seed=3, min_test_places=100)).splits["Grid"]
    assert sum(s == "test" for s in floor.values()) >= 100  # small regions: at least min_test_places


def test_building_height_is_tagged_or_deterministic():
    assert building_height("w1", "yes", 5, None) == pytest.approx(5 * 3.2 + 1)
    assert building_height("w1", "yes", 5, 22.0) == 22.0
    h = building_height("w123", "house", None, None)
    assert h == building_height("w123", "house", None, None) and h <= 2 * 3.2 + 1


@pytest.fixture(scope="module")
def kouvola():
    return load_region(pyrosm.get_data("test_pbf"), "Kouvola")


def test_load_kouvola_in_local_metres(kouvola):
    assert len(kouvola.roads) > 100 and len(kouvola.buildings) > 1000 and kouvola.pois
    assert all(r.width_m > 0 for r in kouvola.roads)
    xs = [b.polygon.centroid.x for b in kouvola.buildings]
    assert -1500 < min(xs) < 0 < max(xs) < 1500  # projected around the centre, metres
    ids = [b.id for b in kouvola.buildings]  # sorted by element type, then OSM id
    assert ids == sorted(ids, key=lambda i: (i[0], int(i[1:].split("-")[0]), i))
    assert all(p.name for p in kouvola.pois)
    assert {"bus_stop"} <= {p.category for p in kouvola.pois}


def test_bad_extracts_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_region(tmp_path / "missing.osm.pbf", "X")
    garbage = tmp_path / "garbage.osm.pbf"
    garbage.write_bytes(b"this is not a pbf")
    with pytest.raises(DataError, match="cannot read"):
        load_region(garbage, "X")

    osm = pyrosm.OSM(pyrosm.get_data("test_pbf"))
    no_streets = tmp_path / "buildings-only.osm.pbf"
    osm.write_pbf(osm.get_buildings(), no_streets, subset_only=True)
    with pytest.raises(DataError, match="no .*streets"):
        load_region(no_streets, "X")

    osm = pyrosm.OSM(pyrosm.get_data("test_pbf"))
    no_pois = tmp_path / "streets-only.osm.pbf"
    osm.write_pbf(osm.get_network(network_type="all"), no_pois, subset_only=True)
    with pytest.raises(DataError, match="no named POIs"):
        load_region(no_pois, "X")
    region = load_region(no_pois, "X", require_pois=False)
    assert region.roads and not region.pois
