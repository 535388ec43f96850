"""Which street places a region releases, in which benchmark and split.

Every region gives two benchmarks, both cut from the street places sampled every ``spacing``
metres (25 m) along the streets (:func:`~geotextloc.data.embedded.sampling.sample_locations`):

* **paper density** (versions ``<City>``, ``<City>-photos``, ``<City>-mixed``): released
  places at least ``separation_m`` (100 m) apart, train and test, like CVG-Text's places
  (~300 m apart). A 60 m tile then shares nothing with its neighbours' tiles (they would
  need centres under 60 * sqrt(2) = 85 m apart), and a description, which names places up to
  60 m away, rarely names one printed on a neighbour's tile (60 m + 42 m, half the tile
  diagonal). R@1 is the headline metric.
* **street level** (versions ``<City>-25m``, ``<City>-25m-photos``, ``<City>-25m-mixed``,
  :func:`street_city`): every street place of the test area, ``spacing`` apart; test only
  (training uses the paper-density train split and the dense places). Neighbouring tiles
  overlap by more than half, so L@50 / L@100 are its headline metrics.

The rule (``settings`` are the build's :class:`~geotextloc.data.embedded.builder.BuildSettings`):

1. the region is cut into ``block_m`` squares, shuffled by SHA-256 of (seed, region, block);
2. blocks go to the test area one by one until it holds ``max(test_fraction * P,
   min_test_places)`` of the P places of a Poisson-disk subset of all the region's street
   places, capped at :data:`MAX_TEST_SHARE` * P: small regions (Helsinki) put most of their
   places in test to reach a usable number of test queries;
3. paper-density test places: a Poisson-disk subset (:func:`~geotextloc.data.embedded.sampling.thin`)
   of the test area's street places (it packs a few more places than the count of step 2);
4. paper-density train places: a Poisson-disk subset of the street places outside the test
   area and at least ``buffer_m`` (one tile footprint) from every street place of the test
   area, kept ``separation_m`` from the test places too; street places of the training area
   nearer than ``buffer_m`` are *excluded* (nobody's);
5. street-level test places: the test area's street places, whole blocks in the order of
   step 1 up to ``street_test_places`` per region (None: all).

So every test place of either benchmark lies at least ``buffer_m`` from every training place,
and ``geotextloc data densify`` keeps its dense training places that far from them too.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from geotextloc.data.embedded import sampling
from geotextloc.data.embedded.scene import Location, Region
from geotextloc.errors import DataError

TRAIN, TEST = sampling.TRAIN, sampling.TEST
MAX_TEST_SHARE = 0.8  # at most this share of a region's paper-density places is test


def street_city(city: str, spacing: float = sampling.DEFAULT_SPACING_M) -> str:
    """The street-level benchmark's name: ``Helsinki`` -> ``Helsinki-25m`` (the spacing in metres)."""
    return f"{city}-{spacing:g}m"


def region_of(city: str) -> str:
    """The region of a release city: ``Helsinki-25m`` / ``Helsinki-dense`` / ``Helsinki`` -> ``Helsinki``."""
    return re.sub(r"-(\d+(\.\d+)?m|dense)$", "", city)


@dataclass
class RegionPlan:
    """The places of one region to render and how each benchmark releases them."""

    city: str
    places: dict[str, Location] = field(default_factory=dict)  # id -> place, both benchmarks
    splits: dict[str, dict[str, str]] = field(default_factory=dict)  # release city -> id -> train/test
    counts: dict[str, int] = field(default_factory=dict)  # street places, test area, excluded, ...

    def cities_of(self, loc_id: str) -> tuple[str, ...]:
        """The release cities (``Helsinki``, ``Helsinki-25m``) that hold the place ``loc_id``."""
        return tuple(c for c, split in self.splits.items() if loc_id in split)

    def locations(self, city: str) -> list[Location]:
        return [self.places[i] for i in sorted(self.splits[city])]


def _block_key(seed: int, region: str, block: tuple[int, int]) -> bytes:
    return hashlib.sha256(f"{seed}:{region}:{block[0]}:{block[1]}".encode()).digest()


def plan_region(region: Region, settings, max_places: int | None = None) -> RegionPlan:
    """Both benchmarks of ``region`` (module docstring). ``max_places`` caps the places of the
    region (CI builds): strided subsets of each set, so the street-level places then lie
    further apart than ``spacing``."""
    street = sampling.sample_locations(region, settings.spacing)
    if not street:
        raise DataError(f"region {region.name}: no street locations to sample; "
                        "give an extract with streets (highway=residential, primary, ...)")
    sep, b = settings.separation_m, settings.block_m
    block = {loc.id: (math.floor(loc.x / b), math.floor(loc.y / b)) for loc in street}
    order = sorted(set(block.values()), key=lambda k: _block_key(settings.seed, region.name, k))
    per_block: dict[tuple[int, int], int] = {}
    everywhere = sampling.thin(street, sep)
    for loc in everywhere:
        per_block[block[loc.id]] = per_block.get(block[loc.id], 0) + 1
    target = min(max(math.ceil(settings.test_fraction * len(everywhere)), settings.min_test_places),
                 math.floor(MAX_TEST_SHARE * len(everywhere)))
    test_blocks: list[tuple[int, int]] = []
    held = 0
    for k in order:
        if test_blocks and held >= target:
            break
        test_blocks.append(k)
        held += per_block.get(k, 0)
    rank = {k: i for i, k in enumerate(test_blocks)}
    area = [loc for loc in street if block[loc.id] in rank]
    area_xy = np.array([(loc.x, loc.y) for loc in area])
    outside = [loc for loc in street if block[loc.id] not in rank]
    far = sampling.nearest_distances(np.array([(loc.x, loc.y) for loc in outside]), area_xy) >= settings.buffer_m
    paper_test = sampling.thin(area, sep)
    paper_train = sampling.thin([loc for loc, ok in zip(outside, far) if ok], sep, fixed=paper_test)
    street_test = _whole_blocks(area, block, rank, settings.street_test_places)
    if max_places is not None:
        paper_test, paper_train, street_test = _cap(paper_test, paper_train, street_test, max_places)

    plan = RegionPlan(region.name)
    plan.splits[region.name] = {**{loc.id: TRAIN for loc in paper_train}, **{loc.id: TEST for loc in paper_test}}
    plan.splits[street_city(region.name, settings.spacing)] = {loc.id: TEST for loc in street_test}
    plan.places = {loc.id: loc for loc in (*paper_train, *paper_test, *street_test)}
    plan.counts = {"street_places": len(street), "test_area_places": len(area),
                   "excluded": int(np.count_nonzero(~far)), "test_blocks": len(test_blocks)}
    return plan


def _whole_blocks(area: list[Location], block: dict, rank: dict, cap: int | None) -> list[Location]:
    """The places of the first test blocks (in split order) until ``cap`` places are reached."""
    if cap is None or cap >= len(area):
        return list(area)
    sizes: dict[int, int] = {}
    for loc in area:
        sizes[rank[block[loc.id]]] = sizes.get(rank[block[loc.id]], 0) + 1
    last, total = -1, 0
    for r in sorted(sizes):
        if total >= cap:
            break
        last, total = r, total + sizes[r]
    return [loc for loc in area if rank[block[loc.id]] <= last]


def _cap(paper_test: list, paper_train: list, street_test: list, n: int) -> tuple[list, list, list]:
    """At most ``n`` places: half for the paper-density places (test first), half street-level."""
    n_paper = max(2, (n + 1) // 2)
    n_test = max(1, min(len(paper_test), (n_paper + 1) // 2))
    return (sampling.subsample(paper_test, n_test), sampling.subsample(paper_train, n_paper - n_test),
            sampling.subsample(street_test, max(1, n - n_paper)))


def nearest_neighbour_m(locations: list[Location]) -> float:
    """Median distance (m) from each place to its nearest other place (nan below two places)."""
    if len(locations) < 2:
        return float("nan")
    xy = np.array([(loc.x, loc.y) for loc in locations])
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    np.fill_diagonal(d, np.inf)
    return round(float(np.median(d.min(axis=1))), 1)
