"""``geotextloc data materialize``: fetch the images a CVG-Text release names, with the user's own keys.

The public release carries texts and file names (coordinates, panorama ids) but no Google
imagery, which may not be redistributed. This module fetches, for every record of the chosen
versions and splits, the image of one *view* and writes it where the release layout
(:class:`~geotextloc.data.release.ReleaseLayout`) expects it, so that
:func:`~geotextloc.data.release.read_release` then reads a complete release.

Providers (``--provider``), per view:

=====================  ===================  ===================================================
provider               views                request
=====================  ===================  ===================================================
``google-streetview``  street               Street View Static API: ``pano=<id>`` when the name
                                            carries one (``<lat>,<lon>_<yyyy-mm>_<panoid>_d<heading>_z<n>``),
                                            else ``location=<lat>,<lon>``. The API serves
                                            perspective views, not panoramas: a panorama record
                                            becomes ``--pano-views`` views (fov ``360/N``, from the
                                            name's heading clockwise) side by side.
``google-satellite``   satellite            Maps Static API, ``maptype=satellite``, centred on the
                                            record at ``--zoom``, ``--size`` pixels.
``xyz`` / ``wmts``     satellite, osm       any tile server by URL template (``{z}/{x}/{y}``,
                                            ``{quadkey}``, ``{TileMatrix}/{TileRow}/{TileCol}`` of a
                                            Web-Mercator ``GoogleMapsCompatible`` matrix set,
                                            ``{s}`` subdomain, ``{key}``): the tiles covering the
                                            same footprint as the Static API image (centre, zoom,
                                            size) are stitched and cropped to it; tiles are kept
                                            in a cache folder, so overlapping footprints share them.
=====================  ===================  ===================================================

Keys come from environment variables only (``GOOGLE_MAPS_API_KEY``, or the variable named by
``--key-env``) and are redacted from everything printed or written. The OpenStreetMap
community tile server is refused (its usage policy forbids bulk downloads): render tiles
yourself (``geotextloc data render-osm``) or use your own / a commercial tile server.

Shared requests: records whose image is the same request (a city's panorama and photo
versions at the same places ask the Static API for the same satellite image) are fetched once
and written to each file; the dry run counts each such request once.

Resumable: a file that exists and decodes is not fetched again (a corrupt one is); each image
is written atomically. The manifest (``geotextloc-materialize.jsonl`` in the release root, one
JSON object per image: record, file, provider, request time in UTC, attribution, terms,
sha256, the redacted request) gets its line just before the image is renamed into place, so
every image this tool wrote has one; it is compacted to the last line per file at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from geotextloc.data.fetch import FetchError, Fetcher, Politeness, Redactor, check_user_agent, image_problem
from geotextloc.data.release import (PANORAMA, SPLITS, Record, ReleaseLayout, discover_versions, read_release,
                                     version_parts)
from geotextloc.errors import ConfigError, DataError
from geotextloc.files import atomic_path, atomic_write_bytes, atomic_write_text

VIEWS = ("street", "satellite", "osm")
PROVIDERS = {"google-streetview": ("street",), "google-satellite": ("satellite",),
             "xyz": ("satellite", "osm"), "wmts": ("satellite", "osm")}
GOOGLE_ENDPOINT = "https://maps.googleapis.com"
GOOGLE_ENDPOINT_ENV = "GEOTEXTLOC_GOOGLE_ENDPOINT"
GOOGLE_KEY_ENV = "GOOGLE_MAPS_API_KEY"
# USD per 1000 billed requests assumed by --dry-run: Google Maps Platform list prices for the
# first 100,000 requests a month (Street View Static $7, Maps Static $2); templates: unknown (0).
PRICE_PER_1000 = {"google-streetview": 7.0, "google-satellite": 2.0, "xyz": 0.0, "wmts": 0.0}
GOOGLE_TERMS = "https://cloud.google.com/maps-platform/terms"
ATTRIBUTION = {
    "google-streetview": "Imagery © Google (Street View Static API); not redistributable",
    "google-satellite": "Imagery © Google and its data providers (Maps Static API); not redistributable",
}
OSM_TILE_POLICY = "https://operations.osmfoundation.org/policies/tiles/"
PUBLIC_OSM_HOSTS = ("tile.openstreetmap.org", "tile.osm.org", "tile.openstreetmap.de", "tile.openstreetmap.fr")


def _version() -> str:
    """The installed geotextloc's version (from its metadata: no import of the package's face)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geotextloc")
    except PackageNotFoundError:
        return "unknown"


DEFAULT_USER_AGENT = f"geotextloc/{_version()} (CVG-Text imagery materializer; add your contact with --user-agent)"
MANIFEST = "geotextloc-materialize.jsonl"
TILE_CACHE = ".geotextloc-tiles"
PLACEHOLDERS = ("z", "x", "y", "quadkey", "TileMatrix", "TileRow", "TileCol", "s", "key")
_PANO_NAME = re.compile(r"^[^_]+_\d{4}-\d{2}_(?P<pano>.+)_d(?P<heading>\d+(?:\.\d+)?)_z\d+\.[A-Za-z]+$")
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


@dataclass(frozen=True)
class Job:
    record: Record
    path: Path  # where the release layout expects the image


@dataclass
class Fetched:
    data: bytes  # encoded for the job's file suffix
    source: dict  # what was requested, redacted (goes to the manifest)


# ----------------------------------------------------------------------------- images


def encode(data: bytes | None, image: Image.Image | None, path: Path) -> bytes:
    """Bytes for ``path``'s suffix: ``data`` as received when its format matches, else ``image``
    (or ``data`` decoded) re-encoded (JPEG quality 95, PNG, WebP)."""
    want = _FORMATS.get(path.suffix.lower(), "PNG")
    if data is not None:
        with Image.open(io.BytesIO(data)) as received:
            if received.format == want:
                return data
            image = received.convert("RGB")
    out = io.BytesIO()
    image = image.convert("RGB")
    image.save(out, want, **({"quality": 95} if want in ("JPEG", "WEBP") else {}))
    return out.getvalue()


def panorama_id(name: str) -> tuple[str, float] | None:
    """(panorama id, heading in degrees) from a release panorama name
    ``<lat>,<lon>_<yyyy-mm>_<panoid>_d<heading>_z<n>.<ext>``; None for other names."""
    match = _PANO_NAME.match(name)
    return (match["pano"], float(match["heading"])) if match else None


def file_problem(path: Path) -> str | None:
    """Why the file at ``path`` must be fetched (again), or None when it is a complete image."""
    if not path.is_file():
        return "missing"
    return image_problem(path.read_bytes())


# ----------------------------------------------------------------------------- providers


class GoogleStreetView:
    """Street View Static API: one view per single-view record, ``pano_views`` per panorama."""

    name = "google-streetview"
    path = "/maps/api/streetview"

    def __init__(self, endpoint: str, key: str, size: tuple[int, int], fov: float, pano_views: int):
        self.endpoint, self.key, self.size, self.fov, self.pano_views = endpoint.rstrip("/"), key, size, fov, pano_views
        self.attribution, self.terms = ATTRIBUTION[self.name], GOOGLE_TERMS

    def urls(self, record: Record) -> list[str]:
        pano = panorama_id(record.name) if record.view == PANORAMA else None
        where = {"pano": pano[0]} if pano else {"location": f"{record.lat:.8f},{record.lon:.8f}"}
        views = self.pano_views if record.view == PANORAMA else 1
        first = pano[1] if pano else None
        urls = []
        for k in range(views):
            params = {"size": f"{self.size[0]}x{self.size[1]}", **where, "pitch": "0", "return_error_code": "true"}
            if views > 1:
                params |= {"fov": f"{360 / views:g}", "heading": f"{((first or 0.0) + k * 360 / views) % 360:g}"}
            else:
                params["fov"] = f"{self.fov:g}"
                if first is not None:
                    params["heading"] = f"{first:g}"
            urls.append(f"{self.endpoint}{self.path}?{urllib.parse.urlencode(params)}&key={_quote(self.key)}")
        return urls

    def request_key(self, job: Job) -> tuple[str, ...]:
        """Jobs with the same key get the same image (see :func:`materialize`)."""
        return tuple(self.urls(job.record))

    def billed(self, jobs: Sequence[Job]) -> int:
        return sum(len(key) for key in {self.request_key(j) for j in jobs})

    def fetch(self, job: Job, fetcher: Fetcher) -> Fetched:
        urls = self.urls(job.record)
        bodies = [fetcher.get_image(url) for url in urls]
        source = {"requests": [fetcher.redact(u) for u in urls]}
        if len(bodies) == 1:
            return Fetched(encode(bodies[0], None, job.path), source)
        views = [Image.open(io.BytesIO(b)).convert("RGB") for b in bodies]
        strip = Image.new("RGB", (sum(v.width for v in views), max(v.height for v in views)))
        x = 0
        for view in views:
            strip.paste(view, (x, 0))
            x += view.width
        return Fetched(encode(None, strip, job.path), source)


class GoogleSatellite:
    """Maps Static API satellite image centred on the record."""

    name = "google-satellite"
    path = "/maps/api/staticmap"

    def __init__(self, endpoint: str, key: str, size: tuple[int, int], zoom: int):
        self.endpoint, self.key, self.size, self.zoom = endpoint.rstrip("/"), key, size, zoom
        self.attribution, self.terms = ATTRIBUTION[self.name], GOOGLE_TERMS

    def url(self, job: Job) -> str:
        fmt = "jpg" if _FORMATS.get(job.path.suffix.lower()) == "JPEG" else "png"
        params = {"center": f"{job.record.lat:.8f},{job.record.lon:.8f}", "zoom": str(self.zoom),
                  "size": f"{self.size[0]}x{self.size[1]}", "maptype": "satellite", "format": fmt}
        return f"{self.endpoint}{self.path}?{urllib.parse.urlencode(params)}&key={_quote(self.key)}"

    def request_key(self, job: Job) -> tuple[str, ...]:
        return (self.url(job),)

    def billed(self, jobs: Sequence[Job]) -> int:
        return len({self.request_key(j) for j in jobs})

    def fetch(self, job: Job, fetcher: Fetcher) -> Fetched:
        url = self.url(job)
        return Fetched(encode(fetcher.get_image(url), None, job.path), {"requests": [fetcher.redact(url)]})


def world_pixel(lat: float, lon: float, zoom: int, tile_size: int = 256) -> tuple[float, float]:
    """Web-Mercator pixel of (lat, lon) in a world ``tile_size * 2**zoom`` pixels wide:
    ``x = (lon + 180) / 360 * W``, ``y = (1/2 - ln((1 + sin φ) / (1 - sin φ)) / 4π) * W``."""
    world = tile_size * 2**zoom
    s = math.sin(math.radians(max(-85.05112878, min(85.05112878, lat))))
    return (lon + 180.0) / 360.0 * world, (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * world


def quadkey(x: int, y: int, z: int) -> str:
    """Bing-style quadkey of tile (x, y) at zoom z: one base-4 digit per level, x bit + 2 * y bit."""
    return "".join(str(((x >> (i - 1)) & 1) + 2 * ((y >> (i - 1)) & 1)) for i in range(z, 0, -1))


class TileTemplate:
    """Any XYZ/WMTS tile server: the footprint's tiles, stitched and cropped; tiles cached on disk.

    The footprint is the Static API's: ``size`` pixels of a 256-pixel-tile world at ``zoom``
    centred on the record (so ``xyz`` and ``google-satellite`` images cover the same ground).
    Servers with 512-pixel tiles (``tile_size=512``) cover it with twice the pixels, then the
    image is resized to ``size``.
    """

    def __init__(self, name: str, template: str, key: str, size: tuple[int, int], zoom: int, tile_size: int,
                 cache: Path, attribution: str, subdomains: str = "abc"):
        self.name, self.template, self.key, self.size, self.zoom = name, template, key, size, zoom
        self.tile_size, self.cache, self.attribution, self.subdomains = tile_size, cache, attribution, subdomains
        self.terms = f"see the terms of use of {template_host(template)}"
        self._locks: dict[tuple[int, int, int], threading.Lock] = {}
        self._guard = threading.Lock()
        self.from_cache = 0  # tiles read from the cache folder instead of fetched

    def footprint(self, record: Record) -> tuple[dict[tuple[int, int, int], tuple[int, int]],
                                                 tuple[int, int, int, int]]:
        """The tiles (z, x, y) covering ``record``'s footprint, each with its (column, row) in the
        stitched image, and the footprint (left, top, width, height) in that image's pixels."""
        scale = self.tile_size / 256
        width, height = round(self.size[0] * scale), round(self.size[1] * scale)
        cx, cy = world_pixel(record.lat, record.lon, self.zoom, self.tile_size)
        left, top = round(cx - width / 2), round(cy - height / 2)
        t, n = self.tile_size, 2**self.zoom
        xs = range(left // t, (left + width - 1) // t + 1)
        ys = range(top // t, (top + height - 1) // t + 1)
        if ys.start < 0 or ys.stop > n:
            raise FetchError(f"footprint at zoom {self.zoom} crosses the map's north/south edge")
        tiles = {(self.zoom, x % n, y): (col, row) for row, y in enumerate(ys) for col, x in enumerate(xs)}
        return tiles, (left - xs.start * t, top - ys.start * t, width, height)

    def url(self, tile: tuple[int, int, int]) -> str:
        z, x, y = tile
        values = {"z": z, "x": x, "y": y, "quadkey": quadkey(x, y, z), "TileMatrix": z, "TileRow": y, "TileCol": x,
                  "s": self.subdomains[(x + y) % len(self.subdomains)] if self.subdomains else "",
                  "key": _quote(self.key)}
        return re.sub(r"\{(\w+)\}", lambda m: str(values[m[1]]), self.template)

    def tile_path(self, tile: tuple[int, int, int]) -> Path:
        z, x, y = tile
        return self.cache / str(z) / str(x) / f"{y}.tile"

    def request_key(self, job: Job) -> tuple[str, ...]:
        """The footprint's centre and the file format: the same stitched image."""
        return (f"{job.record.lat:.8f},{job.record.lon:.8f}", _FORMATS.get(job.path.suffix.lower(), "PNG"))

    def billed(self, jobs: Sequence[Job]) -> int:
        """Distinct tiles of the jobs' footprints not in the cache folder."""
        tiles = {tile for job in jobs for tile in self.footprint(job.record)[0]}
        return sum(not self.tile_path(tile).is_file() for tile in tiles)

    def tile(self, tile: tuple[int, int, int], fetcher: Fetcher) -> bytes:
        """One tile: from the cache when sound, else fetched (once, whatever the threads) and cached."""
        with self._guard:
            lock = self._locks.setdefault(tile, threading.Lock())
        with lock:
            path = self.tile_path(tile)
            if path.is_file():
                data = path.read_bytes()
                if image_problem(data) is None:
                    with self._guard:
                        self.from_cache += 1
                    return data
            data = fetcher.get_image(self.url(tile))
            atomic_write_bytes(path, data)
            return data

    def fetch(self, job: Job, fetcher: Fetcher) -> Fetched:
        tiles, (left, top, width, height) = self.footprint(job.record)
        t = self.tile_size
        canvas = Image.new("RGB", (max(c for c, _ in tiles.values()) * t + t, max(r for _, r in tiles.values()) * t + t))
        for tile, (col, row) in tiles.items():
            with Image.open(io.BytesIO(self.tile(tile, fetcher))) as image:
                image = image.convert("RGB")
                if image.size != (t, t):
                    raise FetchError(f"tile {'/'.join(map(str, tile))} is {image.size[0]}x{image.size[1]} pixels, "
                                     f"not {t}x{t}; pass --tile-size {image.size[0]}")
                canvas.paste(image, (col * t, row * t))
        image = canvas.crop((left, top, left + width, top + height))
        if image.size != self.size:
            image = image.resize(self.size, Image.LANCZOS)
        source = {"template": fetcher.redact(self.template), "tiles": ["/".join(map(str, tile)) for tile in tiles]}
        return Fetched(encode(None, image, job.path), source)


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def template_host(template: str) -> str:
    """The host of a URL template, its placeholders filled with a letter."""
    return (urllib.parse.urlsplit(re.sub(r"\{\w+\}", "a", template)).hostname or "").lower().rstrip(".")


def check_template(template: str) -> None:
    """ConfigError unless ``template`` is an http(s) tile URL template we may use in bulk."""
    host = template_host(template)
    if any(host == h or host.endswith("." + h) for h in PUBLIC_OSM_HOSTS):
        raise ConfigError(f"refusing to bulk-download from the OpenStreetMap community tile server ({host}): its "
                          f"usage policy forbids it ({OSM_TILE_POLICY}); render the tiles yourself with "
                          "`geotextloc data render-osm`, or use your own or a commercial tile server")
    if urllib.parse.urlsplit(re.sub(r"\{\w+\}", "a", template)).scheme not in ("http", "https") or not host:
        raise ConfigError(f"--template {template!r} is not an http(s) URL template")
    used = set(re.findall(r"\{(\w+)\}", template))
    unknown = used - set(PLACEHOLDERS)
    if unknown:
        raise ConfigError(f"--template has unknown placeholder(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join('{%s}' % p for p in PLACEHOLDERS)}")
    if not ({"z", "x", "y"} <= used or "quadkey" in used or {"TileMatrix", "TileRow", "TileCol"} <= used):
        raise ConfigError("--template must name the tile: {z}/{x}/{y}, {quadkey} or {TileMatrix}/{TileRow}/{TileCol}")


# ----------------------------------------------------------------------------- plan


def plan(root: Path, view: str, versions: Sequence[str] | None = None, splits: Sequence[str] = SPLITS,
         layout: ReleaseLayout | None = None) -> list[Job]:
    """One job per record (and target file) of the release: the file of ``view`` the layout expects,
    the existing one when it has another suffix. OSM tiles are PNG (``<stem>.png``) as in the release."""
    layout = layout or ReleaseLayout()
    if view not in layout.images:
        raise ConfigError(f"the release layout has no folder for the {view!r} view")
    parts = list(dict.fromkeys(p for v in (versions or discover_versions(root, layout))
                               for p in version_parts(root, v, layout)))
    records = read_release(root, parts, splits, layout, check_images=False, require_images=False).records
    jobs, seen = [], set()
    for record in records:
        path = record.images.get(view)
        if path is None:
            folder = layout.image_dirs(root, record.version).get(view) or \
                root / layout.images[view][0].format(version=record.version)
            path = folder / (Path(record.name).stem + ".png" if view == "osm" else record.name)
        if path not in seen:
            seen.add(path)
            jobs.append(Job(record, path))
    return jobs


# ----------------------------------------------------------------------------- manifest


class Manifest:
    """JSON lines, one per image written; appended by many threads (one ``write`` per line, under a lock)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def append(self, entry: dict) -> None:
        line = (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def entries(self) -> dict[str, dict]:
        """The last entry per file (a line cut off by a crash is skipped)."""
        out = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and "file" in entry:
                    out[entry["file"]] = entry
        return out

    def compact(self) -> None:
        """Rewrite atomically with the last entry per file, sorted by file."""
        entries = self.entries()
        with self._lock:
            atomic_write_text(self.path, "".join(json.dumps(entries[f], ensure_ascii=False, sort_keys=True) + "\n"
                                                 for f in sorted(entries)))


# ----------------------------------------------------------------------------- run


@dataclass
class Outcome:
    fetched: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (record name, redacted reason)


def materialize(root: Path, jobs: Sequence[Job], provider, fetcher: Fetcher, manifest: Manifest,
                progress: bool = True) -> Outcome:
    """Fetch every job's image with ``fetcher.p.concurrency`` threads; each is written atomically
    after its manifest line. Jobs with the same ``provider.request_key`` (the same request, e.g.
    one place in two versions) share one fetch. A failed job is reported in the outcome, never
    fatal for the others; 401/403 stop the run (the rest are reported as not attempted)."""
    from tqdm.auto import tqdm

    outcome = Outcome()
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(provider.request_key(job), []).append(job)

    def run(group: list[Job]) -> None:
        requested = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fetched = provider.fetch(group[0], fetcher)
        for job in group:
            data = fetched.data if job.path.suffix.lower() == group[0].path.suffix.lower() else \
                encode(fetched.data, None, job.path)
            entry = {"name": job.record.name, "version": job.record.version, "split": job.record.split,
                     "file": job.path.relative_to(root).as_posix(), "provider": provider.name,
                     "requested": requested, "attribution": provider.attribution, "terms": provider.terms,
                     "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), **fetched.source}
            with atomic_path(job.path) as tmp:
                tmp.write_bytes(data)
                manifest.append(entry)

    bar = tqdm(total=len(jobs), unit="img", desc=f"{provider.name}", disable=not progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=fetcher.p.concurrency, thread_name_prefix="materialize")
    try:
        futures = {pool.submit(run, group): group for group in groups.values()}
        for future in as_completed(futures):
            group, err = futures[future], future.exception()
            if err is None:
                outcome.fetched += len(group)
            else:
                if isinstance(err, FetchError) and err.stop_all and not fetcher.stop.is_set():
                    fetcher.stop.set()
                reason = str(err) if isinstance(err, FetchError) else f"{type(err).__name__}: {err}"
                outcome.failed += [(job.record.name, fetcher.redact(reason)) for job in group]
                bar.set_postfix(failed=len(outcome.failed), refresh=False)
            bar.update(len(group))
    except BaseException:
        fetcher.stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown()
    return outcome


# ----------------------------------------------------------------------------- command


def register(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "materialize", help="fetch a release's street-view, satellite or map images with your own keys",
        description="Fetch, for every record of a CVG-Text release, the image of one view from a provider you "
        "pick, and write it where the release layout expects it. Keys from environment variables only. "
        "Rate-limited, retried, resumable (a re-run fetches only missing or corrupt images); a manifest says "
        "what came from where. Exit status 0: all images present; 1: some failed (listed); 2: bad arguments.",
    )
    p.add_argument("release", type=Path, help="release root (holding CVG-text/)")
    p.add_argument("--view", required=True, choices=VIEWS, help="which image of each record")
    p.add_argument("--provider", required=True, choices=list(PROVIDERS),
                   help="google-streetview (street), google-satellite (satellite), xyz / wmts (satellite, osm: "
                   "a tile server by --template)")
    p.add_argument("--version", action="append", dest="versions", metavar="V",
                   help="only this version (repeatable; default: all on disk)")
    p.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                   help="only this split (repeatable; default: train and test)")
    p.add_argument("--endpoint", metavar="URL", help=f"Google base URL (default ${GOOGLE_ENDPOINT_ENV} or "
                   f"{GOOGLE_ENDPOINT})")
    p.add_argument("--template", metavar="URL", help="xyz/wmts tile URL template, e.g. "
                   "'https://tiles.example.com/{z}/{x}/{y}.png?apikey={key}'")
    p.add_argument("--key-env", metavar="NAME", help=f"environment variable holding the key (default "
                   f"{GOOGLE_KEY_ENV} for Google; for a template with {{key}}: required)")
    p.add_argument("--zoom", type=int, default=19, metavar="Z", help="zoom of satellite/map images (default 19)")
    p.add_argument("--size", metavar="WxH", help="image size in pixels (default: street 640x640 per view, "
                   "satellite/osm 512x512); Google allows up to 640x640")
    p.add_argument("--fov", type=float, default=90.0, metavar="DEG", help="field of view of single street views "
                   "(default 90)")
    p.add_argument("--pano-views", type=int, default=4, metavar="N", help="views per panorama record, fov 360/N, "
                   "side by side; each is a billed request (default 4)")
    p.add_argument("--tile-size", type=int, default=256, metavar="PX", help="tile side of the template's server "
                   "(default 256)")
    p.add_argument("--subdomains", default="abc", help="values of {s} in the template (default abc)")
    p.add_argument("--tile-cache", type=Path, metavar="DIR", help=f"tile cache folder (default "
                   f"RELEASE/{TILE_CACHE}/<server>)")
    p.add_argument("--attribution", metavar="TEXT", help="attribution/licence of the template's tiles, for the "
                   "manifest (default: OSM contributors for --view osm, else the server's name)")
    p.add_argument("--manifest", type=Path, metavar="FILE", help=f"manifest (default RELEASE/{MANIFEST})")
    p.add_argument("--user-agent", default=DEFAULT_USER_AGENT, help="User-Agent naming this application and "
                   "your contact (default %(default)r)")
    defaults = Politeness()
    p.add_argument("--rate", type=float, default=defaults.rate, metavar="R",
                   help=f"requests per second, all threads together (default {defaults.rate:g})")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency, metavar="C",
                   help=f"worker threads (default {defaults.concurrency})")
    p.add_argument("--timeout", type=float, default=defaults.timeout, metavar="S",
                   help=f"seconds per request (default {defaults.timeout:g})")
    p.add_argument("--max-attempts", type=int, default=defaults.max_attempts, metavar="N",
                   help=f"attempts per request (default {defaults.max_attempts})")
    p.add_argument("--backoff", type=float, default=defaults.backoff, metavar="S",
                   help=f"first retry delay, doubled each time, jittered (default {defaults.backoff:g})")
    p.add_argument("--max-backoff", type=float, default=defaults.max_backoff, metavar="S",
                   help=f"longest retry delay (default {defaults.max_backoff:g})")
    p.add_argument("--max-retry-after", type=float, default=defaults.max_retry_after, metavar="S",
                   help=f"longest Retry-After honoured; longer fails the request (default {defaults.max_retry_after:g})")
    p.add_argument("--limit", type=int, metavar="N", help="fetch at most N of the missing images")
    p.add_argument("--dry-run", action="store_true", help="count the billed requests and their cost; fetch nothing")
    p.add_argument("--price-per-1000", type=float, metavar="USD", help="price per 1000 billed requests for "
                   "--dry-run (default: google-streetview 7, google-satellite 2, templates 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=materialize_command)


def _size(text: str | None, view: str) -> tuple[int, int]:
    text = text or ("640x640" if view == "street" else "512x512")
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not m or int(m[1]) < 1 or int(m[2] or m[1]) < 1:
        raise ConfigError(f"--size {text!r}: write it as WIDTHxHEIGHT (e.g. 640x640) or one number")
    return int(m[1]), int(m[2] or m[1])


def _secret(name: str, need: bool) -> str:
    value = os.environ.get(name, "")
    if need and not value:
        raise ConfigError(f"the environment variable {name} holding the key is not set; export it (keys are read "
                          "from the environment only)")
    return value


def _check_plain_http(url: str, key: str) -> None:
    parts = urllib.parse.urlsplit(re.sub(r"\{\w+\}", "a", url))
    if key and parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"refusing to send a key over plain http to {parts.hostname}; use https")


def build_provider(args, root: Path, need_key: bool):
    """The provider the arguments describe; ConfigError (one line, no key) for any mistake."""
    if args.view not in PROVIDERS[args.provider]:
        fits = [p for p, views in PROVIDERS.items() if args.view in views]
        raise ConfigError(f"--provider {args.provider} does not serve the {args.view} view; use {' or '.join(fits)}")
    size = _size(args.size, args.view)
    if args.provider.startswith("google-"):
        if args.template:
            raise ConfigError(f"--template is for xyz/wmts; {args.provider} takes --endpoint")
        if max(size) > 640:
            raise ConfigError(f"--size {size[0]}x{size[1]}: Google's static APIs serve at most 640x640")
        endpoint = args.endpoint or os.environ.get(GOOGLE_ENDPOINT_ENV) or GOOGLE_ENDPOINT
        key = _secret(args.key_env or GOOGLE_KEY_ENV, need_key)
        _check_plain_http(endpoint, key)
        if args.provider == "google-streetview":
            if not 1 <= args.pano_views <= 12 or not 0 < args.fov <= 120:
                raise ConfigError("--pano-views must be 1..12 and --fov in (0, 120]")
            return GoogleStreetView(endpoint, key, size, args.fov, args.pano_views)
        return GoogleSatellite(endpoint, key, size, args.zoom)
    if not args.template:
        raise ConfigError(f"--provider {args.provider} needs --template URL (e.g. 'https://tiles.example.com/{{z}}/"
                          "{x}/{y}.png')")
    check_template(args.template)
    if "{key}" in args.template and not args.key_env:
        raise ConfigError("--template has {key}: name the environment variable holding it with --key-env")
    key = _secret(args.key_env, need_key and "{key}" in args.template) if args.key_env else ""
    _check_plain_http(args.template, key)
    if not 0 <= args.zoom <= 23 or args.tile_size not in (256, 512):
        raise ConfigError("--zoom must be 0..23 and --tile-size 256 or 512")
    host = template_host(args.template)
    slug = f"{host}-{hashlib.sha256(Redactor([key])(args.template).encode()).hexdigest()[:10]}"
    cache = args.tile_cache or root / TILE_CACHE / slug
    attribution = args.attribution or (
        f"Map data © OpenStreetMap contributors (ODbL, https://www.openstreetmap.org/copyright); tiles: {host}"
        if args.view == "osm" else f"Imagery from {host}; see its terms of use")
    return TileTemplate(args.provider, args.template, key, size, args.zoom, args.tile_size, cache, attribution,
                        args.subdomains)


@dataclass(frozen=True)
class Estimate:
    """What ``--dry-run`` prints: the billed requests for the images still to fetch, and their price."""

    view: str
    provider: str
    records: int  # files of the view the release names
    present: int  # of those, complete on disk
    to_fetch: int
    billed: int  # requests (Google) or tiles not in the cache (templates); retries not counted
    unit: str
    price_per_1000: float  # USD
    assumed: str  # where the price comes from

    @property
    def usd(self) -> float:
        return self.billed * self.price_per_1000 / 1000


def estimate(view: str, provider, jobs: Sequence[Job], missing: Sequence[Job], todo: Sequence[Job],
             price_per_1000: float | None = None) -> Estimate:
    """The cost of fetching ``todo`` (of the release's ``jobs``, ``missing`` not complete on disk;
    see :func:`prepare`) from ``provider``, at ``price_per_1000`` USD or the provider's list price
    (:data:`PRICE_PER_1000`)."""
    price = PRICE_PER_1000[provider.name] if price_per_1000 is None else price_per_1000
    assumed = "your --price-per-1000" if price_per_1000 is not None else (
        "Google Maps Platform list price, first 100,000 a month" if provider.name.startswith("google-")
        else "unknown for a template; pass --price-per-1000")
    unit = "tiles not in the cache" if isinstance(provider, TileTemplate) else "requests"
    return Estimate(view, provider.name, len(jobs), len(jobs) - len(missing), len(todo), provider.billed(todo),
                    unit, price, assumed)


def prepare(args, need_key: bool):
    """Check the arguments of ``geotextloc data materialize`` (one-line ConfigError/DataError for
    any mistake) and plan: ``(provider, jobs, missing, todo)``; ``todo`` is ``missing`` cut at
    ``--limit``. ``need_key=False`` (a dry run) works without the key in the environment."""
    root: Path = args.release
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; pass the release root (the folder holding CVG-text/)")
    why = check_user_agent(args.user_agent)
    if why:
        raise ConfigError(f"{why}; pass --user-agent 'yourtool/1.0 (you@example.org)' naming the application "
                          "and a contact, as tile and API policies ask")
    if args.rate <= 0 or args.concurrency < 1 or args.max_attempts < 1 or args.timeout <= 0 or \
            min(args.backoff, args.max_backoff, args.max_retry_after) < 0 or (args.limit is not None and args.limit < 0):
        raise ConfigError("--rate and --timeout must be positive, --concurrency and --max-attempts at least 1, "
                          "delays and --limit not negative")
    provider = build_provider(args, root, need_key=need_key)
    jobs = plan(root, args.view, args.versions, args.splits or SPLITS)
    missing = [job for job in jobs if file_problem(job.path) is not None]
    todo = missing if args.limit is None else missing[:args.limit]
    return provider, jobs, missing, todo


def materialize_command(args) -> int:
    root: Path = args.release
    provider, jobs, missing, todo = prepare(args, need_key=not args.dry_run)
    redact = Redactor([provider.key])
    head = f"{args.view} via {provider.name}: {len(jobs)} record(s), {len(jobs) - len(missing)} present"
    if len(todo) < len(missing):
        head += f", {len(missing)} missing (--limit)"
    if args.dry_run:
        cost = estimate(args.view, provider, jobs, missing, todo, args.price_per_1000)
        print(f"dry run: {head}, {len(todo)} to fetch")
        print(f"billed requests: {cost.billed} ({cost.unit}; retries not counted)")
        print(f"estimated cost: USD {cost.usd:.2f} at USD {cost.price_per_1000:g} per 1000 ({cost.assumed})")
        return 0
    if not todo:
        print(f"{head}, nothing to fetch")
        return 0
    politeness = Politeness(args.rate, args.concurrency, args.timeout, args.max_attempts, args.backoff,
                            args.max_backoff, args.max_retry_after, args.user_agent)
    fetcher = Fetcher(politeness, redact)
    manifest = Manifest(args.manifest or root / MANIFEST)
    print(redact(f"{head}, {len(todo)} to fetch"), flush=True)
    outcome = materialize(root, todo, provider, fetcher, manifest, progress=not args.no_progress)
    manifest.compact()
    cached = f", {provider.from_cache} tile(s) from the cache" if isinstance(provider, TileTemplate) else ""
    print(redact(f"fetched {outcome.fetched}, failed {len(outcome.failed)} ({fetcher.requests} HTTP request(s)"
                 f"{cached}); manifest: {manifest.path}"))
    for name, reason in sorted(outcome.failed)[:20]:
        print(redact(f"  failed {name}: {reason}"), file=sys.stderr)
    if len(outcome.failed) > 20:
        print(f"  ... and {len(outcome.failed) - 20} more", file=sys.stderr)
    if outcome.failed:
        print("run the same command again to retry the failed images (the others are kept)", file=sys.stderr)
    return 1 if outcome.failed else 0
