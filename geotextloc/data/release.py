"""CVG-Text release layout <-> records.

A release file name starts with the coordinates of the place: ``<lat>,<lon>_...``.
A name with more than two ``_``-separated fields is a street-view panorama
(``40.75290377,-73.97958215_2022-08_<panoid>_d62_z3.jpg``), otherwise a single-view photo
(``40.7529,-73.9795_<id>.jpg``).

Default layout on disk (:class:`ReleaseLayout`)::

    <root>/CVG-text/<version>/{train,test}.json     {"<image file name>": "<description>", ...}
    <root>/<version>-satellite/  <version>-OSM/  <version>-street/ (or -ground)  <version>-drone/

An image may carry another extension than its annotation key (``x.jpg`` -> ``x.png``).
Versions: ``<City>`` (panorama texts), ``<City>-photos`` (single-view texts) and
``<City>-mixed`` (both). A ``-mixed`` version with its own annotation folder is read as it
is; without one it is, as in the reference code, ``<City>`` + ``<City>-photos`` merged (each
record keeps its own image folders). When no versions are asked for, those on disk are read;
a merged ``-mixed`` is then not added (it would repeat their records).

Every problem is one line naming the file or record and what to do (:class:`BadItemError`);
with ``skip_bad=True`` the reader keeps going and lists each skipped item in
``ReleaseContents.skipped``. Nothing is dropped silently.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from geotextloc.errors import DataError

PANORAMA = "panorama"
SINGLE = "single"

IMAGE_KINDS = ("satellite", "osm", "street", "drone")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "test")
_PROGRESS_MIN = 2000  # show a progress bar for annotation files with at least this many records


@dataclass(frozen=True)
class NameInfo:
    lat: float
    lon: float
    view: str  # PANORAMA or SINGLE


def parse_name(name: str) -> NameInfo:
    """Coordinates and view type from a release file name; raises DataError if malformed."""
    fields = name.split("_")
    coords = fields[0].split(",")
    try:
        if len(fields) < 2 or len(coords) != 2:
            raise ValueError
        lat, lon = float(coords[0]), float(coords[1])
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError
    except ValueError:
        raise DataError(
            f"{name!r}: file name does not start with valid coordinates '<lat>,<lon>_'; "
            "rename it like '40.7529,-73.9795_<id>.jpg'"
        ) from None
    return NameInfo(lat, lon, PANORAMA if len(fields) > 2 else SINGLE)


class BadItemError(DataError):
    """One bad file or record; ``skip_bad=True`` (``--skip-bad``) skips and reports it instead."""


class Skipped(NamedTuple):
    item: str  # the file, or "<annotation file>: record '<name>'"
    reason: str


@dataclass
class Record:
    name: str  # the annotation key (release file name); carries lat, lon and the view type
    city: str
    version: str
    split: str
    view: str  # PANORAMA or SINGLE
    lat: float
    lon: float
    text: str
    images: dict[str, Path] = field(default_factory=dict)  # image kind -> existing file


@dataclass(frozen=True)
class ReleaseLayout:
    """Where annotations and images live, relative to the release root.

    ``annotations`` has the fields ``{version}`` and ``{split}``; ``images`` maps an image
    kind to folder patterns with ``{version}`` (the first one that exists is used).
    """

    annotations: str = "CVG-text/{version}/{split}.json"
    images: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "satellite": ("{version}-satellite",),
            "osm": ("{version}-OSM",),
            "street": ("{version}-street", "{version}-ground"),
            "drone": ("{version}-drone",),
        }
    )

    def __post_init__(self):  # accept a single pattern per kind
        images = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in self.images.items()}
        object.__setattr__(self, "images", images)

    def annotation_path(self, root: Path, version: str, split: str) -> Path:
        return root / self.annotations.format(version=version, split=split)

    def image_dirs(self, root: Path, version: str) -> dict[str, Path]:
        """Image kind -> existing folder for ``version`` (kinds without a folder are left out)."""
        found = {}
        for kind, patterns in self.images.items():
            for pattern in patterns:
                folder = root / pattern.format(version=version)
                if folder.is_dir():
                    found[kind] = folder
                    break
        return found


@dataclass
class ReleaseContents:
    root: Path
    versions: list[str]
    records: list[Record]
    skipped: list[Skipped]


def city_of(version: str) -> str:
    """``NewYork-photos`` / ``NewYork-mixed`` / ``Helsinki-dense`` (embedded, training only) -> the city."""
    return re.sub(r"-(photos|mixed|dense)$", "", version)


def discover_versions(root: str | Path, layout: ReleaseLayout | None = None) -> list[str]:
    """Versions with at least one annotation file under ``root``, sorted."""
    root, layout = Path(root), layout or ReleaseLayout()
    pattern = "".join(
        {"{version}": "(?P<version>[^/]+)", "{split}": "[^/]+"}.get(part, re.escape(part))
        for part in re.split(r"(\{version\}|\{split\})", layout.annotations)
    )
    matches = glob.glob(layout.annotations.format(version="*", split="*"), root_dir=root)
    return sorted(
        {m.group("version") for p in matches if (m := re.fullmatch(pattern, Path(p).as_posix()))}
    )


def read_release(
    root: str | Path,
    versions: Sequence[str] | None = None,
    splits: Sequence[str] = SPLITS,
    layout: ReleaseLayout | None = None,
    skip_bad: bool = False,
    check_images: bool = True,
    require_images: bool = True,
) -> ReleaseContents:
    """Read a CVG-Text release folder into records.

    ``versions`` default to those on disk. ``check_images`` checks each image file with
    :func:`verify_image` (no full decode); missing images are an error unless
    ``require_images=False`` (a release whose images are still to be fetched: each record
    then lists the images that exist, possibly none). With
    ``skip_bad`` every bad file/record is skipped and listed in ``.skipped``; otherwise the
    first one raises :class:`BadItemError`. A missing root or version always raises.
    """
    root, layout = Path(root), layout or ReleaseLayout()
    if not root.is_dir():
        raise DataError(
            f"{root}: folder not found; pass the release root (the folder holding CVG-text/)"
        )
    on_disk = discover_versions(root, layout)
    if not on_disk:
        example = layout.annotations.format(version="<version>", split="train")
        raise DataError(
            f"{root}: no annotation files like {example}; pass the release root "
            "or a ReleaseLayout that matches your copy"
        )
    reader = _Reader(root, layout, skip_bad, check_images, require_images)
    versions = list(versions or on_disk)
    for version in versions:
        reader.read_version(version, _parts(version, on_disk, root), splits)
    return ReleaseContents(root, versions, reader.records, reader.skipped)


def version_parts(root: str | Path, version: str, layout: ReleaseLayout | None = None) -> list[str]:
    """The versions on disk under ``root`` whose annotation and image folders make up ``version``
    (itself, or for a merged ``<City>-mixed`` the city and ``<City>-photos``)."""
    return _parts(version, discover_versions(root, layout), Path(root))


def _parts(version: str, on_disk: list[str], root: Path) -> list[str]:
    """The versions on disk that make up ``version`` (``-mixed`` = city + city-photos)."""
    if version in on_disk:
        return [version]
    city = city_of(version)
    parts = [city, f"{city}-photos"]
    if version.endswith("-mixed") and all(p in on_disk for p in parts):
        return parts
    if version.endswith("-dense"):
        raise DataError(f"{root}: version {version!r} not found; it is the embedded dataset's dense training "
                        f"version: add it with geotextloc data densify --out {root}")
    raise DataError(
        f"{root}: version {version!r} not found (on disk: {', '.join(on_disk)}); "
        "pick one of those or download it"
    )


def verify_image(path: Path) -> str | None:
    """Why ``path`` is not a sound image, or None. PIL's ``verify()`` (PNG chunk CRCs, headers)
    plus the JPEG end-of-image marker, which ``verify()`` does not check; nothing is decoded."""
    try:
        with Image.open(path) as image:
            image.verify()
            is_jpeg = image.format == "JPEG"
    except UnidentifiedImageError:
        return "not a readable image"
    except Exception as err:  # PIL raises many types for broken files
        return str(err) or type(err).__name__
    if is_jpeg:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64))
            if b"\xff\xd9" not in f.read():
                return "truncated JPEG (no end-of-image marker)"
    return None


class _Pairs(list):
    """A JSON object as its (key, value) pairs, duplicates kept (``json`` would drop them)."""


class _Reader:
    def __init__(self, root: Path, layout: ReleaseLayout, skip_bad: bool, check_images: bool,
                 require_images: bool = True):
        self.root, self.layout = root, layout
        self.skip_bad, self.check_images, self.require_images = skip_bad, check_images, require_images
        self.records: list[Record] = []
        self.skipped: list[Skipped] = []
        self.source: dict[int, Path] = {}  # id(record) -> its annotation file
        self._listing: dict[Path, dict[str, str]] = {}

    def bad(self, item: str, problem: str, fix: str) -> None:
        if not self.skip_bad:
            raise BadItemError(f"{item}: {problem}; {fix}")
        self.skipped.append(Skipped(item, problem))

    def read_version(self, version: str, parts: list[str], splits: Sequence[str]) -> None:
        first = len(self.records)
        for part in parts:
            folders = self.layout.image_dirs(self.root, part)
            if not folders and self.require_images:
                tried = ", ".join(
                    p.format(version=part) for ps in self.layout.images.values() for p in ps
                )
                self.bad(str(self.root), f"no image folder for version {part!r} (looked for {tried})",
                         "put the image folders next to CVG-text/, named as above")
                continue
            for split in splits:
                self.read_annotations(version, part, split, folders)
        self.drop_split_duplicates(self.records[first:], splits)

    def read_annotations(self, version: str, part: str, split: str, folders: dict[str, Path]) -> None:
        path = self.layout.annotation_path(self.root, part, split)
        entries = self.load_json(path)
        for name, text in tqdm(entries, desc=f"{part}/{split}", leave=False,
                               disable=len(entries) < _PROGRESS_MIN):
            where = f"{path}: record {name!r}"
            try:
                info = parse_name(name)
            except DataError:
                self.bad(where, "file name does not start with coordinates '<lat>,<lon>_'",
                         "rename the image and its key like '40.7529,-73.9795_<id>.jpg' or remove it")
                continue
            if not isinstance(text, str):
                self.bad(where, f"description is a JSON {type(text).__name__}, not a string",
                         "write the description as a JSON string")
                continue
            if not text.strip():
                self.bad(where, "empty description", "write a description or remove the record")
                continue
            images = self.find_images(where, name, folders)
            if images is not None:
                record = Record(name, city_of(version), version, split, info.view,
                                info.lat, info.lon, text, images)
                self.records.append(record)
                self.source[id(record)] = path

    def load_json(self, path: Path) -> list[tuple[str, object]]:
        """(name, description) pairs in file order; duplicate keys are reported, first kept."""
        if not path.is_file():
            self.bad(str(path), "annotation file not found", "restore it or read only the splits you have "
                     "(--split)")
            return []
        try:
            with open(path, encoding="utf-8") as f:
                pairs = json.load(f, object_pairs_hook=_Pairs)
        except json.JSONDecodeError as err:
            self.bad(str(path), f"not valid JSON, maybe truncated ({err.msg}: line {err.lineno} "
                     f"column {err.colno})", "download the file again")
            return []
        except (UnicodeDecodeError, OSError) as err:
            self.bad(str(path), f"cannot read it ({err})", "download the file again")
            return []
        except (ValueError, RecursionError) as err:  # a number too long to convert, nesting too deep
            self.bad(str(path), f"not an annotation file ({str(err).split(';')[0][:80]})", "download the file again")
            return []
        if not isinstance(pairs, _Pairs):
            self.bad(str(path), f"expected a JSON object mapping image file name to description, "
                     f"got {type(pairs).__name__}", "replace it with the release's annotation file")
            return []
        seen: set[str] = set()
        entries = []
        for name, text in pairs:
            if name in seen:
                self.bad(f"{path}: record {name!r}", "appears twice in the file",
                         "keep one description for it")
                continue
            seen.add(name)
            entries.append((name, text))
        return entries

    def find_images(self, where: str, name: str, folders: dict[str, Path]) -> dict[str, Path] | None:
        images = {}
        for kind, folder in folders.items():
            path = self.locate(folder, name)
            if path is None and not self.require_images:
                continue
            if path is None:
                self.bad(where, f"no {kind} image in {folder} (also tried {'/'.join(IMAGE_SUFFIXES)})",
                         "restore the image or remove the record")
                return None
            why = verify_image(path) if self.check_images else None
            if why:
                self.bad(f"{path}", f"corrupt {kind} image of record {name!r} ({why})",
                         "download the image again or remove the record")
                return None
            images[kind] = path
        return images

    def locate(self, folder: Path, name: str) -> Path | None:
        """``folder/name``, else the same stem with another image extension."""
        if folder not in self._listing:
            with os.scandir(folder) as it:
                files = [e.name for e in it if e.is_file()]
            self._listing[folder] = {f: f for f in files} | {
                os.path.splitext(f)[0]: f for f in reversed(files)
                if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
            }
        listing = self._listing[folder]
        found = listing.get(name) or listing.get(os.path.splitext(name)[0])
        return folder / found if found else None

    def drop_split_duplicates(self, records: list[Record], splits: Sequence[str]) -> None:
        """A name twice in one version (in two splits it leaks the test set, or in both parts of
        a merged ``-mixed``): report each extra copy and keep the first copy of the last split."""
        copies: dict[str, list[Record]] = {}
        for r in records:
            copies.setdefault(r.name, []).append(r)
        drop = set()
        for name, same in copies.items():
            keep = max(same, key=lambda r: splits.index(r.split))  # the first of the maxima
            for r in same:
                if r is not keep:
                    rule = "a place belongs to one split" if r.split != keep.split else "a place appears once"
                    self.bad(f"{self.source[id(r)]}: record {name!r}",
                             f"also in {self.source[id(keep)]} ({rule})",
                             "remove it from one of the two files")
                    drop.add(id(r))
        if drop:
            self.records = [r for r in self.records if id(r) not in drop]
