"""GeoLoc manifests: one location per JSON line, its views and its description (GeoBridge's data).

Layout under a root folder (the embedded builder writes it; a real GeoLoc-format folder is the
same)::

    geoloc/<Region>/train.jsonl
    geoloc/<Region>/test.jsonl

Each line is a JSON object::

    {"name": "60.164,24.943_..._z3.jpg",        unique per split (the gallery key)
     "lat": 60.164, "lon": 24.943,               degrees (WGS 84); null/absent: no coordinates
     "text": "The view is taken on ...",          the unified description; null: no text
     "drone": "Helsinki-drone/....jpg",          paths relative to the root (absolute allowed);
     "street": "Helsinki-street/....jpg",        null/absent: the view is missing (GeoBridge's
     "satellite": "Helsinki-satellite/....jpg",  loss then trains on the edges the sample has)
     ...}                                         other keys (osm, id, ...) are kept in ``meta``
                                                  (``osm`` as an image kind)

A bad line raises :class:`DataError` naming ``<file>:<line>`` and the fix: not JSON, no name,
a name seen twice (in the split, or in both splits), coordinates out of range or given half,
an empty description, a view path that is not a string or whose file does not exist, a line
without any image view.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from geotextloc.errors import DataError

VIEWS = ("drone", "street", "satellite")  # GeoBridge's three views (d, p, s)
IMAGE_KEYS = VIEWS + ("osm",)
SPLITS = ("train", "test")
MANIFEST_DIR = "geoloc"


@dataclass
class GeoLocRecord:
    """One location: its views (kind -> existing file), description and coordinates.

    Has ``name``, ``text`` and ``images`` like :class:`geotextloc.data.release.Record`, so the
    training data code reads both. ``text`` is None when the location has no description.
    """

    name: str
    region: str
    split: str
    lat: float | None
    lon: float | None
    text: str | None
    images: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_coordinates(self) -> bool:
        return self.lat is not None and self.lon is not None


def manifest_root(root: str | Path) -> Path:
    """The folder holding ``<Region>/<split>.jsonl``: ``root/geoloc`` or ``root`` itself."""
    root = Path(root)
    return root / MANIFEST_DIR if (root / MANIFEST_DIR).is_dir() else root


def discover_regions(root: str | Path) -> list[str]:
    """Regions with at least one manifest file under ``root``, sorted."""
    base = manifest_root(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and any((p / f"{s}.jsonl").is_file() for s in SPLITS))


def _resolve_regions(root: Path, regions: Sequence[str] | None) -> list[str]:
    on_disk = discover_regions(root)
    if not on_disk:
        raise DataError(f"{root}: no GeoLoc manifest (expected {MANIFEST_DIR}/<Region>/train.jsonl); "
                        "build the embedded dataset (geotextloc data build-embedded) or point to a GeoLoc folder")
    if regions is None:
        return on_disk
    lower = {r.lower(): r for r in on_disk}
    chosen = []
    for region in regions:
        found = region if region in on_disk else lower.get(str(region).lower())
        if found is None:
            raise DataError(f"{root}: no GeoLoc region {region!r} (on disk: {', '.join(on_disk)}); fix `regions`")
        chosen.append(found)
    return chosen


def _coordinate(row: dict, key: str, limit: float, where: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= limit:  # NaN too
        raise DataError(f"{where}: {key}={value!r:.40} is not a number of degrees in [-{limit:g}, {limit:g}]; "
                        "fix the row")
    return float(value)


def parse_row(line: str, root: Path, region: str, split: str, where: str) -> GeoLocRecord:
    """One manifest line -> a record; DataError (naming ``where``) for a bad row."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as err:  # also: numbers too long to convert, nesting too deep
        reason = getattr(err, "msg", None) or str(err).split(";")[0][:80]
        raise DataError(f"{where}: not valid JSON ({reason}); fix or remove the line") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}; write one object per line")
    name = row.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: no 'name' string; give every location a unique name")
    where = f"{where} ({name!r})"
    lat, lon = _coordinate(row, "lat", 90.0, where), _coordinate(row, "lon", 180.0, where)
    if (lat is None) != (lon is None):
        raise DataError(f"{where}: has only one of lat/lon; give both or neither")
    text = row.get("text")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise DataError(f"{where}: 'text' must be a non-empty string or null (missing description)")
    images = {}
    for kind in IMAGE_KEYS:
        value = row.get(kind)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise DataError(f"{where}: {kind!r} must be a path string or null (missing view), got {value!r}")
        path = root / value
        if not path.is_file():
            raise DataError(f"{where}: {kind} image {path} not found; restore it or set {kind!r} to null")
        images[kind] = path
    if not any(kind in images for kind in VIEWS):
        raise DataError(f"{where}: none of the views {', '.join(VIEWS)}; remove the row or add its images")
    meta = {k: v for k, v in row.items() if k not in ("name", "lat", "lon", "text", *IMAGE_KEYS)}
    return GeoLocRecord(name, region, split, lat, lon, text, images, meta)


def read_geoloc(
    root: str | Path, regions: Sequence[str] | None = None, splits: Sequence[str] = SPLITS
) -> list[GeoLocRecord]:
    """Records of ``regions`` (None: all on disk) and ``splits`` under ``root``, in file order.

    ``root`` holds ``geoloc/<Region>/<split>.jsonl`` or is that ``geoloc`` folder; image paths
    in the rows are relative to the folder holding ``geoloc/``. A folder of another name with
    ``<Region>/<split>.jsonl`` directly inside is read too, its paths relative to itself.
    """
    root = Path(root)
    base = manifest_root(root)
    image_root = base.parent if base.name == MANIFEST_DIR else root
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise DataError(f"unknown split {unknown[0]!r}; use {', '.join(SPLITS)}")
    records: list[GeoLocRecord] = []
    seen: dict[str, str] = {}  # name -> where it was first read
    for region in _resolve_regions(root, regions):
        for split in splits:
            path = base / region / f"{split}.jsonl"
            if not path.is_file():
                raise DataError(f"{path}: manifest not found; rebuild the dataset or read only the splits present")
            with open(path, "rb") as f:
                for number, raw in enumerate(f, 1):
                    where = f"{path}:{number}"
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise DataError(f"{where}: not UTF-8 text; fix or remove the line") from None
                    if not line.strip():
                        continue
                    record = parse_row(line, image_root, region, split, where)
                    if record.name in seen:
                        raise DataError(f"{where}: name {record.name!r} already used at {seen[record.name]}; "
                                        "names must be unique across regions and splits")
                    seen[record.name] = where
                    records.append(record)
    return records


def drop_view(records: Sequence[GeoLocRecord], view: str, share: float, seed: int = 0) -> list[GeoLocRecord]:
    """Copies of ``records`` where a random ``share`` of them (round(share * n), chosen by
    ``seed``) lost their ``view`` image: the missing-view experiment. Others are unchanged."""
    if not 0.0 <= share <= 1.0:
        raise DataError(f"missing share must be in [0, 1], got {share!r}")
    n = len(records)
    chosen = set(np.random.default_rng(seed).permutation(n)[: round(share * n)].tolist())
    return [replace(r, images={k: v for k, v in r.images.items() if k != view}) if i in chosen else r
            for i, r in enumerate(records)]
