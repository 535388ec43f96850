"""A local stand-in for the imagery services ``geotextloc data materialize`` calls, for offline runs and tests.

**Not Google's services, not a tile server.** :class:`FakeImagery` is an HTTP server on
127.0.0.1, in a thread of the calling process, that answers the requests
:mod:`geotextloc.data.materialize` sends, in the form it sends them to the real services, with
images drawn from a *source* release on disk (the embedded dataset, or any release with images):

====================================================  =============================================
request                                               answer
====================================================  =============================================
``/maps/api/streetview?size=WxH&pano=ID&fov=F``       the source panorama whose name carries ``ID``
``[&heading=H]&key=K`` (Street View Static API)       (``..._<yyyy-mm>_<ID>_d<heading>_z<n>.jpg``), cut
                                                      ``F`` degrees wide around ``H`` (default: the
                                                      name's heading) and as many degrees tall on the
                                                      horizon (:func:`~geotextloc.data.embedded.
                                                      render_street.crop_single_view`), resized to WxH
``/maps/api/streetview?...&location=LAT,LON``         the source's single-view photo nearest to the
                                                      location, within ``radius`` (default 50 m, as
                                                      the API), cropped to the aspect and resized
                                                      (with ``heading``: the nearest panorama, cut as
                                                      above, where there is one); else 404
``/maps/api/streetview/metadata?location=LAT,LON``    JSON as the Street View Image Metadata API's: of
``[&radius=R]&key=K`` (free metadata requests)         the source panorama nearest to the location
                                                      within ``radius`` (default 50 m): ``status`` OK,
                                                      ``pano_id``, ``location`` {lat, lng}, ``date``
                                                      (the name's ``yyyy-mm``), ``copyright``; else
                                                      ``{"status": "ZERO_RESULTS"}`` (HTTP 200)
``/maps/api/staticmap?center=LAT,LON&zoom=Z``         the Web-Mercator footprint of the Static API
``&size=WxH&maptype=satellite&format=jpg|png&key=K``  image, drawn from the source's satellite tiles
                                                      (``maptype=roadmap``: its OSM tiles)
``/tiles/{layer}/{z}/{x}/{y}.png|jpg``                XYZ tile of ``layer`` (``satellite`` or
``/wmts/{layer}/GoogleMapsCompatible/{z}/{row}/{col}  osm``) drawn from the source's tiles; the
.png|jpg``                                            WMTS REST form serves the same tiles
====================================================  =============================================

**Maps and tiles are drawn from the source's tiles, not synthesised**: each source tile is a
north-up square of ``footprint_m`` (the build's ``tile_footprint_m``, 60 m) centred on its
record's coordinates; every output pixel is sampled from the tile whose centre is nearest, among
those covering it (a Voronoi mosaic), after a finer tile is downsampled to the output's metres
per pixel. Around a release place the output therefore shows that place's own tile, resampled
to Web Mercator at the requested zoom; ground no tile covers is flat grey (:data:`NO_DATA`). A
panorama served in ``N`` views of ``360/N`` degrees and put side by side again is the source
panorama's band around the horizon (``360/N`` degrees tall), rolled to start half a view before
the name's heading.

Google routes answer 403 unless ``key`` is the key given to :class:`FakeImagery` (like a
refused key); tiles need no key. The key is never logged: the server writes no request log.

**Faults** (:class:`Faults`): of the distinct requests (a request without its key), in the order
they arrive, every ``rate_limit_every``-th first answers 429 with ``Retry-After``, every
``error_every``-th 500; the retry gets the image. **Counts**: every answer is recorded in
:attr:`FakeImagery.answers` (route, request without its key, HTTP status), and
:meth:`FakeImagery.summary` counts them per route, so a caller can check that each image was
served once and how many retries the faults caused.
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from geotextloc.data.materialize import panorama_id, world_pixel
from geotextloc.data.release import PANORAMA, read_release

EARTH_RADIUS_M = 6_371_008.8
TILE_PX = 256  # the Web-Mercator world of the Static API and XYZ tiles: 256 * 2**zoom pixels wide
SEARCH_RADIUS_M = 50.0  # the Street View Static API's default search radius
DEFAULT_FOOTPRINT_M = 60.0  # the embedded build's tile side, when the source has no build.json
NO_DATA = (204, 204, 204)
LAYERS = ("satellite", "osm")
ROUTES = ("streetview", "metadata", "staticmap", "tiles/satellite", "tiles/osm")
_XYZ = re.compile(r"^/tiles/(?P<layer>[a-z]+)/(?P<z>\d+)/(?P<x>\d+)/(?P<y>\d+)\.(?P<ext>png|jpe?g)$")
_WMTS = re.compile(r"^/wmts/(?P<layer>[a-z]+)/GoogleMapsCompatible/(?P<z>\d+)/(?P<y>\d+)/(?P<x>\d+)\."
                   r"(?P<ext>png|jpe?g)$")


@dataclass(frozen=True)
class Faults:
    """Injected first answers: of the distinct requests, in arrival order, every
    ``rate_limit_every``-th gets 429 with ``Retry-After: retry_after_s``, every ``error_every``-th
    500 (429 when both apply); a retry of the same request gets the image. 0 turns a fault off."""

    rate_limit_every: int = 0
    error_every: int = 0
    retry_after_s: int = 1


class Answer(NamedTuple):
    route: str  # one of ROUTES, or "unknown"
    request: str  # path and query without the key
    status: int


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _local_m(lat: float, lon: float, lat0: float, lon0: float) -> tuple:
    """(east, north) metres of (lat, lon) from (lat0, lon0); equirectangular, fine over a few km."""
    east = EARTH_RADIUS_M * math.cos(math.radians(lat0)) * np.radians(np.asarray(lon) - lon0)
    north = EARTH_RADIUS_M * np.radians(np.asarray(lat) - lat0)
    return east, north


class _Mosaic:
    """One layer's source tiles, and any Web-Mercator window drawn from them."""

    def __init__(self, centres: list[tuple[float, float]], paths: list[Path], footprint_m: float):
        self.lat = np.array([c[0] for c in centres], float)
        self.lon = np.array([c[1] for c in centres], float)
        self.paths, self.footprint = paths, footprint_m
        half = footprint_m / 2
        self.dlat = np.degrees(half / EARTH_RADIUS_M) * np.ones_like(self.lat)
        self.dlon = np.degrees(half / (EARTH_RADIUS_M * np.cos(np.radians(self.lat))))
        self._tile = lru_cache(maxsize=512)(self._load)

    def _load(self, i: int, px: int) -> np.ndarray:
        """Source tile ``i`` as an array, downsampled (Lanczos) to ``px`` pixels a side when smaller."""
        with Image.open(self.paths[i]) as image:
            image = image.convert("RGB")
        if px < min(image.size):
            image = image.resize((px, px), Image.LANCZOS)
        return np.asarray(image)

    def draw(self, left: float, top: float, width: int, height: int, zoom: int) -> Image.Image:
        """The window of ``width`` x ``height`` pixels whose top-left corner is world pixel
        (``left``, ``top``) of the ``256 * 2**zoom``-pixel Web-Mercator world."""
        world = TILE_PX * 2**zoom
        x = left + np.arange(width) + 0.5
        y = top + np.arange(height) + 0.5
        lon = x / world * 360.0 - 180.0
        lat = np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * y / world))))
        out = np.empty((height, width, 3), np.uint8)
        out[:] = NO_DATA
        best = np.full((height, width), np.inf)
        near = np.flatnonzero((self.lat + self.dlat >= lat.min()) & (self.lat - self.dlat <= lat.max())
                              & (self.lon + self.dlon >= lon.min()) & (self.lon - self.dlon <= lon.max()))
        if len(near) == 0:
            return Image.fromarray(out)
        m_per_px = 2 * math.pi * EARTH_RADIUS_M * math.cos(math.radians(float(np.median(lat)))) / world
        px = max(1, round(self.footprint / m_per_px))  # the source tile at the output's resolution
        half = self.footprint / 2
        for i in near:
            east, north = _local_m(lat, lon, self.lat[i], self.lon[i])
            cols, rows = np.abs(east) < half, np.abs(north) < half
            if not cols.any() or not rows.any():
                continue
            distance = north[:, None] ** 2 + east[None, :] ** 2
            take = rows[:, None] & cols[None, :] & (distance < best)
            tile = self._tile(int(i), px)
            u = np.clip((east / self.footprint + 0.5) * tile.shape[1], 0, tile.shape[1] - 1).astype(int)
            v = np.clip((0.5 - north / self.footprint) * tile.shape[0], 0, tile.shape[0] - 1).astype(int)
            patch = tile[v[:, None], u[None, :]]
            out[take] = patch[take]
            best[take] = distance[take]
        return Image.fromarray(out)


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` cropped to the aspect of ``size`` (centred) and resized to it."""
    w, h = image.size
    scale = min(w / size[0], h / size[1])
    cw, ch = round(size[0] * scale), round(size[1] * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch)).resize(size, Image.LANCZOS)


def _encode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    out = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(out, "JPEG", quality=90)
    else:
        image.save(out, "PNG")
    return out.getvalue(), f"image/{fmt.lower()}"


def _size(text: str | None) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text or "")
    if not match or not (1 <= int(match[1]) <= 2048 and 1 <= int(match[2]) <= 2048):
        raise _BadRequest(400, "size must be WIDTHxHEIGHT")
    return int(match[1]), int(match[2])


def _latlon(text: str | None, name: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in (text or "").split(","))
    except ValueError:
        raise _BadRequest(400, f"{name} must be LAT,LON") from None
    return lat, lon


class FakeImagery:
    """``with FakeImagery(source, key) as imagery: ...`` serves on ``imagery.url`` until the block ends.

    ``source``: a release folder with images (``versions``: those to serve, default all on
    disk); ``key``: the key Google routes require; ``faults``: see :class:`Faults`;
    ``footprint_m``: the side of the source's tiles (default: the build's ``tile_footprint_m``).
    """

    def __init__(self, source: str | Path, key: str, versions=None, faults: Faults | None = None,
                 footprint_m: float | None = None):
        source = Path(source)
        self.key, self.faults = key, faults or Faults()
        if footprint_m is None:
            build = source / "build.json"
            settings = json.loads(build.read_text()).get("settings", {}) if build.is_file() else {}
            footprint_m = float(settings.get("tile_footprint_m", DEFAULT_FOOTPRINT_M))
        self.footprint_m = footprint_m
        self.panoramas: dict[str, tuple[Path, float]] = {}  # pano id -> (panorama, its centre heading)
        singles, pano_places = [], []
        centres: dict[str, dict[Path, tuple[float, float]]] = {layer: {} for layer in LAYERS}
        for record in read_release(source, versions, check_images=False, require_images=False).records:
            street = record.images.get("street")
            pano = panorama_id(record.name) if record.view == PANORAMA else None
            if street is not None and pano is not None:
                self.panoramas[pano[0]] = (street, pano[1])
                pano_places.append((record.lat, record.lon, pano[0], record.name.split("_")[1]))
            elif street is not None:
                singles.append((record.lat, record.lon, street))
            for layer in LAYERS:
                if layer in record.images:
                    centres[layer][record.images[layer]] = (record.lat, record.lon)
        self._singles, self._pano_places = singles, pano_places
        self.mosaics = {layer: _Mosaic(list(found.values()), list(found), footprint_m)
                        for layer, found in centres.items()}
        self.answers: list[Answer] = []
        self._seen: dict[str, int] = {}  # request -> arrival index among distinct requests (1-based)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeImagery:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeImagery:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def template(self, layer: str, ext: str = "png") -> str:
        """The XYZ URL template of ``layer`` for ``--template``."""
        return f"{self.url}/tiles/{layer}/{{z}}/{{x}}/{{y}}.{ext}"

    # ------------------------------------------------------------------ counts

    def served(self) -> Counter:
        """Images served (HTTP 200) per request (without its key)."""
        with self._lock:
            return Counter(a.request for a in self.answers if a.status == 200)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per route: ``requests``, ``images`` (200), and the count of each other status."""
        with self._lock:
            answers = list(self.answers)
        out = {}
        for route in dict.fromkeys([*ROUTES, *(a.route for a in answers)]):
            statuses = Counter(a.status for a in answers if a.route == route)
            if statuses:
                out[route] = {"requests": sum(statuses.values()), "images": statuses.pop(200, 0),
                              **{str(s): n for s, n in sorted(statuses.items())}}
        return out

    # ------------------------------------------------------------------ answers

    def _fault(self, request: str) -> int | None:
        """The injected status for this arrival of ``request``, or None."""
        with self._lock:
            first = request not in self._seen
            if first:
                self._seen[request] = len(self._seen) + 1
        if not first:
            return None
        n, f = self._seen[request], self.faults
        if f.rate_limit_every and n % f.rate_limit_every == 0:
            return 429
        if f.error_every and n % f.error_every == 0:
            return 500
        return None

    def _street_view(self, q: dict) -> tuple[bytes, str]:
        from geotextloc.data.embedded.render_street import crop_single_view

        size = _size(q.get("size"))
        fov = float(q.get("fov", 90))
        heading = float(q["heading"]) if "heading" in q else None
        if not 0 < fov <= 120:
            raise _BadRequest(400, "fov must be in (0, 120]")
        if "pano" in q:
            pano = q["pano"]
            if pano not in self.panoramas:
                raise _BadRequest(404, "ZERO_RESULTS: no panorama with this id")
        else:
            lat, lon = _latlon(q.get("location"), "location")
            radius = float(q.get("radius", SEARCH_RADIUS_M))
            single = self._nearest(self._singles, lat, lon, radius)
            place = self._nearest(self._pano_places, lat, lon, radius)
            if single is not None and (heading is None or place is None):
                with Image.open(single[2]) as photo:
                    return _encode(_fit(photo.convert("RGB"), size), "JPEG")
            if place is None:
                raise _BadRequest(404, "ZERO_RESULTS: no imagery near this location")
            pano = place[2]
        path, centre = self.panoramas[pano]
        with Image.open(path) as image:
            panorama = image.convert("RGB")
        panorama.info["heading_deg"] = centre
        view = crop_single_view(panorama, centre if heading is None else heading, fov, size)
        return _encode(view, "JPEG")

    def _metadata(self, q: dict) -> tuple[bytes, str]:
        lat, lon = _latlon(q.get("location"), "location")
        place = self._nearest(self._pano_places, lat, lon, float(q.get("radius", SEARCH_RADIUS_M)))
        doc = {"status": "ZERO_RESULTS"} if place is None else {
            "status": "OK", "pano_id": place[2], "location": {"lat": place[0], "lng": place[1]}, "date": place[3],
            "copyright": "© imagery stand-in (geotextloc.testing)"}
        return json.dumps(doc).encode(), "application/json"

    @staticmethod
    def _nearest(places: list[tuple], lat: float, lon: float, radius: float) -> tuple | None:
        if not places:
            return None
        east, north = _local_m([p[0] for p in places], [p[1] for p in places], lat, lon)
        i = int(np.argmin(east**2 + north**2))
        return places[i] if math.hypot(east[i], north[i]) <= radius else None

    def _static_map(self, q: dict) -> tuple[bytes, str]:
        layer = {"satellite": "satellite", "roadmap": "osm"}.get(q.get("maptype", "roadmap"))
        if layer is None:
            raise _BadRequest(400, "the stand-in serves maptype=satellite or roadmap")
        lat, lon = _latlon(q.get("center"), "center")
        zoom = int(q.get("zoom", -1)) if str(q.get("zoom", "")).isdigit() else -1
        if not 0 <= zoom <= 22:
            raise _BadRequest(400, "zoom must be 0..22")
        w, h = _size(q.get("size"))
        cx, cy = world_pixel(lat, lon, zoom)
        image = self.mosaics[layer].draw(cx - w / 2, cy - h / 2, w, h, zoom)
        return _encode(image, "JPEG" if q.get("format", "png").startswith("jpg") else "PNG")

    def _tile(self, m: re.Match) -> tuple[bytes, str]:
        z, x, y = int(m["z"]), int(m["x"]), int(m["y"])
        if m["layer"] not in self.mosaics or not (0 <= z <= 23 and 0 <= x < 2**z and 0 <= y < 2**z):
            raise _BadRequest(404, "no such tile")
        image = self.mosaics[m["layer"]].draw(x * TILE_PX, y * TILE_PX, TILE_PX, TILE_PX, z)
        return _encode(image, "PNG" if m["ext"] == "png" else "JPEG")

    def answer(self, path: str) -> tuple[str, str, int, dict, bytes, str]:
        """(route, request without key, status, headers, body, content type) for a GET of ``path``."""
        parts = urllib.parse.urlsplit(path)
        q = dict(urllib.parse.parse_qsl(parts.query))
        key = q.pop("key", None)
        request = parts.path + ("?" + urllib.parse.urlencode(sorted(q.items())) if q else "")
        tile = _XYZ.match(parts.path) or _WMTS.match(parts.path)
        route = {"/maps/api/streetview": "streetview", "/maps/api/streetview/metadata": "metadata",
                 "/maps/api/staticmap": "staticmap"}.get(parts.path) or (
            f"tiles/{tile['layer']}" if tile else "unknown")
        if route == "unknown":
            return route, request, 404, {}, b"not a route of the imagery stand-in", "text/plain"
        if route in ("streetview", "metadata", "staticmap") and key != self.key:
            return route, request, 403, {}, b"The provided API key is invalid.", "text/plain"
        fault = self._fault(request)
        if fault is not None:
            headers = {"Retry-After": str(self.faults.retry_after_s)} if fault == 429 else {}
            return route, request, fault, headers, f"injected fault: HTTP {fault}".encode(), "text/plain"
        try:
            if route == "streetview":
                body, ctype = self._street_view(q)
            elif route == "metadata":
                body, ctype = self._metadata(q)
            elif route == "staticmap":
                body, ctype = self._static_map(q)
            else:
                body, ctype = self._tile(tile)
        except _BadRequest as err:
            return route, request, err.status, {}, str(err).encode(), "text/plain"
        return route, request, 200, {}, body, ctype


def _handler(imagery: FakeImagery) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the default logs each URL, key included, to stderr
            pass

        def do_GET(self):
            try:
                route, request, status, headers, body, ctype = imagery.answer(self.path)
            except Exception as err:  # a bug in the stand-in: say so instead of dropping the connection
                route, request, status, headers = "unknown", urllib.parse.urlsplit(self.path).path, 500, {}
                body, ctype = f"imagery stand-in: {type(err).__name__}: {err}".encode(), "text/plain"
            with imagery._lock:
                imagery.answers.append(Answer(route, request, status))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
