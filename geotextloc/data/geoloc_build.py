"""Build a GeoLoc dataset from one geo-referenced UAV orthophoto, end to end (GeoBridge, CVPR 2026).

The steps of the paper's construction, each a function of :mod:`geotextloc.data.geoloc`:

1. **footprints → seeds**: a ``window_m`` sliding window with step ``stride_m`` over the
   orthophoto's valid area (windows more than ``max_nodata_window`` empty are skipped); the
   footprints' centres are the seeds (:func:`~geotextloc.data.geoloc.sliding_window_seeds`);
2. **street views at the seeds**: the street source's capture nearest to each seed within
   ``search_radius_m`` (:mod:`geotextloc.data.geoloc_sources`); seeds reaching the same capture
   make one location;
3. **reverse crops**: the orthophoto cropped around each capture at ``scales_m`` (80–180 m);
   a scale whose square leaves the coverage (more than ``max_nodata_crop`` empty) is skipped
   and a capture with no scale left is outside the UAV coverage
   (:func:`~geotextloc.data.geoloc.reverse_crops`);
4. **> 50 % overlap de-duplication**: crops of one scale overlapping an earlier location's
   crop of that scale by more than ``max_overlap`` of the smaller area are dropped
   (:func:`~geotextloc.data.geoloc.deduplicate`, seed order);
5. **BH / C / UN gates** on every remaining crop (:class:`~geotextloc.data.geoloc.QualityGates`:
   variance of the Laplacian, RMS contrast, entropy; the thresholds are settings); a location
   with no crop passing all three is dropped;
6. **street view and aligned satellite tile** of each kept location, centred on the capture;
7. **one unified description** per location from the three views: the paper's LMM prompt
   (:func:`~geotextloc.data.geoloc_description.describe_location`, through
   :class:`geotextloc.lmm.ChatClient`) or offline the merge of the views' notes
   (:func:`~geotextloc.data.geoloc_description.unified_description_offline`);
8. **manifest**: ``geoloc/<Name>/{train,test}.jsonl`` as :func:`~geotextloc.data.geoloc_manifest.read_geoloc`
   reads it, split by space like the embedded builder: ``block_m`` squares shuffled by SHA-256
   of (seed, name, block) go to test until it holds ``test_fraction`` of the locations; train
   locations nearer than ``buffer_m`` to a test location are excluded.

Every reject is kept with its score: ``build/rejects.jsonl`` (step, gate, id, score, threshold,
thumbnail), a contact sheet per step (``build/rejects_<STEP>.png``) and ``build/report.json``
(thresholds and counts per step). The drone view of a row is one of its passing crops (chosen
per location by SHA-256, like the embedded builder's drone footprint); all of them are listed
under ``drone_scales``.

Layout under ``out``::

    geoloc/<Name>/{train,test}.jsonl           the manifest
    <Name>-drone/<stem>_<scale>m.jpg           reverse crops that passed (``crop_px`` square)
    <Name>-street/<name>  <Name>-satellite/<name>
    build/settings.json  build/lookups.jsonl   settings (a resume must match) and street lookups
    build/views/<id>.json                      a location's views' notes, once its images are in
    build/locations/<id>.json                  one per location, written last (resume marker)
    build/rejects/<step>/<id>.jpg  build/rejects.jsonl  build/rejects_<STEP>.png  build/report.json

Resumable: lookups are appended to ``lookups.jsonl`` and never asked again; a location whose
record exists is not redone, and one cut off after its street view and satellite tile were
saved (``build/views/<id>.json``) is not fetched again, only described; crops and thumbnails
existing are not rewritten; files are written atomically, and the assembled files (manifest,
rejects, report, sheets) only when their bytes change — so no file is written twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from geotextloc.data.embedded.builder import jpeg_bytes, json_bytes
from geotextloc.data.embedded.geoloc_views import Panorama
from geotextloc.data.embedded.osm import stable_unit
from geotextloc.data.geoloc import (BH, C, UN, Orthophoto, QualityGates, deduplicate, overlap, read_orthophoto,
                                    reverse_crops, sliding_window_seeds)
from geotextloc.data.geoloc_manifest import MANIFEST_DIR
from geotextloc.errors import ConfigError, DataError
from geotextloc.files import atomic_write_bytes, file_sha256

STREET, COVERAGE, DEDUP = "street", "coverage", "dedup"
STEPS = (STREET, COVERAGE, DEDUP, BH, C, UN)  # every step that drops something
SHEET_STEPS = (DEDUP, BH, C, UN)  # the steps with an image to show
THUMB_PX = 128


@dataclass(frozen=True)
class GeoLocSettings:
    """Everything that changes the files of a build (a resume must use the same)."""

    window_m: float = 120.0
    stride_m: float = 60.0
    scales_m: tuple[float, ...] = (80.0, 120.0, 180.0)
    max_nodata_window: float = 0.5
    max_nodata_crop: float = 0.1
    search_radius_m: float = 50.0
    max_overlap: float = 0.5
    blur_min: float = QualityGates.blur_min
    contrast_min: float = QualityGates.contrast_min
    entropy_min: float = QualityGates.entropy_min
    crop_px: int = 256
    resolution_m: float | None = None  # read the orthophoto at this ground resolution (None: native)
    test_fraction: float = 0.25
    block_m: float = 100.0
    buffer_m: float = 60.0
    seed: int = 0
    writer: str = "offline"
    max_clauses: int = 8

    def gates(self) -> QualityGates:
        return QualityGates(self.blur_min, self.contrast_min, self.entropy_min)

    def check(self) -> None:
        if self.window_m <= 0 or self.stride_m <= 0 or not self.scales_m or min(self.scales_m) <= 0:
            raise ConfigError("--window-m, --stride-m and every --scales value must be positive")
        if not 0 < self.test_fraction < 1 or self.block_m <= 0 or self.buffer_m < 0:
            raise ConfigError("--test-fraction must be in (0, 1), --block-m positive, --buffer-m not negative")


@dataclass
class GeoLocReport:
    out: Path
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    built: int = 0  # locations processed in this run
    resumed: int = 0  # locations whose record already existed

    def summary(self) -> str:
        n, t = self.counts, self.thresholds
        rows = [("sliding-window footprints (seeds)", n["footprints"], ""),
                (f"seeds without a street view within {t['search_radius_m']:g} m", n[STREET], ""),
                ("street-view locations (distinct captures)", n["locations"], ""),
                ("outside the UAV coverage", n[COVERAGE], ""),
                ("reverse crops", n["crops"], ""),
                (f"crops dropped as duplicates (overlap > {t[DEDUP]:g})", n[DEDUP], ""),
                (f"crops failing BH (blur, Var(Lap)/Var < {t[BH]:g})", n[BH], ""),
                (f"crops failing C (contrast, RMS < {t[C]:g})", n[C], ""),
                (f"crops failing UN (entropy < {t[UN]:g} bits)", n[UN], ""),
                ("crops kept", n["crops_kept"], ""),
                ("locations kept", n["kept"], f"train {n['train']}, test {n['test']}, excluded {n['excluded']}")]
        width = max(len(r[0]) for r in rows)
        lines = [f"GeoLoc build {self.name} in {self.out}: {self.built} location(s) built, {self.resumed} resumed"]
        lines += [f"  {label.ljust(width)}  {value:>6}  {extra}".rstrip() for label, value, extra in rows]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- small helpers


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def location_name(pano: Panorama) -> str:
    """The row name, as a CVG-Text panorama name: ``<lat>,<lon>_<yyyy-mm>_<id>_d<heading>_z3.jpg``."""
    return f"{pano.lat:.8f},{pano.lon:.8f}_{pano.date}_{safe_id(pano.id)}_d{int(round(pano.heading)) % 360}_z3.jpg"


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly it; True if written."""
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


class Lookups:
    """Street-view lookups already made (``build/lookups.jsonl``, one JSON line appended per
    lookup): a resumed build never asks the provider again."""

    def __init__(self, path: Path, provider: str, radius_m: float):
        self.path, self.provider, self.radius = path, provider, radius_m
        self.known: dict[str, Panorama | None] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut off by a crash
                    continue
                if row.get("provider") == provider and row.get("radius_m") == radius_m:
                    self.known[row["seed"]] = Panorama(**row["pano"]) if row.get("pano") else None
        self.asked = 0

    def get(self, seed: str, lon: float, lat: float, street) -> Panorama | None:
        if seed in self.known:
            return self.known[seed]
        pano = street.lookup(lon, lat, self.radius)
        self.asked += 1
        row = {"seed": seed, "lon": lon, "lat": lat, "provider": self.provider, "radius_m": self.radius,
               "pano": asdict(pano) if pano else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, (json.dumps(row, sort_keys=True) + "\n").encode("utf-8"))
        finally:
            os.close(fd)
        self.known[seed] = pano
        return pano


# ----------------------------------------------------------------------------- writers


def offline_writer(max_clauses: int = 8, order: tuple[str, ...] = ("drone", "street", "satellite")) -> Callable:
    """``writer(notes, images) -> text``: the offline merge of the views' notes
    (:func:`~geotextloc.data.geoloc_description.unified_description_offline`: view wording and
    transient clauses removed, stable cues kept, near-duplicates dropped), taking the views'
    clauses in turn (drone, street, satellite, drone, ...) so that each view is heard within
    ``max_clauses``. Two views seeing different footprints may count differently ("eight
    buildings" in the drone crop, "three" in the satellite tile): a clause that differs from an
    earlier one only in its numbers is dropped, the earlier view's count stays."""
    from itertools import zip_longest

    from geotextloc.data.geoloc_description import clean_description, unified_description_offline

    counts = re.compile(r"\b(?:no|one|two|three|four|five|six|seven|eight|nine|ten|\d+)\b", re.IGNORECASE)

    def write(notes: dict, images: dict) -> str:
        per_view = []
        for view in order:
            value = notes.get(view) or []
            per_view.append([c for t in ([value] if isinstance(value, str) else value) for c in clean_description(t)])
        merged, seen = [], set()
        for clause in (c for turn in zip_longest(*per_view) for c in turn if c):
            # one clause per shape: counts and word endings ignored, so "One street crosses the area" and
            # "Two streets cross the area" (two scales of one place) are said once, the first view's way
            shape = " ".join(w[:4] for w in re.findall(r"\w+", counts.sub("#", clause.lower())))
            if shape not in seen:
                seen.add(shape)
                merged.append(clause)
        return unified_description_offline({"views": merged}, max_clauses)

    return write


def lmm_writer(model: str = "gpt-4o", cache_dir: str | Path = ".cache/lmm", budget: int | None = 200) -> Callable:
    """``writer(notes, images) -> text``: the paper's prompt with the three images, through
    :class:`geotextloc.lmm.ChatClient` (cache, budget, retries; key from OPENAI_API_KEY)."""
    from geotextloc.data.geoloc_description import describe_location, lmm_client

    client = lmm_client(model=model, cache_dir=cache_dir, budget=budget)

    def write(notes: dict, images: dict) -> str:
        return describe_location(notes, images, client=client)

    return write


# ----------------------------------------------------------------------------- plan (steps 1-4)


@dataclass
class Plan:
    """What steps 1–4 decided; recomputed on every run (deterministic, writes nothing but lookups)."""

    footprints: list = field(default_factory=list)
    panos: dict[str, Panorama] = field(default_factory=dict)  # id -> capture, in seed order
    seeds: dict[str, list[str]] = field(default_factory=dict)  # capture id -> seed ids
    crops: dict[str, list] = field(default_factory=dict)  # capture id -> footprints kept after dedup
    rejects: list[dict] = field(default_factory=list)
    n_crops: int = 0


def plan_locations(ortho: Orthophoto, street, settings: GeoLocSettings, lookups: Lookups,
                   source: Path, progress: bool = True) -> Plan:
    from tqdm.auto import tqdm

    plan = Plan()
    plan.footprints = sliding_window_seeds(ortho, settings.window_m, settings.stride_m, settings.max_nodata_window)
    if not plan.footprints:
        share = float(ortho.valid().mean())
        raise DataError(f"{source}: empty valid area: no {settings.window_m:g} m window is at least "
                        f"{1 - settings.max_nodata_window:.0%} covered ({share:.1%} of its pixels hold data); "
                        "check its nodata value / alpha band (--nodata) or pass a smaller --window-m")
    for fp in tqdm(plan.footprints, desc="street-view lookups", unit="seed", disable=not progress):
        pano = lookups.get(fp.id, fp.lon, fp.lat, street)
        if pano is None:
            plan.rejects.append({"step": STREET, "id": fp.id, "lon": fp.lon, "lat": fp.lat, "score": None,
                                 "threshold": settings.search_radius_m,
                                 "detail": f"no street view within {settings.search_radius_m:g} m of the seed"})
            continue
        plan.panos.setdefault(pano.id, pano)
        plan.seeds.setdefault(pano.id, []).append(fp.id)
    every = []
    for pid, pano in plan.panos.items():
        crops = reverse_crops(ortho, pano.lon, pano.lat, settings.scales_m, settings.max_nodata_crop,
                              name=safe_id(pid))
        if not crops:
            plan.rejects.append({"step": COVERAGE, "id": pid, "location": pid, "lon": pano.lon, "lat": pano.lat,
                                 "score": None, "threshold": settings.max_nodata_crop,
                                 "detail": "the street view lies outside the UAV coverage at every scale"})
            continue
        every += [(pid, c.footprint) for c in crops]
    plan.n_crops = len(every)
    kept = {id(fp) for fp in deduplicate([fp for _, fp in every], settings.max_overlap)}
    held: dict[float, list] = {}
    for pid, fp in every:
        if id(fp) in kept:
            plan.crops.setdefault(pid, []).append(fp)
            held.setdefault(fp.size_m, []).append(fp)
            continue
        shares = overlap(fp.bounds, np.array([k.bounds for k in held[fp.size_m]]))
        j = int(np.argmax(shares))
        plan.rejects.append({"step": DEDUP, "id": fp.id, "location": pid, "scale_m": fp.size_m,
                             "lon": fp.lon, "lat": fp.lat, "score": round(float(shares[j]), 4),
                             "threshold": settings.max_overlap,
                             "detail": f"overlaps {held[fp.size_m][j].id} by {shares[j]:.0%} of its area"})
    return plan


# ----------------------------------------------------------------------------- one location (steps 5-7)


def build_location(ortho: Orthophoto, pano: Panorama, footprints: list, plan: Plan, street, satellite,
                   writer: Callable, settings: GeoLocSettings, out: Path, name: str, aerial_notes=None) -> dict:
    """Gate the crops of ``pano``, fetch its street view and satellite tile, describe it, write
    its files; returns its record (written last by the caller)."""
    gates = settings.gates()
    stem = Path(location_name(pano)).stem
    wanted = {fp.size_m for fp in footprints}
    crops = [c for c in reverse_crops(ortho, pano.lon, pano.lat, settings.scales_m, settings.max_nodata_crop,
                                      name=safe_id(pano.id)) if c.footprint.size_m in wanted]
    thresholds = {BH: gates.blur_min, C: gates.contrast_min, UN: gates.entropy_min}
    rec = {"id": pano.id, "name": location_name(pano), "lat": pano.lat, "lon": pano.lon, "heading": pano.heading,
           "date": pano.date, "provider": pano.provider, "seeds": plan.seeds[pano.id], "crops": []}
    passing = []
    for crop in crops:
        fp = crop.footprint
        values = gates.measure(crop.image)
        failed = [g for g, low in thresholds.items() if values[g] < low]
        corners = ortho.to_lonlat(np.array([fp.bounds[0], fp.bounds[2], fp.bounds[2], fp.bounds[0]]),
                                  np.array([fp.bounds[1], fp.bounds[1], fp.bounds[3], fp.bounds[3]]))
        entry = {"id": fp.id, "scale_m": fp.size_m, "window": list(fp.window), "bounds": [round(v, 3) for v in fp.bounds],
                 "corners_lonlat": [[round(float(x), 8), round(float(y), 8)] for x, y in zip(*corners)],
                 "gates": {g: round(v, 5) for g, v in values.items()}, "failed": failed}
        image = crop.image.resize((settings.crop_px, settings.crop_px), Image.LANCZOS)
        if failed:
            path = out / "build" / "rejects" / "gates" / f"{safe_id(fp.id)}.jpg"
            image, entry["thumbnail"] = image.resize((THUMB_PX, THUMB_PX), Image.LANCZOS), path.relative_to(out).as_posix()
        else:
            path = out / f"{name}-drone" / f"{stem}_{fp.size_m:g}m.jpg"
            entry["file"] = path.relative_to(out).as_posix()
            passing.append((entry, image))
        if not path.is_file():  # a crop is a function of the orthophoto and the settings (checked)
            atomic_write_bytes(path, jpeg_bytes(image))
        rec["crops"].append(entry)
    if not passing:
        rec["status"] = "gated"
        return rec
    chosen, drone_image = passing[int(stable_unit(f"drone-scale:{settings.seed}:{pano.id}") * len(passing))]
    files = {"street": out / f"{name}-street" / rec["name"], "satellite": out / f"{name}-satellite" / rec["name"]}
    views = out / "build" / "views" / f"{safe_id(pano.id)}.json"
    if views.is_file() and all(p.is_file() for p in files.values()):  # fetched before an interruption
        notes = json.loads(views.read_text(encoding="utf-8"))
        street_image, sat_image = (Image.open(files[v]).convert("RGB") for v in ("street", "satellite"))
    else:
        street_image, street_notes = street.view(pano)
        sat_image, sat_notes = satellite.view(pano)
        atomic_write_bytes(files["street"], jpeg_bytes(street_image))
        atomic_write_bytes(files["satellite"], jpeg_bytes(sat_image))
        notes = {"street": street_notes, "drone": aerial_notes(pano, chosen["scale_m"]) if aerial_notes else [],
                 "satellite": sat_notes}
        atomic_write_bytes(views, json_bytes(notes))
    text = writer(notes, {"drone": drone_image, "street": street_image, "satellite": sat_image})
    rec.update(status="kept", drone=chosen["file"], drone_footprint_m=chosen["scale_m"],
               drone_scales={f"{e['scale_m']:g}": e["file"] for e, _ in passing},
               street=files["street"].relative_to(out).as_posix(),
               satellite=files["satellite"].relative_to(out).as_posix(),
               satellite_footprint_m=round(satellite.footprint_m(pano.lat), 2),
               notes=notes, text=text or None, writer=settings.writer)
    return rec


# ----------------------------------------------------------------------------- split and manifest (step 8)


def split_locations(records: list[dict], settings: GeoLocSettings, name: str) -> dict[str, str]:
    """id -> train / test / excluded (module docstring, step 8)."""
    if not records:
        return {}
    lat0 = float(np.mean([r["lat"] for r in records]))
    lon0 = float(np.mean([r["lon"] for r in records]))
    k = math.pi / 180 * 6_371_008.8
    xy = {r["id"]: ((r["lon"] - lon0) * k * math.cos(math.radians(lat0)), (r["lat"] - lat0) * k) for r in records}
    block = {i: (math.floor(x / settings.block_m), math.floor(y / settings.block_m)) for i, (x, y) in xy.items()}
    order = sorted(set(block.values()), key=lambda b: hashlib.sha256(f"{settings.seed}:{name}:{b[0]}:{b[1]}".encode()).digest())
    target = max(1, math.ceil(settings.test_fraction * len(records)))
    test_blocks: set = set()
    held = 0
    for b in order[:-1] if len(order) > 1 else order:  # keep one block for training at least
        if held >= target:
            break
        test_blocks.add(b)
        held += sum(1 for v in block.values() if v == b)
    test = [i for i in xy if block[i] in test_blocks]
    test_xy = np.array([xy[i] for i in test]).reshape(-1, 2)
    split = {}
    for i, (x, y) in xy.items():
        if block[i] in test_blocks:
            split[i] = "test"
        else:
            near = np.hypot(test_xy[:, 0] - x, test_xy[:, 1] - y).min() if len(test_xy) else math.inf
            split[i] = "train" if near >= settings.buffer_m else "excluded"
    return split


def manifest_row(rec: dict, source: str) -> dict:
    return {"name": rec["name"], "id": rec["id"], "lat": rec["lat"], "lon": rec["lon"], "text": rec["text"],
            "drone": rec["drone"], "street": rec["street"], "satellite": rec["satellite"],
            "drone_footprint_m": rec["drone_footprint_m"], "drone_scales": rec["drone_scales"],
            "satellite_footprint_m": rec["satellite_footprint_m"], "heading": rec["heading"],
            "date": rec["date"], "seeds": rec["seeds"], "orthophoto": source}


# ----------------------------------------------------------------------------- the build


def default_name(path: Path, ortho: Orthophoto) -> str:
    """The manifest's region name: the file stem in CamelCase (``kouvola-uav.tif`` -> ``KouvolaUav``)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.stem) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) or "GeoLoc"


def build_geoloc(orthophoto: str | Path, out: str | Path, street, satellite, settings: GeoLocSettings = GeoLocSettings(),
                 writer: Callable | None = None, name: str | None = None, crs: str | None = None,
                 nodata: float | None = None, aerial_notes: Callable | None = None,
                 progress: bool = True) -> GeoLocReport:
    """Run the whole construction (module docstring) on ``orthophoto`` into ``out``.

    ``street`` / ``satellite``: sources (:mod:`geotextloc.data.geoloc_sources`); ``writer``:
    ``writer(notes, images) -> text`` (default :func:`offline_writer`); ``aerial_notes(pano,
    scale_m)``: notes of the drone view for the offline writer (an embedded region's
    :func:`~geotextloc.data.embedded.geoloc_views.aerial_facts`); ``crs`` / ``nodata`` override
    the file's. Returns the counts; the files are described in the module docstring.
    """
    from tqdm.auto import tqdm

    settings.check()
    source, out = Path(orthophoto), Path(out)
    ortho = read_orthophoto(source, crs=crs, nodata=nodata, resolution_m=settings.resolution_m)
    name = name or default_name(source, ortho)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '-' and '_' (it names folders)")
    writer = writer or offline_writer(settings.max_clauses)
    build = out / "build"
    fingerprint = {"settings": asdict(settings), "orthophoto": {"file": source.name, "sha256": file_sha256(source)},
                   "name": name, "street": street.name, "satellite": satellite.name}
    settings_file = build / "settings.json"
    if settings_file.is_file():
        before = json.loads(settings_file.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before["settings"]) | set(fingerprint["settings"])
                         if before["settings"].get(k) != json.loads(json.dumps(fingerprint["settings"])).get(k))
        changed += [k for k in ("orthophoto", "name", "street", "satellite") if before.get(k) != fingerprint[k]]
        if changed:
            raise ConfigError(f"{out}: holds a GeoLoc build made with other {', '.join(changed)}; resume with the same "
                              "arguments, or pass a new --out")
    else:
        atomic_write_bytes(settings_file, json_bytes(fingerprint))

    lookups = Lookups(build / "lookups.jsonl", street.name, settings.search_radius_m)
    plan = plan_locations(ortho, street, settings, lookups, source, progress)
    report = GeoLocReport(out, name)
    for r in plan.rejects:  # thumbnails of the duplicates, once
        if r["step"] == DEDUP:
            r["thumbnail"] = f"build/rejects/{DEDUP}/{safe_id(r['id'])}.jpg"
    _dedup_thumbnails(ortho, plan, settings, out)

    records = []
    todo = [pid for pid in plan.panos if pid in plan.crops]
    bar = tqdm(todo, desc=f"{name}: locations", unit="loc", disable=not progress)
    for pid in bar:
        path = build / "locations" / f"{safe_id(pid)}.json"
        if path.is_file():
            records.append(json.loads(path.read_text(encoding="utf-8")))
            report.resumed += 1
            continue
        rec = build_location(ortho, plan.panos[pid], plan.crops[pid], plan, street, satellite, writer, settings,
                             out, name, aerial_notes)
        atomic_write_bytes(path, json_bytes(rec))
        records.append(rec)
        report.built += 1
    bar.close()
    _assemble(out, name, source, ortho, settings, plan, records, report, street, satellite)
    if report.counts["kept"] == 0:
        raise DataError(f"{source}: no location passed every step ({report.counts['footprints']} seeds, "
                        f"{report.counts['locations']} street views); see {build / 'report.json'} and "
                        f"{build / 'rejects.jsonl'}, then adjust the gates or the search radius")
    return report


def _dedup_thumbnails(ortho: Orthophoto, plan: Plan, settings: GeoLocSettings, out: Path) -> None:
    for r in plan.rejects:
        if r["step"] != DEDUP or (out / r["thumbnail"]).is_file():
            continue
        crop = reverse_crops(ortho, r["lon"], r["lat"], (r["scale_m"],), 1.0, name="x")
        if crop:
            thumb = crop[0].image.resize((THUMB_PX, THUMB_PX), Image.LANCZOS)
            atomic_write_bytes(out / r["thumbnail"], jpeg_bytes(thumb))


def _assemble(out: Path, name: str, source: Path, ortho: Orthophoto, settings: GeoLocSettings, plan: Plan,
              records: list[dict], report: GeoLocReport, street, satellite) -> None:
    kept = [r for r in records if r["status"] == "kept"]
    split = split_locations(kept, settings, name)
    for sp in ("train", "test"):
        rows = sorted((manifest_row(r, source.name) for r in kept if split[r["id"]] == sp), key=lambda g: g["name"])
        text = "".join(json.dumps(g, sort_keys=True, ensure_ascii=False) + "\n" for g in rows)
        write_if_changed(out / MANIFEST_DIR / name / f"{sp}.jsonl", text.encode("utf-8"))
    gate_rejects = [{"step": g, "id": c["id"], "location": r["id"], "scale_m": c["scale_m"], "lon": r["lon"],
                     "lat": r["lat"], "score": c["gates"][g], "threshold": report_threshold(settings, g),
                     "detail": f"{g} = {c['gates'][g]:.4g} < {report_threshold(settings, g):g}",
                     "thumbnail": c["thumbnail"]}
                    for r in records for c in r["crops"] for g in c["failed"]]
    rejects = plan.rejects + gate_rejects
    lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rejects)
    write_if_changed(out / "build" / "rejects.jsonl", lines.encode("utf-8"))
    counts = {step: sum(1 for r in rejects if r["step"] == step) for step in STEPS}
    counts.update(footprints=len(plan.footprints), locations=len(plan.panos), crops=plan.n_crops,
                  crops_gated=sum(len(r["crops"]) for r in records),
                  crops_kept=sum(1 for r in records for c in r["crops"] if not c["failed"]),
                  gated_locations=sum(1 for r in records if r["status"] == "gated"), kept=len(kept),
                  **{sp: sum(1 for v in split.values() if v == sp) for sp in ("train", "test", "excluded")})
    report.counts = counts
    report.thresholds = {DEDUP: settings.max_overlap, BH: settings.blur_min, C: settings.contrast_min,
                         UN: settings.entropy_min, "search_radius_m": settings.search_radius_m,
                         "max_nodata_crop": settings.max_nodata_crop}
    mx, my = ortho.metres_per_pixel()
    doc = {"name": name, "orthophoto": {"file": source.name, "crs": ortho.crs if len(ortho.crs) < 40 else "WKT",
                                        "shape": list(ortho.shape), "metres_per_pixel": [round(mx, 4), round(my, 4)],
                                        "valid_share": round(float(ortho.valid().mean()), 4), "tags": ortho.tags},
           "settings": asdict(settings), "thresholds": report.thresholds, "counts": counts,
           "gate_measures": {BH: "Var(Laplacian of gray) / Var(gray), gray shrunk to 224 px",
                             C: "std(gray) / 255 (RMS contrast)", UN: "Shannon entropy of the 256-bin gray histogram, bits"},
           "sources": {"street": {"provider": street.name, "attribution": street.attribution},
                       "satellite": {"provider": satellite.name, "attribution": satellite.attribution}},
           "split": "blocks of block_m shuffled by SHA-256(seed, name, block) to test until test_fraction; train "
                    "locations within buffer_m of a test location excluded"}
    write_if_changed(out / "build" / "report.json", json_bytes(doc))
    from geotextloc.data.geoloc_figures import reject_sheet

    for step in SHEET_STEPS:
        write_if_changed(out / "build" / f"rejects_{step}.png", reject_sheet(out, [r for r in rejects if r["step"] == step],
                                                                              step, report.thresholds[step]))


def report_threshold(settings: GeoLocSettings, gate: str) -> float:
    return {BH: settings.blur_min, C: settings.contrast_min, UN: settings.entropy_min}[gate]
