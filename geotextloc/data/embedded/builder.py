"""Build the embedded dataset: OSM extract -> places -> views, facts, texts -> release layout.

Two benchmarks per region (:mod:`~geotextloc.data.embedded.places` says which places each
releases): *paper density* (``<City>``: places >= 100 m apart, train and test) and *street
level* (``<City>-25m``: every 25 m along the streets of the test area, test only).

Output (``out``), for each release city ``<C>`` in ``<City>`` and ``<City>-25m``::

    CVG-text/<C>/{train,test}.json               panorama name -> panorama description
    CVG-text/<C>-photos/{train,test}.json        single-view name -> single-view description
    CVG-text/<C>-mixed/{train,test}.json         one of the two per location (see below)
    <C>-satellite/ <C>-OSM/ <C>-street/ <C>-drone/                 (panorama names)
    <C>-photos-satellite/ ... <C>-photos-drone/     (single-view names; street = 90° crop)
    <C>-mixed-satellite/ ... <C>-mixed-drone/       (hard links to the two above)
    direct/<C>[-photos|-mixed]/{train,test}.json the "direct generation" texts (same keys)
    hf/<C>/ hf/<C>-photos/                       saved datasets.DatasetDict per version
    facts/<City>/<id>.json                       scene facts, texts, cues, names per location
    geoloc/<City>/{train,test}.jsonl             GeoLoc quadruples (paper density only)
    contact_sheet_<City>.png                     all views and texts of a few test locations
    stats.json  build.json

A place in both benchmarks (a paper-density test place is a street place of the test area)
is rendered once; the street-level folders hold hard links to its files.

``<City>-mixed``: in the public release, panorama and single-view texts describe different
locations, and ``-mixed`` merges them. Every embedded location has both kinds, so merging
``<City>`` and ``<City>-photos`` would put two gallery tiles (identical images, two names) at
each place, and no model could tell the true one. ``-mixed`` therefore takes one kind per
location, half each, fixed by the location id (:func:`mixed_view`), and is written on disk
(images as hard links). It is not saved under ``hf/``: ``load_cvgtext(out,
version="<City>-mixed")`` reads it from the release folder.

OSM view renderer (``BuildSettings.osm_renderer``): ``builtin`` (default) draws each OSM tile
with :mod:`~geotextloc.data.embedded.render_map` (PIL, Carto colours); ``carto`` renders it with
mapnik + openstreetmap-carto from the region's extract (:mod:`geotextloc.data.osm_render`,
``make osm-stack``), same footprint and size, before the places' other views. A carto build
says so in ``build.json`` (``settings.osm_renderer`` and ``osm_renderer``: versions, extract,
where the sea came from), ``stats.json`` and each facts file; a built-in build's files carry no
such key, so they are byte-identical to those of builds made before the option existed.

Names: panorama ``<lat>,<lon>_<yyyy-mm>_<id>_d<heading>_z3.jpg`` (more than two ``_`` fields),
single view ``<lat>,<lon>_<id>s.jpg`` (two fields), coordinates with 8 decimals. The
photo-like views (satellite, drone, street) are JPEG files named exactly so; the OSM tiles
are PNG (sharp labels) with the same stem (``..._z3.png``), which the reader accepts.

Determinism and resume: every file is a function of (PBF, settings, seed, location); images
are encoded with fixed parameters and no metadata; JSON is written with sorted keys. Each file
is written to a temp file in its folder and renamed (never half-written), with the mode a
plain ``open()`` gives (:mod:`geotextloc.files`). A location is *done*
when its ``facts/<City>/<id>.json`` exists (written last) and all files it lists exist, so an
interrupted build skips finished locations when run again with the same arguments.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from geotextloc.data.embedded import places as plc
from geotextloc.data.embedded import sampling
from geotextloc.data.embedded.facts import scene_facts
from geotextloc.data.embedded.layout import (  # noqa: F401  (names of the layout: builder.panorama_name etc.)
    CAPTURE_DATE, DRONE_FOOTPRINT_M, IMAGE_EXT, coord_prefix, drone_params, facts_path, image_paths, location_id,
    mixed_name, mixed_view, panorama_name, single_name,
)
from geotextloc.data.embedded.regions import (  # noqa: F401  (resolve_regions, RegionSource: API)
    BUILTIN_REGIONS, RegionSource, file_sha256, load_source, resolve_regions)
from geotextloc.data.embedded.scene import Location, Region
from geotextloc.errors import ConfigError, DataError
from geotextloc.files import DIR_MODE, atomic_link, atomic_write_bytes
from geotextloc.text import describe as dsc

BUILDER_VERSION = 4  # bump when outputs change for the same arguments (invalidates resume)
DEFAULT_REGIONS = ("helsinki", "kouvola", "monaco")
TILE_FOOTPRINT_M = 60.0  # satellite / OSM tile side, like CVG-Text's zoom-20 512 px tiles
PNG_PARAMS = {"format": "PNG", "compress_level": 6, "optimize": False}
#: Photo-like views (satellite, drone, street): baseline JPEG, fixed quantisation and chroma
#: subsampling, no EXIF/ICC/comment/timestamp (PIL writes a bare JFIF header): byte-stable.
JPEG_PARAMS = {"format": "JPEG", "quality": 90, "subsampling": "4:2:0", "optimize": False,
               "progressive": False}
CONTACT_SHEET_ROWS = 4
SPLITS = (sampling.TRAIN, sampling.TEST)
BUILTIN, CARTO = "builtin", "carto"  # OSM view renderers
OSM_RENDERERS = (BUILTIN, CARTO)
CARTO_CACHE = ".osm-carto"  # <out>/.osm-carto/<region>/<id>.png: carto views rendered ahead of their place


@dataclass(frozen=True)
class BuildSettings:
    """Everything that changes the files or the places of a build (``workers`` and
    ``max_locations`` do not); :mod:`~geotextloc.data.embedded.places` explains the place rules."""

    size: int = 256
    pano_width: int = 512
    spacing: float = sampling.DEFAULT_SPACING_M  # street places; the street-level benchmark
    separation_m: float = 100.0  # paper density: min distance between released places
    seed: int = 0
    tile_footprint_m: float = TILE_FOOTPRINT_M
    test_fraction: float = 0.25  # of the paper-density places, ...
    min_test_places: int = 80  # ... but at least this many (150+ test queries)
    street_test_places: int | None = 600  # street-level test places per region (whole blocks)
    block_m: float = 300.0
    buffer_m: float = TILE_FOOTPRINT_M
    builder_version: int = BUILDER_VERSION
    osm_renderer: str = BUILTIN  # the OSM view's renderer: BUILTIN (render_map) or CARTO (:func:`osm_view`)

    @property
    def pano_height(self) -> int:
        return self.pano_width // 2


def settings_record(settings: BuildSettings) -> dict:
    """The settings as written to ``build.json`` and ``stats.json``: every field, but
    ``osm_renderer`` only when it is not the built-in one, so that a default build's files
    are those of builds made before the option existed."""
    record = asdict(settings)
    if record["osm_renderer"] == BUILTIN:
        del record["osm_renderer"]
    return record


@dataclass
class BuildReport:
    out: Path
    locations: dict[str, dict[str, int]] = field(default_factory=dict)  # release city -> split -> count
    rendered: int = 0
    skipped_done: int = 0
    stats: dict = field(default_factory=dict)
    contact_sheets: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- files


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **PNG_PARAMS)
    return buf.getvalue()


def jpeg_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, **JPEG_PARAMS)
    return buf.getvalue()


def image_bytes(kind: str, image) -> bytes:
    """A view encoded as its kind is stored (:data:`IMAGE_EXT`)."""
    return png_bytes(image) if IMAGE_EXT[kind] == ".png" else jpeg_bytes(image)


# ----------------------------------------------------------------------------- names


def is_done(out: Path, loc: Location, seed: int = 0, cities: tuple[str, ...] = ()) -> bool:
    """A location is finished when its facts file (written last) and all its images exist."""
    return facts_path(out, loc).is_file() and all(
        p.is_file() for p in image_paths(out, loc, seed, cities).values())


# ----------------------------------------------------------------------------- one location

_STATE: dict = {}  # regions, settings, out: set in the parent before the workers fork


def _init_worker(state: dict | None) -> None:
    if state is not None:
        _STATE.update(state)
    torch = sys.modules.get("torch")  # nothing here needs torch (seconds to import); if a
    if torch is not None:  # caller loaded it, keep each worker on one thread
        torch.set_num_threads(1)


def _call(job: tuple) -> object:
    work, item = job  # work travels by name: a module-level function
    return work(item, _STATE)


def run_places(todo: list, work, state: dict, workers: int, desc: str, progress: bool = True) -> None:
    """``work(item, state)`` for every item of ``todo``, in ``workers`` processes, with a progress bar.

    ``state`` (regions, settings, out) is set in the parent, so forked workers inherit it;
    spawned workers get a copy. The parent's own torch threads are left alone.
    """
    _STATE.clear()
    _STATE.update(state)
    bar = tqdm(total=len(todo), desc=desc, unit="loc", disable=not progress, smoothing=0.05)
    if workers <= 1 or len(todo) < 2:
        for item in todo:
            work(item, _STATE)
            bar.update()
    else:
        fork = "fork" in mp.get_all_start_methods()
        ctx = mp.get_context("fork" if fork else "spawn")
        jobs = [(work, item) for item in todo]
        with ctx.Pool(workers, initializer=_init_worker, initargs=(None if fork else state,)) as pool:
            for _ in pool.imap_unordered(_call, jobs, chunksize=max(1, min(16, len(todo) // (workers * 8)))):
                bar.update()
    bar.close()


def _renderers():
    """The view renderers (imported lazily: they are heavy and load fonts)."""
    from geotextloc.data.embedded import render_aerial, render_map, render_street

    return render_map, render_aerial, render_street


def build_location(loc: Location, region: Region, settings: BuildSettings, out: Path,
                   cities: tuple[str, ...] = ()) -> None:
    """Render, describe and write every file of one location for the release cities ``cities``
    (default: the region's): the first city's files are written, the others link to them; the
    facts JSON goes last."""
    render_map, render_aerial, render_street = _renderers()
    seed, size, fp = settings.seed, settings.size, settings.tile_footprint_m
    cities = cities or (loc.region,)
    drone_fp, drone_rot = drone_params(loc, seed)
    pano = render_street.render_panorama(region, loc, settings.pano_width, settings.pano_height, seed)
    crop = render_street.crop_single_view(pano, loc.heading, fov_deg=90)  # native: pano_width / 4
    own = {  # the files of the first city's panorama version, and the single-view crop
        f"{cities[0]}:satellite": image_bytes("satellite", render_aerial.render_satellite(region, loc, size, fp, seed)),
        f"{cities[0]}:osm": image_bytes("osm", osm_view(region, loc, settings, out)),
        f"{cities[0]}:drone": image_bytes(
            "drone", render_aerial.render_drone(region, loc, size, drone_fp, drone_rot, seed)),
        f"{cities[0]}:street": image_bytes("street", pano),
        f"{cities[0]}-photos:street": image_bytes("street", crop),
    }
    paths = image_paths(out, loc, seed, cities)
    for key, path in paths.items():  # own files come first; every other file is a link to one
        if key in own:
            atomic_write_bytes(path, own[key])
        else:
            atomic_link(paths[_link_source(key, cities, mixed_view(loc, seed))], path)

    facts = scene_facts(region, loc, signs=pano.info["signs"])  # POIs where their signs hang
    texts = {}
    for view in (dsc.PANORAMA, dsc.SINGLE):
        for variant in (dsc.FULL, dsc.DIRECT):
            d = dsc.describe(facts, view, variant, seed)
            texts[view if variant == dsc.FULL else f"{view}_direct"] = {"text": d.text, "cues": d.cues}
    record = {
        "location": asdict(loc),
        "names": {"panorama": panorama_name(loc), "single": single_name(loc)},
        "views": {"tile_footprint_m": fp, "drone_footprint_m": drone_fp, "drone_rotation_deg": drone_rot,
                  "size": size, "panorama": [settings.pano_width, settings.pano_height], "single_fov_deg": 90}
        | ({"osm_renderer": settings.osm_renderer} if settings.osm_renderer != BUILTIN else {}),
        "files": sorted(p.relative_to(out).as_posix() for p in paths.values()),
        "facts": facts,
        "texts": texts,
    }
    atomic_write_bytes(facts_path(out, loc), json_bytes(record))


def osm_view(region: Region, loc: Location, settings: BuildSettings, out: Path):
    """The OSM view of ``loc``: drawn by :mod:`~geotextloc.data.embedded.render_map` (``builtin``), or
    the mapnik + openstreetmap-carto image that :func:`prerender_carto` made for it (``carto``)."""
    if settings.osm_renderer == CARTO:
        from PIL import Image

        with Image.open(carto_view_path(out, loc)) as im:
            return im.convert("RGB")
    render_map = _renderers()[0]
    return render_map.render_osm_tile(region, loc, settings.size, settings.tile_footprint_m, settings.seed)


def carto_view_path(out: Path, loc: Location) -> Path:
    return out / CARTO_CACHE / loc.region / f"{loc.id}.png"


def prerender_carto(out: Path, todo: dict[str, list[Location]], extracts: dict[str, Path], settings: BuildSettings,
                    processes: int = 1, progress: bool = True) -> dict | None:
    """Render the carto OSM views of the places ``todo`` (region -> places) from each region's
    extract, ahead of the places' other views (one PostGIS load per region and one mapnik
    process per worker, not one per place). Returns the renderer's metadata (None: nothing to do)."""
    from geotextloc.data import osm_render

    meta = None
    for name, locs in todo.items():
        if not locs:
            continue
        views = [osm_render.MapView(loc.lat, loc.lon, settings.tile_footprint_m, settings.size,
                                    carto_view_path(out, loc)) for loc in locs]
        report = osm_render.render_views(extracts[name], views, processes=processes, progress=progress,
                                         desc=f"{name}: carto OSM views")
        meta = (meta or {"renderer": report.metadata["renderer"], "versions": report.metadata["versions"],
                         "patterns": report.metadata["patterns"], "attribution": report.metadata["attribution"],
                         "regions": {}})
        meta["regions"][name] = {k: report.metadata[k] for k in ("extract", "coastline", "sea_polygons")}
    return meta


def record_osm_renderer(out: Path, meta: dict | None) -> None:
    """Say in ``build.json`` which renderer drew the OSM views (carto builds only: a built-in
    build's ``build.json`` stays as it always was)."""
    if meta is None:
        return
    path = out / "build.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    old = manifest.get("osm_renderer", {}).get("regions", {})
    manifest["osm_renderer"] = meta | {"regions": old | meta["regions"]}
    atomic_write_bytes(path, json_bytes(manifest))


def _link_source(key: str, cities: tuple[str, ...], mixed: str) -> str:
    """The own file (:func:`build_location`) that the image file ``key`` is a hard link to: one
    tile and drone image per place; the street view of ``-mixed`` is that of the place's text
    kind ``mixed``; another release city's files are the first city's."""
    version, kind = key.split(":")
    city = max((c for c in cities if version.startswith(c)), key=len)
    suffix = version[len(city):]  # "", "-photos" or "-mixed"
    if suffix == "-mixed":
        suffix = "-photos" if mixed == dsc.SINGLE else ""
    return f"{cities[0]}{suffix if kind == 'street' else ''}:{kind}"


def _work(item: tuple[str, Location, tuple[str, ...]], state: dict) -> str:
    region_name, loc, cities = item
    build_location(loc, state["regions"][region_name], state["settings"], state["out"], cities)
    return loc.id


# ----------------------------------------------------------------------------- orchestration


def _check_settings(out: Path, settings: BuildSettings, sources: list[RegionSource]) -> dict:
    """Refuse to resume into a folder built with other settings (its files would be stale)."""
    path = out / "build.json"
    manifest = {"settings": settings_record(settings), "regions": {}}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise DataError(f"{path}: not valid JSON; delete {out} or build into a new --out") from None
        if manifest.get("settings") != settings_record(settings):
            old = {"osm_renderer": BUILTIN} | manifest.get("settings", {})
            diff = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in asdict(settings).items() if old.get(k) != v)
            raise ConfigError(f"{out}: built before with other settings ({diff}); "
                              "use a new --out folder or delete this one")
    for s in sources:
        known = manifest["regions"].get(s.name)
        if known and known["sha256"] != s.sha256:
            raise ConfigError(f"{out}: region {s.name} was built from another extract ({known['path']}); "
                              "use a new --out folder or delete this one")
        entry = {"path": s.path.name, "sha256": s.sha256}
        manifest["regions"][s.name] = entry | ({"builtin": s.builtin} if s.builtin else {"source": str(s.path)})
    atomic_write_bytes(path, json_bytes(manifest))
    return manifest


def build(
    out: str | Path,
    regions: list[str] | None = DEFAULT_REGIONS,
    pbfs: list[str | Path] | None = None,
    max_locations: int | None = None,
    settings: BuildSettings = BuildSettings(),
    workers: int = 1,
    hf: bool = True,
    allow_no_pois: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Build (or resume) the embedded dataset into ``out``; see the module docstring.

    ``max_locations`` caps the places over all regions (shared evenly; strided subsets of
    each benchmark's places, :func:`~geotextloc.data.embedded.places.plan_region`).
    """
    out = Path(out)
    if settings.osm_renderer not in OSM_RENDERERS:
        raise ConfigError(f"--osm-renderer {settings.osm_renderer}: use one of {', '.join(OSM_RENDERERS)}")
    if settings.osm_renderer == CARTO:
        from geotextloc.data.osm_render import find_stack

        find_stack()  # before anything is written: one line naming `make osm-stack` when missing
    out.mkdir(parents=True, exist_ok=True)
    sources = resolve_regions(list(regions or []), list(pbfs or []))
    _check_settings(out, settings, sources)
    loaded = {s.name: load_source(s, require_pois=not allow_no_pois) for s in sources}
    plans = {s.name: plc.plan_region(loaded[s.name], settings, cap)
             for s, cap in zip(sources, _share(max_locations, len(sources)))}
    report = BuildReport(out)
    todo = [(name, loc, plan.cities_of(loc.id)) for name, plan in plans.items() for loc in plan.places.values()]
    todo = [item for item in todo if not is_done(out, item[1], settings.seed, item[2])]
    report.skipped_done = sum(len(p.places) for p in plans.values()) - len(todo)
    report.rendered = len(todo)
    if settings.osm_renderer == CARTO:
        meta = prerender_carto(out, {s.name: [item[1] for item in todo if item[0] == s.name] for s in sources},
                               {s.name: s.path for s in sources}, settings, workers, progress)
        record_osm_renderer(out, meta)
    run_places(todo, _work, {"regions": loaded, "settings": settings, "out": out}, workers,
               "embedded: locations", progress)
    shutil.rmtree(out / CARTO_CACHE, ignore_errors=True)  # every carto view is in its place now

    report.stats = assemble(out, plans, loaded, settings)
    report.locations = {city: {sp: sum(1 for v in split.values() if v == sp) for sp in SPLITS}
                        for plan in plans.values() for city, split in plan.splits.items()}
    from geotextloc.data.embedded.contact_sheet import build_contact_sheets

    report.contact_sheets = build_contact_sheets(out, list(plans), rows=CONTACT_SHEET_ROWS, seed=settings.seed)
    if hf:
        save_hf(out, [city for plan in plans.values() for city in plan.splits], progress=progress)
    return report


def _share(total: int | None, n: int) -> list[int | None]:
    if total is None:
        return [None] * n
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def assemble(out: Path, plans: dict[str, plc.RegionPlan], regions: dict, settings: BuildSettings) -> dict:
    """Annotation files, direct texts, GeoLoc manifests and stats.json from the per-location facts."""
    stats: dict = {"settings": settings_record(settings), "regions": {}, "versions": {}, "text": {}}
    every: dict[str, list[dsc.Description]] = {}
    for region, plan in plans.items():
        records = {i: json.loads(facts_path(out, loc).read_text(encoding="utf-8")) for i, loc in plan.places.items()}
        for city, split_of in plan.splits.items():
            for split in SPLITS:
                chosen = [loc for loc in plan.locations(city) if split_of[loc.id] == split]
                _write_versions(out, city, split, chosen, records, settings.seed)
                if city == region:  # GeoBridge's quadruples: the paper-density places
                    _write_geoloc(out, city, split, chosen, records, settings.seed)
            test = [loc for loc in plan.locations(city) if split_of[loc.id] == sampling.TEST]
            stats["versions"][city] = {"train": len(split_of) - len(test), "test": len(test),
                                       "test_nearest_neighbour_m": plc.nearest_neighbour_m(test)}
        per_region: dict[str, list[dsc.Description]] = {}
        for loc_id in sorted(plan.splits[region]):
            for key, t in records[loc_id]["texts"].items():
                per_region.setdefault(key, []).append(dsc.Description(t["text"], t["cues"]))
        r = regions[region]
        released = plan.splits[region]
        stats["regions"][region] = {
            "locations": {sp: sum(1 for v in released.values() if v == sp) for sp in SPLITS}
            | {sampling.EXCLUDED: plan.counts["excluded"]},
            "released": len(released), "places": plan.counts,
            "osm": {"roads": len(r.roads), "buildings": len(r.buildings), "pois": len(r.pois),
                    "areas": len(r.areas), "rails": len(r.rails), "trees": len(r.trees)},
            "text": {k: dsc.text_statistics(v, seed=settings.seed) for k, v in sorted(per_region.items())},
        }
        for k, v in per_region.items():
            every.setdefault(k, []).extend(v)
    stats["text"] = {k: dsc.text_statistics(v, seed=settings.seed) for k, v in sorted(every.items())}
    stats["text_method"] = (
        "paper-density places (<City>); tokens: open_clip ViT-B-32 tokenizer, no truncation, start/end "
        "tokens included; share_over_77_with_cue_after_77: texts over 77 tokens in which a name (sign, street, "
        "place) starts at token position >= 77; type_token_ratio: distinct/all lower-cased words "
        "per text, averaged; inter_text_similarity: mean pairwise cosine of TF-IDF word vectors "
        "over a seeded sample of at most 500 texts (off-diagonal mean)")
    atomic_write_bytes(out / "stats.json", json_bytes(stats))
    return stats


def _write_versions(out: Path, city: str, split: str, chosen: list[Location], records: dict, seed: int) -> None:
    """``CVG-text/`` and ``direct/`` annotation files of the three versions of ``city``."""
    ann = {city: {}, f"{city}-photos": {}, f"{city}-mixed": {}}
    direct = {city: {}, f"{city}-photos": {}, f"{city}-mixed": {}}
    for loc in chosen:
        rec = records[loc.id]
        for view, version in ((dsc.PANORAMA, city), (dsc.SINGLE, f"{city}-photos")):
            name, texts = rec["names"][view], rec["texts"]
            ann[version][name], direct[version][name] = texts[view]["text"], texts[f"{view}_direct"]["text"]
            if mixed_view(loc, seed) == view:
                ann[f"{city}-mixed"][name], direct[f"{city}-mixed"][name] = ann[version][name], direct[version][name]
    for version in ann:
        atomic_write_bytes(out / "CVG-text" / version / f"{split}.json", json_bytes(ann[version]))
        atomic_write_bytes(out / "direct" / version / f"{split}.json", json_bytes(direct[version]))


def _write_geoloc(out: Path, city: str, split: str, chosen: list[Location], records: dict, seed: int) -> None:
    rows = []
    for loc in chosen:
        rec = records[loc.id]
        paths = image_paths(Path("."), loc, seed)
        rows.append({"name": rec["names"]["panorama"], "id": loc.id, "lat": loc.lat, "lon": loc.lon,
                     "text": rec["texts"]["panorama"]["text"],
                     "drone": paths[f"{city}:drone"].as_posix(), "street": paths[f"{city}:street"].as_posix(),
                     "satellite": paths[f"{city}:satellite"].as_posix(), "osm": paths[f"{city}:osm"].as_posix(),
                     "drone_footprint_m": rec["views"]["drone_footprint_m"]})
    lines = "".join(json.dumps(g, sort_keys=True, ensure_ascii=False) + "\n" for g in sorted(rows, key=lambda g: g["name"]))
    atomic_write_bytes(out / "geoloc" / city / f"{split}.jsonl", lines.encode("utf-8"))


def save_hf(out: Path, cities: list[str], progress: bool = True) -> list[Path]:
    """A saved ``datasets.DatasetDict`` per version under ``hf/<version>`` (read back through
    the release reader, so it holds exactly what ``read_release`` sees). ``<City>-mixed`` is
    not saved: ``hub.load_cvgtext(out, version="<City>-mixed")`` builds it from the release."""
    from geotextloc.data import hub, release

    saved = []
    versions = [v for c in cities for v in (c, f"{c}-photos")]
    for version in tqdm(versions, desc="embedded: hf datasets", disable=not progress):
        contents = release.read_release(out, versions=[version], check_images=False)
        dd = hub.to_datasetdict(contents.records)
        folder = hub.save_dataset(dd, out / "hf" / version)
        os.chmod(folder, DIR_MODE)  # hub's temp folder comes from mkdtemp (0700)
        _content_fingerprints(folder)
        saved.append(folder)
    return saved


def _content_fingerprints(folder: Path) -> None:
    """Replace the fingerprint ``datasets`` wrote to each split's ``state.json`` (random, or
    hashed from absolute paths) by a hash of the split's Arrow files, so that the same build
    gives byte-identical files wherever it is written."""
    for state in sorted(folder.glob("*/state.json")):
        h = hashlib.sha256()
        for arrow in sorted(state.parent.glob("*.arrow")):
            h.update(arrow.name.encode() + file_sha256(arrow).encode())
        meta = json.loads(state.read_text(encoding="utf-8"))
        meta["_fingerprint"] = h.hexdigest()[:16]
        atomic_write_bytes(state, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))
