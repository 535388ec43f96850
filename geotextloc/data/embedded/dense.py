"""Dense training places: more (tile, text) pairs from the training area of a built embedded dataset.

The released embedded dataset keeps its training places 100 m apart (paper density), about a
thousand training pairs for all regions: too few for the random-init tiny model, whose stage 1
stands in for CLIP's pre-training on hundreds of millions of pairs. ``densify`` adds a
training-only version per region, ``<City>-dense``, sampled every ``spacing`` metres (default
8) on the same streets:

* only places at least ``buffer_m`` (the build's, 60 m: one tile footprint) from every *test*
  place of both benchmarks (``<City>`` and the street-level ``<City>-25m``) are kept, the
  rule the split applies to the train split, so no dense tile shares a pixel with a test tile;
* half of the places look the other way along the street (heading + 180°: a person may face
  either way, on one-way streets too), which changes the description (left and right, ahead
  and behind) but not the north-up tile;
* each place has one description, panorama or single view, half each (as ``-mixed``);
* only the satellite and OSM tiles are rendered (the panorama is rendered, for the signs the
  description names, and not kept), so a place costs a fraction of a released one.

Output, next to the release (same layout, so ``read_release(..., versions=[...-dense])`` and
the training configs read it)::

    CVG-text/<City>-dense/train.json     name -> description (test.json is empty)
    direct/<City>-dense/train.json       name -> the "direct generation" text (the text-source ablation)
    <City>-dense-satellite/ <City>-dense-OSM/
    facts/<City>-dense/<id>.json         written last: the place is done
    dense.json                           spacing, counts per region

Like the builder, every file is written atomically and a run resumes: finished places are
skipped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from geotextloc.data.embedded import builder, places, regions, sampling
from geotextloc.data.embedded.facts import scene_facts
from geotextloc.data.embedded.osm import stable_unit
from geotextloc.data.embedded.scene import Location, Region
from geotextloc.errors import ConfigError, DataError
from geotextloc.files import atomic_write_bytes
from geotextloc.text import describe as dsc

SUFFIX = "-dense"
DEFAULT_SPACING_M = 8.0
DEFAULT_MAX_PLACES = 2500  # per region: Monaco's training area holds ~22,000 places every 8 m
KINDS = (("satellite", "satellite"), ("osm", "OSM"))  # image kind, folder suffix


def version_name(city: str) -> str:
    return f"{city}{SUFFIX}"


@dataclass
class DenseReport:
    out: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # city -> sampled/kept/near_test
    rendered: int = 0
    skipped_done: int = 0


def _manifest(out: Path) -> dict:
    path = out / "build.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; build the dataset first (geotextloc data build-embedded --out {out})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise DataError(f"{path}: not valid JSON; rebuild the dataset into a new --out") from None


def _region(out: Path, name: str, info: dict) -> Region:
    """The region ``name`` of the build, parsed again from its extract (checked by SHA-256)."""
    return regions.load_source(region_source(out, name, info), require_pois=False)


def region_source(out: Path, name: str, info: dict) -> regions.RegionSource:
    """The extract of the build's region ``name`` (its ``build.json`` entry ``info``), checked by SHA-256."""
    if info.get("builtin"):
        source = regions.builtin_source(info["builtin"])
    elif info.get("source") and Path(info["source"]).is_file():
        source = regions.user_source(info["source"])
    else:
        raise DataError(f"{out}/build.json: the extract of region {name} ({info.get('source') or info['path']}) "
                        f"is gone; put it back there or rebuild the dataset into a new --out")
    source.sha256 = source.sha256 or regions.file_sha256(source.path)
    if source.sha256 != info["sha256"]:
        raise DataError(f"{out}: region {name} was built from another extract than {source.path}; "
                        "rebuild the dataset into a new --out")
    return source


def test_places(out: Path, city: str, spacing: float = sampling.DEFAULT_SPACING_M) -> np.ndarray:
    """(n, 2) local x/y metres of the region's test places, in both benchmarks (``<City>`` and
    ``<City>-25m``), from the released annotation files and the places' facts."""
    ids = set()
    for version in (city, places.street_city(city, spacing)):
        ann = out / "CVG-text" / version / "test.json"
        if version == city and not ann.is_file():
            raise DataError(f"{ann}: not found; the build of {out} did not finish, run it again")
        if ann.is_file():
            ids.update(builder.location_id(name) for name in json.loads(ann.read_text(encoding="utf-8")))
    xy = []
    for loc_id in sorted(ids):
        rec = json.loads((out / "facts" / city / f"{loc_id}.json").read_text(encoding="utf-8"))
        xy.append((rec["location"]["x"], rec["location"]["y"]))
    return np.array(xy, dtype=float).reshape(-1, 2)


def plan_dense(region: Region, test_xy: np.ndarray, spacing: float, buffer_m: float,
               seed: int) -> tuple[list[Location], int]:
    """(dense training places, how many were dropped for lying within ``buffer_m`` of a test place).

    Ids are ``<prefix>d<6 digits>`` (``held000042``), numbered along the streets as
    :func:`~geotextloc.data.embedded.sampling.sample_locations` visits them.
    """
    prefix = sampling.region_prefix(region.name)
    kept, near = [], 0
    street = sampling.sample_locations(region, spacing)
    far = sampling.nearest_distances(np.array([(loc.x, loc.y) for loc in street]), test_xy) >= buffer_m
    for loc, ok in zip(street, far):
        if not ok:
            near += 1
            continue
        dense_id = f"{prefix}d{loc.id[len(prefix):]}"
        heading = loc.heading
        if stable_unit(f"dense-reverse:{seed}:{region.name}:{dense_id}") < 0.5:
            heading = round((heading + 180.0) % 360.0, 1)
        kept.append(replace(loc, id=dense_id, heading=heading))
    return kept, near


def text_view(loc: Location, seed: int) -> str:
    """Panorama or single view, half each, fixed by the place id."""
    return dsc.PANORAMA if stable_unit(f"dense-view:{seed}:{loc.region}:{loc.id}") < 0.5 else dsc.SINGLE


def place_name(loc: Location, seed: int) -> str:
    return builder.panorama_name(loc) if text_view(loc, seed) == dsc.PANORAMA else builder.single_name(loc)


def image_paths(out: Path, loc: Location, seed: int) -> dict[str, Path]:
    name = place_name(loc, seed)
    return {kind: (out / f"{version_name(loc.region)}-{folder}" / name).with_suffix(builder.IMAGE_EXT[kind])
            for kind, folder in KINDS}


def facts_path(out: Path, loc: Location) -> Path:
    return out / "facts" / version_name(loc.region) / f"{loc.id}.json"


def is_done(out: Path, loc: Location, seed: int) -> bool:
    return facts_path(out, loc).is_file() and all(p.is_file() for p in image_paths(out, loc, seed).values())


def build_place(loc: Location, region: Region, settings: builder.BuildSettings, out: Path) -> None:
    """Render the two tiles and describe one dense place; the facts JSON goes last."""
    render_map, render_aerial, render_street = builder._renderers()
    seed, size, fp = settings.seed, settings.size, settings.tile_footprint_m
    pano = render_street.render_panorama(region, loc, settings.pano_width, settings.pano_height, seed)
    images = {"satellite": render_aerial.render_satellite(region, loc, size, fp, seed),
              "osm": builder.osm_view(region, loc, settings, out)}
    for kind, path in image_paths(out, loc, seed).items():
        atomic_write_bytes(path, builder.image_bytes(kind, images[kind]))
    facts = scene_facts(region, loc, signs=pano.info["signs"])
    view = text_view(loc, seed)
    d = dsc.describe(facts, view, dsc.FULL, seed)
    record = {"location": asdict(loc), "name": place_name(loc, seed), "view": view,
              "facts": facts, "text": d.text, "cues": d.cues}
    atomic_write_bytes(facts_path(out, loc), builder.json_bytes(record))


def _work(item: tuple[str, Location], state: dict) -> str:
    city, loc = item
    build_place(loc, state["regions"][city], state["settings"], state["out"])
    return loc.id


def _check_spacing(out: Path, spacing: float) -> None:
    """Refuse to mix places of two spacings (their ids would collide with other positions)."""
    path = out / "dense.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8")).get("spacing_m")
        if old != spacing:
            raise ConfigError(f"{out}: dense places were built with spacing {old} m, not {spacing} m; "
                              f"delete {out}/*{SUFFIX}* and {out}/facts/*{SUFFIX} (or pass --spacing {old})")


def densify(out: str | Path, spacing: float = DEFAULT_SPACING_M, workers: int = 1,
            max_places: int | None = DEFAULT_MAX_PLACES, progress: bool = True) -> DenseReport:
    """Add (or resume) the ``<City>-dense`` training versions to the built dataset ``out``.

    ``max_places`` caps each region's dense places (strided along the streets, so that they
    still cover the training area; None: all). The default keeps Monaco's densify to a few
    minutes on two cores and leaves the smaller regions whole.
    """
    out = Path(out)
    if spacing <= 0:
        raise ConfigError(f"--spacing {spacing}: must be positive")
    if max_places is not None and max_places < 1:
        raise ConfigError(f"--max-places {max_places}: must be at least 1")
    manifest = _manifest(out)
    if manifest.get("settings", {}).get("builder_version") != builder.BUILDER_VERSION:
        raise DataError(f"{out}/build.json: built by another version of the builder; rebuild the dataset "
                        f"into a new --out (geotextloc data build-embedded --out NEW)")
    settings = builder.BuildSettings(**manifest["settings"])
    _check_spacing(out, spacing)
    report = DenseReport(out)
    loaded, plans = {}, {}
    for city, info in sorted(manifest["regions"].items()):
        loaded[city] = _region(out, city, info)
        locs, near = plan_dense(loaded[city], test_places(out, city, settings.spacing), spacing,
                                settings.buffer_m, settings.seed)
        plans[city] = sampling.subsample(locs, max_places)
        report.counts[city] = {"kept": len(plans[city]), "near_test": near}
    todo = [(city, loc) for city, locs in plans.items() for loc in locs if not is_done(out, loc, settings.seed)]
    report.rendered = len(todo)
    report.skipped_done = sum(len(v) for v in plans.values()) - len(todo)
    if settings.osm_renderer == builder.CARTO:  # the build's OSM views came from mapnik + openstreetmap-carto
        extracts = {city: region_source(out, city, info).path for city, info in manifest["regions"].items()}
        builder.prerender_carto(out, {city: [loc for c, loc in todo if c == city] for city in plans}, extracts,
                                settings, workers, progress)
    builder.run_places(todo, _work, {"regions": loaded, "settings": settings, "out": out}, workers,
                       "dense places", progress)
    shutil.rmtree(out / builder.CARTO_CACHE, ignore_errors=True)
    for city, locs in plans.items():
        texts = {"CVG-text": {}, "direct": {}}
        for loc in locs:
            rec = json.loads(facts_path(out, loc).read_text(encoding="utf-8"))
            texts["CVG-text"][rec["name"]] = rec["text"]
            # the direct text is a function of the stored facts (describe is deterministic)
            texts["direct"][rec["name"]] = dsc.describe(rec["facts"], rec["view"], dsc.DIRECT, settings.seed).text
        for top, ann in texts.items():
            folder = out / top / version_name(city)
            atomic_write_bytes(folder / "train.json", builder.json_bytes(ann))
            atomic_write_bytes(folder / "test.json", builder.json_bytes({}))  # training-only version
    atomic_write_bytes(out / "dense.json", builder.json_bytes(
        {"spacing_m": spacing, "max_places": max_places, "buffer_m": settings.buffer_m, "regions": report.counts,
         "versions": [version_name(c) for c in plans]}))
    return report
