"""Where the GeoLoc builder gets street views and satellite tiles: the materialise providers, or an embedded region.

A *street source* has ``lookup(lon, lat, radius_m) -> Panorama | None`` (the capture nearest to
a seed) and ``view(pano) -> (image, notes)``; a *satellite source* has ``view(pano) ->
(image, notes)`` (the tile centred on the capture) and ``footprint_m(lat)``. Notes are what the
offline writer merges into the unified description (text or a list of sentences; empty for
real imagery, which only the LMM writer can describe).

=====================  =========================================================================
source                 what it asks
=====================  =========================================================================
``embedded``           the embedded region's street renderer / satellite renderer
                       (:mod:`geotextloc.data.embedded.geoloc_views`), offline
``google-streetview``  Street View *metadata* (``/maps/api/streetview/metadata?location=&radius=``,
                       free of charge) for the panorama nearest to the seed — its id, location and
                       month — then the panorama itself through
                       :class:`~geotextloc.data.materialize.GoogleStreetView` (``pano_views`` views
                       side by side, billed)
``google-satellite``   :class:`~geotextloc.data.materialize.GoogleSatellite` (Maps Static API)
``xyz`` / ``wmts``     :class:`~geotextloc.data.materialize.TileTemplate` (any tile server)
=====================  =========================================================================

The Google and template sources are built by :func:`geotextloc.data.materialize.build_provider`
from the same options as ``geotextloc data materialize`` (key from the environment only,
redacted everywhere) and fetch through one :class:`~geotextloc.data.fetch.Fetcher` (shared rate
limit, retries, verified bodies). :class:`geotextloc.testing.imagery.FakeImagery` answers all of
them locally (metadata included) for tests and offline runs.
"""

from __future__ import annotations

import io
import math
import urllib.parse
from argparse import Namespace
from pathlib import Path

from PIL import Image

from geotextloc.data.embedded.geoloc_views import EmbeddedSatellite, EmbeddedStreets, Panorama
from geotextloc.data.fetch import FetchError
from geotextloc.data.release import PANORAMA, Record
from geotextloc.errors import ConfigError, OfflineError

STREET_SOURCES = ("embedded", "google-streetview")
SATELLITE_SOURCES = ("embedded", "google-satellite", "xyz", "wmts")
WEB_MERCATOR_M_PER_PX_Z0 = 156_543.03392804097  # ground metres per 256-px-tile pixel at zoom 0, equator


def _record(pano: Panorama, suffix: str = ".jpg") -> Record:
    """The release record a materialise provider asks for: the panorama's name carries its id."""
    name = f"{pano.lat:.8f},{pano.lon:.8f}_{pano.date}_{pano.id}_d{int(round(pano.heading)) % 360}_z3{suffix}"
    return Record(name, "geoloc", "geoloc", "train", PANORAMA, pano.lat, pano.lon, "")


class ProviderStreets:
    """Google Street View: metadata lookups, then the panorama through the materialise provider."""

    def __init__(self, provider, fetcher, endpoint: str):
        self.provider, self.fetcher, self.endpoint = provider, fetcher, endpoint.rstrip("/")
        self.name, self.attribution = provider.name, provider.attribution

    def lookup(self, lon: float, lat: float, radius_m: float) -> Panorama | None:
        params = {"location": f"{lat:.8f},{lon:.8f}", "radius": f"{radius_m:g}", "source": "outdoor"}
        url = (f"{self.endpoint}/maps/api/streetview/metadata?{urllib.parse.urlencode(params)}"
               f"&key={urllib.parse.quote(self.provider.key, safe='')}")
        try:
            doc = self.fetcher.get_json(url)
        except FetchError as err:
            raise OfflineError(f"street-view metadata at {lat:.6f},{lon:.6f}: {self.fetcher.redact(err)}") from None
        if doc.get("status") == "ZERO_RESULTS":
            return None
        if doc.get("status") != "OK":
            raise OfflineError(f"street-view metadata at {lat:.6f},{lon:.6f}: status {doc.get('status')!r} "
                               f"({self.fetcher.redact(doc.get('error_message', ''))[:120]}); check the key's APIs")
        where = doc["location"]
        date = str(doc.get("date") or "0000-00")[:7]
        return Panorama(str(doc["pano_id"]), float(where["lat"]), float(where["lng"]), 0.0, date, self.name)

    def view(self, pano: Panorama) -> tuple[Image.Image, str]:
        from geotextloc.data.materialize import Job

        record = _record(pano)
        fetched = self.provider.fetch(Job(record, Path(record.name)), self.fetcher)
        return Image.open(io.BytesIO(fetched.data)).convert("RGB"), ""


class ProviderSatellite:
    """A satellite tile centred on the capture from a materialise provider (Static API or tiles)."""

    def __init__(self, provider, fetcher):
        self.provider, self.fetcher = provider, fetcher
        self.name, self.attribution = provider.name, provider.attribution

    def footprint_m(self, lat: float) -> float:
        """Ground side of the image: size × 156 543 m · cos φ / 2^zoom (Web Mercator)."""
        return self.provider.size[0] * WEB_MERCATOR_M_PER_PX_Z0 * math.cos(math.radians(lat)) / 2**self.provider.zoom

    def view(self, pano: Panorama) -> tuple[Image.Image, list[str]]:
        from geotextloc.data.materialize import Job

        record = _record(pano)
        fetched = self.provider.fetch(Job(record, Path(record.name)), self.fetcher)
        return Image.open(io.BytesIO(fetched.data)).convert("RGB"), []


def provider_options(args: Namespace, view: str, provider: str) -> Namespace:
    """The ``geotextloc data materialize`` options for one view from ``build-geoloc``'s."""
    street = view == "street"
    return Namespace(view=view, provider=provider, size=args.street_size if street else args.satellite_size,
                     template=None if street else args.template, key_env=args.key_env, endpoint=args.endpoint,
                     zoom=args.zoom, fov=90.0, pano_views=args.pano_views, tile_size=args.tile_size,
                     tile_cache=args.tile_cache, attribution=None, subdomains=args.subdomains)


def make_sources(args: Namespace, region, out: Path, seed: int = 0):
    """(street source, satellite source, fetcher or None) for ``build-geoloc``'s arguments;
    ``region`` is the embedded region (None for a real orthophoto)."""
    from geotextloc.data import materialize
    from geotextloc.data.fetch import Fetcher, Politeness, Redactor, check_user_agent

    need_region = [k for k, v in (("--street-provider", args.street_provider),
                                  ("--satellite-provider", args.satellite_provider)) if v == "embedded"]
    if need_region and region is None:
        raise ConfigError(f"{' and '.join(need_region)} embedded need an embedded region: the orthophoto names "
                          "none (no GEOTEXTLOC_REGION tag); pass --region helsinki|kouvola|monaco, or use "
                          "--street-provider google-streetview / --satellite-provider google-satellite|xyz")
    fetcher, providers = None, {}
    for view, name in (("street", args.street_provider), ("satellite", args.satellite_provider)):
        if name != "embedded":
            providers[view] = materialize.build_provider(provider_options(args, view, name), out, need_key=True)
    if providers:
        why = check_user_agent(args.user_agent)
        if why:
            raise ConfigError(f"{why}; pass --user-agent 'yourtool/1.0 (you@example.org)'")
        politeness = Politeness(rate=args.rate, concurrency=1, user_agent=args.user_agent)
        fetcher = Fetcher(politeness, Redactor([p.key for p in providers.values()]))
    if args.street_provider == "embedded":
        street = EmbeddedStreets(region, seed=seed)
    else:
        endpoint = args.endpoint or materialize.os.environ.get(materialize.GOOGLE_ENDPOINT_ENV) or \
            materialize.GOOGLE_ENDPOINT
        street = ProviderStreets(providers["street"], fetcher, endpoint)
    if args.satellite_provider == "embedded":
        satellite = EmbeddedSatellite(region, args.satellite_footprint_m, args.satellite_px, seed)
    else:
        satellite = ProviderSatellite(providers["satellite"], fetcher)
    return street, satellite, fetcher
